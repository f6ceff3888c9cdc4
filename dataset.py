"""Data path: jsonl records → token cache (built once) → batches with loss masks.

Knows nothing about the model. Three record kinds share one cache format:

- "pretrain": {"text": ...}. The three separator styles found in MiniMind's files
  (`<s>…</s>`, `<|im_start|>…<|im_end|>`, `…<|im_end|>`) are normalised so that every
  segment ends with one `<|im_end|>` token. Documents are packed end to end into rows of
  max_seq_len + 1 tokens; a long document simply continues in the next row.
- "sft" (also R1 distillation): {"conversations": [{"role", "content"}, ...]}, rendered
  in ChatML. The loss mask covers exactly the assistant contents plus the `<|im_end|>`
  closing each assistant turn. Batches are bucketed by length so padding stays small.

The cache (numpy memmaps of token ids, per-token loss masks, record offsets and source
line numbers) lives under the run's cache directory, never beside the source file, and
is rebuilt only when the source file or the tokenizer changes.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CACHE_VERSION = 3
ROLES = ("system", "user", "assistant")
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


class DataError(Exception):
    """A problem with the user's data or files, reported as one sentence."""


# ---------------------------------------------------------------- tokenizer

@dataclass
class TokenizerInfo:
    tokenizer: object          # tokenizers.Tokenizer
    path: Path
    hash: str                  # sha256 of tokenizer.json, recorded in caches and checkpoints
    pad_id: int
    im_start_id: int
    im_end_id: int
    chat_template: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(8 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def load_tokenizer(directory) -> TokenizerInfo:
    from tokenizers import Tokenizer
    directory = Path(directory)
    tok_file, cfg_file = directory / "tokenizer.json", directory / "tokenizer_config.json"
    if not tok_file.is_file():
        raise DataError(f"tokenizer directory {directory} has no tokenizer.json; train one with python train_tokenizer.py.")
    try:
        tokenizer = Tokenizer.from_file(str(tok_file))
    except Exception as e:  # the Rust error text is the useful part
        raise DataError(f"{tok_file} could not be read as a tokenizer: {e}.") from None
    config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    if not config.get("chat_template"):
        raise DataError(f"tokenizer directory {directory} has no chat_template in tokenizer_config.json; "
                        f"retrain it with python train_tokenizer.py or copy XiaoXin_tokenizer/tokenizer_config.json.")
    ids = {t: tokenizer.token_to_id(t) for t in (ENDOFTEXT, IM_START, IM_END)}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise DataError(f"tokenizer {tok_file} lacks the special tokens {', '.join(missing)}.")
    return TokenizerInfo(tokenizer, directory, file_sha256(tok_file)[:16], ids[ENDOFTEXT],
                         ids[IM_START], ids[IM_END], config["chat_template"])


# ---------------------------------------------------------------- records

def render_chat(messages, add_generation_prompt: bool = False):
    """ChatML text exactly as the tokenizer's chat template renders it, plus the character
    spans [start, end) that carry loss: each assistant content and its closing <|im_end|>."""
    parts, spans, pos = [], [], 0
    for m in messages:
        head = f"{IM_START}{m['role']}\n"
        parts.append(head)
        pos += len(head)
        body = m["content"] + IM_END
        if m["role"] == "assistant":
            spans.append((pos, pos + len(body)))
        parts.append(body + "\n")
        pos += len(body) + 1
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts), spans


_OPENERS = re.compile(r"<s>|<\|im_start\|>")
_CLOSERS = re.compile(r"\s*(?:</s>|<\|im_end\|>)\s*")


def normalise_pretrain_text(text: str) -> str:
    """Map the three MiniMind separator styles onto one: segments each closed by <|im_end|>."""
    text = _OPENERS.sub("", text)
    text = _CLOSERS.sub(IM_END, text).strip()
    if not text.endswith(IM_END):
        text += IM_END
    return text


