"""Accuracy of a checkpoint on held-out, machine-checkable reasoning problems.

    python scripts/gen_reasoning.py --n 100 --seed 123 --format eval --out data/eval/reasoning_eval.jsonl
    python scripts/eval_reasoning.py --save_dir out --stage distill [--data data/eval/reasoning_eval.jsonl]
    python scripts/eval_reasoning.py --save_dir out --samples 8 --temperature 1.0   # pass@1 … pass@8

Each problem comes from scripts/gen_reasoning.py (answers computed, never written by hand).
The model answers greedily, --batch_size problems at a time: prompts sorted by length share a
left-padded batch whose padding is masked, so every reply is the one a one-at-a-time greedy
chat would give. grader.py reads the final result from the <answer> block and says whether the
reply is a well-formed <think>…</think><answer>…</answer>. Prints accuracy and format rate
overall and per kind; --json writes them with every reply. With --samples K --temperature T it
samples K replies per problem instead and prints pass@1, pass@2, … pass@K: how much a
reinforcement stage (grpo.py) could still turn into first-try accuracy.

As a library (the report card, scripts/report.py, uses it):
    from scripts.eval_reasoning import evaluate, read_problems
    result = evaluate(model, tok, read_problems(path), max_new_tokens=256, batch_size=64)
"""
import argparse
import json
import math
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
                   device=None, progress: bool = False, desc: str = "replies", sampling: dict | None = None) -> list[dict]:
    """Greedy replies to many prompts (lists of token ids): {"text", "tokens", "finished"} each,
    in the order given; `sampling` (model.generate's temperature/top_k/top_p/generator) samples
    them instead.

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
            for step in model.generate(x, max_new_tokens, eos_token_id=eos, attention_mask=mask,
                                       **(sampling or {"temperature": 0})):
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


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, arXiv:2107.03374):
    the chance that k of the n, drawn without replacement, hold at least one correct reply."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(model, tok, problems, max_new_tokens: int = 256, batch_size: int = 64, device=None,
             progress: bool = False, samples: int = 1, temperature: float = 0.0, seed: int = 0) -> dict:
    """Answer eval-format problems ({"id", "kind", "question", "answer"}) greedily in batches and
    grade them with grader.score.

    Returns accuracy, format_rate (share of well-formed replies), n, correct, well_formed,
    unfinished (replies cut off by max_new_tokens), by_kind {kind: {correct, n, accuracy,
    well_formed, format_rate}} and results (id, kind, question, expected, reply, correct,
    well_formed, finished), one per problem in the order given.

    With temperature > 0, each problem gets `samples` replies sampled from the full softmax at that
    temperature (seeded by `seed`; the same seed, batch size and problems give the same replies).
    Then `correct`/`accuracy` count a problem as its share of correct replies (pass@1 averaged over
    the samples), format and cut-off counts are over all replies, every result holds its `replies`
    and `correct_samples`, and `pass_at` gives pass@k for k = 1, 2, 4, … up to `samples`
    (overall and by kind) — the headroom a reinforcement stage can turn into pass@1."""
    if not problems:
        raise ValueError("evaluate() needs at least one problem")
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise ValueError("samples must be ≥ 1, and more than one sample needs a temperature above 0")
    prompts = [chat_prompt_ids(tok, [{"role": "user", "content": p["question"]}], max_new_tokens,
                               model.config.max_seq_len) for p in problems]
    sampling = None
    if temperature > 0:
        device_ = torch.device(device) if device is not None else next(model.parameters()).device
        sampling = dict(temperature=temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
                        generator=torch.Generator(device_).manual_seed(seed))
    start = time.perf_counter()
    flat = greedy_replies(model, tok, [ids for ids in prompts for _ in range(samples)], max_new_tokens, batch_size,
                          device, progress, desc="replies", sampling=sampling)
    seconds = time.perf_counter() - start
    ks = [k for k in (2 ** i for i in range(samples.bit_length())) if k <= samples]
    results, by_kind = [], {}
    for i, p in enumerate(problems):
        replies = flat[i * samples:(i + 1) * samples]
        graded = [score(p["kind"], p["answer"], r["text"]) for r in replies]
        n_correct = sum(g["correct"] for g in graded)
        result = {"id": p.get("id", ""), "kind": p["kind"], "question": p["question"], "expected": p["answer"],
                  "reply": replies[0]["text"], "correct": graded[0]["correct"],
                  "well_formed": graded[0]["well_formed"], "finished": replies[0]["finished"]}
        if sampling:
            result.update(correct=n_correct / samples, correct_samples=n_correct,
                          well_formed=sum(g["well_formed"] for g in graded) / samples,
                          finished=sum(r["finished"] for r in replies) / samples,
                          replies=[r["text"] for r in replies],
                          pass_at={k: pass_at_k(samples, n_correct, k) for k in ks})
        results.append(result)
        k = by_kind.setdefault(p["kind"], {"correct": 0, "n": 0, "well_formed": 0})
        k["correct"] += result["correct"]
        k["well_formed"] += result["well_formed"]
        k["n"] += 1
    for kind, k in by_kind.items():
        k["accuracy"] = k["correct"] / k["n"]
        k["format_rate"] = k["well_formed"] / k["n"]
        if sampling:
            mine = [r for r in results if r["kind"] == kind]
            k["pass_at"] = {j: sum(r["pass_at"][j] for r in mine) / len(mine) for j in ks}
    n = len(results)
    correct = sum(r["correct"] for r in results)
    well_formed = sum(r["well_formed"] for r in results)
    out = {"accuracy": correct / n, "format_rate": well_formed / n, "n": n, "correct": correct,
           "well_formed": well_formed, "unfinished": sum(not r["finished"] for r in results) if not sampling
           else sum(not r["finished"] for r in flat) / samples,
           "max_new_tokens": max_new_tokens, "seconds": round(seconds, 2),
           "generated_tokens": sum(r["tokens"] for r in flat), "samples": samples, "temperature": temperature,
           "by_kind": dict(sorted(by_kind.items())), "results": results}
    if sampling:
        out["pass_at"] = {j: sum(r["pass_at"][j] for r in results) / n for j in ks}
    return out


def print_summary(result: dict, title: str = "", out=None):
    out = out or sys.stdout
    n, what = result["n"], "accuracy"
    if result.get("pass_at"):
        what = f"pass@1 over {result['samples']} samples at temperature {result['temperature']:g}:"
    print(f"{title}{what} {result['accuracy']:.1%} ({result['correct']:g}/{n}), "
          f"format {result['format_rate']:.1%} ({result['well_formed']:g}/{n} well formed), "
          f"{result['unfinished']:g} cut off at {result['max_new_tokens']} tokens", file=out)
    if result.get("pass_at"):
        print("  " + ", ".join(f"pass@{k} {v:.1%}" for k, v in result["pass_at"].items()), file=out)
    for kind, k in result["by_kind"].items():
        line = f"  {kind:8s} {k['correct']:6g}/{k['n']:<4d} {k['accuracy']:6.1%}   format {k['format_rate']:6.1%}"
        if k.get("pass_at"):
            line += "   " + " ".join(f"pass@{j} {v:6.1%}" for j, v in k["pass_at"].items())
        print(line, file=out)


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
    p.add_argument("--samples", type=int, default=1,
                   help="replies sampled per problem (needs --temperature > 0): prints pass@1 … pass@samples")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the report card's setting)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled replies")
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
    if args.samples < 1 or args.temperature < 0:
        raise UserError(f"--samples must be ≥ 1 and --temperature ≥ 0 (got {args.samples} and {args.temperature}).")
    if args.samples > 1 and args.temperature == 0:
        raise UserError(f"--samples {args.samples} needs --temperature above 0: greedy replies are all alike.")
    problems = read_problems(args.data)
    if args.limit:
        problems = problems[:args.limit]
    if not problems:
        raise UserError(f"--data {args.data} holds no problems.")
    chat = Chat(find_stage_checkpoint(args.save_dir, args.stage), args.tokenizer_dir, "auto", "auto")
    result = evaluate(chat.model, chat.tok, problems, args.max_new_tokens, args.batch_size, progress=True,
                      samples=args.samples, temperature=args.temperature, seed=args.seed)
    print_summary(result, f"{chat.stage}: ")
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
