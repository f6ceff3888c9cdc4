"""Characters per token of XiaoXin's tokenizer against another (MiniMind2 by default), per genre,
on Chinese text neither was trained on. Prints the table the README quotes.

    python scripts/compare_tokenizers.py [--other ../shared/data/minimind_tokenizer_v2] [--ceval ../shared/data/ceval/val]

Genres: news / science / reviews from data/eval/tokenizer_eval.jsonl (written for this project and
held out of tokenizer training) and, when --ceval exists, the questions of C-Eval's validation split.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def genre_texts(eval_file: Path, ceval_dir: Path | None) -> dict[str, list[str]]:
    genres: dict[str, list[str]] = {}
    for line in eval_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            genres.setdefault(record["genre"], []).append(record["text"])
    if ceval_dir is not None and ceval_dir.is_dir():
        for path in sorted(ceval_dir.glob("*.csv")):
            with open(path, encoding="utf-8") as f:
                genres.setdefault("exam (C-Eval val)", []).extend(row["question"] for row in csv.DictReader(f))
    return genres


def chars_per_token(tokenizer, texts) -> float:
    return sum(len(t) for t in texts) / sum(len(tokenizer.encode(t).ids) for t in texts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ours", default=str(ROOT / "XiaoXin_tokenizer"))
    p.add_argument("--other", default=str(ROOT.parent / "shared/data/minimind_tokenizer_v2"))
    p.add_argument("--eval_file", default=str(ROOT / "data/eval/tokenizer_eval.jsonl"))
    p.add_argument("--ceval", default=str(ROOT.parent / "shared/data/ceval/val"))
    args = p.parse_args(argv)
    from tokenizers import Tokenizer
    for folder in (args.ours, args.other):
        if not (Path(folder) / "tokenizer.json").is_file():
            print(f"error: {folder} has no tokenizer.json.", file=sys.stderr)
            return 2
    ours = Tokenizer.from_file(str(Path(args.ours) / "tokenizer.json"))
    other = Tokenizer.from_file(str(Path(args.other) / "tokenizer.json"))
    print("| genre | characters | XiaoXin | other | ratio |\n|---|---|---|---|---|")
    for genre, texts in genre_texts(Path(args.eval_file), Path(args.ceval)).items():
        a, b = chars_per_token(ours, texts), chars_per_token(other, texts)
        print(f"| {genre} | {sum(map(len, texts)):,} | {a:.3f} | {b:.3f} | {a / b:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
