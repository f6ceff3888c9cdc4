"""Train XiaoXin's byte-level BPE tokenizer (vocab 6400 by default).

    python train_tokenizer.py --data_path data/demo/pretrain.jsonl data/demo/sft_512.jsonl \
        [--out_dir XiaoXin_tokenizer] [--vocab_size 6400] [--max_chars 200000000]

Reads jsonl in any of the four formats ({"text"} or {"conversations"}) or plain .txt.
Byte-level, so any text round-trips losslessly (no normaliser rewrites punctuation).
Digits are split one per token so arithmetic sees every digit, and each newline is a
token of its own so no token straddles a ChatML role header and its message. Ids 0–2 are the special
tokens <|endoftext|> (also padding), <|im_start|>, <|im_end|>; ids 3–6 are <think>,
</think>, <answer>, </answer>: single tokens, but not "special", so they survive
decode(skip_special_tokens=True). The ChatML template is written into
tokenizer_config.json; training_info.json records the sources and a content hash.
Memory stays bounded on multi-GB files: lines are sampled so at most --max_chars are used.
"""
import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
REASONING = ["<think>", "</think>", "<answer>", "</answer>"]

# Renders exactly what dataset.render_chat renders (tests/test_tokenizer.py checks it).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def record_texts(record):
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        yield record["text"]
    elif isinstance(record, dict) and isinstance(record.get("conversations"), list):
        for m in record["conversations"]:
            if isinstance(m, dict) and isinstance(m.get("content"), str) and m["content"] != "空":
                yield m["content"]


def sample_texts(paths, max_chars: int, seed: int):
    """Yield texts from all files, keeping each line with probability chosen from the file
    sizes so the total stays near max_chars (a uniform sample, not just the file's head)."""
    from tqdm import tqdm
    sizes = [Path(p).stat().st_size for p in paths]
    # UTF-8 Chinese is ~3 bytes per character; JSON quoting adds a little.
    keep = min(1.0, max_chars * 3.0 / max(sum(sizes), 1))
    rng = random.Random(seed)
    used = 0
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="reading") as bar:
        for path in paths:
            with open(path, "rb") as f:
                for line_no, raw in enumerate(f, 1):
                    bar.update(len(raw))
                    if rng.random() > keep or not raw.strip():
                        continue
                    line = raw.decode("utf-8", errors="replace")
                    if str(path).endswith(".jsonl"):
                        try:
                            texts = list(record_texts(json.loads(line)))
                        except json.JSONDecodeError:
                            print(f"warning: {path} line {line_no} is not valid JSON; skipped.", file=sys.stderr)
                            continue
                    else:
                        texts = [line]
                    for t in texts:
                        used += len(t)
                        yield t
                    if used >= max_chars:
                        return


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # Every newline is its own piece, so no token spans the "\n" that ends a ChatML role
        # header and the start of the message: the loss mask then falls on token boundaries.
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def write_config(out_dir: Path, vocab_size: int):
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1024,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2), encoding="utf-8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", nargs="+", default=["data/demo/pretrain.jsonl", "data/demo/sft_512.jsonl",
                                                      "data/demo/sft_1024.jsonl", "data/demo/r1_mix_1024.jsonl"])
    p.add_argument("--out_dir", default="XiaoXin_tokenizer")
    p.add_argument("--vocab_size", type=int, default=6400)
    p.add_argument("--max_chars", type=int, default=200_000_000)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    for path in args.data_path:
        if not Path(path).is_file():
            print(f"error: --data_path {path} does not exist.", file=sys.stderr)
            return 2
    if args.vocab_size < 512:
        print(f"error: --vocab_size {args.vocab_size} is too small; use at least 512.", file=sys.stderr)
        return 2
    from tokenizers import pre_tokenizers, trainers
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=SPECIAL + REASONING,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)
    tok.train_from_iterator(sample_texts(args.data_path, args.max_chars, args.seed), trainer=trainer)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The reasoning tags were reserved as ids 3-6 during training; now make them ordinary
    # (non-special) added tokens so skip_special_tokens=True keeps them.
    spec = json.loads(tok.to_str())
    for entry in spec["added_tokens"]:
        if entry["content"] in REASONING:
            entry["special"] = False
    tok_json = json.dumps(spec, ensure_ascii=False, indent=1)
    (out_dir / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    write_config(out_dir, args.vocab_size)
    info = {
        "vocab_size": tok.get_vocab_size(),
        "trained_on": [{"path": str(Path(p)), "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()}
                       for p in args.data_path],
        "max_chars": args.max_chars,
        "seed": args.seed,
        "tokenizer_sha256": hashlib.sha256(tok_json.encode("utf-8")).hexdigest(),
    }
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(f"wrote {out_dir} (vocab {info['vocab_size']}, sha256 {info['tokenizer_sha256'][:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
