"""Multiple-choice benchmark accuracy (C-Eval, CMMLU layout) by per-option log-likelihood.

    python scripts/eval_bench.py --model default --save_dir out --stage sft --data_dir ../shared/data/ceval
    python scripts/eval_bench.py --stage distill --data_dir ../shared/data/ceval/val --shots 5 --json out/ceval.json
    python scripts/eval_bench.py --hf_dir exports/xiaoxin-sft --data_dir cmmlu/ --split test --limit 20
    python scripts/eval_bench.py --hf_dir exports/xiaoxin-sft --hf_dataset ceval/ceval-exam   # online

Prompts are those of lm-evaluation-harness's C-Eval (ceval-valid) and CMMLU tasks:

    以下是中国关于{科目}的单项选择题，请选出其中的正确答案。\\n\\n          (CMMLU: 以下是关于{科目}的…)
    [k dev examples, each "{question}\\nA. …\\nB. …\\nC. …\\nD. …\\n答案： {answer}\\n\\n"]
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：

and each option is scored as the continuation " A", " B", " C", " D"; the prediction is the
option with the highest log-likelihood (acc; with one-letter options acc_norm is the same).
Few-shot examples are the first k of the subject's dev file. Over-long prompts lose their
start, as in the harness. When every option is a single token, one forward pass of the
prompt scores all four.

--data_dir is a folder holding split folders (val/ dev/ test/, C-Eval's <subject>_val.csv or
CMMLU's <subject>.csv) or one split folder itself (its dev/ is then looked for beside it).
Columns: id,question,A,B,C,D,answer[,explanation] (C-Eval) or Question,A,B,C,D,Answer (CMMLU).
Prints per-subject and overall accuracy; --json writes overall (0–1), n, macro and subjects.
"""
import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import Config  # noqa: E402
from checkpoint import UserError, run_cli  # noqa: E402

LETTERS = ["A", "B", "C", "D"]
CEVAL_DESCRIPTION = "以下是中国关于{}的单项选择题，请选出其中的正确答案。\n\n"
CMMLU_DESCRIPTION = "以下是关于{}的单项选择题，请直接给出正确答案的选项。\n\n"
TARGET_DELIMITER, FEWSHOT_DELIMITER = " ", "\n\n"     # the harness's defaults

# C-Eval's 52 subjects and the Chinese names its prompts use.
CEVAL_SUBJECTS = {
    "computer_network": "计算机网络", "operating_system": "操作系统", "computer_architecture": "计算机组成",
    "college_programming": "大学编程", "college_physics": "大学物理", "college_chemistry": "大学化学",
    "advanced_mathematics": "高等数学", "probability_and_statistics": "概率统计", "discrete_mathematics": "离散数学",
    "electrical_engineer": "注册电气工程师", "metrology_engineer": "注册计量师",
    "high_school_mathematics": "高中数学", "high_school_physics": "高中物理", "high_school_chemistry": "高中化学",
    "high_school_biology": "高中生物", "middle_school_mathematics": "初中数学", "middle_school_biology": "初中生物",
    "middle_school_physics": "初中物理", "middle_school_chemistry": "初中化学", "veterinary_medicine": "兽医学",
    "college_economics": "大学经济学", "business_administration": "工商管理", "marxism": "马克思主义基本原理",
    "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论体系概论", "education_science": "教育学",
    "teacher_qualification": "教师资格", "high_school_politics": "高中政治", "high_school_geography": "高中地理",
    "middle_school_politics": "初中政治", "middle_school_geography": "初中地理", "modern_chinese_history": "近代史纲要",
    "ideological_and_moral_cultivation": "思想道德修养与法律基础", "logic": "逻辑学", "law": "法学",
    "chinese_language_and_literature": "中国语言文学", "art_studies": "艺术学", "professional_tour_guide": "导游资格",
    "legal_professional": "法律职业资格", "high_school_chinese": "高中语文", "high_school_history": "高中历史",
    "middle_school_history": "初中历史", "civil_servant": "公务员", "sports_science": "体育学",
    "plant_protection": "植物保护", "basic_medicine": "基础医学", "clinical_medicine": "临床医学",
    "urban_and_rural_planner": "注册城乡规划师", "accountant": "注册会计师", "fire_engineer": "注册消防工程师",
    "environmental_impact_assessment_engineer": "环境影响评价工程师", "tax_accountant": "税务师",
    "physician": "医师资格",
}


@dataclass
class Question:
    subject: str
    id: str
    question: str
    options: list          # four option texts, A..D
    answer: str            # "A".."D"


# ---------------------------------------------------------------- data