def check_pretrain(record) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
    if "text" not in record:
        raise ValueError('missing field "text"')
    text = record["text"]
    if not isinstance(text, str):
        raise ValueError('field "text" is not a string')
    if not normalise_pretrain_text(text).replace(IM_END, "").strip():
        raise ValueError('field "text" is empty')
    return normalise_pretrain_text(text)


def check_conversation(record) -> list[dict]:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
    if "conversations" not in record:
        raise ValueError('missing field "conversations"')
    conv = record["conversations"]
    if not isinstance(conv, list) or not conv:
        raise ValueError('field "conversations" is not a non-empty list')
    messages = []
    for i, m in enumerate(conv):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i + 1} lacks role or content")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ValueError(f"message {i + 1} has role {role!r}; expected one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise ValueError(f"message {i + 1} is a system message after the start")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"message {i + 1} ({role}) has empty content")
        messages.append({"role": role, "content": content})
    turns = [m["role"] for m in messages if m["role"] != "system"]
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"turn {i + 1} is {role} where {expected} was expected (turns must alternate, user first)")
    if not turns or turns[-1] != "assistant":
        raise ValueError("conversation does not end with an assistant message")
    return messages


def iter_jsonl(path, start: int = 0, end: int | None = None):
    """Yield (line_number, record or exception, byte_length) for each line, counting from 1;
    record is None for a blank line. With start/end (byte offsets, start at the beginning of a
    line), only the lines that begin in [start, end), numbered from 1 within that range."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for line_no, raw in enumerate(f, 1):
            if end is not None and pos >= end:
                return
            size = len(raw)
            pos += size
            if not raw.strip():
                yield line_no, None, size
                continue
            try:
                yield line_no, json.loads(raw.decode("utf-8")), size
            except UnicodeDecodeError:
                yield line_no, ValueError("line is not valid UTF-8"), size
            except json.JSONDecodeError as e:
                yield line_no, ValueError(f"invalid JSON ({e.msg} at column {e.colno})"), size
            except (ValueError, RecursionError) as e:   # a 5000-digit number, nesting too deep
                yield line_no, ValueError(f"invalid JSON ({type(e).__name__}: {str(e)[:80]})"), size


# ---------------------------------------------------------------- token cache

def content_digest(path, threads: int = 0, chunk: int = 64 << 20) -> str:
    """sha256 of the sha256 of each 64 MiB chunk of the file. The chunks are hashed in parallel
    threads (hashlib releases the GIL), so the whole of a 1.6 GB file costs about 1.6 CPU-seconds
    and a fraction of that in wall time on a many-core machine."""
    from concurrent.futures import ThreadPoolExecutor
    size = os.path.getsize(path)

    def one(a):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(a)
            left = min(chunk, size - a)
            while left > 0:
                piece = f.read(min(left, 8 << 20))
                if not piece:
                    break
                h.update(piece)
                left -= len(piece)
        return h.digest()
    with ThreadPoolExecutor(max(1, threads or os.cpu_count() or 1)) as pool:
        digests = list(pool.map(one, range(0, size, chunk)))
    return hashlib.sha256(b"".join(digests) + str(size).encode()).hexdigest()


def source_stat(path) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def source_unchanged(recorded: dict, path) -> bool:
    """Whether `path` still holds the bytes the cache was built from (recorded = meta["source"]).

    Free when nothing touched the file: the kernel sets ctime on every write and on every
    metadata change, and no tool can set it back (`cp -p`, `rsync -t` and `touch -d` restore
    only the mtime; a copy also gets a new inode). So size, mtime, ctime and inode all equal
    means no byte was written, with no read at all. When they differ but the size is the same
    (a copy, a move, a `touch`, or a same-size edit with the mtime put back), the whole file is
    hashed and compared with the hash taken at build time: ≈ 1 CPU-second per GB, paid only
    then. Sampled blocks would be cheaper still but miss an edit between the samples (a fixed
    typo), which is exactly the case to catch. On Windows st_ctime is the creation time, so
    there the hash is always compared."""
    now = source_stat(path)
    if recorded.get("size") != now["size"]:
        return False
    if os.name != "nt" and all(recorded.get(k) == now[k] for k in ("mtime_ns", "ctime_ns", "inode")):
        return True
    return recorded.get("sha256") == content_digest(path)


@dataclass
class TokenCache:
    directory: Path
    tokens: np.ndarray        # all token ids, records end to end
    offsets: np.ndarray       # record i is tokens[offsets[i]:offsets[i+1]]
    lines: np.ndarray         # source line number of record i (from 1)
    loss_mask: np.ndarray | None   # per token (sft kinds only)
    meta: dict

    @property
    def num_records(self) -> int:
        return len(self.lines)


def _cache_dir_for(path, kind, cache_root) -> Path:
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:10]
    return Path(cache_root) / f"{Path(path).stem}-{kind}-{key}"


def _open_cache(directory: Path, meta: dict) -> TokenCache:
    dtype = np.dtype(meta["dtype"])
    n_tokens = meta["num_tokens"]
    tokens = np.memmap(directory / "tokens.bin", dtype=dtype, mode="r", shape=(n_tokens,)) if n_tokens else np.zeros(0, dtype)
    mask = None
    if meta["kind"] == "sft":
        mask = np.memmap(directory / "mask.bin", dtype=np.uint8, mode="r", shape=(n_tokens,)) if n_tokens else np.zeros(0, np.uint8)
    return TokenCache(directory, tokens, np.load(directory / "offsets.npy"), np.load(directory / "lines.npy"),
                      mask, meta)


def _current_cache(directory: Path, wanted: dict, path) -> TokenCache | None:
    """The cache in `directory` if it was built from this source with this tokenizer, else None."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not all(meta.get(k) == v for k, v in wanted.items()) or not source_unchanged(meta.get("source", {}), path):
        return None
    stat = source_stat(path)
    if any(meta["source"].get(k) != v for k, v in stat.items()):
        # Same bytes, new stat (copied, moved, touched): record it, so the next start reads nothing.
        meta["source"].update(stat)
        _write_json_atomic(directory / "meta.json", meta)
    return _open_cache(directory, meta)


