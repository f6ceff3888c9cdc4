"""Side-by-side speed benchmark: XiaoXin against HuggingFace LlamaForCausalLM, same
shape, weights, data, dtype and machine, in one process. Prints a table and writes JSON.

    python scripts/bench.py                       # default model, CPU or CUDA, all sections
    python scripts/bench.py --model large --sections train decode --json out/bench.json

Sections:
  train   tokens/s of forward + backward + AdamW step, interleaved A B A B … (median of
          --pairs pairs): XiaoXin eager and as the trainer runs it, HF eager and compiled.
          MFU on GPU (model.training_flops_per_token; peak from checkpoint.PEAK_BF16_TFLOPS), and
          on any device the share of the matmul rate measured on the model's own shapes.
  decode  batch-1 greedy decoding of --new_tokens after a --prompt_len prompt; checks that
          both produce identical tokens; reports the memory-bandwidth bound and the
          matmul-only roof (the model's weights as batch-1 products, nothing else).
  data    padding share of length-bucketed SFT batches vs pad-to-max-length, and token
          cache build speed (first build vs reuse).
  e2e     the real pretrain.py loop (data loading included) vs the model-only number.
  cache   token-cache build time with 1 and with N worker processes (--tokenize_workers, default
          1 2) on a synthetic pretrain file of --cache_mb MB (demo prose shuffled into ≈ 2.5 kB
          documents, like pretrain_hq's), alternated, best of --cache_repeats; checks the caches
          are identical.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from checkpoint import open_tokenizer, resolve_device  # noqa: E402
from Config import model_config  # noqa: E402
from model import XiaoXin  # noqa: E402
from losses import masked_cross_entropy  # noqa: E402
from checkpoint import peak_flops  # noqa: E402
from model import training_flops_per_token  # noqa: E402


def hf_twin(model: XiaoXin):
    """LlamaForCausalLM with XiaoXin's shape and (a copy of) its weights."""
    from hf_compat import to_hf_model
    return to_hf_model(model, pad_token_id=0, eos_token_id=2)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def linear_weights(model: XiaoXin):
    """The weight of every nn.Linear in forward order (per layer q k v o gate up down, then lm_head)."""
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def time_matmuls(weights, rows: int, dtype, device, repeats: int) -> float:
    """Seconds for one pass of x @ W.T over all `weights` with `rows` input rows: the best of
    `repeats`, since this is a roof (on shared CPUs single passes vary by 2×)."""
    ws = [w.detach().to(device, dtype) for w in weights]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], device=device, dtype=dtype) for w in ws}

    def one_pass():
        for w in ws:
            xs[w.shape[1]] @ w.t()
    one_pass(); sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); one_pass(); sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