def read_questions(path: Path, subject: str) -> tuple[list[Question], str]:
    """Questions of one CSV and its naming style ("ceval" or "cmmlu")."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            table = list(csv.reader(f))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text.") from None
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV file ({e}).") from None
    header = table[0] if table else []
    # (record number counting the header as 1, fields); records may span lines, so not line numbers
    rows = [(n, dict(zip(header, r))) for n, r in enumerate(table[1:], 2) if any(cell.strip() for cell in r)]
    style = "cmmlu" if "Question" in header else "ceval"
    q_col, a_col = ("Question", "Answer") if style == "cmmlu" else ("question", "answer")
    missing = [c for c in (q_col, *LETTERS, a_col) if c not in header]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; expected id,question,A,B,C,D,answer "
                        f"(C-Eval) or Question,A,B,C,D,Answer (CMMLU).")
    questions = []
    for record, row in rows:
        answer = row.get(a_col, "").strip()
        if answer not in LETTERS:
            raise UserError(f"{path} row {record} has answer {answer!r}; expected one of A, B, C, D.")
        qid = row.get("id") or row.get("") or str(record - 2)
        questions.append(Question(subject, qid, row.get(q_col, ""), [row.get(c, "") for c in LETTERS], answer))
    return questions, style


def split_files(folder: Path, split: str) -> dict[str, Path]:
    """subject → CSV in one split folder (<subject>_<split>.csv or <subject>.csv)."""
    files = {}
    for path in sorted(folder.glob("*.csv")):
        stem = path.stem
        for suffix in (f"_{split}", "_val", "_dev", "_test"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        files[stem] = path
    return files


def locate_splits(data_dir: Path, split: str) -> tuple[Path, Path | None, str]:
    """(folder with the questions, folder with the dev examples or None, split name)."""
    if not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir} does not exist.")
    if split == "auto":
        split = next((s for s in ("val", "test") if (data_dir / s).is_dir()), "")
        if not split:
            split = data_dir.name if data_dir.name in ("val", "test", "dev") else "val"
    if (data_dir / split).is_dir():
        eval_dir, dev_dir = data_dir / split, data_dir / "dev"
    elif list(data_dir.glob("*.csv")):
        eval_dir, dev_dir = data_dir, data_dir.parent / "dev"
    else:
        raise UserError(f"--data_dir {data_dir} holds neither a {split}/ folder nor CSV files.")
    return eval_dir, (dev_dir if dev_dir.is_dir() and dev_dir != eval_dir else None), split


def load_local(data_dir: Path, split: str, subjects: list[str] | None, shots: int):
    eval_dir, dev_dir, split = locate_splits(data_dir, split)
    files = split_files(eval_dir, split)
    if not files:
        raise UserError(f"{eval_dir} holds no CSV files.")
    if subjects:
        unknown = [s for s in subjects if s not in files]
        if unknown:
            raise UserError(f"--subjects {', '.join(unknown)} not found in {eval_dir}; it has "
                            f"{', '.join(list(files)[:6])}{' …' if len(files) > 6 else ''}.")
        files = {s: files[s] for s in subjects}
    dev_files = split_files(dev_dir, "dev") if dev_dir else {}
    tasks = {}
    for subject, path in files.items():
        questions, style = read_questions(path, subject)
        examples = []
        if shots:
            if subject not in dev_files:
                where = f"no dev/ folder beside {eval_dir}" if dev_dir is None else f"none in {dev_dir}"
                raise UserError(f"--shots {shots} needs dev examples, but there is no dev file for {subject} ({where}).")
            examples = read_questions(dev_files[subject], subject)[0]
        tasks[subject] = (questions, examples, style)
    return tasks, f"{eval_dir}", split


def load_hub(name: str, split: str, subjects: list[str] | None, shots: int):
    """The same tasks from the HuggingFace hub (ceval/ceval-exam layout; needs network)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError("--hf_dataset needs the datasets package (pip install datasets).") from None
    split = "val" if split == "auto" else split
    tasks = {}
    for subject in subjects or list(CEVAL_SUBJECTS):
        try:
            rows = load_dataset(name, subject, split=split)
            dev = load_dataset(name, subject, split="dev") if shots else []
        except Exception as e:  # network, unknown config, …: the library's message is the useful part
            raise UserError(f"--hf_dataset {name} ({subject}, {split}) could not be loaded: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}.") from None

        def convert(records):
            return [Question(subject, str(r.get("id", i)), r["question"], [r[c] for c in LETTERS], r["answer"])
                    for i, r in enumerate(records)]
        tasks[subject] = (convert(rows), convert(dev), "ceval")
    return tasks, f"hf:{name}", split


