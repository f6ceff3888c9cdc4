"""The report card of a training run: what each stage cost and what the model can do.

    python scripts/report.py --save_dir out [--log_dir log] [--eval_data data/eval/reasoning_eval.jsonl]
                             [--n_eval 200] [--out_dir out] [--ceval_dir ../shared/data/ceval]

Writes <out_dir>/report.md (a readable page), <out_dir>/report.json (every number, every reply)
and two figures, report_loss.png (train and validation loss of every stage) and
report_accuracy.png (held-out accuracy by kind after each stage that can answer). <out_dir>
defaults to --save_dir. What is measured:

- per stage (<save_dir>/<stage>.json): tokens seen, wall time, final train and validation loss,
  loss curves (from the record's history, else <log_dir>/<Stage>_steps.jsonl and <Stage>.log);
- held-out reasoning accuracy and format compliance (a well-formed <think>…</think><answer>…</answer>),
  overall and by kind, greedy, after every stage that can answer (all but pretrain). The problems
  are the first --n_eval of --eval_data, topped up from scripts/gen_reasoning.py with a held-out
  seed when the file has fewer; problems whose question appears in a stage's training data are
  left out and replaced, never silently dropped;
- bits per byte on held-out text (scripts/eval_ppl.py): pretraining validation text for the
  pretrained and the latest model, SFT validation answers for the SFT and the latest model;
- SFT fluency: greedy answers of the SFT model to its validation prompts, compared with the
  reference answers (difflib character similarity, share ≥ 0.9, mean), and the share that read
  as sentences at all (end on their own, Chinese text, no loop: `fluent`);
- C-Eval val accuracy of the latest model when --ceval_dir exists (scripts/eval_bench.py);
- sample answers to a fixed list of prompts; the machine and library versions.
"""
import argparse
import re
import datetime
import difflib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import Config  # noqa: E402
from checkpoint import UserError, is_reasoning_stage, load_model, open_tokenizer, resolve_device, run_cli  # noqa: E402

DEFAULT_EVAL = ROOT / "data" / "eval" / "reasoning_eval.jsonl"
DEFAULT_CEVAL = ROOT.parent / "shared" / "data" / "ceval"
DEMO_PRETRAIN_VAL = ROOT / "data" / "demo" / "pretrain_val.jsonl"
DEMO_SFT_VAL = ROOT / "data" / "demo" / "sft_512_val.jsonl"
EVAL_TOPUP_SEED = 999          # held-out seed for problems beyond the eval file
SIMILAR = 0.9                  # an SFT validation answer counts as reproduced at this similarity
MAX_CURVE_POINTS = 2000        # loss histories kept in report.json / plotted, evenly thinned
MAX_SCAN_BYTES = 300 << 20     # training files larger than this are not scanned for eval questions
SAMPLE_PROMPTS = [
    "你好，请介绍一下你自己。",
    "为什么天空是蓝色的？",
    "请用一句话解释什么是光合作用。",
    "早上起床后应该做些什么？",
    "小明有12个苹果，分给3个同学，每人分到几个？",
    "今天是星期三，再过10天是星期几？",
]


# ---------------------------------------------------------------- stages and their curves

def log_name(stage: str) -> str:
    entry = Config.STAGES.get(stage)
    return entry.log_name if entry else stage


def can_answer(stage: str) -> bool:
    """Every stage but plain-text pretraining has learned to reply to a chat."""
    entry = Config.STAGES.get(stage)
    return entry.data_kind != "pretrain" if entry else stage != "pretrain"