class TrainSystem:
    """One model + optimiser whose step() runs forward, backward and AdamW on a fixed batch."""

    def __init__(self, name, model, kind, device, dtype, batch, compile_it):
        self.name, self.kind, self.device, self.dtype = name, kind, device, dtype
        self.model = model.to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.loss = self.xiaoxin_loss if kind == "xiaoxin" else self.hf_loss
        if compile_it:   # whole forward + loss, as the trainer compiles it (and as HF computes loss inside)
            self.loss = torch.compile(self.loss)
        self.x, self.y = batch
        self.mask = torch.ones_like(self.y, dtype=torch.float32)
        t = time.perf_counter()
        self.step()   # warm-up (and compilation)
        self.step()
        sync(device)
        self.warmup_seconds = time.perf_counter() - t

    def step(self):
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.loss(self.x, self.y, self.mask)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def xiaoxin_loss(self, x, y, mask):
        return masked_cross_entropy(self.model(x).logits, y, mask).sum() / mask.numel()

    def hf_loss(self, x, y, mask):  # as users run HF: labels in, loss out (HF shifts the labels itself)
        return self.model(input_ids=x, labels=x).loss

    def timed(self, steps) -> float:
        sync(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return self.x.numel() * steps / (time.perf_counter() - t)


def bench_train(args, device, results):
    config = model_config(args.model)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    base = XiaoXin(config)
    x = torch.randint(3, config.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
    batch = (x[:, :-1].contiguous(), x[:, 1:].contiguous())
    import copy
    wanted = args.train_systems
    systems = []
    for name in wanted:
        kind, mode = name.split("-")
        model = copy.deepcopy(base) if kind == "xiaoxin" else hf_twin(base)
        try:
            systems.append(TrainSystem(name, model, kind, device, dtype,
                                       batch,
                                       compile_it=mode == "compiled"))
        except Exception as e:  # e.g. compile unavailable: report, keep going
            print(f"  {name}: skipped ({type(e).__name__}: {str(e)[:120]})")
    samples = {s.name: [] for s in systems}
    for p in range(args.pairs):
        order = systems if p % 2 == 0 else systems[::-1]   # A B … then … B A: cancels drift
        for s in order:
            samples[s.name].append(s.timed(args.steps))
    peak, device_name = peak_flops(device)
    fpt = training_flops_per_token(config, args.seq_len)
    # What this device actually achieves on the model's own matmul shapes (forward GEMMs of
    # one batch, in the training dtype): a measured roof that also works where no datasheet
    # peak exists (CPUs). FLOPs of a pass: 2 × rows × matmul parameters.
    weights = linear_weights(base)
    rows_n = args.batch_size * args.seq_len
    mm_s = time_matmuls(weights, rows_n, dtype, device, repeats=10)
    matmul_rate = 2 * rows_n * sum(w.numel() for w in weights) / mm_s
    rows = {}
    for s in systems:
        tok_s = statistics.median(samples[s.name])
        rows[s.name] = {"tokens_per_s": tok_s, "warmup_s": s.warmup_seconds,
                        "mfu": tok_s * fpt / peak if peak else None,
                        "of_matmul_rate": tok_s * fpt / matmul_rate}
    ref = rows.get("hf-eager", {}).get("tokens_per_s")
    for r in rows.values():
        r["vs_hf_eager"] = r["tokens_per_s"] / ref if ref else None
    results["train"] = {"model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len,
                        "dtype": args.dtype, "pairs": args.pairs, "flops_per_token": fpt,
                        "peak_flops": peak, "device_name": device_name,
                        "measured_matmul_flops_per_s": matmul_rate, "systems": rows}


def measure_bandwidth(device) -> float:
    """Bytes/s of a large read (sum over a 512 MB tensor): the roof for batch-1 decoding."""
    a = torch.ones(128 * 1024 * 1024, dtype=torch.float32, device=device)
    a.sum(); sync(device)
    t = time.perf_counter()
    for _ in range(5):
        a.sum()
    sync(device)
    return a.numel() * 4 * 5 / (time.perf_counter() - t)


@torch.inference_mode()
def bench_decode(args, device, results):
    config = model_config(args.model)
    dtype = getattr(torch, args.decode_dtype)
    torch.manual_seed(0)
    ours = XiaoXin(config).to(device, dtype).eval()
    hf = hf_twin(ours.float()).to(device, dtype).eval()
    ours.to(dtype)
    prompt = torch.randint(3, config.vocab_size, (1, args.prompt_len), device=device)

    import copy
    compiled = copy.deepcopy(ours)
    compiled.set_decode_mode("compiled")

    def run_ours():
        return list(ours.generate(prompt, args.new_tokens, temperature=0))

    def run_compiled():
        return list(compiled.generate(prompt, args.new_tokens, temperature=0))

    def run_hf():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                          min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[0, prompt.shape[1]:].tolist()

    t = time.perf_counter()
    c = run_compiled()            # compiles once
    compile_s = time.perf_counter() - t
    a, b = run_ours(), run_hf()   # warm-up, and the identical-tokens check
    identical = a == b == c
    systems = [("xiaoxin", run_ours), ("xiaoxin-compiled", run_compiled), ("hf", run_hf)]
    times = {name: [] for name, _ in systems}
    for p in range(args.decode_pairs):
        for name, fn in (systems if p % 2 == 0 else systems[::-1]):
            sync(device); t = time.perf_counter(); fn(); sync(device)
            times[name].append(args.new_tokens / (time.perf_counter() - t))
    ours_tps, hf_tps = statistics.median(times["xiaoxin"]), statistics.median(times["hf"])
    compiled_tps = statistics.median(times["xiaoxin-compiled"])
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    bw = measure_bandwidth(device)
    # Matmul-only roof: the model's own weight matrices as batch-1 products, back to back,
    # with nothing else (no attention, norms, sampling, Python). No decoder can beat this.
    roof = 1.0 / time_matmuls(linear_weights(ours), 1, dtype, device, repeats=100)
    results["decode"] = {"dtype": args.decode_dtype, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                         "identical_tokens": identical, "xiaoxin_tokens_per_s": ours_tps, "hf_tokens_per_s": hf_tps,
                         "ratio": ours_tps / hf_tps, "xiaoxin_compiled_tokens_per_s": compiled_tps,
                         "compiled_ratio": compiled_tps / hf_tps, "compile_s": compile_s,
                         "weight_bytes": weight_bytes, "bandwidth_bytes_per_s": bw,
                         "bandwidth_bound_tokens_per_s": bw / weight_bytes,
                         "fraction_of_bound": max(ours_tps, compiled_tps) / (bw / weight_bytes),
                         "matmul_roof_tokens_per_s": roof,
                         "fraction_of_matmul_roof": {"xiaoxin": ours_tps / roof, "xiaoxin-compiled": compiled_tps / roof,
                                                     "hf": hf_tps / roof}}


def bench_data(args, results):
    from dataset import epoch_batches, make_dataset, padding_fraction
    tok = open_tokenizer("XiaoXin_tokenizer")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, seq_len, batch in (("sft_512", ROOT / "data/demo/sft_512.jsonl", 512, 32),
                                           ("sft_1024", ROOT / "data/demo/sft_1024.jsonl", 1024, 16),
                                           ("r1_mix_1024", ROOT / "data/demo/r1_mix_1024.jsonl", 1024, 16)):
            # Batch sizes are the stages' defaults (Config.py: sft 32, sft_long and distill 16).
            data = make_dataset(path, "sft", tok, tmp, seq_len, quiet=True)
            ours = padding_fraction(data, epoch_batches(data, batch, 0, 0, bucket=True))
            useful = data.lengths.sum()
            pad_to_max = 1 - useful / (data.num_samples * seq_len)
            # The demo files hold a few hundred conversations, fewer than one sorting window
            # (64 batches), so their buckets are coarse. A real file has 10^5–10^6: resample the
            # demo's own length distribution to 100k conversations to see that regime.
            big = types.SimpleNamespace(num_samples=100_000, lengths=np.random.default_rng(0).choice(
                data.lengths, 100_000))
            at_scale = padding_fraction(big, epoch_batches(big, batch, 0, 0, bucket=True))
            out[name] = {"conversations": int(data.num_samples), "batch_size": batch, "bucketed_padding": ours,
                         "bucketed_padding_at_100k": at_scale, "pad_to_max_padding": float(pad_to_max)}
        path = Path(args.cache_source)
        t = time.perf_counter()
        from dataset import build_token_cache
        cache = build_token_cache(path, "pretrain", tok, Path(tmp) / "c", quiet=True)
        first = time.perf_counter() - t
        t = time.perf_counter()
        build_token_cache(path, "pretrain", tok, Path(tmp) / "c", quiet=True)
        again = time.perf_counter() - t
        out["token_cache"] = {"source": str(path), "bytes": path.stat().st_size, "tokens": int(cache.meta["num_tokens"]),
                              "build_s": first, "build_mb_per_s": path.stat().st_size / first / 1e6,
                              "build_tokens_per_s": cache.meta["num_tokens"] / first, "reuse_s": again,
                              "cpu_threads": os.cpu_count()}
    results["data"] = out


def bench_cache(args, results):
    import random
    import resource
    from dataset import build_token_cache
    tok = open_tokenizer("XiaoXin_tokenizer")
    texts = [json.loads(line)["text"] for line in (ROOT / "data/demo/pretrain.jsonl").read_text(encoding="utf-8").splitlines()]
    rng = random.Random(0)
    out = {"workers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            while f.tell() < args.cache_mb * 1e6:
                f.write(json.dumps({"text": "".join(rng.sample(texts, 6))}, ensure_ascii=False) + "\n")
        times = {w: [] for w in args.tokenize_workers}
        caches = {}
        for r in range(args.cache_repeats):
            for w in (args.tokenize_workers if r % 2 == 0 else args.tokenize_workers[::-1]):
                before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                cache = build_token_cache(path, "pretrain", tok, Path(tmp) / f"c{w}-{r}", quiet=True, workers=w)
                times[w].append(time.perf_counter() - t)
                after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
                caches[w] = (cache.directory / "tokens.bin").read_bytes()
                out["workers"].setdefault(str(w), {"cpu_s": []})["cpu_s"].append(cpu)
        base = min(times[args.tokenize_workers[0]])
        for w in args.tokenize_workers:
            out["workers"][str(w)].update({"build_s": min(times[w]), "all_s": times[w],
                                           "speedup": base / min(times[w])})
        out.update({"bytes": path.stat().st_size, "tokens": int(cache.meta["num_tokens"]), "cpu_count": os.cpu_count(),
                    "identical": len(set(caches.values())) == 1})
    results["cache"] = out


def bench_e2e(args, device, results):
    """The real trainer on the demo pretraining data at the benchmark's batch shape."""
    import trainer
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--model", args.model, "--dtype", args.dtype, "--device", str(device), "--tracker", "none",
                "--batch_size", str(args.batch_size), "--max_seq_len", str(args.seq_len), "--accumulation_steps", "1",
                "--max_steps", str(args.e2e_steps + 2), "--log_step", "1000", "--save_dir", tmp, "--log_dir", tmp,
                "--plot_dir", tmp, "--val_path", "", "--compile", args.compile, "--warmup_iters", "1",
                "--data_path", str(ROOT / "data/demo/pretrain.jsonl")]
        cfg, _ = trainer.parse_args("pretrain", argv)
        run = trainer.Trainer(cfg)
        times = []
        original = run.accumulate

        def timed(batches, n_loss_tokens):   # time from one step's start to the next, skipping warm-up steps
            times.append(time.perf_counter())
            return original(batches, n_loss_tokens)
        run.accumulate = timed    # on the main thread: step_batches may run ahead in the prefetch thread
        run.train()
        sync(device)
        times.append(time.perf_counter())
        run.close()
    steady = times[2:]
    step_s = (steady[-1] - steady[0]) / (len(steady) - 1)
    tok_s = args.batch_size * args.seq_len / step_s
    model_only = None
    if "train" in results:
        mode = "xiaoxin-compiled" if isinstance(run.forward_loss, trainer.CompileOrEager) else "xiaoxin-eager"
        model_only = results["train"]["systems"].get(mode, {}).get("tokens_per_s")
    results["e2e"] = {"trainer_tokens_per_s": tok_s, "model_only_tokens_per_s": model_only,
                      "fraction": tok_s / model_only if model_only else None}


def print_table(results):
    if "train" in results:
        t = results["train"]
        print(f"\ntraining: {t['model']} model, batch {t['batch_size']}×{t['seq_len']}, {t['dtype']}, "
              f"median of {t['pairs']} interleaved pairs, {t['device_name']}")
        print(f"  {'system':18s} {'tokens/s':>10s} {'vs HF eager':>12s} {'MFU':>7s} {'of matmul rate':>15s} "
              f"{'warm-up s':>10s}")
        for name, r in t["systems"].items():
            mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
            ratio = f"{r['vs_hf_eager']:.2f}×" if r["vs_hf_eager"] else "-"
            print(f"  {name:18s} {r['tokens_per_s']:10,.0f} {ratio:>12s} {mfu:>7s} {r['of_matmul_rate']:>15.0%} "
                  f"{r['warmup_s']:10.1f}")
        print(f"  MFU: {t['flops_per_token'] / 1e6:.1f} MFLOP/token against "
              + (f"{t['peak_flops'] / 1e12:.0f} TFLOP/s ({t['device_name']})" if t["peak_flops"] else
                 "no datasheet peak for this device")
              + f"; measured matmul rate on the model's shapes: {t['measured_matmul_flops_per_s'] / 1e9:,.0f} GFLOP/s")
    if "decode" in results:
        d = results["decode"]
        print(f"\ndecoding: batch 1, greedy, {d['new_tokens']} tokens after {d['prompt_len']}, {d['dtype']}")
        print(f"  xiaoxin {d['xiaoxin_tokens_per_s']:8.1f} tok/s ({d['ratio']:.2f}×)   xiaoxin compiled "
              f"{d['xiaoxin_compiled_tokens_per_s']:8.1f} tok/s ({d['compiled_ratio']:.2f}×, compiled in "
              f"{d['compile_s']:.0f} s)   hf {d['hf_tokens_per_s']:8.1f} tok/s   identical tokens: {d['identical_tokens']}")
        print(f"  memory-bandwidth bound {d['bandwidth_bound_tokens_per_s']:.0f} tok/s "
              f"({d['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s over {d['weight_bytes'] / 1e6:.0f} MB of weights); "
              f"the faster xiaoxin reaches {d['fraction_of_bound']:.0%} of it")
        f = d["fraction_of_matmul_roof"]
        print(f"  matmul-only roof {d['matmul_roof_tokens_per_s']:.0f} tok/s (the model's weights as batch-1 products, "
              f"nothing else): xiaoxin {f['xiaoxin']:.0%}, compiled {f['xiaoxin-compiled']:.0%}, hf {f['hf']:.0%}")
    if "data" in results:
        print("\ndata path:")
        for name, r in results["data"].items():
            if name == "token_cache":
                print(f"  token cache: {r['bytes'] / 1e6:.1f} MB → {r['tokens']:,} tokens in {r['build_s']:.2f} s "
                      f"({r['build_mb_per_s']:.1f} MB/s, {r['build_tokens_per_s']:,.0f} tok/s, {r['cpu_threads']} threads); "
                      f"reuse {r['reuse_s'] * 1000:.0f} ms")
            else:
                print(f"  {name}: padding {r['bucketed_padding']:.1%} bucketed ({r['conversations']} conversations, "
                      f"batch {r['batch_size']}), {r['bucketed_padding_at_100k']:.1%} at 100k conversations of the "
                      f"same lengths, vs {r['pad_to_max_padding']:.1%} pad-to-max")
    if "cache" in results:
        c = results["cache"]
        print(f"\ntoken cache build: {c['bytes'] / 1e6:.0f} MB synthetic pretrain file, {c['tokens']:,} tokens, "
              f"{c['cpu_count']} CPUs; caches identical: {c['identical']}")
        for w, r in c["workers"].items():
            print(f"  {w} worker(s): {r['build_s']:.1f} s ({c['bytes'] / r['build_s'] / 1e6:.1f} MB/s), "
                  f"{r['speedup']:.2f}× the first, CPU {statistics.median(r['cpu_s']):.1f} s")
    if "e2e" in results:
        e = results["e2e"]
        frac = f" = {e['fraction']:.0%} of model-only" if e["fraction"] else ""
        print(f"\nend to end: pretrain.py loop {e['trainer_tokens_per_s']:,.0f} tok/s{frac}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--decode_dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=1, help="optimiser steps per timed sample")
    p.add_argument("--train_systems", nargs="+",
                   default=["xiaoxin-eager", "xiaoxin-compiled", "hf-eager", "hf-compiled"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="trainer mode for e2e")
    p.add_argument("--prompt_len", type=int, default=100)
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--decode_pairs", type=int, default=3)
    p.add_argument("--e2e_steps", type=int, default=6)
    p.add_argument("--cache_source", default=str(ROOT / "data/demo/pretrain.jsonl"))
    p.add_argument("--cache_mb", type=float, default=40)
    p.add_argument("--cache_repeats", type=int, default=2)
    p.add_argument("--tokenize_workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sections", nargs="+", default=["train", "decode", "data", "e2e"],
                   choices=["train", "decode", "data", "e2e", "cache"])
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    device, inference_dtype = resolve_device(args.device, "auto", training=False)
    args.decode_dtype = args.decode_dtype or str(inference_dtype).removeprefix("torch.")
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "args": vars(args)}
    for section in args.sections:
        print(f"[{section}] running…", flush=True)
        if section == "train":
            bench_train(args, device, results)
        elif section == "decode":
            bench_decode(args, device, results)
        elif section == "data":
            bench_data(args, results)
        elif section == "e2e":
            bench_e2e(args, device, results)
        elif section == "cache":
            bench_cache(args, results)
    print_table(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