# ---------------------------------------------------------------- prompts

def doc_to_text(q: Question) -> str:
    return (f"{q.question.strip()}\nA. {q.options[0]}\nB. {q.options[1]}\nC. {q.options[2]}\n"
            f"D. {q.options[3]}\n答案：")


def description(subject: str, style: str) -> str:
    name = CEVAL_SUBJECTS.get(subject, subject.replace("_", " "))
    return (CMMLU_DESCRIPTION if style == "cmmlu" else CEVAL_DESCRIPTION).format(name)


def build_context(q: Question, examples: list[Question], style: str) -> str:
    shots = "".join(doc_to_text(e) + TARGET_DELIMITER + e.answer + FEWSHOT_DELIMITER for e in examples)
    return description(q.subject, style) + shots + doc_to_text(q)


def continuations() -> list[str]:
    return [TARGET_DELIMITER + letter for letter in LETTERS]


# ---------------------------------------------------------------- scoring

def encode_pair(lm, context: str, continuation: str, ctx: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split the harness's way: encode the whole string and
    take what follows the context's own encoding (so merges across the seam are honoured).
    ctx may pass lm.encode(context) when it is already known."""
    whole = lm.encode(context + continuation)
    ctx = lm.encode(context) if ctx is None else ctx
    if whole[:len(ctx)] != ctx:     # a merge across the seam: fall back to separate encodings
        return ctx, lm.encode(continuation)
    return ctx, whole[len(ctx):]


def score_requests(lm, requests, batch_size: int, progress: bool = True):
    """requests: per question, a list of (context ids, continuation ids), one per option.
    Returns, per question, each option's summed log-likelihood and whether a prompt was cut."""
    import torch
    from tqdm import tqdm
    # One row per forward pass: (question index, option index or None for "all options", ids).
    rows = []
    for r, pairs in enumerate(requests):
        if len({tuple(ctx) for ctx, _ in pairs}) == 1 and all(len(cont) == 1 for _, cont in pairs):
            rows.append((r, None, pairs[0][0]))              # one pass scores every option
        else:
            for o, (ctx, cont) in enumerate(pairs):
                rows.append((r, o, ctx + cont[:-1]))
    results = [[0.0] * len(pairs) for pairs in requests]
    truncated = [False] * len(requests)
    order = sorted(range(len(rows)), key=lambda i: -min(len(rows[i][2]), lm.max_len))
    bar = tqdm(total=len(rows), desc="scoring", unit="prompt", disable=not progress, file=sys.stderr)
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start:start + batch_size]]
        seqs = []
        for r, o, ids in batch:
            if len(ids) > lm.max_len:   # keep the end: the question and "答案：" matter most
                ids = ids[-lm.max_len:]
                truncated[r] = True
            seqs.append(ids)
        width = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        logits = lm.logits(x, mask)
        for i, (r, o, _) in enumerate(batch):
            n, pairs = len(seqs[i]), requests[r]
            if o is None:
                logprobs = torch.log_softmax(logits[i, n - 1], dim=-1)
                picked = logprobs[[cont[0] for _, cont in pairs]].tolist()    # one device→host copy
                for k in range(len(pairs)):
                    results[r][k] = picked[k]
            else:
                cont = pairs[o][1]
                # logits at position p predict token p + 1; the continuation fills the last len(cont) slots.
                positions = torch.arange(n - len(cont), n, device=logits.device)
                logprobs = torch.log_softmax(logits[i, positions], dim=-1)
                target = torch.tensor(cont, device=logits.device).view(-1, 1)
                results[r][o] = logprobs.gather(-1, target).sum().item()
        bar.update(len(batch))
    bar.close()
    return results, truncated


