"""scripts/data_doctor.py: `check` finds exactly the problems planted in small files (right lines,
right kinds, right thirds), `clean` drops exactly those and never touches its input, `loss`
scores with the loader's own loss mask and ranks a gibberish answer first, and no line of
random or malformed input makes `check` crash or lose count."""
import hashlib
import json
import random
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import ROOT, SHARED

sys.path.insert(0, str(ROOT / "scripts"))
import data_doctor  # noqa: E402

QA = [  # ordinary, distinct Chinese conversations
    ("冬天手脚冰凉怎么办？", "可以多做些运动促进血液循环，睡前用温水泡脚，饮食上适当吃些羊肉、生姜等温热食物，注意手脚保暖。"),
    ("怎样记住英语单词？", "把单词放进句子里记，配合间隔重复复习，每天固定时间背一小组，比一次背很多效果好。"),
    ("如何挑选西瓜？", "看瓜蒂是否新鲜弯曲，瓜皮纹路清晰、颜色深绿，用手拍一拍声音清脆的一般比较熟。"),
    ("为什么天空是蓝色的？", "阳光进入大气层后，波长较短的蓝光更容易被空气分子散射到各个方向，所以我们看到的天空是蓝色。"),
    ("推荐一种适合初学者的运动。", "快走很合适：不需要器材，对关节冲击小，每天三十分钟就能改善心肺功能。"),
    ("水为什么能灭火？", "水吸收大量热量使温度降到燃点以下，蒸发出的水蒸气还能隔绝氧气，两方面共同让火熄灭。"),
    ("番茄炒蛋先放什么？", "一般先炒鸡蛋，炒到刚凝固盛出，再炒番茄出汁，最后把鸡蛋倒回去翻炒均匀，加盐调味。"),
    ("一年有几个季节？", "通常分为春夏秋冬四个季节，由地球绕太阳公转且地轴倾斜造成。"),
    ("怎么缓解考试前的紧张？", "提前做好复习计划，考前保证睡眠，紧张时做几次深呼吸，把注意力放在题目本身上。"),
    ("猫为什么喜欢晒太阳？", "晒太阳能帮助猫保持体温、节省能量，阳光还让它们感到舒适放松。"),
]
LONG_ANSWER = ("长江是中国第一长河，发源于青藏高原的唐古拉山脉，干流流经青海、西藏、四川、云南、重庆、湖北、湖南、江西、"
               "安徽、江苏和上海，最后注入东海，全长约六千三百公里。长江流域面积广阔，物产丰富，是中华文明的重要发源地之一。")


def conv(question, answer, *more):
    turns = (question, answer) + more
    roles = ("user", "assistant")
    return {"conversations": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


def mojibake(text: str) -> str:
    """UTF-8 bytes shown as cp1252 (Latin-1 where cp1252 has no character), the classic mix-up."""
    out = []
    for b in text.encode("utf-8"):
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out)


