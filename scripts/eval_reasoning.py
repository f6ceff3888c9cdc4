"""Accuracy of a reasoning checkpoint on held-out, machine-checkable reasoning problems.

    python scripts/gen_reasoning.py --n 100 --seed 123 --format eval --out data/eval/reasoning_eval.jsonl
    python scripts/eval_reasoning.py --save_dir out --stage distill [--data data/eval/reasoning_eval.jsonl]

Each problem comes from scripts/gen_reasoning.py (answers computed, never written by hand);
the model answers greedily and `check_answer` reads the final result from its <answer> block.
Prints accuracy overall and per kind; --json writes them with every reply.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import Config  # noqa: E402
from checkpoint import UserError, find_stage_checkpoint, run_cli  # noqa: E402
from eval_model import Chat  # noqa: E402
from grader import check_answer  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save_dir", default="out")
    p.add_argument("--stage", choices=list(Config.STAGES), default=None, help="default: the latest stage present")
    p.add_argument("--data", default=str(ROOT / "data/eval/reasoning_eval.jsonl"))
    p.add_argument("--tokenizer_dir", default=str(ROOT / "XiaoXin_tokenizer"))
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_cli(parse_args, run, argv)


def run(args) -> int:
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data} does not exist; make it with scripts/gen_reasoning.py --format eval.")
    chat = Chat(find_stage_checkpoint(args.save_dir, args.stage), args.tokenizer_dir, "auto", "auto")
    problems = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.limit:
        problems = problems[:args.limit]
    from tqdm import tqdm
    results, by_kind = [], {}
    for prob in tqdm(problems, desc="problems", file=sys.stderr):
        reply = chat.reply([{"role": "user", "content": prob["question"]}], max_new_tokens=args.max_new_tokens,
                           temperature=0)
        ok = check_answer(prob["kind"], prob["answer"], reply)
        results.append({"id": prob["id"], "kind": prob["kind"], "correct": ok, "reply": reply})
        by_kind.setdefault(prob["kind"], []).append(ok)
    accuracy = sum(r["correct"] for r in results) / max(len(results), 1)
    print(f"accuracy {accuracy:.1%} ({sum(r['correct'] for r in results)}/{len(results)})")
    for kind, oks in sorted(by_kind.items()):
        print(f"  {kind:8s} {sum(oks)}/{len(oks)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"accuracy": accuracy, "n": len(results),
                                               "by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()},
                                               "results": results}, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
