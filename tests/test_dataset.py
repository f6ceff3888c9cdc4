"""The data path as the trainer sees it: loss masks on the tensors the loader yields,
packing, caching, shuffling, bucketing and clear errors for bad records."""
import json

import numpy as np
import pytest

from dataset import (ConversationData, DataError, PretrainData, build_token_cache, epoch_batches,
                     make_dataset, normalise_pretrain_text, padding_fraction)


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n",
                    encoding="utf-8")
    return path


def conv(*turns, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return {"conversations": msgs}


CONVS = [
    conv("你好", "你好！我是小新，很高兴见到你。"),
    conv("1+1等于几？", "<think>\n1加1等于2。\n</think>\n<answer>\n等于2。\n</answer>", system="请先思考再回答。"),
    conv("讲个笑话", "好的：有一天……", "再讲一个", "\n\n  第二个笑话来了。", "谢谢", "不客气！"),
    conv("English?", " Yes, a little English too.\n"),
]


def test_loss_mask_covers_exactly_assistant_tokens(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "sft.jsonl", CONVS)
    data = make_dataset(path, "sft", tokenizer, tmp_path / "cache", seq_len=512, quiet=True)
    for batch_idx in epoch_batches(data, 2, seed=0, epoch=0, bucket=True):
        b = data.batch(batch_idx)
        for row, i in enumerate(batch_idx):
            record = CONVS[i]["conversations"]
            expected = "".join(m["content"] + "<|im_end|>" for m in record if m["role"] == "assistant")
            kept = b.targets[row][b.loss_mask[row] > 0]
            assert tokenizer.decode(kept) == expected
            n = int(data.lengths[i])
            assert b.loss_mask[row].sum() == data.loss_tokens[i]            # what the trainer normalises by
            assert (b.loss_mask[row, n:] == 0).all()          # padding never trained on
            assert (b.input_ids[row, 1:n] == b.targets[row, :n - 1]).all()   # targets are inputs shifted by one


def test_truncated_conversation_keeps_loss_on_what_remains(tmp_path, tokenizer):
    long_answer = "这是一个很长的回答。" * 80
    path = write_jsonl(tmp_path / "sft.jsonl", [conv("问题", long_answer)])
    data = make_dataset(path, "sft", tokenizer, tmp_path / "cache", seq_len=64, quiet=True)
    b = data.batch([0])
    assert b.input_ids.shape == (1, 64) and b.loss_mask.sum() > 0


def test_conversation_with_no_room_for_the_assistant_is_an_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "sft.jsonl", [conv("短", "好"), conv("长问题" * 200, "答")])
    with pytest.raises(DataError, match=r"sft.jsonl line 2: .*no assistant token fits in --max_seq_len 64"):
        make_dataset(path, "sft", tokenizer, tmp_path / "cache", seq_len=64, quiet=True)


def test_pretrain_separator_styles_normalise_alike():
    expected = "第一段<|im_end|>第二段<|im_end|>"
    assert normalise_pretrain_text("<s>第一段</s> <s>第二段</s>") == expected
    assert normalise_pretrain_text("<|im_start|>第一段<|im_end|> <|im_start|>第二段<|im_end|>") == expected
    assert normalise_pretrain_text("第一段<|im_end|> 第二段<|im_end|>") == expected
    assert normalise_pretrain_text("没有分隔符") == "没有分隔符<|im_end|>"


def test_pretrain_packing_reconstructs_the_stream(tmp_path, tokenizer):
    docs = [{"text": "短文。"}, {"text": "一篇很长的文章，" * 60}, {"text": "<s>甲</s> <s>乙</s>"}]
    path = write_jsonl(tmp_path / "pt.jsonl", docs)
    data = make_dataset(path, "pretrain", tokenizer, tmp_path / "cache", seq_len=32, quiet=True)
    stream = np.asarray(data.cache.tokens, dtype=np.int64)
    assert stream[-1] == tokenizer.im_end_id and (stream == tokenizer.im_end_id).sum() == 4
    batches = epoch_batches(data, 3, seed=0, epoch=0, shuffle=False)
    rows = [data.batch(idx) for idx in batches]
    inputs = np.concatenate([r.input_ids[r.loss_mask > 0] for r in rows])
    targets = np.concatenate([r.targets[r.loss_mask > 0] for r in rows])
    assert (inputs == stream[:-1]).all() and (targets == stream[1:]).all()   # nothing lost, the long doc continues
    assert rows[-1].loss_mask.sum() < rows[-1].loss_mask.size               # the short final row is kept
    assert sum(r.loss_mask.sum() for r in rows) == data.loss_tokens.sum() == len(stream) - 1


