"""Accuracy of a checkpoint on held-out, machine-checkable reasoning problems.

    python scripts/gen_reasoning.py --n 100 --seed 123 --format eval --out data/eval/reasoning_eval.jsonl
    python scripts/eval_reasoning.py --save_dir out --stage distill [--data data/eval/reasoning_eval.jsonl]

Each problem comes from scripts/gen_reasoning.py (answers computed, never written by hand).
The model answers greedily, --batch_size problems at a time: prompts sorted by length share a
left-padded batch whose padding is masked, so every reply is the one a one-at-a-time greedy
chat would give. grader.py reads the final result from the <answer> block and says whether the
reply is a well-formed <think>…</think><answer>…</answer>. Prints accuracy and format rate
overall and per kind; --json writes them with every reply.

As a library (the report card, scripts/report.py, uses it):
    from scripts.eval_reasoning import evaluate, read_problems
    result = evaluate(model, tok, read_problems(path), max_new_tokens=256, batch_size=64)
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import Config  # noqa: E402
from checkpoint import UserError, find_stage_checkpoint, run_cli  # noqa: E402
from dataset import render_chat  # noqa: E402
from grader import score  # noqa: E402


def chat_prompt_ids(tok, messages, max_new_tokens: int, max_len: int) -> list[int]:
    """Token ids of a conversation rendered with the generation prompt, cut to the last tokens
    that leave room for a reply (as eval_model.Chat keeps a single over-long message)."""
    ids = tok.encode(render_chat(messages, add_generation_prompt=True)[0])
    return ids[-(max_len - min(max_new_tokens, max_len // 2)):]


@torch.inference_mode()
def greedy_replies(model, tok, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 64,
                   device=None, progress: bool = False, desc: str = "replies") -> list[dict]:
    """Greedy replies to many prompts (lists of token ids): {"text", "tokens", "finished"} each,
    in the order given.

    Prompts are sorted by length and decoded batch_size at a time in one generate call, shorter
    ones left-padded with the padding masked; a row that reaches <|im_end|> keeps emitting it
    until the whole batch is done. A reply stops before its first end token, as in a chat, and
    `finished` says whether one came before max_new_tokens."""
    from tqdm import tqdm
    device = torch.device(device) if device is not None else next(model.parameters()).device
    eos = [tok.im_end_id, tok.pad_id]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="reply", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            x = torch.tensor([[tok.pad_id] * (width - len(prompts[i])) + prompts[i] for i in rows], device=device)
            mask = None
            if any(len(prompts[i]) < width for i in rows):
                mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows],
                                    device=device)
            out, finished = [[] for _ in rows], [False] * len(rows)
            for step in model.generate(x, max_new_tokens, temperature=0, eos_token_id=eos, attention_mask=mask):
                for j, token in enumerate([step] if isinstance(step, int) else step.tolist()):
                    if finished[j]:
                        continue
                    if token in eos:
                        finished[j] = True
                    else:
                        out[j].append(token)
            for j, i in enumerate(rows):
                replies[i] = {"text": tok.decode(out[j]), "tokens": len(out[j]), "finished": finished[j]}
            bar.update(len(rows))
    return replies


def evaluate(model, tok, problems, max_new_tokens: int = 256, batch_size: int = 64, device=None,
             progress: bool = False) -> dict:
    """Answer eval-format problems ({"id", "kind", "question", "answer"}) greedily in batches and
    grade them with grader.score.

    Returns accuracy, format_rate (share of well-formed replies), n, correct, well_formed,
    unfinished (replies cut off by max_new_tokens), by_kind {kind: {correct, n, accuracy,
    well_formed, format_rate}} and results (id, kind, question, expected, reply, correct,
    well_formed, finished), one per problem in the order given."""
    if not problems:
        raise ValueError("evaluate() needs at least one problem")
    prompts = [chat_prompt_ids(tok, [{"role": "user", "content": p["question"]}], max_new_tokens,
                               model.config.max_seq_len) for p in problems]
    start = time.perf_counter()
    replies = greedy_replies(model, tok, prompts, max_new_tokens, batch_size, device, progress, desc="problems")
    seconds = time.perf_counter() - start
    results, by_kind = [], {}
    for p, reply in zip(problems, replies):
        graded = score(p["kind"], p["answer"], reply["text"])
        results.append({"id": p.get("id", ""), "kind": p["kind"], "question": p["question"], "expected": p["answer"],
                        "reply": reply["text"], "correct": graded["correct"], "well_formed": graded["well_formed"],
                        "finished": reply["finished"]})
        k = by_kind.setdefault(p["kind"], {"correct": 0, "n": 0, "well_formed": 0})
        k["correct"] += graded["correct"]
        k["well_formed"] += graded["well_formed"]
        k["n"] += 1
    for k in by_kind.values():
        k["accuracy"] = k["correct"] / k["n"]
        k["format_rate"] = k["well_formed"] / k["n"]
    n = len(results)
    correct = sum(r["correct"] for r in results)
    well_formed = sum(r["well_formed"] for r in results)
    return {"accuracy": correct / n, "format_rate": well_formed / n, "n": n, "correct": correct,
            "well_formed": well_formed, "unfinished": sum(not r["finished"] for r in results),
            "max_new_tokens": max_new_tokens, "seconds": round(seconds, 2),
            "generated_tokens": sum(r["tokens"] for r in replies),
            "by_kind": dict(sorted(by_kind.items())), "results": results}


def print_summary(result: dict, title: str = "", out=None):
    out = out or sys.stdout
    print(f"{title}accuracy {result['accuracy']:.1%} ({result['correct']}/{result['n']}), "
          f"format {result['format_rate']:.1%} ({result['well_formed']}/{result['n']} well formed), "
          f"{result['unfinished']} cut off at {result['max_new_tokens']} tokens", file=out)
    for kind, k in result["by_kind"].items():
        print(f"  {kind:8s} {k['correct']:4d}/{k['n']:<4d} {k['accuracy']:6.1%}   format {k['format_rate']:6.1%}",
              file=out)


def read_problems(path) -> list[dict]:
    """Eval-format problems, one JSON object a line; a bad line is a UserError naming it."""
    problems = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not all(isinstance(record.get(k), str) for k in ("kind", "question", "answer")):
                raise ValueError
        except (ValueError, AttributeError):
            raise UserError(f"{path} line {line_no} is not a problem {{\"id\", \"kind\", \"question\", \"answer\"}} "
                            f"(make the file with scripts/gen_reasoning.py --format eval).") from None
        problems.append(record)
    return problems


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save_dir", default="out")
    p.add_argument("--stage", choices=list(Config.STAGES), default=None, help="default: the latest stage present")
    p.add_argument("--data", default=str(ROOT / "data/eval/reasoning_eval.jsonl"))
    p.add_argument("--tokenizer_dir", default=str(ROOT / "XiaoXin_tokenizer"))
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=64, help="problems decoded together")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_cli(parse_args, run, argv)


def run(args) -> int:
    from eval_model import Chat
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data} does not exist; make it with scripts/gen_reasoning.py --format eval.")
    if args.max_new_tokens < 1 or args.batch_size < 1 or args.limit < 0:
        raise UserError("--max_new_tokens and --batch_size must be ≥ 1 and --limit ≥ 0.")
    problems = read_problems(args.data)
    if args.limit:
        problems = problems[:args.limit]
    if not problems:
        raise UserError(f"--data {args.data} holds no problems.")
    chat = Chat(find_stage_checkpoint(args.save_dir, args.stage), args.tokenizer_dir, "auto", "auto")
    result = evaluate(chat.model, chat.tok, problems, args.max_new_tokens, args.batch_size, progress=True)
    print_summary(result, f"{chat.stage}: ")
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
