"""Data doctor: find what is wrong with a jsonl training file before it costs a training run.

Works on all four data formats (pretrain, sft, sft_long, r1), detected per file from its first
records, or forced with --kind pretrain|sft|r1 (sft_long is sft with a longer --max_seq_len).
Files of any size are streamed with a progress bar; memory grows only by a small index per
record: ≈4 KB with near-duplicate detection (datasketch's in-memory MinHash LSH index), ≈0.2 KB
with --near_threshold 0, i.e. ≈4 GB or ≈0.2 GB for a million records.

    python scripts/data_doctor.py check dataset/sft_512.jsonl
    python scripts/data_doctor.py check data.jsonl --json report.json --plot lengths.png --max_seq_len 1024
    python scripts/data_doctor.py clean data.jsonl --out clean.jsonl --json dropped.json [--drop duplicate garbled]
    python scripts/data_doctor.py loss data.jsonl --save_dir out --stage sft --top 50 --out worst.jsonl --plot loss.png

check   counts records; token-length histogram (text table, and a PNG with --plot) against
        --max_seq_len, i.e. how many records the loader would truncate; every problem record
        below; and how problems spread over the start / middle / end thirds of the file.
        --json writes {"file", "kind", "lines", "records", "problems": [{"line", "kind",
        "detail", ["also"]}], "counts", "by_position", "length_histogram", "text", ...}.
clean   writes a filtered, deduplicated, shuffled copy (lines copied byte for byte) and a report
        of what was dropped and why: by default every kind below except non_chinese (--drop picks).
        The first of a set of duplicates is kept. The input is never touched; an --out that is
        the input is refused.
loss    scores every record with a trained checkpoint: the --stage's own objective (losses.py;
        cross-entropy for the stages shipped) per loss-mask token (assistant tokens for sft/r1,
        all tokens for pretrain), on the batches the trainer's loader builds, so exactly the
        tokens, truncation and mask training uses (its token cache, <save_dir>/cache by default,
        is reused; bad lines are skipped). A pretrain document is scored on its own (truncated
        at max_seq_len) where training would pack it into rows with its neighbours. Prints mean loss per third of the file and the --top highest-loss records,
        writes them with --out, and plots loss against file position with --plot (scatter plus
        rolling mean): whether dirty data clusters anywhere, e.g. at the end of the file.

--max_seq_len defaults to the number in the file name (sft_1024.jsonl → 1024), else the
matching stage in Config.py (pretrain and sft 512, r1 = distill 1024). The loader keeps
max_seq_len + 1 tokens of a conversation; pretrain documents are packed across rows, so they are
never truncated and never `too_long`.

Problem kinds. Each problem record appears once in "problems"; its `kind` is the first that
applies in this order, and any others are listed in `also`:

  bad_json        the line is not valid UTF-8 or not valid JSON
  bad_structure   valid JSON but not a record of the kind: a missing field, a wrong role, roles
                  not alternating user/assistant, a conversation not ending on the assistant
                  (the reasons are dataset.check_conversation's / check_pretrain's)
  empty_content   a text or message content that is empty, whitespace or invisible characters
  unbalanced_tags r1 only: an assistant message without exactly one each of <think>, </think>,
                  <answer>, </answer> in that order
  garbled         U+FFFD replacement characters, mojibake (UTF-8 read as Latin-1/cp1252, e.g.
                  'Ã©', 'æˆ‘'; or '锟斤拷'), control characters, lone surrogates
  duplicate       the same content as an earlier record after NFKC and whitespace normalisation
  near_duplicate  character 5-gram Jaccard similarity ≥ --near_threshold (default 0.8) with an
                  earlier record, estimated with MinHash (datasketch, 64 permutations, LSH for
                  candidates); pairs within ≈0.05 of the threshold may fall either way
  too_long        sft/r1 only: more than max_seq_len + 1 tokens, so the loader truncates it
  non_chinese     fewer than 10% of the letters are Chinese characters (at least 20 letters);
                  reported, but not dropped by clean unless asked with --drop

Blank lines are counted (report "blank_lines") but are not problems: the loader skips them.
Exit codes: 0 done (problems found or not), 2 a usage or file error (one sentence on stderr).
"""
import argparse
import hashlib
import json
import os
import re
import sys
import unicodedata
from array import array
from bisect import bisect_left
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import Config  # noqa: E402
from checkpoint import UserError, open_tokenizer, run_cli  # noqa: E402
from dataset import IM_END, check_conversation, check_pretrain, render_chat  # noqa: E402

KINDS = {  # in order of severity: a record's `kind` is the first of these that applies
    "bad_json": "not valid UTF-8 / JSON",
    "bad_structure": "not a record of this kind",
    "empty_content": "empty or whitespace-only field",
    "unbalanced_tags": "r1 tags missing, repeated or out of order",
    "garbled": "replacement chars, mojibake or control chars",
    "duplicate": "exact duplicate of an earlier record",
    "near_duplicate": "near duplicate of an earlier record",
    "too_long": "truncated at max_seq_len",
    "non_chinese": "mostly non-Chinese letters (a note: clean keeps these)",
}
DEFAULT_DROP = [k for k in KINDS if k != "non_chinese"]
THIRDS = ("start", "middle", "end")
R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
SHINGLE = 5
NUM_PERM = 64
LOW_CJK_SHARE, MIN_LETTERS = 0.10, 20
DETECT_LINES = 1000


