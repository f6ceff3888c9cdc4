"""All GPU checks in one call, for a lent accelerator with little time on it.

    python scripts/gpu_check.py --out $OUT          # ≈ 6–8 minutes on one H100/H200

1. CUDA correctness: default-model logits in bf16 autocast vs the fp32 reference (on GPU and
   against the CPU fp32 forward), greedy KV-cache generation vs repeated full forwards, and
   one compiled training step.
2. scripts/bench.py at the default (~26M) and large (~106M) sizes: training tokens/s and MFU
   (XiaoXin eager and compiled vs HF eager and compiled), batch-1 decoding vs HF generate.
3. Projected time for one epoch of the real pretrain_hq corpus (≈ 0.4B tokens).
4. GRPO (grpo.py) on the default model: rollout throughput (generated tokens/s) and the time of
   one optimiser step (rollout + learner), --grpo_steps steps of 32 prompts × 8 samples × 256 new
   tokens from random weights, every row decoded to full length and every group kept (worst case).
Writes gpu_check.json (and the bench JSONs) to --out. Needs only torch and transformers.
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

PRETRAIN_HQ_TOKENS = 0.4e9


def correctness(report):
    from Config import model_config
    from model import XiaoXin
    torch.manual_seed(0)
    model = XiaoXin(model_config("default")).eval()
    x = torch.randint(3, 6400, (4, 256))
    with torch.no_grad():
        cpu = model(x).logits
        gpu_model = model.cuda()
        fp32 = gpu_model(x.cuda()).logits.float().cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = gpu_model(x.cuda()).logits.float().cpu()
    prompt = torch.randint(3, 6400, (1, 20), device="cuda")
    tokens = list(gpu_model.generate(prompt, 32, temperature=0))
    seq, reference = prompt, []
    with torch.no_grad():
        for _ in range(32):
            nxt = int(gpu_model(seq).logits[0, -1].argmax())
            reference.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]], device="cuda")], 1)
    report["correctness"] = {
        "fp32_gpu_vs_cpu_max_abs": float((fp32 - cpu).abs().max()),
        "bf16_vs_fp32_max_abs": float((bf16 - fp32).abs().max()),
        "bf16_vs_fp32_argmax_agreement": float((bf16.argmax(-1) == fp32.argmax(-1)).float().mean()),
        "kv_cache_generation_equals_full_forward": tokens == reference,
    }
    print(json.dumps(report["correctness"], indent=1), flush=True)


def grpo_check(report, out: Path, steps: int):
    """The GRPO stage through run_stage, on random default-model weights, with a reward every group
    varies on (the share of even token ids), so the learner trains on every sampled row."""
    import grpo
    from Config import model_config
    from checkpoint import open_tokenizer, save_atomic
    from model import XiaoXin
    from trainer import run_stage

    step_starts = []

    class EveryGroupKept(grpo.GRPOTrainer):
        def grade(self, problem, reply, completion):
            return sum(t % 2 == 0 for t in completion) / len(completion), False, False

        def step_batches(self, step):
            step_starts.append(time.perf_counter())
            return super().step_batches(step)

    run = out / "grpo"
    tok = open_tokenizer(ROOT / "XiaoXin_tokenizer")
    torch.manual_seed(0)
    model = XiaoXin(model_config("default"))
    save_atomic({"model": model.state_dict(), "config": model.config.to_dict(), "tokenizer_hash": tok.hash,
                 "stage": "distill"}, run / "ckpt" / "distill.pt")
    args = ["--model", "default", "--save_dir", str(run / "ckpt"), "--log_dir", str(run / "log"),
            "--plot_dir", str(run / "plots"), "--tracker", "none", "--compile", "off", "--data_path", "",
            "--val_path", "",
            "--max_steps", str(steps), "--prompts_per_step", "32", "--group_size", "8", "--max_new_tokens", "256",
            "--batch_size", "64", "--max_seq_len", "512", "--val_problems", "0", "--log_step", "1"]
    t = time.perf_counter()
    code = run_stage("grpo", args, EveryGroupKept)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (run / "log" / "grpo_steps.jsonl").read_text().splitlines()]
    record = json.loads((run / "ckpt" / "grpo.json").read_text())
    # A step runs from one step_batches call to the next; the first includes CUDA warm-up.
    step_seconds = [b - a for a, b in zip(step_starts, step_starts[1:])]
    rollout = [r["rollout_tok_s"] for r in rows[1:]] or [r["rollout_tok_s"] for r in rows]
    report["grpo"] = {
        "exit_code": code, "steps": len(rows), "rows_per_step": 32 * 8, "max_new_tokens": 256,
        "rollout_tokens_per_s_median": sorted(rollout)[len(rollout) // 2],
        "rollout_tokens_per_s": [r["rollout_tok_s"] for r in rows],
        "completion_len_mean": sum(r["completion_len"] for r in rows) / len(rows),
        "step_seconds_after_first": step_seconds[1:], "wall_seconds": wall,
        "trainer_wall_seconds": record["results"]["wall_seconds"],
    }
    print(json.dumps({k: v for k, v in report["grpo"].items() if k != "rollout_tokens_per_s"}, indent=1), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/gpu_check")
    p.add_argument("--sizes", nargs="+", default=["default", "large"])
    p.add_argument("--grpo_steps", type=int, default=4, help="GRPO optimiser steps to time (0 = skip)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device here; this script is for a GPU machine.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    t = time.perf_counter()
    correctness(report)
    import bench
    for size in args.sizes:
        json_path = out / f"bench_{size}.json"
        sections = ["train", "decode"] if size == "default" else ["train"]
        bench.main(["--model", size, "--batch_size", "32" if size == "default" else "16", "--seq_len", "512",
                    "--pairs", "6", "--steps", "5", "--sections", *sections, "--json", str(json_path)])
        result = json.loads(json_path.read_text())
        report[f"bench_{size}"] = result
        systems = result["train"]["systems"]
        best = max(systems.values(), key=lambda r: r["tokens_per_s"])["tokens_per_s"]
        report[f"pretrain_hq_epoch_minutes_{size}"] = PRETRAIN_HQ_TOKENS / best / 60
    if args.grpo_steps:
        grpo_check(report, out, args.grpo_steps)
    report["wall_s"] = time.perf_counter() - t
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'gpu_check.json'} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