def test_epoch_batches_cover_everything_once_and_reshuffle(tmp_path):
    class Fake:
        num_samples = 103
        lengths = np.random.default_rng(0).integers(5, 500, 103)
    for bucket in (False, True):
        a = epoch_batches(Fake, 8, seed=1, epoch=0, bucket=bucket)
        assert sorted(np.concatenate(a).tolist()) == list(range(103))
        assert [x.tolist() for x in a] == [x.tolist() for x in epoch_batches(Fake, 8, seed=1, epoch=0, bucket=bucket)]
        assert [x.tolist() for x in a] != [x.tolist() for x in epoch_batches(Fake, 8, seed=1, epoch=1, bucket=bucket)]


def test_length_bucketing_keeps_padding_small():
    class Fake:  # a realistic long-tailed SFT length distribution
        num_samples = 20000
        lengths = np.clip(np.random.default_rng(0).lognormal(5.0, 0.7, 20000).astype(int), 8, 512)
    bucketed = padding_fraction(Fake, epoch_batches(Fake, 32, seed=0, epoch=0, bucket=True))
    unbucketed = padding_fraction(Fake, epoch_batches(Fake, 32, seed=0, epoch=0, bucket=False))
    assert bucketed < 0.05 < unbucketed



def count_encoding(tokenizer, monkeypatch) -> list:
    """A list that grows by one for every encode_batch call the tokenizer makes from now on."""
    calls = []
    original = tokenizer.tokenizer.encode_batch

    class Spy:
        def __getattr__(self, name):
            return getattr(original.__self__, name)

        def encode_batch(self, *a, **k):
            calls.append(1)
            return original(*a, **k)
    monkeypatch.setattr(tokenizer, "tokenizer", Spy())
    return calls


def test_cache_is_reused_and_rebuilt_when_stale(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "pt.jsonl", [{"text": "第一篇"}, {"text": "第二篇"}])
    first = build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", quiet=True)
    calls = count_encoding(tokenizer, monkeypatch)
    again = build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", quiet=True)
    assert not calls and (np.asarray(again.tokens) == np.asarray(first.tokens)).all()
    write_jsonl(path, [{"text": "第一篇"}, {"text": "改过的第二篇"}])
    changed = build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", quiet=True)
    assert calls and len(changed.tokens) != len(first.tokens)
    assert not list(path.parent.glob("pt.jsonl.*"))  # nothing written beside the source


BAD = [
    ('{"text": "好"', "invalid JSON"),
    ('{"txt": "好"}', 'missing field "text"'),
    ('{"text": "   "}', 'field "text" is empty'),
    ('["a", "b"]', "expected a JSON object"),
]


@pytest.mark.parametrize("line,why", BAD)
def test_bad_pretrain_line_names_file_and_line(tmp_path, tokenizer, line, why):
    path = write_jsonl(tmp_path / "pt.jsonl", [{"text": "好的"}, line, {"text": "也好"}, '{"text": 1}'])
    with pytest.raises(DataError) as e:
        build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", quiet=True)
    assert f"pt.jsonl line 2: {why}" in str(e.value) and "(1 other bad lines)" in str(e.value)
    cache = build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", skip_bad_lines=True, quiet=True)
    assert cache.num_records == 2 and cache.meta["skipped_lines"] == 2 and list(cache.lines) == [1, 3]


@pytest.mark.parametrize("record,why", [
    ({"conversations": [{"role": "user", "content": "hi"}]}, "does not end with an assistant"),
    ({"conversations": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "role 'human'"),
    ({"conversations": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]}, "empty content"),
    ({"conversations": [{"role": "assistant", "content": "yo"}]}, "turn 1 is assistant"),
    ({"text": "not a conversation"}, 'missing field "conversations"'),
])
def test_bad_conversation_names_the_problem(tmp_path, tokenizer, record, why):
    path = write_jsonl(tmp_path / "sft.jsonl", [CONVS[0], record])
    with pytest.raises(DataError, match=f"sft.jsonl line 2: .*{why}"):
        build_token_cache(path, "sft", tokenizer, tmp_path / "cache", quiet=True)