def _write_json_atomic(path: Path, value: dict):
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def tokenise_range(path, start: int, end: int, kind: str, tokenizer, out_prefix, skip_bad_lines: bool,
                   dtype, batch_records: int = 1024, progress=None) -> dict:
    """Tokenise the records whose lines begin in bytes [start, end) of `path` into
    <out_prefix>.tokens / .mask (raw arrays) and <out_prefix>.lengths.npy / .lines.npy (tokens per
    record; line number within the range, from 1). Memory stays bounded by one batch of records.
    Returns the number of lines in the range, its number of bad lines and the first one
    ([line within the range, why]); once a bad line is found without skip_bad_lines, the rest
    is only scanned, to count the others."""
    check = check_pretrain if kind == "pretrain" else check_conversation
    out_prefix = str(out_prefix)
    lengths, lines, bad = [], [], []
    pending_lines, pending_texts, pending_spans = [], [], []
    n_lines = 0
    with open(out_prefix + ".tokens", "wb") as tok_out, open(out_prefix + ".mask", "wb") as mask_out:

        def flush():
            encodings = tokenizer.encode_batch(pending_texts, add_special_tokens=False)
            for enc, spans in zip(encodings, pending_spans):
                ids = np.asarray(enc.ids, dtype=dtype)
                tok_out.write(ids.tobytes())
                if kind == "sft":
                    starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(ids))
                    mask = np.zeros(len(ids), dtype=np.uint8)
                    for a, b in spans:
                        mask |= ((starts >= a) & (starts < b)).astype(np.uint8)
                    mask_out.write(mask.tobytes())
                lengths.append(len(ids))
            lines.extend(pending_lines)
            pending_lines.clear(); pending_texts.clear(); pending_spans.clear()

        for line_no, record, size in iter_jsonl(path, start, end):
            n_lines = line_no
            if progress is not None:
                progress(size)
            if record is None:
                continue
            try:
                if isinstance(record, Exception):
                    raise record
                value = check(record)
            except ValueError as e:
                bad.append((line_no, str(e)))
                continue
            if bad and not skip_bad_lines:
                continue  # keep scanning only to count the other bad lines
            if kind == "pretrain":
                text, spans = value, []
            else:
                text, spans = render_chat(value)
            pending_lines.append(line_no); pending_texts.append(text); pending_spans.append(spans)
            if len(pending_texts) >= batch_records:
                flush()
        if pending_texts and not (bad and not skip_bad_lines):
            flush()
    np.save(out_prefix + ".lengths.npy", np.asarray(lengths, dtype=np.int64))
    np.save(out_prefix + ".lines.npy", np.asarray(lines, dtype=np.int64))
    return {"lines": n_lines, "n_bad": len(bad), "first_bad": bad[0] if bad else None}