# ---------------------------------------------------------------- text checks

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_LETTER = re.compile(r"[^\W\d_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")     # C0/C1 except \t \n \r
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INVISIBLE = re.compile(r"[\s\u200b-\u200f\u2060-\u2064\ufeff\u00ad]+")


def _mojibake_tables():
    """UTF-8 bytes read as cp1252 (or Latin-1 where cp1252 has a hole) show up as these characters."""
    byte_of = {}
    for b in range(0x80, 0x100):
        try:
            byte_of[bytes([b]).decode("cp1252")] = b
        except UnicodeDecodeError:
            pass
        byte_of.setdefault(chr(b), b)       # Latin-1 view, C1 controls included
    cont = "".join(re.escape(c) for c, b in byte_of.items() if 0x80 <= b <= 0xBF)
    pattern = re.compile(f"[\u00c2-\u00df][{cont}]|[\u00e0-\u00ef][{cont}]{{2}}|[\u00f0-\u00f4][{cont}]{{3}}")
    return byte_of, pattern


_MOJIBAKE_BYTE, _MOJIBAKE = _mojibake_tables()


def find_mojibake(text: str):
    """(mojibake, what it meant) for the first run of characters that decodes as UTF-8 once mapped
    back to bytes, or None. Runs are reported whole, so 'æˆ‘æ˜¯' shows as '我是'."""
    run, meant, end = "", "", -1
    for m in _MOJIBAKE.finditer(text):
        try:
            piece = bytes(_MOJIBAKE_BYTE[c] for c in m.group()).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if run and m.start() != end:
            break
        run, meant, end = run + m.group(), meant + piece, m.end()
    return (run, meant) if run else None


def garbled_detail(text: str) -> str | None:
    found = []
    if n := text.count("\ufffd"):
        found.append(f"{n} U+FFFD replacement character{'s' if n > 1 else ''}")
    if n := text.count("锟斤拷"):
        found.append(f"'锟斤拷' ×{n} (U+FFFD that went through GBK)")
    if moji := find_mojibake(text):
        found.append(f"mojibake {moji[0][:24]!r} (UTF-8 read as Latin-1/cp1252; meant {moji[1][:12]!r})")
    if moji:
        text = _MOJIBAKE.sub("", text)        # its C1 characters are not counted again as control characters
    if n := len(_CONTROL.findall(text)):
        first = _CONTROL.search(text).group()
        found.append(f"{n} control character{'s' if n > 1 else ''} (first U+{ord(first):04X})")
    if n := len(_SURROGATE.findall(text)):
        found.append(f"{n} lone surrogate{'s' if n > 1 else ''}")
    return "; ".join(found) or None


def letter_counts(text: str) -> tuple[int, int]:
    """(Chinese characters, all letters); str.isalpha counts Chinese characters as letters."""
    return _CJK.subn("", text)[1], _LETTER.subn("", text)[1]


def safe_text(text: str) -> str:
    """Lone surrogates (possible via JSON \\ud800 escapes) cannot be encoded; the record is
    already reported as garbled, so the tokenizer sees U+FFFD instead."""
    if _SURROGATE.search(text):
        return _SURROGATE.sub("\ufffd", text)
    return text


def dedup_key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def content_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def shingle_hashes(text: str, k: int = SHINGLE) -> np.ndarray:
    """32-bit hashes of the distinct character k-grams, vectorised (a Python loop per shingle
    would dominate the run time on a large file)."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    if len(cps) == 0:
        return np.zeros(1, dtype=np.uint64)
    k = min(k, len(cps))
    n = len(cps) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    for i in range(k):                       # polynomial hash of each window; uint64 arithmetic wraps
        h = h * np.uint64(0x100000001B3) + cps[i:i + n]
    h ^= h >> np.uint64(29)                  # splitmix64 finaliser, so the low 32 bits are well mixed
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return np.unique(h & np.uint64(0xFFFFFFFF))


class NearDuplicates:
    """MinHash LSH over character 5-gram shingles (5-grams suit Chinese, which has no spaces).
    Candidates from the LSH are confirmed with the MinHash Jaccard estimate; only records that
    are kept enter the index, so a chain A ~ B ~ C is judged against what survives."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM):
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            raise UserError("near-duplicate detection needs the datasketch package: pip install datasketch "
                            "(or pass --near_threshold 0 to skip it).") from None
        self.MinHash, self.threshold, self.num_perm = MinHash, threshold, num_perm
        # Bands tuned for recall (false negatives weighted 0.9): the LSH's false positives cost only
        # a signature comparison, which then rejects them. 64 permutations: 9 bands of 7 rows.
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        self.permutations = MinHash(num_perm=num_perm, seed=1).permutations
        self.signatures = np.empty((1024, num_perm), dtype=np.uint32)
        self.lines = array("q")

    def match_or_add(self, text: str, line: int):
        """(earlier line, similarity) of the most similar indexed record, else index this one."""
        m = self.MinHash(num_perm=self.num_perm, permutations=self.permutations, scheme="affine32", hashfunc=int)
        m.update_batch(shingle_hashes(text))
        candidates = self.lsh.query(m)
        if candidates:
            similarity = (self.signatures[candidates] == m.hashvalues).mean(axis=1)
            best = int(np.argmax(similarity))
            if similarity[best] >= self.threshold:
                return self.lines[candidates[best]], float(similarity[best])
        key = len(self.lines)
        if key == len(self.signatures):
            self.signatures = np.concatenate([self.signatures, np.empty_like(self.signatures)])
        self.signatures[key] = m.hashvalues
        self.lines.append(line)
        self.lsh.insert(key, m, check_duplication=False)
        return None