def test_invalid_utf8_and_empty_file(tmp_path, tokenizer):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="bin.jsonl line 2: line is not valid UTF-8"):
        build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", quiet=True)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl is empty"):
        build_token_cache(empty, "pretrain", tokenizer, tmp_path / "cache", quiet=True)


def test_real_minimind_sample_lines_load(tmp_path, tokenizer):
    """Compatibility with the real MiniMind files (two real lines each, from ../shared; skipped without it)."""
    from conftest import SHARED
    samples = SHARED / "minimind_samples"
    if not samples.is_dir():
        pytest.skip("../shared/data is absent")
    pre = make_dataset(samples / "sample_pretrain_hq.jsonl", "pretrain", tokenizer, tmp_path, seq_len=512, quiet=True)
    stream = np.asarray(pre.cache.tokens)
    assert (stream == tokenizer.im_end_id).sum() > 2          # its literal <|im_end|> separators became tokens
    assert "<|im_end|>" not in tokenizer.decode(stream[stream != tokenizer.im_end_id])
    sft = make_dataset(samples / "sample_sft_mini_512.jsonl", "sft", tokenizer, tmp_path, seq_len=512, quiet=True)
    records = [json.loads(line) for line in (samples / "sample_sft_mini_512.jsonl").read_text(encoding="utf-8").splitlines()]
    b = sft.batch(np.arange(sft.num_samples))
    for row, record in enumerate(records):
        expected = "".join(m["content"] + "<|im_end|>" for m in record["conversations"] if m["role"] == "assistant")
        assert tokenizer.decode(b.targets[row][b.loss_mask[row] > 0]) == expected


def cache_files(cache):
    return {name: (cache.directory / name).read_bytes()
            for name in ("tokens.bin", "mask.bin", "offsets.npy", "lines.npy") if (cache.directory / name).is_file()}


def test_parallel_build_is_identical_to_the_one_process_build(tmp_path, tokenizer):
    """Byte ranges tokenised by worker processes and merged in order: the same cache, byte for
    byte, and a bad line is reported by its line number in the whole file."""
    from conftest import DEMO
    one = build_token_cache(DEMO / "sft_512.jsonl", "sft", tokenizer, tmp_path / "one", quiet=True, workers=1)
    many = build_token_cache(DEMO / "sft_512.jsonl", "sft", tokenizer, tmp_path / "many", quiet=True, workers=3,
                             min_range_bytes=20_000)   # ≈ 12 ranges over 3 processes
    assert cache_files(one) == cache_files(many) and one.meta["num_tokens"] == many.meta["num_tokens"]
    lines = (DEMO / "sft_512.jsonl").read_text(encoding="utf-8").splitlines()
    k = len(lines) * 3 // 4
    lines[k] = '{"conversations": []}'                     # in a late range
    lines.insert(5, "")                                    # a blank line shifts every later number
    bad = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=f"bad.jsonl line {k + 2}: field \"conversations\" is not"):
        build_token_cache(bad, "sft", tokenizer, tmp_path / "bad", quiet=True, workers=3, min_range_bytes=20_000)
    skipped = build_token_cache(bad, "sft", tokenizer, tmp_path / "skip", quiet=True, workers=3,
                                min_range_bytes=20_000, skip_bad_lines=True)
    alone = build_token_cache(bad, "sft", tokenizer, tmp_path / "skip1", quiet=True, workers=1, skip_bad_lines=True)
    assert cache_files(skipped) == cache_files(alone)
    assert not [p for p in (tmp_path / "many").iterdir() if p.name.startswith(".")]   # no temporary left


def test_two_builders_of_one_cache_at_once_both_succeed(tmp_path, tokenizer, monkeypatch):
    """Issue 14 item 10: a second build of the same cache runs to completion while the first is
    half-way (two stages started together, or ranks on a shared filesystem). Both must succeed
    with a correct cache; before, the first died with FileNotFoundError on its rename."""
    path = write_jsonl(tmp_path / "sft.jsonl", CONVS * 3)
    reference = build_token_cache(path, "sft", tokenizer, tmp_path / "reference", quiet=True)
    original = tokenizer.tokenizer.encode_batch
    second = []

    class Interleaved:
        def __getattr__(self, name):
            return getattr(original.__self__, name)

        def encode_batch(self, *a, **k):
            if not second:       # the first builder is half-way: the second one runs start to finish
                second.append(None)
                second[0] = build_token_cache(path, "sft", tokenizer, tmp_path / "cache", quiet=True, workers=1)
            return original(*a, **k)
    monkeypatch.setattr(tokenizer, "tokenizer", Interleaved())
    first = build_token_cache(path, "sft", tokenizer, tmp_path / "cache", quiet=True, workers=1)
    assert cache_files(first) == cache_files(second[0]) == cache_files(reference)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [reference.directory.name]