def read_stage_records(save_dir: Path) -> list[dict]:
    """Every <save_dir>/*.json that records a stage ("stage" and "results" keys), in pipeline order."""
    records = {}
    for path in sorted(save_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "stage" in record and isinstance(record.get("results"), dict):
            records[record["stage"]] = dict(record, _path=path)
    known = [s for s in Config.STAGES if s in records]
    return [records[s] for s in known + sorted(set(records) - set(known))]


def _restart_aware(points):
    """(step, value) pairs from an append-only log that may hold several runs or resumes: a step
    that goes back drops the points it replaces, so the last run's curve remains."""
    kept = []
    for step, value in points:
        while kept and kept[-1][0] >= step:
            kept.pop()
        kept.append((step, value))
    return kept


def _thin(steps, values, limit=MAX_CURVE_POINTS):
    if len(steps) <= limit:
        return list(steps), list(values)
    idx = sorted({round(i * (len(steps) - 1) / (limit - 1)) for i in range(limit)})
    return [steps[i] for i in idx], [values[i] for i in idx]


def read_history(record: dict, log_dir: Path | None) -> dict:
    """{"step", "loss", "val_step", "val_loss", "source"} for one stage."""
    import re
    h = record.get("history")
    if isinstance(h, dict) and h.get("step") and len(h.get("loss", ())) == len(h["step"]):
        steps, loss = _thin(h["step"], h["loss"])
        # val_step lists every validation; a stage that validates other metrics (GRPO: accuracy) has no val_loss
        val_step, val_loss = h.get("val_step") or [], h.get("val_loss") or []
        vs, vl = _thin(val_step, val_loss) if len(val_step) == len(val_loss) else ([], [])
        return {"step": steps, "loss": loss, "val_step": vs, "val_loss": vl, "source": "record"}
    stage = record["stage"]
    cfg_log = (record.get("train_config") or {}).get("log_dir")
    folder = Path(log_dir) if log_dir is not None else Path(cfg_log or "log")
    name = log_name(stage)
    train, val = [], []
    steps_file, log_file = folder / f"{name}_steps.jsonl", folder / f"{name}.log"
    if steps_file.is_file():
        for line in steps_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                train.append((int(row["step"]), float(row["loss"])))
            except (ValueError, KeyError, TypeError):
                continue
    if log_file.is_file():
        pattern = re.compile(r"^step (\d+): validation loss (\S+)$")
        for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
            m = pattern.match(line.strip())
            if m:
                try:
                    val.append((int(m.group(1)), float(m.group(2))))
                except ValueError:
                    continue
    train, val = _restart_aware(train), _restart_aware(val)
    steps, loss = _thin([s for s, _ in train], [v for _, v in train])
    vs, vl = _thin([s for s, _ in val], [v for _, v in val])
    source = f"{steps_file}" if train else f"none ({steps_file} not found)"
    return {"step": steps, "loss": loss, "val_step": vs, "val_loss": vl, "source": source}


def stage_row(record: dict, save_dir: Path, log_dir) -> dict:
    results, cfg = record["results"], record.get("train_config") or {}
    row = {"stage": record["stage"], "record": str(record["_path"]),
           "checkpoint": str(save_dir / f"{record['stage']}.pt"),
           "has_checkpoint": (save_dir / f"{record['stage']}.pt").is_file(),
           "model": cfg.get("model"), "steps": results.get("steps"),
           "wall_seconds": results.get("wall_seconds"),
           "final_train_loss": results.get("final_train_loss"), "final_val_loss": results.get("final_val_loss")}
    counted = results.get("tokens")
    if isinstance(counted, dict) and counted.get("computed") is not None:
        row.update(tokens=int(counted["computed"]), loss_tokens=counted.get("loss"), tokens_estimated=False,
                   tokens_note="counted by the trainer: every position of every batch, padding included; "
                               "loss_tokens: the positions that carry loss")
    elif isinstance(counted, (int, float)):
        row.update(tokens=int(counted), loss_tokens=None, tokens_estimated=False, tokens_note="counted by the trainer")
    else:
        row["loss_tokens"] = None
        keys = ("batch_size", "accumulation_steps", "max_seq_len")
        if all(isinstance(cfg.get(k), int) for k in keys) and isinstance(results.get("steps"), int):
            world = cfg.get("world_size") if isinstance(cfg.get("world_size"), int) else 1
            tokens = cfg["batch_size"] * cfg["accumulation_steps"] * cfg["max_seq_len"] * results["steps"] * world
            row.update(tokens=tokens, tokens_estimated=True,
                       tokens_note="upper bound: batch_size × accumulation_steps × max_seq_len × steps"
                                   + (" × world_size" if world > 1 else "")
                                   + " (short rows and padding make the real count lower)")
        else:
            row.update(tokens=None, tokens_estimated=True, tokens_note="not recorded")
    row["final_metrics"] = {k[len("final_"):]: v for k, v in results.items()
                            if k.startswith("final_") and k not in ("final_train_loss", "final_val_loss")}
    row["history"] = read_history(record, log_dir)
    return row


# ---------------------------------------------------------------- held-out problems

def training_files(records: list[dict]) -> list[tuple[str, Path]]:
    """(stage, file) of every conversation file an answering stage trained on: its --data_path and
    the generated reasoning curricula in its cache (<cache_dir or save_dir/cache>/curriculum/)."""
    files = []
    for record in records:
        cfg = record.get("train_config") or {}
        if not can_answer(record["stage"]):
            continue
        if cfg.get("data_path"):
            files.append((record["stage"], Path(cfg["data_path"])))
        if cfg.get("reasoning_problems"):
            cache = Path(cfg.get("cache_dir") or Path(cfg.get("save_dir") or record["_path"].parent) / "cache")
            files += [(record["stage"], p) for p in sorted((cache / "curriculum").glob("*.jsonl"))]
    return files


def training_questions(records: list[dict]) -> tuple[set, list[dict]]:
    """User turns (exact text) of every answering stage's training data, to keep them out of the eval."""
    questions, scanned = set(), []
    for stage, path in training_files(records):
        entry = {"stage": stage, "path": str(path), "scanned": False}
        scanned.append(entry)
        if not path.is_file():
            entry["why"] = "not found"
            continue
        if path.stat().st_size > MAX_SCAN_BYTES:
            entry["why"] = f"larger than {MAX_SCAN_BYTES >> 20} MB"
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    conv = json.loads(line).get("conversations") or []
                except (ValueError, AttributeError):
                    continue
                questions.update(m.get("content") for m in conv if isinstance(m, dict) and m.get("role") == "user")
        entry["scanned"] = True
    return questions, scanned


def held_out_problems(eval_data: Path, n_eval: int, seen: set, seed: int = EVAL_TOPUP_SEED) -> tuple[list, dict]:
    """The first n_eval problems of eval_data whose questions were never trained on, topped up
    with generated ones (the generator's eval format, a held-out seed) when the file runs short."""
    from eval_reasoning import read_problems
    from gen_reasoning import generate, to_eval
    from_file = read_problems(eval_data) if eval_data.is_file() else []
    in_training = [p for p in from_file if p["question"] in seen]
    problems = [p for p in from_file if p["question"] not in seen]
    problems = problems[:n_eval] if n_eval else problems
    taken = {p["question"] for p in problems}
    need = max(n_eval - len(problems), 0)
    extra, dropped_generated, size = [], 0, 2 * need + 50
    while need and len(extra) < need:
        extra, dropped_generated = [], 0
        for p in to_eval(generate(size, seed), seed):
            if p["question"] in seen or p["question"] in taken:
                dropped_generated += 1
            elif len(extra) < need:
                extra.append(p)
        size *= 2
    source = {"file": str(eval_data), "file_problems": len(from_file),
              "from_file": len(problems), "file_in_training": len(in_training),
              "generated": len(extra), "generated_seed": seed if extra else None,
              "generated_in_training_or_file": dropped_generated if extra else 0}
    return problems + extra, source


# ---------------------------------------------------------------- models

class Models:
    """Loads each stage's checkpoint once, for generation, on the chosen device."""

    def __init__(self, save_dir: Path, tok, device: str):
        self.save_dir, self.tok, self.cache = save_dir, tok, {}
        self.device, self.dtype = resolve_device(device, "auto", training=False)

    def __call__(self, stage: str):
        if stage not in self.cache:
            model, _ = load_model(self.save_dir / f"{stage}.pt", None, self.tok.hash)
            self.cache = {stage: model.to(self.device, self.dtype).eval()}     # keep one model in memory
        return self.cache[stage]


def bits_per_byte(save_dir: Path, stage: str, data: Path, score: str, tokenizer_dir, device: str,
                  limit: int = 200) -> dict:
    import eval_ppl
    from hf_compat import open_lm
    documents = eval_ppl.read_documents(data, score, limit)
    lm = open_lm(save_dir=save_dir, stage=stage, tokenizer_dir=tokenizer_dir, device=device, dtype="auto")
    result = eval_ppl.score(lm, documents, lm.max_len, max(1, lm.max_len // 2), batch_size=8, progress=False)
    return {"stage": stage, "data": str(data), "scored": score, "bits_per_byte": result["bits_per_byte"],
            "loss": result["loss"], "ppl": result["ppl"], "tokens": result["tokens"], "bytes": result["bytes"],
            "documents": result["documents"]}


LOOP = re.compile(r"(.{1,16}?)\1{2,}", re.S)     # a unit of 1–16 characters, three or more times in a row


def looping(text: str) -> str:
    """The repeated stretch if `text` runs in a loop ("我没有联网,我没有联网,我没有联网",
    "在一定在一定在一定", "0000000000"), else "": what an undertrained model's greedy decoding falls
    into instead of a sentence. A run of one character counts from 8 ("10000000元" is a number)."""
    for m in LOOP.finditer(text):
        if len(set(m.group(0))) > 1 or len(m.group(0)) >= 8:
            return m.group(0)
    return ""


def fluent(text: str, finished: bool) -> bool:
    """A reply that could pass for a written answer: it ends on its own within the cap, holds
    Chinese text, and runs in no loop. A floor, not a grade: it says nothing of whether it is right."""
    return finished and bool(re.search(r"[\u4e00-\u9fff]", text)) and not looping(text)


def sft_fluency(model, tok, val_path: Path, max_new_tokens: int, batch_size: int, limit: int) -> dict:
    """Greedy answers to the first user turn of each validation conversation, against the reference.
    A reference longer than max_new_tokens is compared on its first max_new_tokens tokens."""
    from dataset import iter_jsonl
    from eval_reasoning import chat_prompt_ids, greedy_replies
    cases = []
    for _, record, _ in iter_jsonl(val_path):
        conv = record.get("conversations") if isinstance(record, dict) else None
        if not conv:
            continue
        first_user = next((i for i, m in enumerate(conv) if m.get("role") == "user"), None)
        if first_user is None or first_user + 1 >= len(conv) or conv[first_user + 1].get("role") != "assistant":
            continue
        cases.append((conv[:first_user + 1], conv[first_user + 1]["content"]))
        if limit and len(cases) >= limit:
            break
    if not cases:
        return {"skipped": f"{val_path} has no conversation with a user turn answered by the assistant"}
    max_len = model.config.max_seq_len
    prompts = [chat_prompt_ids(tok, messages, max_new_tokens, max_len) for messages, _ in cases]
    replies = greedy_replies(model, tok, prompts, max_new_tokens, batch_size)
    rows = []
    for (messages, reference), reply in zip(cases, replies):
        ref_ids = tok.encode(reference)
        cut = len(ref_ids) > max_new_tokens
        compared = tok.decode(ref_ids[:max_new_tokens]) if cut else reference
        similarity = difflib.SequenceMatcher(None, reply["text"].strip(), compared.strip(), autojunk=False).ratio()
        rows.append({"prompt": messages[-1]["content"], "reference": reference, "reply": reply["text"],
                     "similarity": round(similarity, 4), "reference_cut": cut, "finished": reply["finished"],
                     "loop": looping(reply["text"]), "fluent": fluent(reply["text"], reply["finished"])})
    n = len(rows)
    return {"data": str(val_path), "n": n, "max_new_tokens": max_new_tokens, "threshold": SIMILAR,
            "fluent": sum(r["fluent"] for r in rows), "fluent_share": sum(r["fluent"] for r in rows) / n,
            "looping": sum(bool(r["loop"]) for r in rows), "cut_off": sum(not r["finished"] for r in rows),
            "reproduced": sum(r["similarity"] >= SIMILAR for r in rows),
            "reproduced_share": sum(r["similarity"] >= SIMILAR for r in rows) / n,
            "mean_similarity": sum(r["similarity"] for r in rows) / n,
            "references_cut": sum(r["reference_cut"] for r in rows), "rows": rows}


def ceval_accuracy(save_dir: Path, stage: str, ceval_dir: Path, tokenizer_dir, device: str, limit: int) -> dict:
    import eval_bench
    from hf_compat import open_lm
    tasks, source, split = eval_bench.load_local(ceval_dir, "val", None, 0)
    lm = open_lm(save_dir=save_dir, stage=stage, tokenizer_dir=tokenizer_dir, device=device, dtype="auto")
    result = eval_bench.evaluate(lm, tasks, 0, limit, batch_size=16, progress=False)
    result.pop("details")
    return {"stage": stage, "data": source, "split": split, "shots": 0, "limit_per_subject": limit,
            "accuracy": result["overall"], "correct": result["correct"], "n": result["n"],
            "macro": result["macro"], "seconds": result["seconds"],
            "subjects": {k: v["acc"] for k, v in result["subjects"].items()}}


# ---------------------------------------------------------------- machine

def machine_info(device) -> dict:
    import torch
    from importlib import metadata
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "tokenizers", "numpy", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = None
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            commit += "-dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "device": str(device), "git_commit": commit, "versions": versions}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------- figures

def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def plot_losses(stages: list[dict], path: Path) -> bool:
    plt = _pyplot()
    drawn = [s for s in stages if s["history"]["step"] or s["history"]["val_step"]]
    if plt is None or not drawn:
        return False
    fig, axes = plt.subplots(1, len(drawn), figsize=(4 * len(drawn), 3.4), squeeze=False)
    for ax, s in zip(axes[0], drawn):
        h = s["history"]
        if len(h["step"]) > 100:      # per-step losses are noisy: draw them faint, with a running mean
            k = max(len(h["step"]) // 50, 2)
            ax.plot(h["step"], h["loss"], lw=0.5, alpha=0.3, color="C0")
            mean = [sum(h["loss"][max(0, i - k + 1):i + 1]) / len(h["loss"][max(0, i - k + 1):i + 1])
                    for i in range(len(h["loss"]))]
            ax.plot(h["step"], mean, lw=1.2, color="C0", label=f"train ({k}-point mean)")
        elif h["step"]:
            ax.plot(h["step"], h["loss"], lw=1, color="C0", label="train")
        if h["val_step"]:
            ax.plot(h["val_step"], h["val_loss"], "o-", ms=4, color="C1", label="validation")
        ax.set_title(s["stage"])
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (nats/token)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_accuracy(reasoning: dict, path: Path) -> bool:
    plt = _pyplot()
    stages = list(reasoning)
    if plt is None or not stages:
        return False
    kinds = sorted({k for r in reasoning.values() for k in r["by_kind"]}) + ["all"]
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(stages) + 2), 3.6))
    cmap = plt.get_cmap("tab10")
    for j, kind in enumerate(kinds):
        values = [100 * (r["accuracy"] if kind == "all" else r["by_kind"].get(kind, {}).get("accuracy", 0))
                  for r in reasoning.values()]
        ax.bar([i + (j - (len(kinds) - 1) / 2) * width for i in range(len(stages))], values, width,
               label=kind, color="black" if kind == "all" else cmap(j % 10))
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels([f"{s}\n(format {100 * r['format_rate']:.0f}%)" for s, r in reasoning.items()])
    ax.set_ylabel(f"held-out accuracy, % (n = {next(iter(reasoning.values()))['n']})")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- the page

def _num(x, fmt="{:.3f}"):
    return "–" if x is None else fmt.format(x)


def _tokens(n, estimated):
    if n is None:
        return "–"
    text = f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)
    return ("≤ " if estimated else "") + text


