"""Held-out perplexity and bits per byte of a native checkpoint or an exported HF folder.

    python scripts/eval_ppl.py --stage pretrain --data data/demo/pretrain_val.jsonl
    python scripts/eval_ppl.py --model default --stage sft --data data/demo/sft_512_val.jsonl --json out/ppl.json
    python scripts/eval_ppl.py --hf_dir exports/xiaoxin-sft --data some_book.txt --stride 512

What is scored:
- {"text": ...} records: the text normalised as the trainer normalises it (segments closed
  by <|im_end|>), read as if it followed a document end: <|im_end|> + text, every token scored.
- {"conversations": [...]} records: the ChatML rendering from its first token, exactly as the
  SFT loader feeds it (no leading document end; the first token is context); by default only the assistant
  replies and their closing <|im_end|> are scored (what SFT trains on), --score all scores
  every token after the first.
- a .txt file: one document, every token after a leading <|im_end|> scored.

Documents longer than the context are read with a sliding window that moves --stride tokens
(default half the context), each token scored once with at least context − stride tokens
before it. Reported:
  ppl            exp(mean negative log-likelihood) over every scored token (special ones included)
  bits_per_byte  negative log-likelihood in bits of the scored tokens that stand for text (special
                 tokens excluded), divided by the UTF-8 bytes those tokens decode to; unlike ppl it
                 does not depend on the tokenizer, so different vocabularies compare.
"""
import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import Config  # noqa: E402
from checkpoint import UserError, run_cli  # noqa: E402

IM_END = "<|im_end|>"


# ---------------------------------------------------------------- documents

def read_documents(path: Path, score: str, limit: int) -> list[tuple[str, list, bool]]:
    """(text, character spans [start, end) to score or None for "everything", whether it is read
    after a document end) per document: plain text is, as the pretraining rows pack it;
    conversations are not, as the SFT loader starts each at its <|im_start|>."""
    from dataset import check_conversation, check_pretrain, iter_jsonl, render_chat
    if not path.is_file():
        raise UserError(f"--data {path} does not exist.")
    if path.suffix == ".txt":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--data {path} is not UTF-8 text.") from None
        if not text.strip():
            raise UserError(f"--data {path} is empty.")
        return [(text, None, True)]
    if path.suffix != ".jsonl":
        raise UserError(f"--data {path} is neither .jsonl nor .txt.")
    documents = []
    for line_no, record, _ in iter_jsonl(path):
        if record is None:
            continue
        try:
            if isinstance(record, Exception):
                raise record
            if isinstance(record, dict) and "conversations" in record:
                text, spans = render_chat(check_conversation(record))
                documents.append((text, None if score == "all" else spans, False))
            else:
                documents.append((check_pretrain(record), None, True))
        except ValueError as e:
            raise UserError(f"{path} line {line_no}: {e}.") from None
        if limit and len(documents) >= limit:
            break
    if not documents:
        raise UserError(f"--data {path} has no records.")
    return documents


def tokenize(lm, text: str, spans, after_doc_end: bool = True) -> tuple[list[int], list[bool]]:
    """Token ids of text (after a leading <|im_end|> when `after_doc_end`), and for each position
    whether that token is scored (never the first position, which nothing predicts; with spans,
    only tokens starting inside a span)."""
    ids, starts = lm.encode_with_offsets(text)
    if spans is None:
        scored = [True] * len(ids)
    else:
        scored = [any(a <= s < b for a, b in spans) for s in starts]
    if after_doc_end:
        return [lm.doc_start_id] + ids, [False] + scored
    return ids, [False] + scored[1:]


def windows(n: int, max_len: int, stride: int):
    """(start, end, first scored target) of each window over n tokens: targets 1..n-1 are each
    predicted once, by the first window that holds them with its predecessor context."""
    start, done = 0, 1
    while True:
        end = min(start + max_len, n)
        yield start, end, max(done, start + 1)
        done = end
        if end >= n:
            return
        start = min(start + stride, done - 1)   # the next target needs its predecessor in the window


