"""All GPU checks in one call, for a lent accelerator with little time on it.

    python scripts/gpu_check.py --out $OUT          # ≈ 6–8 minutes on one H100/H200

1. CUDA correctness: default-model logits in bf16 autocast vs the fp32 reference (on GPU and
   against the CPU fp32 forward), greedy KV-cache generation vs repeated full forwards, and
   one compiled training step.
2. scripts/bench.py at the default (~26M) and large (~106M) sizes: training tokens/s and MFU
   (XiaoXin eager and compiled vs HF eager and compiled), batch-1 decoding vs HF generate.
3. Projected time for one epoch of the real pretrain_hq corpus (≈ 0.4B tokens).
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/gpu_check")
    p.add_argument("--sizes", nargs="+", default=["default", "large"])
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
    report["wall_s"] = time.perf_counter() - t
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'gpu_check.json'} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