def _seconds(x):
    return "–" if x is None else f"{x:.1f} s" if x < 10 else f"{x:.0f} s"


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()) or "(empty)"
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(r: dict) -> str:
    lines = ["# XiaoXin report card", "",
             f"`{r['save_dir']}`, written {r['created']} in {r['seconds']:.0f} s "
             f"on {r['machine']['device']} ({r['machine']['cpu']}, {r['machine']['cores']} cores). "
             f"Every number is also in `report.json`.", "",
             "## Stages", "",
             "| stage | model | steps | tokens seen | of which loss tokens | wall time | final train loss | "
             "final validation loss |",
             "|---|---|---|---|---|---|---|---|"]
    for s in r["stages"]:
        lines.append(f"| {s['stage']} | {s['model'] or '–'} | {s['steps']} | {_tokens(s['tokens'], s['tokens_estimated'])} | "
                     f"{_tokens(s['loss_tokens'], False)} | {_seconds(s['wall_seconds'])} | "
                     f"{_num(s['final_train_loss'])} | {_num(s['final_val_loss'])} |")
    if any(s["tokens_estimated"] and s["tokens"] is not None for s in r["stages"]):
        lines += ["", "≤: not counted by the trainer; an upper bound, batch × accumulation × sequence length × steps."]
    total = sum(s["wall_seconds"] or 0 for s in r["stages"])
    lines += ["", f"Training wall time in all: {total:.0f} s ({total / 60:.1f} min).", ""]
    if r["plots"]["loss"]:
        lines += [f"![loss curves]({r['plots']['loss']})", ""]

    ev = r["reasoning"]
    lines += ["## Held-out reasoning", ""]
    src = ev["problems"]
    lines.append(f"{ev['n']} problems, greedy, at most {ev['max_new_tokens']} new tokens: {src['from_file']} from "
                 f"`{src['file']}`" + (f" and {src['generated']} generated with held-out seed {src['generated_seed']}"
                                        if src["generated"] else "") +
                 f". Left out because their question is in the training data: {src['file_in_training']} from the "
                 f"file, {src['generated_in_training_or_file']} generated. Format = a well-formed "
                 f"`<think>…</think><answer>…</answer>`; cut off = no end of reply within the cap.")
    unscanned = [f"`{t['path']}` ({t['why']})" for t in src["training_data_scanned"] if not t["scanned"]]
    if unscanned:
        lines.append(f"Not checked for overlap with the problems: {', '.join(unscanned)}.")
    lines.append("")
    if ev["stages"]:
        kinds = sorted({k for s in ev["stages"].values() for k in s["by_kind"]})
        lines += ["| stage | accuracy | format | cut off | " + " | ".join(kinds) + " |",
                  "|---|---|---|---|" + "---|" * len(kinds)]
        for stage, s in ev["stages"].items():
            per_kind = " | ".join(f"{s['by_kind'][k]['correct']}/{s['by_kind'][k]['n']}" if k in s["by_kind"] else "–"
                                  for k in kinds)
            lines.append(f"| {stage} | **{s['accuracy']:.1%}** ({s['correct']}/{s['n']}) | {s['format_rate']:.1%} | "
                         f"{s['unfinished']} | {per_kind} |")
        lines.append("")
        if r["plots"]["accuracy"]:
            lines += [f"![accuracy by kind]({r['plots']['accuracy']})", ""]
    else:
        lines += ["No stage that can answer (sft and later) has a checkpoint here.", ""]

    lines += ["## Bits per byte on held-out text", "", "| text | stage | bits per byte | tokens |", "|---|---|---|---|"]
    for b in r["bits_per_byte"]:
        if "skipped" in b:
            lines.append(f"| {b.get('name', '')} | {b.get('stage', '–')} | skipped: {b['skipped']} | |")
        else:
            lines.append(f"| `{Path(b['data']).name}` ({b['scored']}) | {b['stage']} | {b['bits_per_byte']:.3f} | "
                         f"{b['tokens']} |")
    lines.append("")

    f = r["sft_fluency"]
    lines += ["## SFT fluency", ""]
    if "skipped" in f:
        lines += [f"Skipped: {f['skipped']}.", ""]
    else:
        lines += [f"The SFT model's greedy answers (≤ {f['max_new_tokens']} tokens) to the first user turn of the "
                  f"{f['n']} conversations in `{Path(f['data']).name}`: {f['reproduced']} of {f['n']} "
                  f"({f['reproduced_share']:.0%}) reproduce the reference (character similarity ≥ {f['threshold']}), "
                  f"mean similarity {f['mean_similarity']:.2f}"
                  + (f"; {f['references_cut']} references longer than the cap were compared on their start" if
                     f["references_cut"] else "") + ". "
                  f"**{f['fluent']} of {f['n']} ({f['fluent_share']:.0%}) read as sentences**: they end within the "
                  f"cap, hold Chinese text and run in no loop ({f['looping']} loop, {f['cut_off']} cut off).", "",
                  "| prompt | reference | SFT answer | similarity | sentence? |", "|---|---|---|---|---|"]
        for row in f["rows"][:5]:
            lines.append(f"| {_cell(row['prompt'], 40)} | {_cell(row['reference'], 80)} | {_cell(row['reply'], 80)} | "
                         f"{row['similarity']:.2f} | {'yes' if row['fluent'] else 'loop' if row['loop'] else 'no'} |")
        lines.append("")

    c = r["ceval"]
    lines += ["## C-Eval", ""]
    lines += ([f"Skipped: {c['skipped']}.", ""] if "skipped" in c else
              [f"{c['stage']}: {c['accuracy']:.1%} ({c['correct']}/{c['n']}) on `{c['data']}` ({c['split']}, "
               f"{c['shots']}-shot, log-likelihood of the options; chance is 25%), macro {c['macro']:.1%}.", ""])

    lines += ["## Sample answers", "", f"Greedy, at most {r['samples']['max_new_tokens']} new tokens.", ""]
    stages = r["samples"]["stages"]
    if stages:
        lines += ["| prompt | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for row in r["samples"]["rows"]:
            lines.append(f"| {_cell(row['prompt'], 60)} | " +
                         " | ".join(_cell(row["replies"][s], 240) for s in stages) + " |")
    else:
        lines.append("No stage that can answer has a checkpoint here.")
    lines.append("")

    m = r["machine"]
    lines += ["## Machine", "", f"- CPU: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']})"]
    if m.get("gpu"):
        lines.append(f"- GPU: {m['gpu']}")
    lines += [f"- device: {m['device']}", f"- platform: {m['platform']}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
              f"- git commit: {m['git_commit'] or 'unknown'}", ""]
    for note in r["notes"]:
        lines.append(f"> {note}")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- the report

def build_report(save_dir, log_dir=None, eval_data=DEFAULT_EVAL, n_eval: int = 200, out_dir=None,
                 tokenizer_dir=ROOT / "XiaoXin_tokenizer", device: str = "auto", max_new_tokens: int = 256,
                 batch_size: int = 64, ceval_dir=DEFAULT_CEVAL, ceval_limit: int = 0, sample_tokens: int = 96,
                 fluency_tokens: int = 96, n_fluency: int = 50, eval_seed: int = EVAL_TOPUP_SEED,
                 progress: bool = True) -> dict:
    """Measure the run in save_dir and write report.md, report.json and the figures to out_dir
    (default save_dir). Returns the report (what report.json holds). User mistakes → UserError."""
    from eval_reasoning import chat_prompt_ids, evaluate, greedy_replies
    start = time.perf_counter()
    save_dir = Path(save_dir)
    out_dir = Path(out_dir) if out_dir is not None else save_dir
    if not save_dir.is_dir():
        raise UserError(f"--save_dir {save_dir} does not exist; pass the folder holding the stage checkpoints.")
    records = read_stage_records(save_dir)
    if not records:
        raise UserError(f"--save_dir {save_dir} holds no stage record (<stage>.json); train a stage first.")
    if n_eval < 0 or max_new_tokens < 1 or batch_size < 1:
        raise UserError("--n_eval must be ≥ 0, and --max_new_tokens and --batch_size ≥ 1.")
    tok = open_tokenizer(tokenizer_dir)
    tok_path = tok.path
    models = Models(save_dir, tok, device)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    notes, timings = [], {}

    stages = [stage_row(rec, save_dir, log_dir) for rec in records]
    present = [s["stage"] for s in stages if s["has_checkpoint"]]
    answering = [s for s in present if can_answer(s)]
    latest = present[-1] if present else None
    missing = [s["stage"] for s in stages if not s["has_checkpoint"]]
    if missing:
        notes.append(f"no checkpoint for {', '.join(missing)}: only its training record is reported.")

    # Held-out reasoning, after every stage that can answer.
    t = time.perf_counter()
    seen, scanned = training_questions(records)
    problems, source = held_out_problems(Path(eval_data), n_eval, seen, eval_seed)
    if not problems:
        raise UserError(f"--eval_data {eval_data} holds no problems and --n_eval is 0; pass --n_eval N.")
    source["training_data_scanned"] = scanned
    reasoning = {}
    for stage in answering:
        say(f"reasoning eval: {stage} ({len(problems)} problems)")
        reasoning[stage] = evaluate(models(stage), tok, problems, max_new_tokens, batch_size, progress=progress)
    timings["reasoning"] = time.perf_counter() - t

    # Sample answers, and SFT fluency on its validation prompts.
    t = time.perf_counter()
    reasoners = [s for s in answering if is_reasoning_stage(s)] or answering
    sample_stages = list(dict.fromkeys(s for s in ("sft", reasoners[-1] if reasoners else None) if s in answering))
    samples = {"max_new_tokens": sample_tokens, "stages": sample_stages,
               "rows": [{"prompt": p, "replies": {}} for p in SAMPLE_PROMPTS]}
    for stage in sample_stages:
        model = models(stage)
        ids = [chat_prompt_ids(tok, [{"role": "user", "content": p}], sample_tokens, model.config.max_seq_len)
               for p in SAMPLE_PROMPTS]
        for row, reply in zip(samples["rows"], greedy_replies(model, tok, ids, sample_tokens, batch_size)):
            row["replies"][stage] = reply["text"]
    timings["samples"] = time.perf_counter() - t

    t = time.perf_counter()
    by_stage = {r["stage"]: r for r in records}
    sft_val = Path((by_stage.get("sft", {}).get("train_config") or {}).get("val_path") or DEMO_SFT_VAL)
    sft_val = sft_val if sft_val.is_file() else DEMO_SFT_VAL
    if "sft" in present and sft_val.is_file():
        say("SFT fluency")
        fluency = sft_fluency(models("sft"), tok, sft_val, fluency_tokens, batch_size, n_fluency)
    else:
        fluency = {"skipped": "no sft checkpoint" if "sft" not in present else f"{sft_val} not found"}
    timings["fluency"] = time.perf_counter() - t

    # Bits per byte on held-out text.
    t = time.perf_counter()
    say("bits per byte")
    pre_val = Path((by_stage.get("pretrain", {}).get("train_config") or {}).get("val_path") or DEMO_PRETRAIN_VAL)
    pre_val = pre_val if pre_val.is_file() else DEMO_PRETRAIN_VAL
    bpb = []
    for name, data, score, chosen in (("pretraining text", pre_val, "all", ["pretrain", latest]),
                                      ("SFT answers", sft_val, "assistant", ["sft", latest])):
        for stage in dict.fromkeys(s for s in chosen if s in present):
            if not data.is_file():
                bpb.append({"name": name, "stage": stage, "skipped": f"{data} not found"})
                continue
            bpb.append({"name": name, **bits_per_byte(save_dir, stage, data, score, tok_path, device)})
    if isinstance(fluency, dict) and "skipped" not in fluency:
        fluency["bits_per_byte"] = next((b["bits_per_byte"] for b in bpb if b["name"] == "SFT answers"
                                         and b["stage"] == "sft" and "bits_per_byte" in b), None)
    timings["bits_per_byte"] = time.perf_counter() - t

    t = time.perf_counter()
    if ceval_dir is None or not Path(ceval_dir).is_dir():
        ceval = {"skipped": f"no C-Eval data at {ceval_dir} (pass --ceval_dir)"}
    elif latest is None:
        ceval = {"skipped": "no checkpoint"}
    else:
        say(f"C-Eval: {latest}")
        try:
            ceval = ceval_accuracy(save_dir, latest, Path(ceval_dir), tok_path, device, ceval_limit)
        except UserError as e:     # a broken C-Eval folder should not cost the rest of the report
            ceval = {"skipped": f"C-Eval at {ceval_dir} could not be read: {e}"}
    timings["ceval"] = time.perf_counter() - t

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"loss": "report_loss.png", "accuracy": "report_accuracy.png"}
    if _pyplot() is None:
        print("note: matplotlib is not installed, so the report has no figures (pip install matplotlib).",
              file=sys.stderr)
        notes.append("matplotlib was not installed: no figures.")
        plots = {"loss": None, "accuracy": None}
    else:
        if not plot_losses(stages, out_dir / plots["loss"]):
            plots["loss"] = None
        if not plot_accuracy(reasoning, out_dir / plots["accuracy"]):
            plots["accuracy"] = None

    report = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "save_dir": str(save_dir), "latest_stage": latest,
        "stages": stages,
        "reasoning": {"n": len(problems), "max_new_tokens": max_new_tokens, "greedy": True,
                      "problems": source, "stages": reasoning},
        "bits_per_byte": bpb, "sft_fluency": fluency, "ceval": ceval, "samples": samples,
        "machine": machine_info(models.device), "plots": plots, "notes": notes,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


