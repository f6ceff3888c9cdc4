"""Every GPU check in one call, for a lent accelerator with little time on it (≤ 8 minutes).

    python scripts/gpu_check.py --out $OUT                          # on the GPU
    python scripts/gpu_check.py --device cpu --quick --out DIR      # every section, briefly, on CPU (CI)

Writes OUT/gpu_check.json: {"device", "torch", "sections": {name: {"status", ...figures}}}. Each
section is written as soon as it is measured, so a check cut short keeps what it measured; a
section that fails is recorded as "failed: <reason>" and the others still run; a section that would
not fit in what is left of --budget_s is "skipped". The sections:

1. environment: versions, compute capability, native bf16, whether the flash kernel takes the
   training attention shapes (bf16, with GQA, forward and backward).
2. correctness: one training step compiled against eager (loss and gradient agreement, all
   finite); KV-cache decoding logits against a full forward, in fp32 and bf16.
3. real_loop: pretrain.py's loop (--model default) on a synthetic corpus of ≈ 8 M tokens built
   here: 25 compiled steps at two batch sizes, 10 at --batch_size auto and 10 eager steps; tokens/s,
   MFU, time to the first step, graphs compiled, peak memory.
4. sft_varying_lengths: SFT on the demo's conversations, compiled: graphs and steady step time.
5. bench: scripts/bench.py's training section (XiaoXin and HF LlamaForCausalLM, eager and
   compiled) at the default size.
6. decode: scripts/bench.py's decoding section (batch-1 greedy against HF generate).
7. projection: one pretrain_hq epoch (0.43 B tokens) on this card, from the real loop, and on an
   RTX 4090 from the MFU and the share of time outside matmuls measured here.
8. grpo: one GRPO stage run (rollout tokens/s, step time), if time is left.

--quick shrinks every section (the tiny model, a few steps, short sequences). On CPU with --quick,
torch.compile uses the aot_eager backend: graphs are captured, counted and run as inductor would
get them, without code generation, which on CPU would take minutes.
"""
import argparse
import functools
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

PRETRAIN_HQ_TOKENS = 0.43e9
RTX_4090 = {"bf16_tflops": 165.2, "bandwidth_gb_s": 1008.0}


class Check:
    """Runs sections, each recorded in the JSON file as soon as it ends, whatever happens to the others."""

    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.report = {"device": args.device, "torch": torch.__version__, "quick": args.quick, "sections": {}}
        self.write()

    def write(self):
        self.report["wall_s"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2, default=str))
        tmp.replace(self.out / "gpu_check.json")

    def run(self, name, fn, needs_s: float = 0):
        left = self.args.budget_s - (time.perf_counter() - self.t0)
        if left < needs_s:
            result = {"status": f"skipped: {left:.0f} s of the {self.args.budget_s:.0f} s budget left, "
                                f"the section needs about {needs_s:.0f} s"}
        else:
            print(f"[{name}] running…", flush=True)
            t = time.perf_counter()
            try:
                result = {"status": "ok", **fn()}
            except Exception as e:   # one failing section must not stop the others
                result = {"status": f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}",
                          "traceback": traceback.format_exc()[-3000:]}
            result["seconds"] = round(time.perf_counter() - t, 1)
        self.report["sections"][name] = result
        self.write()
        print(f"[{name}] {result['status'].split(':')[0]} ({result.get('seconds', 0)} s)", flush=True)
        return result


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- 1. environment

