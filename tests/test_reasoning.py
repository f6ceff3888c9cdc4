"""The reasoning-problem generator (scripts/gen_reasoning.py) and the grader (grader.py):
every generated problem renders and grades as its own answer, a perturbed reply is rejected,
generation is deterministic and wide enough that held-out problems are unseen."""
import datetime
import json
import random
import re
from decimal import Decimal

import pytest

import grader
from grader import check_answer, parse_reply, score
from scripts import gen_reasoning as gen

SEEDS = range(30)
PER_KIND = 40


def _perturb(kind, expected):
    """A plausible but wrong answer in the same format."""
    if kind == "weekday":
        return grader.WEEKDAYS[(grader.WEEKDAYS.index(expected) + 1) % 7]
    if kind == "date":
        y, m, d = (int(v) for v in re.match(r"(\d+)年(\d+)月(\d+)日", expected).groups())
        return gen._date_cn(datetime.date(y, m, d) + datetime.timedelta(days=1))
    if "/" in expected:
        a, b = expected.split("/")
        return f"{int(a) + 1}/{b}"
    return gen._fmt(Decimal(expected) + 1)


def _replace_value(text, old, new):
    # Replace only whole values (not the '3' inside '13' or '3.5').
    return re.sub(rf"(?<![\d./]){re.escape(old)}(?![\d/]|\.\d)", new, text)


@pytest.fixture(scope="module")
def problems():
    """Many problems of every kind from many seeds, drawn in memory."""
    return {(seed, kind): gen.generate(PER_KIND, seed, [kind]) for seed in SEEDS for kind in gen.KINDS}


def test_every_problem_renders_and_grades_as_its_own_answer(problems):
    for (seed, kind), batch in problems.items():
        assert len(batch) == PER_KIND and {p["kind"] for p in batch} == {kind}
        assert len({p["question"] for p in batch}) == PER_KIND
        sft, ev = gen.to_sft(batch, seed), gen.to_eval(batch, seed)
        for p, s, e in zip(batch, sft, ev):
            exp = p["expected"]
            lines = p["reasoning"].split("\n")
            assert 2 <= len(lines) <= 8 and all(line.strip() for line in lines), p
            assert _replace_value(p["answer"], exp, "@") != p["answer"], ("answer lacks the result", p)
            assert [t["role"] for t in s["conversations"]][-2:] == ["user", "assistant"]
            assert s["conversations"][-2]["content"] == p["question"]
            assert e["kind"] == kind and e["question"] == p["question"] and e["answer"] == exp
            json.dumps(s, ensure_ascii=False), json.dumps(e, ensure_ascii=False)
            reply = s["conversations"][-1]["content"]
            assert score(kind, exp, reply) == {"correct": True, "well_formed": True}, p
            assert parse_reply(reply) == (p["reasoning"], p["answer"], True)
            assert check_answer(kind, exp, p["answer"]), ("bare answer rejected", p)

            wrong = _replace_value(p["answer"], exp, _perturb(kind, exp))
            bad = f"<think>\n{p['reasoning']}\n</think>\n<answer>\n{wrong}\n</answer>"
            assert score(kind, exp, bad) == {"correct": False, "well_formed": True}, ("wrong answer accepted", p, wrong)
            cut = f"<think>\n{p['reasoning']}\n</think>\n"  # no <answer> at all
            assert score(kind, exp, cut) == {"correct": False, "well_formed": False}, p
            untagged = f"<think>\n{p['reasoning']}\n</think>\n{p['answer']}"
            assert score(kind, exp, untagged) == {"correct": True, "well_formed": False}, p


def test_answers_are_right_by_an_independent_route(problems):
    for (seed, kind), batch in problems.items():
        for p in batch:
            if kind == "arith" and "=" in p["answer"]:
                expr = p["answer"].split("=")[0].replace("×", "*").replace("÷", "/")
                assert eval(expr) == int(p["expected"]), p  # noqa: S307 - our own text
            if kind == "compare":  # the canonical answer is the larger of the two numbers asked about
                nums = set(re.findall(grader._NUM, p["question"]))
                assert len(nums) == 2, p
                assert grader._to_fraction(p["expected"]) == max(grader._to_fraction(v) for v in nums), p