# ---------------------------------------------------------------- publishing

README_START, README_END = "<!-- report:start -->", "<!-- report:end -->"


def render_summary(r: dict) -> str:
    """The README's block: the stage table, held-out accuracy by stage and kind, the figures."""
    lines = [f"From one run of the demo pipeline (each stage's demo profile, then the report card; "
             f"{r['created'][:10]}, {r['machine']['cpu']}, "
             f"{r['machine']['cores']} cores, torch {r['machine']['versions'].get('torch')}, "
             f"commit {(r['machine']['git_commit'] or 'unknown')[:7]}); the whole card: "
             f"[assets/report.md](assets/report.md).", "",
             "| stage | steps | tokens seen | wall time | final train loss | final validation loss |",
             "|---|---|---|---|---|---|"]
    for st in r["stages"]:
        lines.append(f"| {st['stage']} | {st['steps']} | {_tokens(st['tokens'], st['tokens_estimated'])} | "
                     f"{_seconds(st['wall_seconds'])} | {_num(st['final_train_loss'])} | {_num(st['final_val_loss'])} |")
    total = sum(st["wall_seconds"] or 0 for st in r["stages"])
    lines += ["", f"Training: {total / 60:.1f} min; the report card itself: {r['seconds'] / 60:.1f} min.", ""]
    ev = r["reasoning"]
    if ev["stages"]:
        kinds = sorted({k for st in ev["stages"].values() for k in st["by_kind"]})
        lines += [f"Held-out reasoning ({ev['n']} generated problems none of whose questions was trained on; "
                  f"greedy; format = a well-formed `<think>…</think><answer>…</answer>`):", "",
                  "| stage | accuracy | format | " + " | ".join(kinds) + " |", "|---|---|---|" + "---|" * len(kinds)]
        for stage, st in ev["stages"].items():
            lines.append(f"| {stage} | **{st['accuracy']:.1%}** | {st['format_rate']:.1%} | " +
                         " | ".join(f"{st['by_kind'][k]['correct']}/{st['by_kind'][k]['n']}" if k in st["by_kind"]
                                    else "–" for k in kinds) + " |")
        lines.append("")
    for key, alt in (("loss", "loss curves of every stage"), ("accuracy", "held-out accuracy by kind")):
        if r["plots"].get(key):
            lines.append(f"![{alt}](assets/{r['plots'][key]})")
    return "\n".join(lines).rstrip() + "\n"