# ---------------------------------------------------------------- record checks

def read_lines(path):
    """(line number from 1, byte offset, raw bytes) of every line, split on b'\\n' only, as the loader does."""
    with open(path, "rb") as f:
        offset = 0
        for line_no, raw in enumerate(f, 1):
            yield line_no, offset, raw
            offset += len(raw)


def parse_line(raw: bytes):
    """(record, None) or (None, why the line is not JSON)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"line is not valid UTF-8 (byte {e.start + 1})"
    try:
        return json.loads(text.rstrip("\r\n")), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at column {e.colno})"
    except (ValueError, RecursionError) as e:   # e.g. a 5000-digit number, or nesting too deep
        return None, f"invalid JSON ({type(e).__name__}: {str(e)[:80]})"


def check_structure(record, kind: str):
    """Returns (messages or text, None) for a valid record, else (None, (problem kind, reason))."""
    try:
        if kind == "pretrain":
            return check_pretrain(record), None
        return check_conversation(record), None
    except ValueError as e:
        reason = str(e)
    empty = reason.endswith(("is empty", "has empty content"))
    if empty and kind != "pretrain":                   # check_conversation says "empty" for non-strings too
        i = int(re.search(r"message (\d+)", reason).group(1)) - 1
        if not isinstance(record["conversations"][i]["content"], str):
            return None, ("bad_structure", f"message {i + 1} content is not a string")
    return None, ("empty_content" if empty else "bad_structure", reason)


def tag_problem(messages) -> str | None:
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        c = m["content"]
        counts = [c.count(t) for t in R1_TAGS]
        wrong = [f"{t} ×{n}" if n else f"no {t}" for t, n in zip(R1_TAGS, counts) if n != 1]
        if wrong:
            return f"message {i + 1} (assistant): {', '.join(wrong)}"
        positions = [c.find(t) for t in R1_TAGS]
        if positions != sorted(positions):
            return f"message {i + 1} (assistant): tags out of order ({' '.join(sorted(R1_TAGS, key=c.find))})"
    return None


# ---------------------------------------------------------------- the analysis

class Doctor:
    """Streams records in, keeps only per-record scalars, and turns them into a report.
    With `drop` (clean), records dropped for their own content never enter the duplicate
    indexes, so a duplicate of a dropped record is kept."""

    def __init__(self, kind: str, tok, max_seq_len: int, near_threshold: float = 0.8, drop=None,
                 batch_records: int = 512):
        self.kind, self.tok, self.max_seq_len, self.drop = kind, tok, max_seq_len, set(drop) if drop else None
        self.near = NearDuplicates(near_threshold) if near_threshold > 0 else None
        self.near_threshold = near_threshold
        self.batch_records = batch_records
        self.seen: dict[int, int] = {}            # content hash -> first line
        self.problems: list[dict] = []
        self.pending: list[dict] = []
        self.lengths = array("i")
        self.kept_offsets = array("q")
        self.lines = self.records = self.blank_lines = 0
        self.blank_line_numbers = array("q")
        self.cjk = self.letters = 0

    # one line at a time
    def feed(self, line_no: int, offset: int, raw: bytes):
        self.lines = line_no
        if not raw.strip():
            self.blank_lines += 1
            self.blank_line_numbers.append(line_no)
            return
        self.records += 1
        record, why = parse_line(raw)
        if why:
            return self._finish_record(line_no, offset, [("bad_json", why)])
        value, problem = check_structure(record, self.kind)
        if problem:
            return self._finish_record(line_no, offset, [problem])
        if self.kind == "pretrain":
            fields = [("text", record["text"])]
            render, assistant_start = value, None
            key = dedup_key(value.replace(IM_END, "\n"))
        else:
            fields = [(f"message {i + 1} ({m['role']})", m["content"]) for i, m in enumerate(value)]
            render, spans = render_chat(value)
            assistant_start = spans[0][0]
            key = "\x1e".join(f"{m['role']}\x1f{dedup_key(m['content'])}" for m in value)
        found = []
        for name, text in fields:
            if not _INVISIBLE.sub("", text):
                found.append(("empty_content", f"{name} holds only invisible characters"))
                break
        if self.kind == "r1" and (detail := tag_problem(value)):
            found.append(("unbalanced_tags", detail))
        all_text = "\n".join(text for _, text in fields)
        if detail := garbled_detail(all_text):
            found.append(("garbled", detail))
        cjk, letters = letter_counts(all_text)
        self.cjk += cjk
        self.letters += letters
        if letters >= MIN_LETTERS and cjk < LOW_CJK_SHARE * letters:
            found.append(("non_chinese", f"{cjk} of {letters} letters are Chinese characters"))
        self.pending.append(dict(line=line_no, offset=offset, render=safe_text(render), found=found, key=key,
                                 shingle_text=key if self.kind == "pretrain" else
                                 "\n".join(dedup_key(m["content"]) for m in value),
                                 assistant_start=assistant_start))
        if len(self.pending) >= self.batch_records:
            self.flush()

    def flush(self):
        """Tokenise the pending records in one batch, then judge length and duplicates in file order."""
        if not self.pending:
            return
        encodings = self.tok.tokenizer.encode_batch([p["render"] for p in self.pending], add_special_tokens=False)
        limit = self.max_seq_len + 1                   # the loader keeps max_seq_len inputs + 1 target
        for p, enc in zip(self.pending, encodings):
            n, found = len(enc.ids), p["found"]
            self.lengths.append(n)
            if self.kind != "pretrain" and n > limit:
                starts = [o[0] for o in enc.offsets]
                first_answer = bisect_left(starts, p["assistant_start"])
                fate = ("no assistant token fits, so the loader refuses the file" if first_answer > self.max_seq_len
                        else f"the last {n - limit} tokens are cut")
                found.append(("too_long", f"{n} tokens > max_seq_len + 1 = {limit}; {fate}"))
            if self.drop is None or not any(k in self.drop for k, _ in found):
                h = content_hash(p["key"])
                if h in self.seen:
                    found.append(("duplicate", f"same content as line {self.seen[h]}"))
                else:
                    match = self.near.match_or_add(p["shingle_text"], p["line"]) if self.near else None
                    if match:
                        found.append(("near_duplicate", (f"≈{match[1]:.0%} similar to line {match[0]} "
                                                         f"(character {SHINGLE}-gram Jaccard, MinHash estimate)")))
                    self.seen[h] = p["line"]     # an exact copy of a near duplicate names that line
            self._finish_record(p["line"], p["offset"], found)
        self.pending.clear()

    def _finish_record(self, line_no, offset, found):
        if found:
            order = list(KINDS)
            found = sorted(found, key=lambda f: order.index(f[0]))
            entry = {"line": line_no, "kind": found[0][0], "detail": found[0][1]}
            if len(found) > 1:
                entry["also"] = [{"kind": k, "detail": d} for k, d in found[1:]]
            self.problems.append(entry)
        if self.drop is not None and not any(k in self.drop for k, _ in found):
            self.kept_offsets.append(offset)

    def dropped(self) -> list[dict]:
        """Problem entries of the records clean drops (those with any kind in `drop`)."""
        return [p for p in self.problems if any(k in self.drop for k in problem_kinds(p))]

    def report(self) -> dict:
        self.flush()
        self.problems.sort(key=lambda p: p["line"])
        counts = {k: 0 for k in KINDS}
        bounds = third_bounds(self.lines)
        by_position = {t: {"lines": list(b), "records": 0, "problem_records": 0, "by_kind": {k: 0 for k in KINDS}}
                       for t, b in zip(THIRDS, bounds)}
        for p in self.problems:
            third = by_position[THIRDS[third_of(p["line"], self.lines)]]
            third["problem_records"] += 1
            for k in problem_kinds(p):
                counts[k] += 1
                third["by_kind"][k] += 1
        blanks = np.bincount([third_of(b, self.lines) for b in self.blank_line_numbers], minlength=3)
        for t, (a, b), blank in zip(THIRDS, bounds, blanks):
            by_position[t]["records"] = max(0, b - a + 1) - int(blank)
        lengths = np.frombuffer(self.lengths, dtype=np.int32) if len(self.lengths) else np.zeros(0, np.int32)
        garbled = counts["garbled"]
        return {
            "records": self.records, "lines": self.lines, "blank_lines": self.blank_lines,
            "problem_records": len(self.problems), "counts": counts, "problems": self.problems,
            "by_position": by_position,
            "length_histogram": length_histogram(lengths, self.max_seq_len, self.kind),
            "text": {"cjk_share_of_letters": round(self.cjk / self.letters, 4) if self.letters else None,
                     "garbled_records": garbled, "garbled_ratio": round(garbled / max(self.records, 1), 4),
                     "non_chinese_records": counts["non_chinese"],
                     "non_chinese_ratio": round(counts["non_chinese"] / max(self.records, 1), 4)},
            "near_duplicates": {"threshold": self.near_threshold, "num_perm": NUM_PERM, "shingle": SHINGLE}
            if self.near else None,
        }


def problem_kinds(p: dict) -> list[str]:
    return [p["kind"]] + [a["kind"] for a in p.get("also", [])]


def third_bounds(n: int):
    """Inclusive line ranges of the start, middle and end thirds of an n-line file."""
    cuts = [0, -(-n // 3), -(-2 * n // 3), n]
    return [(cuts[i] + 1, cuts[i + 1]) for i in range(3)]


def third_of(line: int, n: int) -> int:
    return min(2, (line - 1) * 3 // max(n, 1))


def length_histogram(lengths: np.ndarray, max_seq_len: int, kind: str) -> dict:
    limit = max_seq_len + 1
    # bins up to the limit always (so "nothing near it" is visible), beyond it only while not empty
    edges = sorted({0, limit // 4, limit // 2, 3 * limit // 4, limit + 1, 2 * limit, 4 * limit})
    top = int(lengths.max()) + 1 if len(lengths) else limit
    while edges[-1] < top:
        edges.append(edges[-1] * 2)
    edges = [e for i, e in enumerate(edges) if e <= limit + 1 or edges[i - 1] < top]
    counts, _ = np.histogram(lengths, bins=edges) if len(lengths) else (np.zeros(len(edges) - 1, int), None)
    over = int((lengths > limit).sum())
    pct = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)} if len(lengths) else {}
    return {"tokenised_records": int(len(lengths)), "max_seq_len": max_seq_len, "limit_tokens": limit,
            "over_limit": over, "truncated": 0 if kind == "pretrain" else over,
            "edges": [int(e) for e in edges], "counts": [int(c) for c in counts],
            "mean": round(float(lengths.mean()), 1) if len(lengths) else None,
            "max": int(lengths.max()) if len(lengths) else None, **pct}


def analyse(path, kind: str, tok, max_seq_len: int, near_threshold: float = 0.8, drop=None,
            quiet: bool = False) -> Doctor:
    from tqdm import tqdm
    doctor = Doctor(kind, tok, max_seq_len, near_threshold, drop)
    with tqdm(total=Path(path).stat().st_size, unit="B", unit_scale=True, desc=f"checking {Path(path).name}",
              disable=quiet, mininterval=0.5, file=sys.stderr) as bar:
        for line_no, offset, raw in read_lines(path):
            doctor.feed(line_no, offset, raw)
            bar.update(len(raw))
        doctor.flush()
    return doctor


# ---------------------------------------------------------------- kind, limits and files

def detect_kind(path) -> str:
    """pretrain, sft or r1, by majority over the first records that parse."""
    votes = {"pretrain": 0, "sft": 0, "r1": 0}
    for line_no, _, raw in read_lines(path):
        if line_no > DETECT_LINES:
            break
        record, _ = parse_line(raw)
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("text"), str):
            votes["pretrain"] += 1
        elif isinstance(record.get("conversations"), list):
            answers = [m.get("content") for m in record["conversations"]
                       if isinstance(m, dict) and m.get("role") == "assistant"]
            r1 = any(isinstance(a, str) and ("<think>" in a or "<answer>" in a) for a in answers)
            votes["r1" if r1 else "sft"] += 1
    if not any(votes.values()):
        raise UserError(f"{path} has no pretrain ({{\"text\"}}) or conversation ({{\"conversations\"}}) records "
                        f"in its first {DETECT_LINES} lines; pass --kind pretrain|sft|r1.")
    if votes["pretrain"] >= votes["sft"] + votes["r1"]:
        return "pretrain"
    return "r1" if votes["r1"] >= votes["sft"] else "sft"


def default_max_seq_len(path, kind: str) -> tuple[int, str]:
    m = re.search(r"(?:^|[_\-.])(\d{3,5})(?=[_\-.]|$)", Path(path).stem)
    if m and 64 <= int(m.group(1)) <= 32768:
        return int(m.group(1)), "from the file name"
    stage = stage_of_kind(kind)
    return Config.STAGES[stage].train.max_seq_len, f"Config.py {stage} stage"


def stage_of_kind(kind: str) -> str:
    """The first stage in Config.STAGES that trains on this kind of file (r1: a reasoning stage)."""
    data_kind = "pretrain" if kind == "pretrain" else "sft"
    return next(name for name, s in Config.STAGES.items() if s.data_kind == data_kind and s.reasoning == (kind == "r1"))


def same_file(a, b) -> bool:
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def require_input(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist.")
    if not path.is_file():
        raise UserError(f"{path} is not a file.")
    return path


def refuse_overwrite(src: Path, *outputs):
    for flag, out in outputs:
        if out and same_file(src, out):
            raise UserError(f"{flag} {out} is the input file; write the result somewhere else "
                            f"(the input is never modified).")


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # backslashreplace turns a lone surrogate from the data into a \udXXX escape: still valid JSON
    tmp.write_bytes(json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8", "backslashreplace"))
    os.replace(tmp, path)


# ---------------------------------------------------------------- printing and plots

def bar(fraction: float, width: int = 30) -> str:
    return "#" * max(1 if fraction > 0 else 0, round(fraction * width))


def format_report(rep: dict) -> str:
    out = [f"data doctor: {rep['file']}",
           (f"  kind {rep['kind']} ({rep['kind_source']}), "
            f"max_seq_len {rep['max_seq_len']} ({rep['max_seq_len_source']}), tokenizer {rep['tokenizer']}"),
           f"  {rep['lines']} lines: {rep['records']} records, {rep['blank_lines']} blank"]
    h = rep["length_histogram"]
    n = h["tokenised_records"]
    out.append("")
    if n:
        out.append(f"token lengths of {n} well-formed records: mean {h['mean']}, p50 {h['p50']}, p90 {h['p90']}, "
                   f"p99 {h['p99']}, max {h['max']}")
        out.append(f"  {'tokens':>13} {'records':>9} {'%':>7}")
        for a, b, c in zip(h["edges"], h["edges"][1:], h["counts"]):
            note = "  (truncated)" if a > h["limit_tokens"] and rep["kind"] != "pretrain" else ""
            out.append(f"  {a:>6}-{b - 1:<6} {c:>9} {c / n:>7.1%}  {bar(c / n)}{note}")
        if rep["kind"] == "pretrain":
            out.append(f"  {h['over_limit']} documents are longer than {h['limit_tokens']} tokens; pretraining packs "
                       f"documents across rows, so nothing is truncated.")
        else:
            out.append(f"  truncated by the loader (> max_seq_len + 1 = {h['limit_tokens']} tokens): "
                       f"{h['truncated']} records ({h['truncated'] / n:.1%})")
    else:
        out.append("token lengths: no well-formed records to tokenise.")
    t = rep["text"]
    share = f"{t['cjk_share_of_letters']:.1%}" if t["cjk_share_of_letters"] is not None else "n/a"
    out.append("")
    out.append(f"text: Chinese characters are {share} of all letters; garbled records {t['garbled_records']} "
               f"({t['garbled_ratio']:.2%}); mostly non-Chinese records {t['non_chinese_records']} "
               f"({t['non_chinese_ratio']:.2%})")
    out.append("")
    records = max(rep["records"], 1)
    out.append(f"problem records: {rep['problem_records']} of {rep['records']} ({rep['problem_records'] / records:.2%})"
               f"{'' if rep['near_duplicates'] else ' (near duplicates not checked)'}")
    pos = rep["by_position"]
    if rep["problem_records"]:
        out.append(f"  {'kind':<16} {'records':>8} {'start':>7} {'middle':>7} {'end':>7}   meaning")
        for k, desc in KINDS.items():
            if rep["counts"][k]:
                cells = " ".join(f"{pos[t]['by_kind'][k]:>7}" for t in THIRDS)
                out.append(f"  {k:<16} {rep['counts'][k]:>8} {cells}   {desc}")
        cells = " ".join(f"{pos[t]['problem_records']:>7}" for t in THIRDS)
        out.append(f"  {'any':<16} {rep['problem_records']:>8} {cells}")
        rates = " ".join(f"{pos[t]['problem_records'] / max(pos[t]['records'], 1):>7.1%}" for t in THIRDS)
        out.append(f"  {'share':<16} {'':>8} {rates}")
    spans = [f"{t} = lines {a}-{b}" if a <= b else f"{t} = (no lines)" for t, (a, b) in
             ((t, pos[t]["lines"]) for t in THIRDS)]
    out.append("  thirds: " + ", ".join(spans))
    if rep["problem_records"]:
        out.append("")
        out.append("examples (first 3 of each kind):")
        shown = {k: 0 for k in KINDS}
        for p in rep["problems"]:
            if shown[p["kind"]] < 3:
                shown[p["kind"]] += 1
                also = f"  [also {', '.join(problem_kinds(p)[1:])}]" if p.get("also") else ""
                out.append(f"  line {p['line']:<7} {p['kind']}: {p['detail']}{also}")
    return safe_text("\n".join(out))


def plot_lengths(lengths: np.ndarray, rep: dict, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    limit = rep["length_histogram"]["limit_tokens"]
    if len(lengths):
        ax.hist(lengths, bins=min(80, max(10, len(np.unique(lengths)))), color="#4C72B0")
    ax.axvline(limit, color="#C44E52", linestyle="--", label=f"max_seq_len + 1 = {limit}")
    over = rep["length_histogram"]["over_limit"]
    ax.set_title(f"{Path(rep['file']).name}: token lengths ({len(lengths)} records, {over} over the limit)")
    ax.set_xlabel("tokens per record")
    ax.set_ylabel("records")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- commands

def prepare(args):
    """Input path, kind, max_seq_len and tokenizer shared by check and clean."""
    path = require_input(args.file)
    kind, kind_source = (args.kind, "--kind") if args.kind else (detect_kind(path), "auto-detected")
    if args.max_seq_len is not None:
        if args.max_seq_len < 1:
            raise UserError(f"--max_seq_len must be at least 1 (got {args.max_seq_len}).")
        max_len, len_source = args.max_seq_len, "--max_seq_len"
    else:
        max_len, len_source = default_max_seq_len(path, kind)
    if not 0 <= args.near_threshold <= 1:
        raise UserError(f"--near_threshold must lie in [0, 1] (got {args.near_threshold}); 0 turns it off.")
    tok = open_tokenizer(args.tokenizer_dir)
    return path, kind, kind_source, max_len, len_source, tok


def run_check(args) -> int:
    path, kind, kind_source, max_len, len_source, tok = prepare(args)
    refuse_overwrite(path, ("--json", args.json), ("--plot", args.plot))
    doctor = analyse(path, kind, tok, max_len, args.near_threshold, quiet=args.quiet)
    rep = {"file": str(path), "kind": kind, "kind_source": kind_source, "max_seq_len": max_len,
           "max_seq_len_source": len_source, "tokenizer": str(tok.path), **doctor.report()}
    print(format_report(rep), flush=True)
    if args.plot:
        plot_lengths(np.frombuffer(doctor.lengths, dtype=np.int32), rep, args.plot)
        print(f"\nlength histogram: {args.plot}")
    if args.json:
        write_json(args.json, rep)
        print(f"report: {args.json}")
    return 0


def run_clean(args) -> int:
    path, kind, _, max_len, _, tok = prepare(args)
    drop = args.drop or DEFAULT_DROP
    unknown = [k for k in drop if k not in KINDS]
    if unknown:
        raise UserError(f"--drop {unknown[0]!r} is not a problem kind; choose from: {', '.join(KINDS)}.")
    out = Path(args.out)
    refuse_overwrite(path, ("--out", out), ("--json", args.json))
    if args.json and same_file(out, args.json):
        raise UserError(f"--json {args.json} is the same file as --out; give the report its own name.")
    doctor = analyse(path, kind, tok, max_len, args.near_threshold, drop=drop, quiet=args.quiet)
    rep = doctor.report()
    dropped = doctor.dropped()
    keep = np.frombuffer(doctor.kept_offsets, dtype=np.int64) if len(doctor.kept_offsets) else np.zeros(0, np.int64)
    order = keep[np.random.default_rng(args.seed).permutation(len(keep))]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    from tqdm import tqdm
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for offset in tqdm(order, desc=f"writing {out.name}", unit="rec", disable=args.quiet, mininterval=0.5,
                           file=sys.stderr):
            src.seek(int(offset))
            line = src.readline()
            dst.write(line if line.endswith(b"\n") else line + b"\n")
    os.replace(tmp, out)
    by_kind = {k: sum(1 for p in dropped if p["kind"] == k) for k in KINDS}
    summary = {"input": str(path), "output": str(out), "kind": kind, "max_seq_len": max_len, "seed": args.seed,
               "drop": list(drop), "lines": rep["lines"], "records": rep["records"],
               "blank_lines_skipped": rep["blank_lines"], "kept": int(len(keep)), "dropped": len(dropped),
               "dropped_by_kind": {k: v for k, v in by_kind.items() if v}, "dropped_records": dropped,
               "kept_with_problems": {k: rep["counts"][k] for k in KINDS if k not in drop and rep["counts"][k]}}
    print(f"clean: {path} ({kind}) -> {out}")
    print(f"  kept {summary['kept']} of {rep['records']} records, shuffled with seed {args.seed}; "
          f"dropped {len(dropped)}; skipped {rep['blank_lines']} blank lines")
    for k, v in summary["dropped_by_kind"].items():
        first = [p["line"] for p in dropped if p["kind"] == k][:8]
        out_lines = ", ".join(map(str, first)) + (" …" if v > len(first) else "")
        print(f"  dropped {v:>7} {k:<16} lines {out_lines}")
    for k, v in summary["kept_with_problems"].items():
        print(f"  kept    {v:>7} {k:<16} (not in --drop)")
    if args.json:
        write_json(args.json, summary)
        print(f"report: {args.json}")
    return 0


def run_loss(args) -> int:
    """Score each record with the stage's own objective (losses.py) on the batches the trainer's
    loader builds: the same tokens, targets, truncation, padding and loss mask training sees.
    Conversations are one per row, as in training; pretrain documents are one per row too
    (training packs them across rows, which would mix records)."""
    import torch
    from tqdm import tqdm

    from checkpoint import expected_config, load_model, resolve_device, stage_weights
    from dataset import ConversationData, build_token_cache
    from losses import stage_loss, to_device
    path = require_input(args.file)
    refuse_overwrite(path, ("--out", args.out), ("--plot", args.plot))
    if args.stage not in Config.STAGES:
        raise UserError(f"--stage {args.stage!r} is not one of: {', '.join(Config.STAGES)}.")
    for flag in ("top", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1 (got {getattr(args, flag)}).")
    expected = expected_config(args.model)
    kind = args.kind or detect_kind(path)
    tok = open_tokenizer(args.tokenizer_dir)
    device, dtype = resolve_device(args.device, "auto", training=False)
    checkpoint = stage_weights(args.save_dir, args.stage)
    model, ckpt = load_model(checkpoint, expected, tok.hash)
    seq_len = args.max_seq_len or min(Config.STAGES[args.stage].train.max_seq_len, model.config.max_seq_len)
    if not 1 <= seq_len <= model.config.max_seq_len:
        raise UserError(f"--max_seq_len must lie in 1..{model.config.max_seq_len} (the model's context), "
                        f"got {seq_len}.")
    model = model.to(device, dtype).eval()
    loss_fn = stage_loss(args.stage)
    cache_root = Path(args.cache_dir) if args.cache_dir else Path(args.save_dir) / "cache"
    # the trainer's own cache: same tokens and loss mask as training, reused if already built
    cache = build_token_cache(path, "pretrain" if kind == "pretrain" else "sft", tok, cache_root,
                              skip_bad_lines=True, quiet=args.quiet)
    data = ConversationData(cache, seq_len, str(path), require_loss_tokens=False)

    n = data.num_samples
    losses = np.full(n, np.nan, dtype=np.float64)
    loss_tokens = np.asarray(data.loss_tokens, dtype=np.int64)
    order = np.argsort(-data.lengths, kind="stable")                # longest first: an OOM shows up at once
    batches = [order[i:i + args.batch_size] for i in range(0, n, args.batch_size)]
    with torch.inference_mode():
        for idx in tqdm(batches, desc=f"scoring {path.name}", unit="batch", disable=args.quiet, mininterval=0.5,
                        file=sys.stderr):
            if data.lengths[idx].max() < 1:
                continue
            row_sums, _ = loss_fn(model, to_device(data.batch(idx), device))
            per_row = row_sums.double().cpu().numpy() / np.maximum(loss_tokens[idx], 1)
            losses[idx] = np.where(loss_tokens[idx] > 0, per_row, np.nan)

    lines = np.asarray(cache.lines, dtype=np.int64)
    scored = np.flatnonzero(~np.isnan(losses))
    top = scored[np.argsort(-losses[scored], kind="stable")][:args.top]
    wanted = {int(lines[i]): i for i in top}
    texts, total_lines = {}, 0
    for line_no, _, raw in read_lines(path):
        total_lines = line_no
        if line_no in wanted:
            texts[line_no] = raw.decode("utf-8", "replace").rstrip("\n")

    print(f"loss: {path} ({kind}), checkpoint {checkpoint} "
          f"(stage {ckpt.get('stage', args.stage)}), max_seq_len {seq_len}, {device.type}")
    skipped = cache.meta.get("skipped_lines", 0)
    print(f"  scored {len(scored)} of {n} records ({n - len(scored)} with no loss token within max_seq_len; "
          f"{skipped} bad lines skipped — see data_doctor check)")
    if len(scored):
        print(f"  mean per-sample loss {losses[scored].mean():.3f}, median {np.median(losses[scored]):.3f}")
        thirds = [third_of(int(line), total_lines) for line in lines[scored]]
        parts = []
        for t, name in enumerate(THIRDS):
            sel = losses[scored][np.asarray(thirds) == t]
            parts.append(f"{name} {sel.mean():.3f} (n={len(sel)})" if len(sel) else f"{name} -")
        print("  mean loss by position: " + ", ".join(parts))
    print(f"\n  {'rank':>4} {'line':>8} {'loss':>7} {'tokens':>6}  reply / text")
    for rank, i in enumerate(top, 1):
        line = int(lines[i])
        preview = safe_text(" ".join(record_preview(texts.get(line, "")).split())[:60])
        print(f"  {rank:>4} {line:>8} {losses[i]:>7.3f} {loss_tokens[i]:>6}  {preview}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8", errors="backslashreplace") as f:
            for i in top:
                line = int(lines[i])
                try:
                    record = json.loads(texts[line])
                except (ValueError, KeyError):
                    record = texts.get(line)
                f.write(json.dumps({"line": line, "loss": round(float(losses[i]), 4),
                                    "loss_tokens": int(loss_tokens[i]), "record": record}, ensure_ascii=False) + "\n")
        print(f"\nhighest-loss records: {out}")
    if args.plot:
        plot_losses(lines[scored], losses[scored], total_lines, path, args.plot)
        print(f"loss plot: {args.plot}")
    return 0


def record_preview(raw: str) -> str:
    """The last assistant reply (sft/r1) or the text (pretrain): where a high loss comes from."""
    record, _ = parse_line(raw.encode("utf-8", "surrogatepass"))
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        conv = record.get("conversations")
        if isinstance(conv, list):
            answers = [m.get("content") for m in conv if isinstance(m, dict) and m.get("role") == "assistant"]
            if answers and isinstance(answers[-1], str):
                return answers[-1]
    return raw


def plot_losses(lines: np.ndarray, losses: np.ndarray, total_lines: int, path: Path, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4.5))
    shown = np.arange(len(losses))
    if len(shown) > 200_000:     # a scatter of millions of points only takes long to draw
        shown = np.sort(np.random.default_rng(0).choice(shown, 200_000, replace=False))
    subset = f" ({len(shown)} of {len(losses)} shown)" if len(shown) < len(losses) else ""
    ax.scatter(lines[shown], losses[shown], s=4, alpha=0.35, color="#4C72B0", linewidths=0,
               label="per-sample loss" + subset)
    window = max(1, len(losses) // 50)
    if len(losses) >= 2 * window and window > 1:
        cumulative = np.concatenate([[0.0], np.cumsum(losses)])
        rolling = (cumulative[window:] - cumulative[:-window]) / window
        ax.plot(lines[window // 2: window // 2 + len(rolling)], rolling, color="#C44E52", linewidth=2,
                label=f"rolling mean ({window} samples)")
    for a, _ in third_bounds(total_lines)[1:]:
        ax.axvline(a, color="grey", linestyle=":", linewidth=1)
    ax.set_title(f"{path.name}: per-sample loss along the file (dotted: thirds)")
    ax.set_xlabel("line in file")
    ax.set_ylabel("mean loss per loss-mask token")
    ax.legend(loc="upper left")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="data_doctor.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("file", help="a jsonl file (pretrain, sft or r1)")
    common.add_argument("--kind", choices=("pretrain", "sft", "r1"), help="skip auto-detection")
    common.add_argument("--tokenizer_dir", default=Config.TrainConfig.tokenizer_dir)
    common.add_argument("--max_seq_len", type=int, help="default: from the file name, else the stage in Config.py")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    dedup = argparse.ArgumentParser(add_help=False)
    dedup.add_argument("--near_threshold", type=float, default=0.8,
                       help="Jaccard similarity for near_duplicate (0 = skip the check)")

    check = sub.add_parser("check", parents=[common, dedup], help="report problems")
    check.add_argument("--json", help="write the full report here")
    check.add_argument("--plot", help="write the token-length histogram PNG here")
    clean = sub.add_parser("clean", parents=[common, dedup], help="write a filtered, deduplicated, shuffled copy")
    clean.add_argument("--out", required=True)
    clean.add_argument("--json", help="write the report of dropped records here")
    clean.add_argument("--seed", type=int, default=Config.TrainConfig.seed)
    clean.add_argument("--drop", nargs="+", metavar="KIND", help=f"kinds to drop (default: {' '.join(DEFAULT_DROP)})")
    loss = sub.add_parser("loss", parents=[common], help="rank records by a trained model's loss")
    loss.add_argument("--save_dir", default=Config.TrainConfig.save_dir)
    loss.add_argument("--stage", required=True, help=f"one of {', '.join(Config.STAGES)}")
    loss.add_argument("--model", help="expected model size (checked against the checkpoint)")
    loss.add_argument("--top", type=int, default=20)
    loss.add_argument("--out", help="write the --top records here as jsonl")
    loss.add_argument("--plot", help="write loss against file position here (PNG)")
    loss.add_argument("--batch_size", type=int, default=16)
    loss.add_argument("--device", default="auto")
    loss.add_argument("--cache_dir", default="", help="token cache folder (default <save_dir>/cache, as the trainer)")
    return parser


def main(argv=None) -> int:
    return run_cli(build_parser().parse_args,
                   lambda args: {"check": run_check, "clean": run_clean, "loss": run_loss}[args.command](args), argv)


if __name__ == "__main__":
    sys.exit(main())