def environment(device, size):
    import numpy
    from checkpoint import gpu_has_native_bf16
    from Config import model_config
    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "cuda": torch.version.cuda, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine()}
    for module in ("transformers", "triton", "tokenizers", "datasets", "matplotlib", "swanlab"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    if device.type == "cuda":
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["native_bf16"] = gpu_has_native_bf16()
        info["memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1)
    # The training attention shapes (batch 8, the default model's heads, T 512, bf16, GQA), flash only.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cfg = model_config(size)
    q = torch.randn(8, cfg.num_attention_heads, 512, cfg.head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(8, cfg.num_key_value_heads, 512, cfg.head_dim, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
            out.sum().backward()
        sync(device)
        info["flash_attention_training_shapes"] = True
    except Exception as e:
        info["flash_attention_training_shapes"] = False
        info["flash_attention_error"] = str(e).splitlines()[0][:200]
    return info


# ---------------------------------------------------------------- 2. correctness

def correctness(device, size, autocast_dtype):
    from Config import model_config
    from losses import masked_cross_entropy
    from model import XiaoXin
    cfg = model_config(size)
    torch.manual_seed(0)
    base = XiaoXin(cfg).to(device)
    x = torch.randint(3, cfg.vocab_size, (4, 129), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]
    mask = torch.ones(targets.shape, device=device)

    def loss_fn(model, a, b, m):
        return masked_cross_entropy(model(a).logits, b, m).sum() / m.sum()

    results = {}
    grads = {}
    for mode in ("eager", "compiled"):
        fn = torch.compile(loss_fn) if mode == "compiled" else loss_fn
        base.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            loss = fn(base, inputs, targets, mask)
        loss.backward()
        grads[mode] = [p.grad.detach().float().clone() for p in base.parameters()]
        results[f"{mode}_loss"] = float(loss)
    diffs = [((a - b).norm() / a.norm().clamp_min(1e-12)).item() for a, b in zip(grads["eager"], grads["compiled"])]
    results["training_step"] = {
        "dtype": str(autocast_dtype).removeprefix("torch."),
        "loss_abs_diff": abs(results.pop("eager_loss") - results.pop("compiled_loss")),
        "grad_max_rel_diff": max(diffs),
        "all_finite": all(torch.isfinite(g).all().item() for g in grads["eager"] + grads["compiled"]),
    }
    base.eval()
    prompt = torch.randint(3, cfg.vocab_size, (1, 20), device=device)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = XiaoXin(cfg).to(device, dtype).eval()
        model.load_state_dict(base.state_dict())
        seen = []

        def greedy(logits):
            seen.append(logits[0].float().clone())
            return logits.argmax(-1)
        with torch.no_grad():
            tokens = [int(t) for t in model.generate(prompt, 24, sampler=greedy)]
            full = model(torch.cat([prompt, torch.tensor([tokens[:-1]], device=device)], 1)).logits[0, prompt.shape[1] - 1:].float()
        cached = torch.stack(seen)
        results[f"kv_cache_decode_{name}"] = {
            "max_abs_logit_diff": (cached - full).abs().max().item(),
            "argmax_agreement": (cached.argmax(-1) == full.argmax(-1)).float().mean().item()}
    return results


# ---------------------------------------------------------------- 3-4. the real loops

def synthetic_corpus(path: Path, target_tokens: int) -> Path:
    """Demo prose shuffled into documents until ≈ target_tokens (≈ 3.4 characters per token here)."""
    import random
    texts = [json.loads(line)["text"] for line in (ROOT / "data/demo/pretrain.jsonl").read_text(encoding="utf-8").splitlines()]
    rng = random.Random(0)
    chars = 0
    with open(path, "w", encoding="utf-8") as f:
        while chars < target_tokens * 1.6:
            doc = "".join(rng.sample(texts, 4))
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            chars += len(doc)
    return path


def timed_run(stage: str, argv: list[str], device) -> dict:
    """Run a stage's Trainer and time its steps: first step (setup and compilation included) and
    the median of the steady ones."""
    import trainer
    from model import CompileOrEager, training_flops_per_token
    cfg, _ = trainer.parse_args(stage, argv)
    run = trainer.Trainer(cfg)
    marks = []
    original = run.accumulate

    def marked(batches, n_loss_tokens):   # each step's start, on the main thread (batches may come prefetched)
        if len(marks) < 3:
            sync(device)   # setup and the first two steps timed alone; then no sync, as in a real run
        marks.append(time.perf_counter())
        return original(batches, n_loss_tokens)
    run.accumulate = marked
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    try:
        results = run.train()
        sync(device)
        marks.append(time.perf_counter())
    finally:
        run.close()
    steps = [b - a for a, b in zip(marks, marks[1:])]
    # Steady: the mean step from the third step's start to the end, which is synchronised (a step's
    # mark without a sync is when its work was queued, not when it ran).
    steady = (marks[-1] - marks[2]) / (len(marks) - 3) if len(marks) > 3 else steps[-1]
    cfg = run.cfg          # --batch_size auto resolved
    tokens = cfg.batch_size * cfg.accumulation_steps * cfg.max_seq_len
    tok_s = tokens / steady
    peak, _ = trainer.peak_flops(run.device)
    flops = training_flops_per_token(run.model_config, cfg.max_seq_len)
    return {"batch_size": cfg.batch_size, "accumulation_steps": cfg.accumulation_steps, "seq_len": cfg.max_seq_len,
            "steps": len(steps),
            "compiled": isinstance(run.forward_loss, CompileOrEager),
            "compiled_graphs": results.get("compiled_graphs"), "time_to_first_step_s": marks[1] - t,   # setup + step 1
            "first_step_s": steps[0], "steady_step_s": steady, "tokens_per_s": tok_s,
            "mfu": tok_s * flops / peak if peak else None, "flops_per_token": flops,
            "peak_memory_gb": torch.cuda.max_memory_allocated(run.device) / 1e9 if device.type == "cuda" else None}


def stage_args(out: Path, device, model: str, data: Path, **flags) -> list[str]:
    argv = ["--model", model, "--device", device.type, "--tracker", "none", "--save_dir", str(out),
            "--log_dir", str(out / "log"), "--plot_dir", str(out / "plots"), "--cache_dir", str(out / "cache"),
            "--data_path", str(data), "--val_path", "", "--log_step", "1000", "--save_step", "100000",
            "--warmup_iters", "5", "--accumulation_steps", "1"]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return argv


def real_loop(device, args) -> dict:
    q = args.quick
    model, seq = ("tiny", 128) if q else ("default", 512)
    sizes, compiled_steps, eager_steps = ((4, 8), 3, 3) if q else ((32, 64), 25, 10)
    out = Path(args.out) / "real_loop"
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    corpus = synthetic_corpus(out / "corpus.jsonl", 60_000 if q else 8_000_000)
    result = {"corpus_bytes": corpus.stat().st_size, "corpus_write_s": time.perf_counter() - t, "runs": {}}
    from checkpoint import open_tokenizer
    from dataset import build_token_cache
    t = time.perf_counter()
    cache = build_token_cache(corpus, "pretrain", open_tokenizer(ROOT / "XiaoXin_tokenizer"), out / "cache", quiet=True)
    result["corpus_tokens"], result["token_cache_build_s"] = int(cache.meta["num_tokens"]), time.perf_counter() - t
    for batch in sizes:
        result["runs"][f"compiled_b{batch}"] = timed_run("pretrain", stage_args(
            out / f"c{batch}", device, model, corpus, batch_size=batch, max_seq_len=seq, max_steps=compiled_steps,
            compile="on"), device)
    # --batch_size auto: the largest micro-batch that fits, within 32 × 8 = 256 sequences per step
    # (the pretrain stage's) on the GPU; the CPU keeps the stage's 32 (no memory probe there).
    result["runs"]["compiled_auto"] = timed_run("pretrain", stage_args(
        out / "auto", device, model, corpus, batch_size="auto", accumulation_steps=1 if q else 8, max_seq_len=seq,
        max_steps=compiled_steps if q else 10, compile="on"), device)
    result["runs"][f"eager_b{sizes[0]}"] = timed_run("pretrain", stage_args(
        out / "eager", device, model, corpus, batch_size=sizes[0], max_seq_len=seq, max_steps=eager_steps,
        compile="off"), device)
    result["best_tokens_per_s"] = max(r["tokens_per_s"] for r in result["runs"].values())
    return result


def sft_varying(device, args) -> dict:
    """SFT from random weights on the demo conversations (lengths 30–512), compiled."""
    from Config import model_config
    from checkpoint import open_tokenizer, save_atomic
    from model import XiaoXin
    q = args.quick
    model = "tiny" if q else "default"
    out = Path(args.out) / "sft"
    tok = open_tokenizer(ROOT / "XiaoXin_tokenizer")
    init = XiaoXin(model_config(model))
    save_atomic({"model": init.state_dict(), "config": init.config.to_dict(), "tokenizer_hash": tok.hash,
                 "stage": "pretrain"}, out / "init.pt")
    run = timed_run("sft", stage_args(out, device, model, ROOT / "data/demo/sft_512.jsonl", batch_size=4 if q else 32,
                                      max_seq_len=512, max_steps=4 if q else 30, compile="on",
                                      init_from=out / "init.pt"), device)
    for key in ("tokens_per_s", "mfu"):   # counted at full length; batches here are shorter
        run.pop(key)
    return run


# ---------------------------------------------------------------- 5-6. bench

def bench_sections(device, args, section: str) -> dict:
    import bench
    q = args.quick
    json_path = Path(args.out) / f"bench_{section}.json"
    argv = ["--model", "tiny" if q else "default", "--device", device.type, "--sections", section,
            "--json", str(json_path)]
    if section == "train":
        argv += ["--batch_size", "2" if q else "32", "--seq_len", "64" if q else "512", "--pairs", "1" if q else "4",
                 "--steps", "1" if q else "5"]
    else:
        argv += ["--new_tokens", "8" if q else "256", "--prompt_len", "8" if q else "100", "--decode_pairs", "1" if q else "3"]
    bench.main(argv)
    return json.loads(json_path.read_text())[section]


# ---------------------------------------------------------------- 7. projection

def projection(report) -> dict:
    """Epoch time here from the real loop; on a 4090 by splitting this card's step into matmul time
    (scaled by the 4090's bf16 peak at the efficiency measured here) and the rest (elementwise,
    attention, optimiser: scaled by memory bandwidth)."""
    sections = report["sections"]
    loop, train = sections.get("real_loop", {}), sections.get("bench", {})
    if loop.get("status") != "ok":
        raise RuntimeError("the real_loop section did not run, so there is nothing to project from")
    best = max(loop["runs"].values(), key=lambda r: r["tokens_per_s"])
    result = {"pretrain_hq_tokens": PRETRAIN_HQ_TOKENS, "from_run": best,
              "epoch_minutes_here": PRETRAIN_HQ_TOKENS / best["tokens_per_s"] / 60}
    matmul_rate = train.get("measured_matmul_flops_per_s") if train.get("status") == "ok" else None
    bandwidth = sections.get("decode", {}).get("bandwidth_bytes_per_s")
    peak = train.get("peak_flops") if train.get("status") == "ok" else None
    if matmul_rate and bandwidth:
        # FLOPs a token spends in matmuls: the 6N part of the count (attention's 12·L·H·Q·T excluded).
        from Config import model_config
        from model import training_flops_per_token
        cfg = model_config(train["model"])
        matmul_flops = training_flops_per_token(cfg, 0)
        t_token = 1 / best["tokens_per_s"]
        t_matmul = min(matmul_flops / matmul_rate, t_token)
        efficiency = matmul_rate / peak if peak else 0.7
        t_4090 = (matmul_flops / (RTX_4090["bf16_tflops"] * 1e12 * efficiency)
                  + (t_token - t_matmul) * bandwidth / (RTX_4090["bandwidth_gb_s"] * 1e9))
        result.update({"matmul_share_of_step": t_matmul / t_token, "matmul_efficiency_assumed": efficiency,
                       "rtx4090_tokens_per_s": 1 / t_4090, "epoch_minutes_rtx4090": PRETRAIN_HQ_TOKENS * t_4090 / 60})
    return result


def grpo_check(device, args) -> dict:
    """The GRPO stage on random weights with a reward every group varies on (the share of even
    token ids), so the learner trains on every sampled row."""
    import grpo
    from Config import model_config
    from checkpoint import open_tokenizer, save_atomic
    from model import XiaoXin
    from trainer import run_stage
    q = args.quick
    step_starts = []

    class EveryGroupKept(grpo.GRPOTrainer):
        def grade(self, problem, reply, completion):
            return sum(t % 2 == 0 for t in completion) / len(completion), False, False

        def step_batches(self, step):
            step_starts.append(time.perf_counter())
            return super().step_batches(step)

    run = Path(args.out) / "grpo"
    model = "tiny" if q else "default"
    tok = open_tokenizer(ROOT / "XiaoXin_tokenizer")
    torch.manual_seed(0)
    init = XiaoXin(model_config(model))
    save_atomic({"model": init.state_dict(), "config": init.config.to_dict(), "tokenizer_hash": tok.hash,
                 "stage": "distill"}, run / "ckpt" / "distill.pt")
    prompts, group, new = (2, 2, 8) if q else (32, 8, 256)
    argv = ["--model", model, "--device", device.type, "--save_dir", str(run / "ckpt"), "--log_dir", str(run / "log"),
            "--plot_dir", str(run / "plots"), "--tracker", "none", "--compile", "off", "--data_path", "",
            "--val_path", "", "--max_steps", "2" if q else "4", "--prompts_per_step", str(prompts),
            "--group_size", str(group), "--max_new_tokens", str(new), "--batch_size", "64", "--max_seq_len", "512",
            "--val_problems", "0", "--log_step", "1"]
    t = time.perf_counter()
    if run_stage("grpo", argv, EveryGroupKept) != 0:
        raise RuntimeError("grpo.py exited with an error (see above)")
    rows = [json.loads(line) for line in (run / "log" / "grpo_steps.jsonl").read_text().splitlines()]
    rollout = [r["rollout_tok_s"] for r in rows[1:]] or [r["rollout_tok_s"] for r in rows]
    return {"steps": len(rows), "rows_per_step": prompts * group, "max_new_tokens": new,
            "rollout_tokens_per_s_median": statistics.median(rollout),
            "step_seconds_after_first": [b - a for a, b in zip(step_starts, step_starts[1:])][1:],
            "wall_s": time.perf_counter() - t}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/gpu_check")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="every section briefly (the tiny model, a few steps)")
    p.add_argument("--budget_s", type=float, default=480, help="sections that would not fit are skipped")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; use --device cpu --quick to exercise the check on CPU.", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    real_compile = torch.compile
    try:
        return run_checks(args, device, real_compile)
    finally:
        torch.compile = real_compile


def run_checks(args, device, real_compile) -> int:
    if args.quick and device.type == "cpu":

        def quick_compile(fn=None, **kwargs):   # inductor's CPU codegen takes minutes; capture and count only
            kwargs.pop("options", None)
            kwargs.pop("mode", None)
            return real_compile(fn, **{**kwargs, "backend": "aot_eager"})
        torch.compile = quick_compile
    from checkpoint import cpu_has_fast_bf16, gpu_has_native_bf16
    autocast = torch.bfloat16 if (gpu_has_native_bf16() if device.type == "cuda" else cpu_has_fast_bf16()) \
        else (torch.float16 if device.type == "cuda" else torch.float32)
    size = "tiny" if args.quick else "default"
    check = Check(args)
    # needs_s: about what each section takes on an H100 (none on CPU --quick, which only checks the wiring)
    g = 0 if args.quick else 1
    check.run("environment", functools.partial(environment, device, size))
    check.run("correctness", functools.partial(correctness, device, size, autocast), 30 * g)
    check.run("real_loop", functools.partial(real_loop, device, args), 150 * g)
    check.run("sft_varying_lengths", functools.partial(sft_varying, device, args), 60 * g)
    check.run("bench", functools.partial(bench_sections, device, args, "train"), 90 * g)
    check.run("decode", functools.partial(bench_sections, device, args, "decode"), 45 * g)
    check.run("projection", functools.partial(projection, check.report))
    check.run("grpo", functools.partial(grpo_check, device, args), 60 * g)
    failed = [n for n, s in check.report["sections"].items() if s["status"].startswith("failed")]
    print(f"wrote {check.out / 'gpu_check.json'} in {check.report['wall_s']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