def publish(out_dir, readme=ROOT / "README.md", assets=ROOT / "assets") -> list[Path]:
    """Copy one run's report card into the repository on purpose: report.md, report.json and the
    figures to assets/, and its summary between the README's report markers. Nothing else writes there."""
    out_dir = Path(out_dir)
    source = out_dir / "report.json"
    if not source.is_file():
        raise UserError(f"{source} does not exist; write the report first (python scripts/report.py --save_dir DIR).")
    r = json.loads(source.read_text(encoding="utf-8"))
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise UserError(f"{readme} needs exactly one {README_START} … {README_END} block to publish into.")
    written = []
    assets = Path(assets)
    for name in [v for v in r["plots"].values() if v] + ["report.md", "report.json"]:
        shutil.copyfile(out_dir / name, assets / name)
        written.append(assets / name)
    head, rest = text.split(README_START)
    _, tail = rest.split(README_END)
    readme.write_text(f"{head}{README_START}\n{render_summary(r)}{README_END}{tail}", encoding="utf-8")
    written.append(readme)
    return written


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save_dir", default="out", help="folder holding <stage>.pt and <stage>.json")
    p.add_argument("--log_dir", default=None, help="folder of <Stage>_steps.jsonl (default: each stage's own log_dir)")
    p.add_argument("--eval_data", default=str(DEFAULT_EVAL), help="held-out problems (gen_reasoning.py --format eval)")
    p.add_argument("--n_eval", type=int, default=200, help="problems per stage (topped up when the file is short)")
    p.add_argument("--out_dir", default=None, help="where the report goes (default: --save_dir)")
    p.add_argument("--tokenizer_dir", default="XiaoXin_tokenizer")
    p.add_argument("--device", default="auto")
    p.add_argument("--max_new_tokens", type=int, default=256, help="reply length cap for the reasoning eval")
    p.add_argument("--batch_size", type=int, default=64, help="replies decoded together")
    p.add_argument("--ceval_dir", default=str(DEFAULT_CEVAL), help="C-Eval CSV folder (skipped if absent)")
    p.add_argument("--ceval_limit", type=int, default=0, help="questions per C-Eval subject (0 = all)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--publish", action="store_true",
                   help="also copy this report card into assets/ and the README's report block")
    p.add_argument("--publish_only", action="store_true",
                   help="publish the report already written in --out_dir/--save_dir without measuring again")
    return p.parse_args(argv)


def run(args) -> int:
    out = Path(args.out_dir or args.save_dir)
    if args.publish_only:
        for path in publish(out):
            print(f"wrote {path}")
        return 0
    report = build_report(args.save_dir, args.log_dir, args.eval_data, args.n_eval, args.out_dir, args.tokenizer_dir,
                          args.device, args.max_new_tokens, args.batch_size, args.ceval_dir, args.ceval_limit,
                          progress=not args.quiet)
    for stage, r in report["reasoning"]["stages"].items():
        print(f"{stage:9s} held-out accuracy {r['accuracy']:6.1%} ({r['correct']}/{r['n']}), "
              f"format {r['format_rate']:6.1%}")
    print(f"wrote {out / 'report.md'} and {out / 'report.json'} in {report['seconds']:.0f} s")
    if args.publish:
        for path in publish(out):
            print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    return run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