def test_same_size_edit_with_the_mtime_put_back_is_stale(tmp_path, tokenizer, monkeypatch):
    """Issue 14 item 11: `cp -p` / `rsync -t` keep size and mtime. An edit far from the file's
    first and last MiB (what the old fingerprint read) must still be seen; a touch or a copy
    of the same bytes must not cost a rebuild."""
    import os
    rows = [{"text": f"第{i:05d}行：今天学习了新的词语，明天继续努力。"} for i in range(40000)]   # ≈ 2.6 MB
    path = write_jsonl(tmp_path / "pt.jsonl", rows)
    first = build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", quiet=True, workers=1)
    calls = count_encoding(tokenizer, monkeypatch)
    data = path.read_bytes()
    middle = data.index("第20000行".encode())
    st = os.stat(path)
    path.write_bytes(data)                                    # the same bytes, rewritten and touched
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", quiet=True, workers=1)
    assert not calls
    st = os.stat(path)
    path.write_bytes(data[:middle] + "第20000列".encode() + data[middle + len("第20000行".encode()):])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))       # as cp -p leaves it: same size, same mtime
    assert os.path.getsize(path) == len(data) and os.stat(path).st_mtime_ns == st.st_mtime_ns
    edited = build_token_cache(path, "pretrain", tokenizer, tmp_path / "cache", quiet=True, workers=1)
    assert calls and not np.array_equal(np.asarray(edited.tokens), np.asarray(first.tokens))


def test_padding_rows_and_lengths_change_no_loss(tmp_path, tokenizer):
    """Stable shapes for torch.compile: rows of zero loss mask and lengths padded to a multiple of
    64 leave each real row's loss as it was, and the padding rows' loss is exactly 0."""
    import torch
    from Config import model_config
    from losses import cross_entropy, to_device
    from model import XiaoXin
    data = make_dataset(write_jsonl(tmp_path / "sft.jsonl", CONVS), "sft", tokenizer, tmp_path / "c", seq_len=512,
                        quiet=True)
    torch.manual_seed(0)
    model = XiaoXin(model_config("tiny"))
    plain, padded = data.batch([0, 2, 3]), data.batch([0, 2, 3], rows=5, length_multiple=64)
    T = plain.input_ids.shape[1]
    assert padded.input_ids.shape == (5, -(-T // 64) * 64) and T % 64
    assert padded.num_loss_tokens == plain.num_loss_tokens and list(padded.lines) == list(plain.lines)
    with torch.no_grad():
        a = cross_entropy(model, to_device(plain, torch.device("cpu")))[0]
        b = cross_entropy(model, to_device(padded, torch.device("cpu")))[0]
    assert torch.allclose(a, b[:3], rtol=1e-6, atol=0) and torch.equal(b[3:], torch.zeros(2))
    pre = make_dataset(write_jsonl(tmp_path / "pt.jsonl", [{"text": "第一篇很长的文章。" * 20}]), "pretrain", tokenizer,
                       tmp_path / "c", seq_len=32, quiet=True)
    last = pre.batch([pre.num_samples - 1], rows=4)            # the last, partial batch of an epoch
    assert last.input_ids.shape == (4, 32) and last.loss_mask[1:].sum() == 0


@pytest.mark.parametrize("cores, workers", [(None, 1), (1, 1), (2, 1), (4, 4), (16, 16)])
def test_token_cache_builds_in_one_process_on_two_cores_and_in_all_cores_above(monkeypatch, cores, workers):
    """On 2 cores two processes built the cache at 0.81x one process (whose Rust encoder already
    uses both cores): --tokenize_workers 0 must not pick them there."""
    import dataset
    monkeypatch.setattr(dataset.os, "cpu_count", lambda: cores)
    assert dataset.default_tokenize_workers() == workers
