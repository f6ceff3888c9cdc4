"""Time to quality: held-out reasoning accuracy reached per CPU-minute on a fixed curriculum.

    python scripts/bench_quality.py --out runs/q --steps 600 --eval_every 200 \\
        --config adamw="--optimizer adamw" --config muon="--optimizer muon"

Each --config NAME="FLAGS" trains distill.py with FLAGS (on top of the common flags below) from
the same starting weights on the same generated curriculum, one after another in this process,
then answers the same held-out problems greedily (scripts/eval_reasoning.evaluate) with the
weights saved every --eval_every steps. Printed and written to <out>/quality.json: for every
configuration and checkpoint, the step, training seconds, tokens, held-out accuracy, format
compliance and accuracy by kind, and at the end each configuration's accuracy, and steps and
seconds to reach a given accuracy, side by side with the first configuration's (ratios).

The curriculum is `--n_train` problems of `--seed` (never a question of the evaluation file);
the starting point is `--init_from`, or else a `--model` after one pretraining step (nearly
untrained), so what is measured is how fast the distill stage learns to reason. Timings are
only comparable between configurations run in one invocation on a quiet machine.
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

COMMON = ["--batch_size", "16", "--accumulation_steps", "1", "--max_seq_len", "384", "--learning_rate", "2e-3",
          "--warmup_iters", "50", "--tracker", "none", "--log_step", "50"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working folder (curriculum, checkpoints, results)")
    p.add_argument("--config", action="append", default=[], metavar='NAME="FLAGS"',
                   help="a configuration to compare: distill.py flags on top of the common ones (repeatable)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval_every", type=int, default=200)
    p.add_argument("--n_train", type=int, default=40000, help="generated training problems")
    p.add_argument("--seed", type=int, default=3, help="curriculum seed")
    p.add_argument("--n_eval", type=int, default=200, help="held-out problems (from --eval_data)")
    p.add_argument("--eval_data", default=str(ROOT / "data" / "eval" / "reasoning_eval.jsonl"))
    p.add_argument("--model", default="small")
    p.add_argument("--init_from", default="", help="starting weights (default: --model after one pretraining step)")
    p.add_argument("--common", default=" ".join(COMMON), help="flags given to every configuration")
    return p.parse_args(argv)


def evaluate_checkpoint(path, tok, problems):
    from checkpoint import load_model
    from eval_reasoning import evaluate
    model, _ = load_model(path)
    return evaluate(model.eval(), tok, problems, max_new_tokens=256, batch_size=64)


def run(args) -> int:
    import distill
    import pretrain
    from checkpoint import UserError, open_tokenizer
    from gen_reasoning import read_eval, write_curriculum
    configs = []
    for item in args.config or ["default="]:
        name, _, flags = item.partition("=")
        configs.append((name.strip() or "default", shlex.split(flags)))
    if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
        raise UserError("--steps must be a positive multiple of --eval_every.")
    out = Path(args.out)
    tok = open_tokenizer(ROOT / "XiaoXin_tokenizer")
    eval_path = Path(args.eval_data)
    if not eval_path.is_file():
        raise UserError(f"--eval_data {eval_path} does not exist.")
    problems = read_eval(eval_path)[:args.n_eval]
    train = write_curriculum(out / f"curriculum-{args.n_train}-seed{args.seed}.jsonl", args.n_train, args.seed,
                             exclude_paths=(eval_path,))
    common = shlex.split(args.common) + ["--model", args.model, "--cache_dir", str(out / "cache")]
    init = args.init_from
    if not init:
        init = str(out / "init" / "pretrain.pt")
        if not Path(init).is_file():
            code = pretrain.main(common + ["--max_steps", "1", "--compile", "off", "--save_dir", str(out / "init"),
                                           "--log_dir", str(out / "init" / "log")])
            if code:
                return code
    results = {}
    for name, flags in configs:
        run_dir = out / name
        t = time.perf_counter()
        code = distill.main(common + ["--data_path", str(train), "--val_path", "", "--init_from", init,
                                      "--max_steps", str(args.steps), "--epochs", "1000",
                                      "--save_step", str(args.eval_every), "--keep_checkpoints", "100000",
                                      "--save_dir", str(run_dir), "--log_dir", str(run_dir / "log")] + flags)
        seconds = time.perf_counter() - t
        if code:
            return code
        record = json.loads((run_dir / "distill.json").read_text())
        points = []
        for step in range(args.eval_every, args.steps + 1, args.eval_every):
            path = run_dir / ("distill.pt" if step == args.steps else f"checkpoints/distill/step_{step:07d}.pt")
            r = evaluate_checkpoint(path, tok, problems)
            point = {"step": step, "train_seconds": round(seconds * step / args.steps, 1),
                     "accuracy": r["accuracy"], "format_rate": r["format_rate"], "n": r["n"],
                     "by_kind": {k: v["accuracy"] for k, v in r["by_kind"].items()}}
            points.append(point)
            print(f"QUALITY {name} step {step}: accuracy {r['accuracy']:.1%} ({r['correct']}/{r['n']}), "
                  f"well-formed {r['format_rate']:.1%}, {point['train_seconds']:.0f} s of training", flush=True)
        results[name] = {"flags": flags, "train_seconds": round(seconds, 1), "points": points,
                         "tokens": record["results"].get("tokens"),
                         "final_train_loss": record["results"]["final_train_loss"]}
        (out / "quality.json").write_text(json.dumps({"steps": args.steps, "n_eval": len(problems),
                                                      "curriculum": str(train), "results": results},
                                                     indent=1, ensure_ascii=False))
    print_table(results)
    return 0


def print_table(results: dict):
    names = list(results)
    base = results[names[0]]
    print(f"\n{'config':12s} {'final acc':>9s} {'well-formed':>11s} {'train s':>8s} {'acc/CPU-min':>11s} "
          f"{'vs ' + names[0]:>10s}")
    for name in names:
        r = results[name]
        last = r["points"][-1]
        per_min = last["accuracy"] / (r["train_seconds"] / 60)
        base_per_min = base["points"][-1]["accuracy"] / (base["train_seconds"] / 60)
        ratio = f"{per_min / base_per_min:.2f}x" if base_per_min else "n/a"
        print(f"{name:12s} {last['accuracy']:9.1%} {last['format_rate']:11.1%} {r['train_seconds']:8.0f} "
              f"{per_min:11.2%} {ratio:>10s}")


def main(argv=None) -> int:
    from checkpoint import run_cli
    return run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