def write_lines(path, lines):
    """Each item: a record (dict, written as JSON) or a raw str line."""
    text = "\n".join(json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x for x in lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def planted_sft(path):
    """An sft file and {line: kind} of the problems planted in it (checked with --max_seq_len 256)."""
    lines, expected = [], {}

    def add(item, kind=None):
        lines.append(item)
        if kind:
            expected[len(lines)] = kind

    add(conv(*QA[0]))
    add(conv("长江有多长？", LONG_ANSWER))
    add(conv(*QA[1]))
    add(json.dumps(conv(*QA[0]), ensure_ascii=True), "duplicate")          # same content, other bytes
    add(conv(*QA[2]))
    add(conv("长江有多长？", LONG_ANSWER.replace("物产丰富", "物产富饶", 1)), "near_duplicate")
    add(conv(*QA[3]))
    add(conv("你好", "   "), "empty_content")
    add('{"conversations": [{"role": "user", "content": "断掉的一行', "bad_json")
    add(conv(*QA[4]))
    add(conv(QA[5][0], QA[5][1], "还有别的原因吗？"), "bad_structure")   # ends on the user
    add(conv("讲一个很长的故事。", "从前有一座山，山上有一座庙，庙里有个老和尚在给小和尚讲故事。" * 20), "too_long")
    add(conv(*QA[6]))
    add(conv("你是谁？", mojibake("我是小新，一个中文小助手，很高兴认识你。有什么可以帮你的吗？")), "garbled")
    add(conv(*QA[7]))
    add(conv(*QA[8]))
    return write_lines(path, lines), expected


def r1(question, think, answer):
    return conv(question, f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>")


def planted_r1(path):
    lines = [r1("1+1等于几？", "一加一等于二。", "等于2。"),
             r1("3乘4是多少？", "三个四相加是十二。", "是12。"),
             conv("10减3呢？", "<think>\n十减三等于七。\n<answer>\n是7。\n</answer>"),                 # no </think>
             r1("一周有几天？", "星期一到星期日。", "7天。"),
             conv("水的沸点？", "<answer>\n100摄氏度。\n</answer>\n<think>\n标准大气压下。\n</think>"),  # order
             r1("3乘4是多少？", "三个四相加是十二。", "是12。")]
    return write_lines(path, lines), {3: "unbalanced_tags", 5: "unbalanced_tags", 6: "duplicate"}


def planted_pretrain(path):
    docs = [f"{q}{a}" for q, a in QA[:6]]
    lines = [{"text": docs[0]}, {"text": docs[1]}, {"text": "  \n "}, {"text": docs[2]}, "",
             {"text": f"<s>{docs[1]}</s>"},                   # another separator style, same document
             {"text": docs[3].replace("，", "\ufffd", 2)}, {"text": docs[4] + "\x07"}, {"text": docs[5]},
             {"txt": docs[5]}]
    return write_lines(path, lines), {3: "empty_content", 6: "duplicate", 7: "garbled", 8: "garbled",
                                      10: "bad_structure"}


def run_check(tmp_path, path, *flags):
    out = tmp_path / f"{path.stem}-report.json"
    assert data_doctor.main(["check", str(path), "--json", str(out), "--quiet", *flags]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("make, kind, flags", [(planted_sft, "sft", ["--max_seq_len", "256"]),
                                               (planted_r1, "r1", []), (planted_pretrain, "pretrain", [])])
def test_check_finds_exactly_the_planted_problems(tmp_path, capsys, make, kind, flags):
    path, expected = make(tmp_path / f"{kind}.jsonl")
    report = run_check(tmp_path, path, *flags)
    assert report["kind"] == kind                                  # auto-detected
    assert {p["line"]: p["kind"] for p in report["problems"]} == expected
    n_lines = len(path.read_text(encoding="utf-8").splitlines())
    assert report["lines"] == n_lines and report["records"] == n_lines - report["blank_lines"]
    assert {p["kind"] for p in report["problems"]} <= set(data_doctor.KINDS)
    for third in data_doctor.THIRDS:
        first, last = report["by_position"][third]["lines"]
        in_third = [line for line in expected if first <= line <= last]
        assert report["by_position"][third]["problem_records"] == len(in_third)
    printed = capsys.readouterr().out
    assert f"problem records: {len(expected)} of {report['records']}" in printed


def test_check_details_point_at_the_cause(tmp_path):
    path, _ = planted_sft(tmp_path / "sft.jsonl")
    by_line = {p["line"]: p for p in run_check(tmp_path, path, "--max_seq_len", "256")["problems"]}
    assert by_line[4]["detail"] == "same content as line 1"
    assert "similar to line 2" in by_line[6]["detail"]
    assert by_line[11]["detail"] == "conversation does not end with an assistant message"   # dataset's own reason
    assert "我是小新" in by_line[14]["detail"]            # the mojibake is decoded back to what was meant
    assert "tokens > max_seq_len + 1 = 257" in by_line[12]["detail"]
    assert data_doctor.problem_kinds(by_line[14]) == ["garbled", "non_chinese"]   # second problem kept in `also`
    path, _ = planted_r1(tmp_path / "r1.jsonl")
    by_line = {p["line"]: p for p in run_check(tmp_path, path)["problems"]}
    assert by_line[3]["detail"] == "message 2 (assistant): no </think>"
    assert "out of order" in by_line[5]["detail"]


def test_length_histogram_counts_truncation_against_max_seq_len(tmp_path, tokenizer):
    path, _ = planted_sft(tmp_path / "sft.jsonl")
    hist = run_check(tmp_path, path, "--max_seq_len", "256")["length_histogram"]
    assert sum(hist["counts"]) == hist["tokenised_records"] == 13     # all but bad_json/empty/bad_structure
    assert hist["truncated"] == 1 and hist["limit_tokens"] == 257
    story = conv("讲一个很长的故事。", "从前有一座山，山上有一座庙，庙里有个老和尚在给小和尚讲故事。" * 20)
    n = len(tokenizer.encode(data_doctor.render_chat(story["conversations"])[0]))
    assert hist["max"] == n
    wide = run_check(tmp_path, path, "--max_seq_len", str(n - 1))["length_histogram"]
    assert wide["truncated"] == 0                                    # n tokens = max_seq_len + 1 still fit


def test_clean_drops_the_planted_problems_and_keeps_the_rest(tmp_path, capsys):
    path, expected = planted_sft(tmp_path / "sft.jsonl")
    before = sha(path)
    out, report = tmp_path / "clean.jsonl", tmp_path / "clean.json"
    assert data_doctor.main(["clean", str(path), "--out", str(out), "--json", str(report), "--seed", "3",
                             "--max_seq_len", "256", "--quiet"]) == 0
    assert sha(path) == before
    original = path.read_text(encoding="utf-8").splitlines()
    kept = out.read_text(encoding="utf-8").splitlines()
    wanted = [line for i, line in enumerate(original, 1) if i not in expected]
    assert sorted(kept) == sorted(wanted) and kept != wanted          # same lines, shuffled
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert {p["line"]: p["kind"] for p in summary["dropped_records"]} == expected
    assert summary["kept"] == len(wanted) and summary["dropped"] == len(expected)
    again = tmp_path / "again.jsonl"
    data_doctor.main(["clean", str(path), "--out", str(again), "--seed", "3", "--max_seq_len", "256", "--quiet"])
    assert again.read_bytes() == out.read_bytes()                     # deterministic given the seed


def test_clean_refuses_to_overwrite_its_input(tmp_path, capsys):
    path, _ = planted_sft(tmp_path / "sft.jsonl")
    before = sha(path)
    (tmp_path / "sub").mkdir()
    same = tmp_path / "sub" / ".." / "sft.jsonl"
    assert data_doctor.main(["clean", str(path), "--out", str(same), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "input" in err and err.count("\n") == 1
    assert sha(path) == before


def test_user_errors_are_one_sentence(tmp_path, capsys):
    path, _ = planted_sft(tmp_path / "sft.jsonl")
    cases = [["check", str(tmp_path / "missing.jsonl")],
             ["check", str(path), "--max_seq_len", "0"],
             ["clean", str(path), "--out", str(tmp_path / "o.jsonl"), "--drop", "typo"],
             ["loss", str(path), "--save_dir", str(tmp_path), "--stage", "sft"]]
    for argv in cases:
        assert data_doctor.main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    (tmp_path / "notes.jsonl").write_text("hello\nworld\n")
    assert data_doctor.main(["check", str(tmp_path / "notes.jsonl"), "--quiet"]) == 2
    assert "--kind" in capsys.readouterr().err


@pytest.fixture(scope="module")
def gibberish_file(tmp_path_factory):
    """QA plus, at line 7, an answer of ASCII symbols a Chinese corpus almost never holds: their
    tokens were only ever pushed down in training, so even the fixture's barely trained model
    (10 steps) finds them less likely than any ordinary answer, by ≈0.6 nats."""
    path = tmp_path_factory.mktemp("loss") / "sft_gibberish.jsonl"
    rng = random.Random(1)
    noise = "".join(rng.choice("#$%^&*~`|\\{}[]<>") for _ in range(80))
    records = [conv(*qa) for qa in QA]
    records.insert(6, conv("今天晚饭吃什么？", noise))
    return write_lines(path, records), 7, records[6]


def test_loss_ranks_gibberish_first(trained, gibberish_file, tmp_path):
    path, gibberish_line, gibberish = gibberish_file
    out, plot = tmp_path / "worst.jsonl", tmp_path / "loss.png"
    assert data_doctor.main(["loss", str(path), "--save_dir", str(trained / "ckpt"), "--stage", "sft",
                             "--top", "3", "--out", str(out), "--plot", str(plot), "--batch_size", "4",
                             "--cache_dir", str(tmp_path / "cache"), "--quiet"]) == 0
    worst = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(worst) == 3 and worst[0]["line"] == gibberish_line
    assert worst[0]["record"] == gibberish                                 # the record itself, for reading
    assert [w["loss"] for w in worst] == sorted((w["loss"] for w in worst), reverse=True)
    assert plot.stat().st_size > 0


def test_loss_is_the_trainers_loss_on_the_loaders_batches(trained, gibberish_file, tmp_path, tokenizer):
    """Per-sample loss, computed in length-sorted batches of 4, equals the trainer's cross-entropy
    over the batch dataset.py feeds the trainer (its tokens, targets, loss mask and padding)."""
    from checkpoint import load_model
    from dataset import make_dataset
    from losses import masked_cross_entropy
    path = gibberish_file[0]
    out = tmp_path / "all.jsonl"
    assert data_doctor.main(["loss", str(path), "--save_dir", str(trained / "ckpt"), "--stage", "sft", "--top", "99",
                             "--out", str(out), "--batch_size", "4", "--cache_dir", str(tmp_path / "cache"),
                             "--quiet"]) == 0
    scored = {r["line"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert sorted(scored) == list(range(1, len(QA) + 2))
    model, _ = load_model(trained / "ckpt" / "sft.pt")
    data = make_dataset(path, "sft", tokenizer, tmp_path / "cache2", seq_len=512, quiet=True)
    b = data.batch(list(range(data.num_samples)))          # one batch, padded to the longest record
    with torch.no_grad():
        logits = model(torch.from_numpy(b.input_ids)).logits
    for row, line in enumerate(b.lines):
        mask = torch.from_numpy(b.loss_mask[row:row + 1])
        loss_sum = masked_cross_entropy(logits[row:row + 1], torch.from_numpy(b.targets[row:row + 1]), mask).sum()
        assert scored[int(line)]["loss_tokens"] == int(mask.sum())
        assert scored[int(line)]["loss"] == pytest.approx(float(loss_sum) / float(mask.sum()), abs=2e-4)


# ---------------------------------------------------------------- robustness

_json_leaf = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
              | st.text(max_size=12))
_json = st.recursive(_json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=6)
_content = st.one_of(st.text(max_size=30), st.integers(), st.none(),
                     st.sampled_from(["<think>\n嗯\n</think>\n<answer>\n好\n</answer>", "</think><think>", " \u3000 ",
                                      "\u200b", "Ã©æˆ‘", "\ufffd", "锟斤拷", "\x00\x1b"]))
_message = st.dictionaries(st.sampled_from(["role", "content", "name"]),
                           st.one_of(st.sampled_from(["user", "assistant", "system", "bot"]), _content), max_size=3)
_record = st.one_of(st.builds(lambda m: {"conversations": m}, st.lists(_message, max_size=4) | _json),
                    st.builds(lambda t: {"text": t}, _content | _json), _json)
_line = st.one_of(
    _record.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8")),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),           # invalid UTF-8, stray bytes
    st.text(max_size=30).map(lambda s: s.replace("\n", "").encode("utf-8")),
    st.integers(0xD800, 0xDFFF).map(lambda c: b'{"text": "a\\u%04x b"}' % c),   # lone surrogate via JSON escape
    st.sampled_from([b"", b"  \t", b"\r", b"[" * 3000, b'{"text": 1' + b"0" * 5000 + b"}", b"\xef\xbb\xbf{}"]),
)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(_line, min_size=1, max_size=12), kind=st.sampled_from(["pretrain", "sft", "r1"]),
       trailing_newline=st.booleans())
def test_check_never_crashes_and_counts_every_line(tmp_path_factory, tokenizer, lines, kind, trailing_newline):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    path.write_bytes(data)
    n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)   # only \n ends a line
    doctor = data_doctor.analyse(path, kind, tokenizer, max_seq_len=64, quiet=True)
    report = doctor.report()
    assert report["lines"] == n_lines
    assert report["records"] + report["blank_lines"] == n_lines
    problem_lines = [p["line"] for p in report["problems"]]
    assert len(set(problem_lines)) == len(problem_lines) and all(1 <= n <= n_lines for n in problem_lines)
    assert sum(report["by_position"][t]["problem_records"] for t in data_doctor.THIRDS) == len(problem_lines)
    rep = {"file": str(path), "kind": kind, "kind_source": "--kind", "max_seq_len": 64, "max_seq_len_source": "",
           "tokenizer": "", **report}
    data_doctor.format_report(rep).encode("utf-8")           # printable
    data_doctor.write_json(path.with_suffix(".json"), rep)   # and serialisable
    json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- real third-party data

def _shared_files():
    files = sorted((SHARED / "minimind_samples").glob("*.jsonl")) if SHARED.is_dir() else []
    return files + [SHARED / "rlaif_prompts.jsonl"]


@pytest.mark.parametrize("path", _shared_files(), ids=lambda p: p.name)
def test_check_runs_on_real_minimind_data(tmp_path, path):
    if not path.is_file():
        pytest.skip(f"{path} is absent (optional third-party data)")
    if path.name == "rlaif_prompts.jsonl":                      # a 2000-line head keeps this fast
        head = tmp_path / "rlaif_head.jsonl"
        with open(path, "rb") as f:
            head.write_bytes(b"".join(line for _, line in zip(range(2000), f)))
        path = head
    report = run_check(tmp_path, path)
    n_lines = len(path.read_bytes().splitlines())
    assert report["lines"] == n_lines and report["records"] == n_lines
    assert report["kind"] in ("pretrain", "sft")
    assert report["length_histogram"]["tokenised_records"] == n_lines - sum(
        1 for p in report["problems"] if p["kind"] in ("bad_json", "bad_structure", "empty_content"))