def _range_worker_main():
    """A worker process (see _tokenise_in_processes): one job per stdin line, one result per stdout line."""
    import sys
    from tokenizers import Tokenizer
    tokenizers = {}
    for line in sys.stdin:
        job = json.loads(line)
        if job["tokenizer_file"] not in tokenizers:
            tokenizers[job["tokenizer_file"]] = Tokenizer.from_file(job["tokenizer_file"])
        result = tokenise_range(job["path"], job["start"], job["end"], job["kind"], tokenizers[job["tokenizer_file"]],
                                job["out_prefix"], job["skip_bad_lines"], np.dtype(job["dtype"]))
        print(json.dumps(result), flush=True)


def line_aligned_ranges(path, pieces: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of about equal size, each starting at the beginning of a line."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        for i in range(1, pieces):
            f.seek(max(size * i // pieces - 1, 0))
            f.readline()               # to the start of the first line at or after the cut
            if bounds[-1] < f.tell() < size:
                bounds.append(f.tell())
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:]))


def _tokenise_in_processes(path, ranges, kind, tok, tmp: Path, skip_bad_lines, dtype, workers, bar) -> list[dict]:
    """The ranges tokenised by `workers` worker processes, each taking the next range as it
    finishes one. Plain `python -c` processes rather than a multiprocessing pool: a pool's children
    re-import the parent's main script (a stage script imports torch); these import only this
    file, numpy and tokenizers."""
    import queue
    import subprocess
    import sys
    import threading
    tokenizer_file = tmp / "tokenizer.json"     # the parent's tokenizer exactly, whatever its origin
    tokenizer_file.write_text(tok.tokenizer.to_str(), encoding="utf-8")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false",   # one thread each: the processes are the parallelism
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]))
    jobs = queue.Queue()
    for i, (a, b) in enumerate(ranges):
        jobs.put((i, {"path": str(path), "start": a, "end": b, "kind": kind, "tokenizer_file": str(tokenizer_file),
                      "out_prefix": str(tmp / f"shard{i:05d}"), "skip_bad_lines": skip_bad_lines,
                      "dtype": np.dtype(dtype).name}))
    results, failures, lock = [None] * len(ranges), [], threading.Lock()
    procs = [subprocess.Popen([sys.executable, "-c", "import dataset; dataset._range_worker_main()"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(min(workers, len(ranges)))]

    def feed(proc):
        while not failures:
            try:
                i, job = jobs.get_nowait()
            except queue.Empty:
                return
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                failures.append(proc.stderr.read().strip().splitlines() or ["no message"])
                return
            results[i] = json.loads(line)
            with lock:
                bar.update(job["end"] - job["start"])
    threads = [threading.Thread(target=feed, args=(p,), daemon=True) for p in procs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    if failures:
        raise RuntimeError(f"a tokeniser process failed on {path}: {failures[0][-1]}")
    return results


def _install_cache(tmp: Path, directory: Path, wanted: dict, path) -> TokenCache:
    """Move a finished build (tmp) into place. Several processes may build the same cache at once
    (two stages started together, ranks on nodes sharing a filesystem): each builds in its own
    temporary directory and renames it into place, an atomic step; when a current cache is
    already there, the first complete build wins and the others discard theirs."""
    import shutil
    while True:
        try:
            os.rename(tmp, directory)   # fails while `directory` exists and is not empty
            return _open_cache(directory, json.loads((directory / "meta.json").read_text()))
        except OSError:
            if not directory.exists():
                raise
        current = _current_cache(directory, wanted, path)
        if current is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return current
        aside = directory.with_name(f".{directory.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.rename(directory, aside)   # a stale cache: out of the way (open memmaps stay valid)
        except FileNotFoundError:
            continue                       # another builder moved it first
        shutil.rmtree(aside, ignore_errors=True)


def _remove_abandoned_builds(directory: Path):
    """Temporary build directories of processes on this machine that no longer run (killed mid-build)."""
    import shutil
    import socket
    host = socket.gethostname()
    for tmp in directory.parent.glob(f".{directory.name}.tmp-{host}-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, OSError):
            pass


def default_tokenize_workers() -> int:
    """Processes for a token-cache build when --tokenize_workers is 0: every core, except on one or
    two cores, where the one-process build is faster (its Rust encoder already runs a thread per
    core; on 2 cores two processes took 0.81× its speed: notes/LOG.md, 2026-12-08)."""
    cores = os.cpu_count() or 1
    return cores if cores > 2 else 1


def build_token_cache(path, kind: str, tok: TokenizerInfo, cache_root, skip_bad_lines: bool = False,
                      quiet: bool = False, workers: int = 0, min_range_bytes: int = 8 << 20) -> TokenCache:
    """Tokenise `path` once into `cache_root`; later calls with the same source and tokenizer
    reuse the cache without tokenising anything (see source_unchanged for how a change is seen).

    With `workers` > 1 (0 = default_tokenize_workers()) a file of at least 2 × `min_range_bytes` is cut into
    line-aligned byte ranges (4 per worker, so a slow range does not leave cores idle), tokenised
    by that many processes at once and merged in order: the cache is byte-identical to the
    one-process build (tested), bad lines are reported by their line in the whole file, and each
    process holds one batch of records at a time."""
    if kind not in ("pretrain", "sft"):
        raise ValueError(f"unknown data kind {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist.")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty.")
    directory = _cache_dir_for(path, kind, cache_root)
    wanted = {"version": CACHE_VERSION, "kind": kind, "tokenizer_hash": tok.hash}
    cached = _current_cache(directory, wanted, path)
    if cached is not None:
        return cached
    if (directory / "meta.json").is_file() and not quiet:
        print(f"token cache {directory} is stale (source file or tokenizer changed); rebuilding.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(directory)
    import shutil
    import socket
    from tqdm import tqdm
    # The source's identity is taken before reading it, so an edit during the build shows as stale later.
    source = dict(source_stat(path), sha256=content_digest(path))
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    workers = workers or default_tokenize_workers()
    size = path.stat().st_size
    ranges = line_aligned_ranges(path, min(4 * workers, size // max(min_range_bytes, 1))) if workers > 1 else [(0, size)]
    tmp = directory.with_name(f".{directory.name}.tmp-{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}")
    tmp.mkdir()
    try:
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"tokenising {path.name}", disable=quiet,
                  mininterval=0.5) as bar:
            if len(ranges) == 1:
                results = [tokenise_range(path, 0, size, kind, tok.tokenizer, tmp / "shard00000", skip_bad_lines,
                                          dtype, progress=bar.update)]
            else:
                bar.set_description(f"tokenising {path.name} ({min(workers, len(ranges))} processes)")
                results = _tokenise_in_processes(path, ranges, kind, tok, tmp, skip_bad_lines, dtype, workers, bar)
        # Line numbers in the whole file: each range's own, plus the lines of the ranges before it.
        line_base = np.cumsum([0] + [r["lines"] for r in results[:-1]])
        n_bad = sum(r["n_bad"] for r in results)
        first_bad = next(((int(base) + r["first_bad"][0], r["first_bad"][1])
                          for r, base in zip(results, line_base) if r["first_bad"]), None)
        if n_bad and not skip_bad_lines:
            line_no, why = first_bad
            others = f" ({n_bad - 1} other bad lines)" if n_bad > 1 else " (no other bad lines)"
            raise DataError(f"{path} line {line_no}: {why}{others}; fix it or pass --skip_bad_lines to skip bad lines.")
        shards = [tmp / f"shard{i:05d}" for i in range(len(results))]
        lengths = np.concatenate([np.load(f"{s}.lengths.npy") for s in shards])
        lines = np.concatenate([np.load(f"{s}.lines.npy") + base for s, base in zip(shards, line_base)])
        if not len(lines):
            raise DataError(f"data file {path} has no usable records.")
        if n_bad and not quiet:
            print(f"skipped {n_bad} bad lines in {path} (first: line {first_bad[0]}: {first_bad[1]}).")
        for name in ("tokens", "mask") if kind == "sft" else ("tokens",):
            with open(tmp / f"{name}.bin", "wb") as out:
                for s in shards:
                    with open(f"{s}.{name}", "rb") as part:
                        shutil.copyfileobj(part, out, 16 << 20)
        for s in tmp.glob("shard*"):
            s.unlink()
        (tmp / "tokenizer.json").unlink(missing_ok=True)
        np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        np.save(tmp / "lines.npy", lines.astype(np.int64))
        meta = dict(wanted, source=source, dtype=np.dtype(dtype).name, num_tokens=int(lengths.sum()),
                    num_records=len(lines), skipped_lines=n_bad)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _install_cache(tmp, directory, wanted, path)


# ---------------------------------------------------------------- batches

@dataclass
class Batch:
    input_ids: np.ndarray     # B × T int64
    targets: np.ndarray       # B × T int64
    loss_mask: np.ndarray     # B × T float32 (1 where the target is trained on)
    lines: np.ndarray         # source line numbers of the records in this batch
    extra: dict = field(default_factory=dict)   # further per-row/per-token arrays a stage's loss reads

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


class PretrainData:
    """Documents packed end to end; row i is tokens[i·L : i·L + L + 1]. The last row is
    kept even if short (padded, masked)."""

    def __init__(self, cache: TokenCache, seq_len: int):
        self.cache, self.seq_len = cache, seq_len
        self.num_samples = max(1, -(-(len(cache.tokens) - 1) // seq_len))
        self.lengths = np.full(self.num_samples, seq_len, dtype=np.int64)
        self.lengths[-1] = len(cache.tokens) - 1 - (self.num_samples - 1) * seq_len
        self.loss_tokens = self.lengths   # every real target token is trained on

    def batch(self, indices, rows: int = 0, length_multiple: int = 1) -> Batch:
        """Rows `indices`, each seq_len wide; with `rows`, zero-mask rows fill the batch to that
        many (the last, partial batch of an epoch keeps the shape of the others)."""
        L, tokens = self.seq_len, self.cache.tokens
        x = np.zeros((max(rows, len(indices)), L), dtype=np.int64)
        y = np.zeros_like(x)
        m = np.zeros(x.shape, dtype=np.float32)
        first_records = []
        for r, i in enumerate(indices):
            chunk = np.asarray(tokens[i * L: i * L + L + 1], dtype=np.int64)
            n = len(chunk) - 1
            x[r, :n], y[r, :n], m[r, :n] = chunk[:-1], chunk[1:], 1.0
            first_records.append(np.searchsorted(self.cache.offsets, [i * L, i * L + n], side="right") - 1)
        recs = np.unique(np.concatenate([np.arange(a, min(b, self.cache.num_records - 1) + 1) for a, b in first_records]))
        return Batch(x, y, m, self.cache.lines[recs])


class ConversationData:
    """One conversation per row, truncated to L + 1 tokens, right-padded within a batch.
    Right padding needs no attention mask: under causal attention real tokens never see the
    pad tokens that follow them, and pad positions carry no loss. On a pretrain cache (no loss
    mask) each document is a row with every target trained on: how data_doctor scores documents."""

    def __init__(self, cache: TokenCache, seq_len: int, source: str = "", require_loss_tokens: bool = True):
        self.cache, self.seq_len = cache, seq_len
        lengths = np.diff(cache.offsets)
        self.lengths = np.maximum(np.minimum(lengths, seq_len + 1) - 1, 0)      # input tokens per sample
        self.num_samples = len(lengths)
        self.loss_tokens = self.lengths if cache.loss_mask is None else self._count_loss_tokens()
        # A conversation truncated so far that no assistant token remains cannot teach anything.
        empty = np.flatnonzero(self.loss_tokens == 0)
        if len(empty) and require_loss_tokens:
            more = f" ({len(empty) - 1} other conversations too)" if len(empty) > 1 else ""
            raise DataError(f"{source or 'data'} line {cache.lines[empty[0]]}: the conversation is so long that no "
                            f"assistant token fits in --max_seq_len {seq_len}{more}; shorten it or raise --max_seq_len.")

    def _count_loss_tokens(self, block: int = 65536) -> np.ndarray:
        """Loss-mask tokens per sample after truncation, in blocks so memory stays flat."""
        counts = np.zeros(self.num_samples, dtype=np.int64)
        offsets, mask = self.cache.offsets, self.cache.loss_mask
        for a in range(0, self.num_samples, block):
            b = min(a + block, self.num_samples)
            base = offsets[a]
            cumulative = np.concatenate([[0], np.cumsum(mask[base:offsets[b]], dtype=np.int64)])
            first = offsets[a:b] - base + 1                    # targets start one token in
            counts[a:b] = cumulative[first + self.lengths[a:b]] - cumulative[first]
        return counts

    def batch(self, indices, rows: int = 0, length_multiple: int = 1) -> Batch:
        """Rows `indices`, as long as the longest of them; with `length_multiple`, that length
        rounded up to a multiple of it (at most seq_len), and with `rows`, zero-mask rows fill
        the batch to that many: a few stable shapes for torch.compile instead of one per batch.
        Padding carries no loss, and under causal attention real tokens never see it."""
        T = int(self.lengths[indices].max())
        T = min(-(-T // length_multiple) * length_multiple, max(self.seq_len, T))
        x = np.zeros((max(rows, len(indices)), T), dtype=np.int64)
        y = np.zeros_like(x)
        m = np.zeros(x.shape, dtype=np.float32)
        for r, i in enumerate(indices):
            a = self.cache.offsets[i]
            n = int(self.lengths[i])
            seq = np.asarray(self.cache.tokens[a: a + n + 1], dtype=np.int64)
            x[r, :n], y[r, :n] = seq[:-1], seq[1:]
            m[r, :n] = 1.0 if self.cache.loss_mask is None else self.cache.loss_mask[a + 1: a + n + 1]
        return Batch(x, y, m, self.cache.lines[np.asarray(indices)])


def epoch_batches(data, batch_size: int, seed: int, epoch: int, shuffle: bool = True, bucket: bool = False):
    """The epoch's batches as lists of sample indices; a pure function of (seed, epoch),
    which is what makes resume exact. With `bucket`, samples are shuffled, then sorted by
    length inside windows of 64 batches, and the batches shuffled again: padding becomes
    small while the order stays random."""
    n = data.num_samples
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    if bucket:
        window = batch_size * 64
        chunks = []
        for s in range(0, n, window):
            w = order[s:s + window]
            w = w[np.argsort(-data.lengths[w], kind="stable")]
            chunks.extend(w[i:i + batch_size] for i in range(0, len(w), batch_size))
        if shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        return chunks
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def padding_fraction(data, batches) -> float:
    computed = sum(len(b) * int(data.lengths[b].max()) for b in batches)
    useful = sum(int(data.lengths[b].sum()) for b in batches)
    return 1.0 - useful / max(computed, 1)


def make_dataset(path, kind: str, tok: TokenizerInfo, cache_root, seq_len: int, skip_bad_lines=False, quiet=False,
                 workers: int = 0):
    cache = build_token_cache(path, kind, tok, cache_root, skip_bad_lines=skip_bad_lines, quiet=quiet, workers=workers)
    if kind == "pretrain":
        return PretrainData(cache, seq_len)
    return ConversationData(cache, seq_len, source=str(path))