def test_generation_is_deterministic():
    a, b = gen.generate(700, 11), gen.generate(700, 11)
    assert a == b
    dump = lambda ps: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in gen.to_sft(ps, 11))
    assert dump(a) == dump(b)
    assert gen.generate(700, 12) != a


def test_the_cli_writes_byte_identical_files(tmp_path):
    for name in ("a", "b"):
        assert gen.main(["--n", "300", "--seed", "4", "--out", str(tmp_path / f"{name}.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_payment_covers_any_bill():
    """The 40k-problem crash: a bill of 200 yuan or more had no note to pay with."""
    rng = random.Random(0)
    for total in range(1, 1000):
        pay = gen._payment(rng, total)
        assert pay > total and pay % 10 == 0
    for seed in range(300):  # big bills are rare; draw many shopping problems directly
        q, lines, ans, change = gen._word_shopping(random.Random(seed))
        assert int(change) >= 0 and change in ans


def test_excluded_questions_never_come_back():
    held_out = gen.generate(300, seed=1)
    banned = {p["question"] for p in held_out}
    train = gen.generate(300, seed=1, exclude_questions=banned)
    assert not banned & {p["question"] for p in train} and len(train) == 300
    assert train == gen.generate(300, seed=1, exclude_questions=banned)


def test_problem_spaces_are_wide_enough_that_held_out_means_unseen():
    """The issue's bar is < 2% per kind at 100,000 training problems against 1,000 held out
    (notes/generator.md); this guards it at a size a test can afford (the first generator
    failed this at 14,000: count 52%, unit 17%, weekday 13%)."""
    train = {p["question"] for p in gen.generate(14000, seed=1)}
    table = gen.overlap_by_kind(train, gen.generate(1400, seed=2))
    assert set(table) == set(gen.KINDS) | {"all"} and table["all"]["total"] == 1400
    assert all(row["percent"] < 2 for row in table.values()), table


def test_overlap_by_kind_counts_exact_questions():
    evals = [{"kind": "arith", "question": "1+1=?"}, {"kind": "arith", "question": "2+2=?"},
             {"kind": "date", "question": "d"}]
    table = gen.overlap_by_kind(["1+1=?", "d ", "x"], evals)
    assert list(table) == ["arith", "date", "all"]
    assert table["arith"] == {"overlap": 1, "total": 2, "percent": 50.0}
    assert table["date"] == {"overlap": 0, "total": 1, "percent": 0.0}  # exact text: "d " is not "d"
    assert table["all"]["overlap"] == 1 and table["all"]["total"] == 3


def test_check_overlap_flag_reads_sft_and_eval_files(tmp_path, capsys):
    train, ev = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    assert gen.main(["--n", "70", "--seed", "3", "--out", str(train)]) == 0
    assert gen.main(["--n", "70", "--seed", "3", "--format", "eval", "--out", str(ev)]) == 0
    assert len(gen.read_questions(train)) == len(gen.read_questions(ev)) == 70
    capsys.readouterr()
    assert gen.main(["--eval", str(ev), "--check_overlap", str(train)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^all\s+70\s+70\s+100\.0%$", out, re.M), out
    assert gen.main(["--n", "70", "--seed", "4", "--format", "eval", "--check_overlap", str(train)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^count\s+0\s+10\s+0\.0%$", out, re.M), out
    # the same set again, generated while excluding the training file: nothing in common
    assert gen.main(["--n", "70", "--seed", "3", "--format", "eval", "--exclude", str(train),
                     "--check_overlap", str(train)]) == 0
    assert re.search(r"^all\s+0\s+70\s+0\.0%$", capsys.readouterr().out, re.M)


def test_cli_refuses_bad_input_with_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gen.main(["--check_overlap", str(tmp_path / "missing.jsonl")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n{"text": "no question"}\n', encoding="utf-8")
    assert gen.main(["--n", "7", "--check_overlap", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (f'error: {bad}:2: neither an eval record ("question") '
                                               'nor an sft record ("conversations")')
    with pytest.raises(ValueError, match="unknown kind"):
        gen.generate(3, 0, ["algebra"])


# --- the grader on hand-written replies --------------------------------------------------

@pytest.mark.parametrize("kind, expected, reply, correct", [
    ("arith", "27", "<think>\n5 × 3 = 15\n</think>\n<answer>\n答案是27。\n</answer>", True),
    ("arith", "27", "结果是 28。", False),
    ("arith", "123", "<answer>１２３</answer>", True),                  # full-width digits
    ("arith", "1200", "<answer>一共1,200个</answer>", True),             # thousands separator
    ("arith", "5", "<answer>得数是 -5</answer>", False),                 # a sign is not dropped
    ("arith", "7", "<answer>12 - 5 = 7</answer>", True),                 # ...but subtraction is not a sign
    ("arith", "12", "<answer>", False),                                  # empty, cut off
    ("unit", "3500", "3.5千米等于3500米。", True),                          # trailing unit and punctuation
    ("unit", "2.5", "是2.50小时！", True),
    ("unit", "0.7", "<answer>0.70千克。</answer>", True),
    ("word", "3", "每人分到三个。", True),                                   # Chinese numerals, no digits
    ("word", "12", "<answer>每人分到十二个</answer>", True),
    ("word", "105", "<answer>一共一百零五个</answer>", True),
    ("word", "4", "<answer>每人分到三个</answer>", False),
    ("word", "8", "<answer>应找回8元</answer>\n<answer>应找回9元</answer>", False),  # the LAST block is graded
    ("word", "9", "<answer>应找回8元</answer>\n<answer>应找回9元</answer>", True),
    ("word", "9", "<answer>应找回9元</answer>\n<answer> </answer>", True),  # empty blocks are skipped
    ("count", "3", "<think>有3个</think>没有答案标签，但最后说：3个。", True),  # text after </think>
    ("weekday", "星期日", "那天是星期天。", True),
    ("weekday", "星期日", "是周六", False),
    ("weekday", "星期三", "<answer>礼拜三</answer>", True),
    ("date", "2024年3月1日", "<answer>3月1号</answer>", True),
    ("date", "2024年3月1日", "2024-03-02", False),
    ("date", "2024年3月1日", "<answer>是三月一日。</answer>", True),        # Chinese-numeral month and day
    ("date", "2024年11月12日", "<answer>2024年十一月十二日</answer>", True),
    ("date", "2024年3月1日", "<answer>2023年3月1日</answer>", False),       # a wrong year is wrong
    ("compare", "3/4", "四分之三？不，3/4比2/3大。", True),
    ("compare", "3/4", "2/3更大", False),
    ("compare", "3/4", "<answer>2/3比3/4小</answer>", True),
    ("compare", "0.7", "较大的是0.70", True),
    ("compare", "3/4", "<answer>４分之３更大</answer>", True),
])
def test_check_answer_on_tricky_replies(kind, expected, reply, correct):
    assert check_answer(kind, expected, reply) is correct
    assert score(kind, expected, reply)["correct"] is correct


@pytest.mark.parametrize("reply, think, answer, well_formed", [
    ("<think>\n想\n</think>\n<answer>\n42\n</answer>", "想", "42", True),
    ("  <think>想</think><answer>42</answer>\n", "想", "42", True),
    ("<think>想</think>\n<answer>41</answer><answer>42</answer>", "想", "42", False),   # two answers
    ("<think>想</think><think>再想</think><answer>42</answer>", "想", "42", False),     # two thinks
    ("<answer>42</answer>", "", "42", False),                                         # no think
    ("<think>想</think>42", "想", "42", False),                                        # no answer tags
    ("<think>想</think><answer>42", "想", "42", False),                                # cut off
    ("<think>想</think><answer> </answer>", "想", "", False),                          # empty answer
    ("前言<think>想</think><answer>42</answer>", "想", "42", False),                    # text outside
    ("<answer>42</answer><think>想</think>", "想", "42", False),                        # wrong order
    ("42", "", "42", False),
    ("", "", "", False),
])
def test_parse_reply(reply, think, answer, well_formed):
    assert parse_reply(reply) == (think, answer, well_formed)
    assert score("arith", "42", reply) == {"correct": answer == "42", "well_formed": well_formed}


def test_grader_imports_only_the_standard_library():
    import ast
    tree = ast.parse(open(grader.__file__, encoding="utf-8").read())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names <= {"re", "unicodedata", "decimal", "fractions"}, names