def evaluate(lm, tasks: dict, shots: int, limit: int, batch_size: int, progress: bool = True) -> dict:
    questions, requests = [], []
    for subject, (qs, examples, style) in tasks.items():
        if shots > len(examples) and shots:
            print(f"warning: {subject} has only {len(examples)} dev examples; using {len(examples)}-shot for it.",
                  file=sys.stderr)
        for q in (qs[:limit] if limit else qs):
            context = build_context(q, examples[:shots], style)
            ctx = lm.encode(context)
            questions.append(q)
            requests.append([encode_pair(lm, context, c, ctx) for c in continuations()])
    if not questions:
        raise UserError("no questions to score (are the CSV files empty?).")
    start = time.time()
    loglik, truncated = score_requests(lm, requests, batch_size, progress)
    per_subject, details = {}, []
    for q, ll, cut in zip(questions, loglik, truncated):
        pred = LETTERS[max(range(len(ll)), key=lambda k: ll[k])]    # first maximum on ties, like argmax
        s = per_subject.setdefault(q.subject, {"correct": 0, "n": 0})
        s["correct"] += pred == q.answer
        s["n"] += 1
        details.append({"subject": q.subject, "id": q.id, "answer": q.answer, "pred": pred,
                        "loglik": ll, "truncated": cut})
    for s in per_subject.values():
        s["acc"] = s["correct"] / s["n"]
    n = sum(s["n"] for s in per_subject.values())
    correct = sum(s["correct"] for s in per_subject.values())
    return {
        "overall": correct / n, "n": n, "correct": correct,
        "macro": sum(s["acc"] for s in per_subject.values()) / len(per_subject),
        "subjects": dict(sorted(per_subject.items())),
        "shots": shots, "limit": limit, "truncated": sum(truncated),
        "seconds": round(time.time() - start, 2), "details": details,
    }


# ---------------------------------------------------------------- command line

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model (a native checkpoint, or --hf_dir)")
    src.add_argument("--model", default=None, help="expected model size (checked against the checkpoint)")
    src.add_argument("--save_dir", default=None, help="folder holding <stage>.pt (default: out)")
    src.add_argument("--stage", default=None, help=f"one of {', '.join(Config.STAGES)}; default: the latest present")
    src.add_argument("--hf_dir", default=None, help="an exported (or any LLaMA-style) HuggingFace folder")
    src.add_argument("--tokenizer_dir", default="XiaoXin_tokenizer")
    data = p.add_argument_group("data (one of)")
    data.add_argument("--data_dir", default=None, help="C-Eval/CMMLU-layout CSV folder")
    data.add_argument("--hf_dataset", default=None, help="hub dataset in ceval/ceval-exam layout (online)")
    p.add_argument("--split", default="auto", help="val, test or dev (default: val if present, else test)")
    p.add_argument("--subjects", default=None, help="comma-separated subjects (default: all)")
    p.add_argument("--shots", type=int, default=0, help="dev examples before each question (default 0)")
    p.add_argument("--limit", type=int, default=0, help="at most this many questions per subject (0 = all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--details", action="store_true", help="include every question's log-likelihoods in --json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def validate(args):
    from hf_compat import check_model_source
    check_model_source(args)
    if (args.data_dir is None) == (args.hf_dataset is None):
        raise UserError("pass exactly one of --data_dir (local CSV folder) and --hf_dataset (hub dataset).")
    if args.shots < 0 or args.limit < 0 or args.batch_size < 1:
        raise UserError("--shots and --limit must be ≥ 0 and --batch_size ≥ 1.")
    if args.split not in ("auto", "val", "test", "dev"):
        raise UserError(f"--split {args.split!r} is not one of: auto, val, test, dev.")


def print_table(result: dict, title: str):
    width = max(len(s) for s in result["subjects"])
    for name, s in result["subjects"].items():
        print(f"  {name:<{width}}  {100 * s['acc']:6.2f}%  ({s['correct']}/{s['n']})")
    print(f"{title}: accuracy {100 * result['overall']:.2f}% ({result['correct']}/{result['n']}), "
          f"macro {100 * result['macro']:.2f}% over {len(result['subjects'])} subjects"
          + (f", {result['truncated']} prompts cut to fit" if result["truncated"] else ""))


def main(argv=None) -> int:
    return run_cli(parse_args, run, argv)


def run(args) -> int:
    validate(args)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    if args.data_dir is not None:
        tasks, source, split = load_local(Path(args.data_dir), args.split, subjects, args.shots)
    else:
        tasks, source, split = load_hub(args.hf_dataset, args.split, subjects, args.shots)
    from hf_compat import open_lm
    lm = open_lm(hf_dir=args.hf_dir, save_dir=args.save_dir or "out", stage=args.stage, model_name=args.model,
                 tokenizer_dir=args.tokenizer_dir, device=args.device, dtype=args.dtype)
    result = evaluate(lm, tasks, args.shots, args.limit, args.batch_size, progress=not args.quiet)
    details = result.pop("details")
    result = {"model": lm.description, "data": source, "split": split,
              "format": "lm-evaluation-harness ceval-valid/cmmlu prompt, options ' A'..' D' by log-likelihood",
              **result}
    print_table(result, f"{args.data_dir or args.hf_dataset} ({split}, {args.shots}-shot)")
    if args.json:
        if args.details:
            result["details"] = details
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
