"""The whole XiaoXin pipeline in one command: every stage of Config.STAGES in order, then the report card.

    python scripts/run_demo.py                       # demo data and profiles when the real files are absent
    python scripts/run_demo.py --save_dir runs/a     # every output under runs/a (logs: runs/a/log)
    python scripts/run_demo.py --model tiny --max_steps 5 --n_eval 20     # a smoke run

Runs the stage scripts (pretrain → SFT → SFT_long → distill → grpo) in order with the same flags,
so they chain through one --save_dir, then writes the report card (scripts/report.py:
<save_dir>/report.md, report.json and figures) and prints its summary: per stage the tokens,
losses and wall time; held-out reasoning accuracy and format compliance after every stage
that can answer; a few sample answers.

Flags of this runner: --n_eval N (held-out problems per answering stage, default 200),
--no_report. --save_dir, --log_dir, --plot_dir and --cache_dir are passed to every stage
(default: out/, <save_dir>/log, <save_dir>/plots, <save_dir>/cache), so a run writes nothing
into the repository. Every other flag goes to every stage.
"""
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def pop_flag(argv: list, name: str, default=None, has_value: bool = True):
    """Remove `name` (and its value) from argv; return the value (or True), else default."""
    if name not in argv:
        return default
    i = argv.index(name)
    if not has_value:
        del argv[i]
        return True
    if i + 1 >= len(argv):
        from checkpoint import UserError
        raise UserError(f"{name} needs a value.")
    value = argv[i + 1]
    del argv[i:i + 2]
    return value


def flag_value(argv, name, default):
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else default


def run(argv) -> int:
    import Config
    from trainer import run_script
    n_eval = int(pop_flag(argv, "--n_eval", "200"))
    report = not pop_flag(argv, "--no_report", False, has_value=False)
    save_dir = Path(flag_value(argv, "--save_dir", "out"))
    if "--save_dir" not in argv:
        argv += ["--save_dir", str(save_dir)]
    if "--log_dir" not in argv:     # the run's logs with the run, not in the shared log/
        argv += ["--log_dir", str(save_dir / "log")]
    log_dir = Path(flag_value(argv, "--log_dir", ""))
    timings, t_all = {}, time.perf_counter()
    for stage in Config.STAGES:
        print(f"\n===== {stage} =====", flush=True)
        t = time.perf_counter()
        code = run_script(stage, argv)
        timings[stage] = time.perf_counter() - t
        if code:
            print(f"{stage} failed (exit {code}); stopping the pipeline.", file=sys.stderr)
            return code
    print("\n===== results =====")
    for stage, seconds in timings.items():
        r = json.loads((save_dir / f"{stage}.json").read_text())["results"]
        val = f"{r['final_val_loss']:.3f}" if r.get("final_val_loss") is not None else "n/a"
        print(f"{stage:9s} train loss {r['final_train_loss']:.3f}  validation loss {val}  {seconds:6.0f} s")
    print(f"training: {time.perf_counter() - t_all:.0f} s", flush=True)
    if not report:
        return 0
    from report import build_report
    print("\n===== report card =====", flush=True)
    t = time.perf_counter()
    # C-Eval (only where its files are present) is capped at 10 questions a subject to keep the demo short;
    # python scripts/report.py --save_dir DIR scores all of it.
    card = build_report(save_dir, log_dir=log_dir, n_eval=n_eval, ceval_limit=10,
                        tokenizer_dir=flag_value(argv, "--tokenizer_dir", str(ROOT / "XiaoXin_tokenizer")))
    print(f"report card: {save_dir / 'report.md'} ({time.perf_counter() - t:.0f} s)")
    for stage, result in card.get("reasoning", {}).get("stages", {}).items():
        print(f"{stage:9s} held-out accuracy {result['accuracy']:.1%} ({result['correct']}/{result['n']}), "
              f"well-formed {result['format_rate']:.1%}")
    for row in card.get("samples", {}).get("rows", []):
        for stage, reply in row["replies"].items():
            print(f"\n[{stage}] Q: {row['prompt']}\nA: {reply}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    print("Chat with it: python eval_model.py" + (f" --save_dir {save_dir}" if str(save_dir) != "out" else ""))
    return 0


def main(argv=None) -> int:
    from checkpoint import UserError
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