def score(lm, documents, max_len: int, stride: int, batch_size: int, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm
    rows = []          # (ids, [(position in row whose logits predict, target id, is text token)])
    for text, spans, after_doc_end in documents:
        ids, scored = tokenize(lm, text, spans, after_doc_end)
        for start, end, first in windows(len(ids), max_len, stride):
            targets = [(t - start - 1, ids[t], ids[t] not in lm.special_ids)
                       for t in range(first, end) if scored[t]]
            if targets:
                rows.append((ids[start:end], targets))
    if not rows:
        raise UserError("no token to score (with --score assistant, are there assistant replies?).")
    nll, nll_text, n_tokens, n_text, n_bytes = 0.0, 0.0, 0, 0, 0
    rows.sort(key=lambda r: -len(r[0]))
    with tqdm(total=len(rows), desc="scoring", unit="window", disable=not progress, file=sys.stderr) as bar:
        for b in range(0, len(rows), batch_size):
            batch = rows[b:b + batch_size]
            width = max(len(ids) for ids, _ in batch)
            x = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for i, (ids, _) in enumerate(batch):
                x[i, :len(ids)] = torch.tensor(ids)
                mask[i, :len(ids)] = 1
            logits = lm.logits(x, mask)
            for i, (_, targets) in enumerate(batch):
                pos = torch.tensor([p for p, _, _ in targets], device=logits.device)
                tgt = torch.tensor([t for _, t, _ in targets], device=logits.device)
                token_nll = -torch.log_softmax(logits[i, pos].double(), dim=-1).gather(-1, tgt.view(-1, 1)).view(-1)
                is_text = torch.tensor([flag for _, _, flag in targets], device=logits.device)
                nll += token_nll.sum().item()
                nll_text += token_nll[is_text].sum().item()
                n_tokens += len(targets)
                n_text += int(is_text.sum())
                n_bytes += sum(lm.token_bytes[t] for _, t, text in targets if text)
            bar.update(len(batch))
    return {
        "documents": len(documents), "windows": len(rows), "tokens": n_tokens, "text_tokens": n_text,
        "bytes": n_bytes, "nll": nll, "nll_text": nll_text,
        "loss": nll / n_tokens, "ppl": math.exp(nll / n_tokens),
        "bits_per_token": nll / n_tokens / math.log(2),
        "bits_per_byte": nll_text / math.log(2) / n_bytes if n_bytes else float("nan"),
        "bytes_per_token": n_bytes / n_text if n_text else float("nan"),
    }


# ---------------------------------------------------------------- command line

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help=".jsonl ({\"text\"} or {\"conversations\"}) or .txt file")
    p.add_argument("--model", default=None, help="expected model size (checked against the checkpoint)")
    p.add_argument("--save_dir", default=None, help="folder holding <stage>.pt (default: out)")
    p.add_argument("--stage", default=None, help=f"one of {', '.join(Config.STAGES)}; default: the latest present")
    p.add_argument("--hf_dir", default=None, help="an exported HuggingFace folder instead of a checkpoint")
    p.add_argument("--tokenizer_dir", default="XiaoXin_tokenizer")
    p.add_argument("--score", default="auto", help="auto (conversations: assistant, else all), assistant or all")
    p.add_argument("--limit", type=int, default=0, help="first N jsonl records only (0 = all)")
    p.add_argument("--max_len", type=int, default=0, help="window length (default: the model's context)")
    p.add_argument("--stride", type=int, default=0, help="window step (default: half the window)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def validate(args):
    from hf_compat import check_model_source
    check_model_source(args)
    if args.score not in ("auto", "assistant", "all"):
        raise UserError(f"--score {args.score!r} is not one of: auto, assistant, all.")
    if args.limit < 0 or args.max_len < 0 or args.stride < 0 or args.batch_size < 1:
        raise UserError("--limit, --max_len and --stride must be ≥ 0 and --batch_size ≥ 1.")


def evaluate(args) -> dict:
    from hf_compat import open_lm
    validate(args)
    documents = read_documents(Path(args.data), "all" if args.score == "all" else "assistant", args.limit)
    lm = open_lm(hf_dir=args.hf_dir, save_dir=args.save_dir or "out", stage=args.stage, model_name=args.model,
                 tokenizer_dir=args.tokenizer_dir, device=args.device, dtype=args.dtype)
    if lm.token_bytes is None or lm.doc_start_id is None:
        raise UserError(f"{lm.description} has no byte-level tokenizer.json with an end-of-text token; "
                        f"bits per byte cannot be counted for it.")
    max_len = min(args.max_len or lm.max_len, lm.max_len)
    if max_len < 2:
        raise UserError(f"--max_len {max_len} leaves nothing to predict; use at least 2.")
    stride = args.stride or max(1, max_len // 2)
    if stride > max_len:
        raise UserError(f"--stride {stride} is longer than the window ({max_len}); tokens would be skipped.")
    result = score(lm, documents, max_len, stride, args.batch_size, progress=not args.quiet)
    return {"model": lm.description, "data": str(args.data), "score": args.score, "max_len": max_len,
            "stride": stride, **result}


def main(argv=None) -> int:
    return run_cli(parse_args, run, argv)


def run(args) -> int:
    result = evaluate(args)
    print(f"{result['data']}: ppl {result['ppl']:.3f}, loss {result['loss']:.4f} nats/token, "
          f"bits/byte {result['bits_per_byte']:.4f} ({result['tokens']} tokens scored, {result['bytes']} bytes, "
          f"{result['documents']} documents, {result['windows']} windows)")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
