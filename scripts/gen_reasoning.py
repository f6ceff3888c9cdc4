#!/usr/bin/env python3
"""Synthetic step-by-step reasoning problems for XiaoXin's R1-style distillation stage.

Every problem is generated from random parameters and its answer is computed by code,
so the data can be produced in any amount, is always correct, and can also be used to
*measure* a trained model (the eval format, graded by the top-level ``grader.py``).

Kinds of problems (``--kinds``, default all):
    arith    two/three-term integer arithmetic with + - × ÷ (and brackets)
    word     word problems: shopping and change, sharing, speed×time, work rates
    count    counting letters/characters, counting multiples in a range
    weekday  which weekday is N days after/before a given weekday
    date     which date is N days after a given date (same or next month)
    unit     length, mass, volume, time and money conversions (km↔m, kg↔g, h↔min, 元↔角/分 …)
    compare  which of two fractions/decimals is larger

Each kind is a few simple steps over small numbers; the variety is in the surface (names,
objects, units, events, many phrasings of one question), so that 100,000 training problems
and a 1,000-problem evaluation set of another seed share under 2% of their questions in every
kind (see notes/generator.md and ``--check_overlap``).

Output formats (``--format``):
    sft   {"conversations": [{"role": "user", ...}, {"role": "assistant", "content":
          "<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>"}]}
    eval  {"id": ..., "kind": ..., "question": ..., "answer": "<canonical answer>"}

Usage (from the repository root):
    python scripts/gen_reasoning.py --n 300 --seed 0 --out data/r1_synth.jsonl
    python scripts/gen_reasoning.py --n 200 --seed 7 --format eval --out eval.jsonl
    python scripts/gen_reasoning.py --n 50 --kinds date,weekday --out dates.jsonl
    # training data that can never contain an evaluation question:
    python scripts/gen_reasoning.py --n 100000 --seed 1 --exclude data/eval/reasoning_eval.jsonl --out train.jsonl
    # how many evaluation questions appear verbatim in a training file, per kind:
    python scripts/gen_reasoning.py --n 1000 --seed 999 --format eval --check_overlap train.jsonl
    python scripts/gen_reasoning.py --eval data/eval/reasoning_eval.jsonl --check_overlap train.jsonl

As a library:
    from scripts.gen_reasoning import generate, overlap_by_kind, read_questions
    problems = generate(100, seed=1)                           # list of dicts
    train = generate(10000, seed=2, exclude_questions={p["question"] for p in problems})

Same seed and arguments always give a byte-identical file. Standard library only.
"""

import argparse
import calendar
import datetime
import json
import math
import os
import random
import re
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grader import WEEKDAYS  # noqa: E402  (one spelling of the weekdays for problems and grading)

KINDS = ("arith", "word", "count", "weekday", "date", "unit", "compare")

# A small share of records carries a system prompt so the model also learns to
# reason when one is present (the chat template always allows it).
SYSTEM_PROMPTS = (
    "你是小新，请先思考再回答。",
    "你是小新，一个中文小助手。回答前请一步一步想清楚。",
    "请先一步步推理，再给出最终答案。",
)
SYSTEM_PROMPT_RATE = 0.08

NAMES = ("小明", "小红", "小刚", "小丽", "乐乐", "小雨", "朵朵", "天天", "小林", "小芳", "阿杰", "小华",
         "小军", "小东", "小兰", "小亮", "小美", "小强", "小静", "小宇", "明明", "亮亮", "豆豆", "果果",
         "丁丁", "冬冬", "点点", "甜甜", "贝贝", "欢欢", "小王", "小李", "小张", "小赵", "小陈", "小周",
         "小吴", "小杨", "小刘", "小孙", "小马", "小胡", "妈妈", "爸爸", "爷爷", "奶奶", "外婆", "姐姐",
         "哥哥", "弟弟", "妹妹", "王阿姨", "李叔叔", "张老师", "刘老师", "陈奶奶", "赵爷爷", "周阿姨",
         "孙叔叔", "黄老师")


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def _fmt(x):
    """Canonical number text: '12', '2.5', '0.35' (never '2.50' or '3.5E+3')."""
    if isinstance(x, Fraction):
        if x.denominator == 1:
            return str(x.numerator)
        x = Decimal(x.numerator) / Decimal(x.denominator)
    if isinstance(x, int):
        return str(x)
    s = format(Decimal(x).normalize(), "f")
    return s


def _join_cn(items):
    return "、".join(str(i) for i in items)


# How a question may be put to the model around its core: who asks, and what they add.
# Neither part holds a number, so the problem itself is unchanged; they multiply the
# number of distinct questions for the same underlying fact.
_OPENERS_NAMED = ("{n}问：", "{n}遇到一道题：", "{n}想考考你：", "{n}的作业里有这样一道题：", "请帮{n}想一想：",
                  "{n}不会做这道题：", "{n}出了一道题：", "{n}在练习本上写着：", "帮{n}看看这道题：", "{n}请教你：")
_OPENERS = ("问题：", "请回答：", "考考你：", "小测验：", "练习题：", "想一想：", "请解答：", "来做一道题：",
            "有这样一道题：", "小题目：")
_CLOSERS = ("请写出思考过程。", "请一步一步想。", "先想清楚再回答。", "要写过程哦。", "谢谢！", "请给出答案。",
            "请认真想一想。", "麻烦写一下过程。", "答案要写清楚。", "请仔细检查。")


def _frame(rng, q):
    r = rng.random()
    if r < 0.4:
        q = rng.choice(_OPENERS_NAMED).format(n=rng.choice(NAMES)) + q
    elif r < 0.7 and not re.match(r"[^：]{1,6}：", q):  # no "考考你：填空：…"
        q = rng.choice(_OPENERS) + q
    if rng.random() < 0.45:
        q += rng.choice(_CLOSERS)
    return q


def _apply(a, op, b):
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "×":
        return a * b
    # Only exact division is allowed: the problems promise integer results.
    if b == 0 or a % b:
        raise ValueError("inexact division")
    return a // b


def _eq(a, op, b, r):
    return f"{a} {op} {b} = {r}"


def _inverse(a, op, b, r):
    """The inverse-operation check taught in primary school (验算)."""
    if op == "+":
        return f"{r} - {b} = {a}"
    if op == "-":
        return f"{r} + {b} = {a}"
    if op == "×":
        return f"{r} ÷ {b} = {a}"
    return f"{r} × {b} = {a}"


# ---------------------------------------------------------------------------
# arith
# ---------------------------------------------------------------------------

_OP_NAME = {"+": "加", "-": "减", "×": "乘", "÷": "除"}

_ARITH_QUESTIONS = (
    "计算：{e} = ?", "{e} 等于多少？", "请帮我算一下 {e}。", "{e} 的结果是多少？", "口算一下：{e}",
    "不用计算器，{e} 是多少？", "{e} = ？请写出计算过程。", "小新，{e} 得几？", "{e} = ?", "算一算 {e}。",
    "{e} 是几？", "请计算 {e} 的值。", "求 {e} 的值。", "{e} 等于几？", "你能算出 {e} 吗？", "列式计算：{e}",
    "{e}，结果是？", "试试看：{e} = ?", "这道题怎么算：{e}？", "{e} 算出来是多少？", "帮忙算算 {e} 等于多少。",
    "请问 {e} 等于多少？",
)
_ARITH_STEPS_QUESTIONS = ("脱式计算：{e}", "按运算顺序计算：{e}", "{e} 应该先算哪一步？结果是多少？")

# Two-term problems asked in words: several questions for one fact.
_ARITH_WORDED = {
    "+": ("{a}加{b}等于多少？", "{a}加上{b}是多少？", "{a}和{b}的和是多少？", "把{a}和{b}加起来是多少？",
          "{a}与{b}相加得多少？", "比{a}多{b}的数是多少？"),
    "-": ("{a}减{b}等于多少？", "{a}减去{b}是多少？", "{a}与{b}的差是多少？", "从{a}里去掉{b}，还剩多少？",
          "比{a}少{b}的数是多少？", "{a}比{b}多多少？"),
    "×": ("{a}乘{b}等于多少？", "{a}乘以{b}是多少？", "{a}与{b}的积是多少？", "{b}个{a}相加是多少？",
          "{a}的{b}倍是多少？", "{a}和{b}相乘得多少？"),
    "÷": ("{a}除以{b}等于多少？", "{a}除以{b}的商是多少？", "{a}里面有几个{b}？", "{a}是{b}的几倍？",
          "把{a}平均分成{b}份，每份是多少？", "{b}乘几等于{a}？"),
}


def _compact(e):
    return e.replace(" ", "")


def _ask_arith(rng, e, templates=_ARITH_QUESTIONS):
    shown = _compact(e) if rng.random() < 0.3 else e  # users type both "12+5" and "12 + 5"
    return rng.choice(templates).format(e=shown)


def _reduce(nums, ops):
    """Evaluate with the usual precedence, returning the result and each step."""
    nums, ops = list(nums), list(ops)
    steps, snapshots = [], []
    for level in ("×÷", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] in level:
                a, op, b = nums[i], ops[i], nums[i + 1]
                r = _apply(a, op, b)
                steps.append((a, op, b, r))
                nums[i:i + 2] = [r]
                ops.pop(i)
                snapshots.append(_expr(nums, ops))
            else:
                i += 1
    return nums[0], steps, snapshots


def _expr(nums, ops):
    parts = [str(nums[0])]
    for op, n in zip(ops, nums[1:]):
        parts += [op, str(n)]
    return " ".join(parts)


def _arith_two(rng):
    op = rng.choice("+-×÷")
    if op == "+":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
    elif op == "-":
        a = rng.randint(20, 999)
        b = rng.randint(1, a - 1)
    elif op == "×":
        a, b = rng.randint(11, 99), rng.randint(2, 12)
    else:
        b = rng.randint(2, 19)
        a = b * rng.randint(2, 60)
    r = _apply(a, op, b)
    e = f"{a} {op} {b}"
    if rng.random() < 0.3:
        q = rng.choice(_ARITH_WORDED[op]).format(a=a, b=b)
        first = rng.choice((f"题目的意思是算 {e}。", f"把题目写成算式：{e}。", f"列出算式：{e}。"))
    else:
        q = _ask_arith(rng, e)
        first = rng.choice((
            f"题目要算 {e}，只有一步{_OP_NAME[op]}法。",
            f"这是一道{_OP_NAME[op]}法题：{e}。",
            f"先看清题目：要求 {e} 的结果。",
            f"要算的是 {e}，一步就能完成，但要算仔细。",
        ))
    lines = [first]
    tens, ones = b - b % 10, b % 10
    # Show a mental-arithmetic decomposition when it is meaningful, so the
    # reasoning has real intermediate numbers instead of just restating a+b=r.
    if op == "+" and tens and ones and rng.random() < 0.7:
        lines.append(f"把 {b} 拆成 {tens} 和 {ones}：{a} + {tens} = {a + tens}，再加 {ones} 得 {r}。")
    elif op == "-" and tens and ones and rng.random() < 0.7:
        lines.append(f"把 {b} 拆成 {tens} 和 {ones}：{a} - {tens} = {a - tens}，再减 {ones} 得 {r}。")
    elif op == "×" and a % 10 and rng.random() < 0.7:
        at, ao = a - a % 10, a % 10
        lines.append(f"把 {a} 拆成 {at} + {ao}：{at} × {b} = {at * b}，{ao} × {b} = {ao * b}，"
                     f"合起来 {at * b} + {ao * b} = {r}。")
    elif op == "÷":
        lines.append(rng.choice((
            f"想一想 {b} 乘几等于 {a}：{b} × {r} = {a}，所以商是 {r}。",
            f"用乘法反推：{b} × {r} = {a}，因此 {a} ÷ {b} = {r}。",
        )))
    else:
        lines.append(rng.choice((f"直接计算：{_eq(a, op, b, r)}。", f"列竖式算得 {_eq(a, op, b, r)}。")))
    if op != "÷" and rng.random() < 0.8:
        lines.append(rng.choice(("验算：", "用逆运算检查：", "倒过来验证一下：")) + _inverse(a, op, b, r) + "，没错。")
    if rng.random() < 0.5:
        lines.append(rng.choice((f"所以结果是 {r}。", f"得数是 {r}。")))
    return q, e, r, lines


def _arith_three(rng):
    while True:
        ops = [rng.choice("+-×÷") for _ in range(2)]
        nums = [rng.randint(2, 80) for _ in range(3)]
        for i, op in enumerate(ops):
            if op == "×":
                nums[i + 1] = rng.randint(2, 12)  # keep products mental-sized
        # Build divisions from the right so every quotient is exact; a divisor
        # that is itself a dividend (a ÷ b ÷ c) must not be redrawn.
        for i in reversed(range(2)):
            if ops[i] == "÷":
                if not (i + 1 < len(ops) and ops[i + 1] == "÷"):
                    nums[i + 1] = rng.randint(2, 9)
                nums[i] = nums[i + 1] * rng.randint(2, 12)
        try:
            r, steps, snaps = _reduce(nums, ops)
        except ValueError:
            continue
        if all(s[3] >= 0 for s in steps) and r <= 5000:
            break
    e = _expr(nums, ops)
    hi = [op in "×÷" for op in ops]
    if any(hi) and not all(hi):
        rule = "先算乘除，再算加减"
    else:
        rule = "同一级运算从左往右依次计算"
    lines = [rng.choice((
        f"这道题要注意运算顺序：{rule}。",
        f"式子 {e} 里有两个运算符号，按规则{rule}。",
        f"算 {e} 时要记住：{rule}。",
    ))]
    lines += _step_lines(rng, steps, snaps[0])
    return e, r, steps, lines


def _step_lines(rng, steps, middle):
    first, second = rng.choice((("先算", "再算"), ("第一步：", "第二步："), ("首先", "接着")))
    a, op, b, r1 = steps[0]
    out = [f"{first} {_eq(a, op, b, r1)}，式子变成 {middle}。" if rng.random() < 0.6
           else f"{first} {_eq(a, op, b, r1)}。"]
    a, op, b, r2 = steps[1]
    out.append(f"{second} {_eq(a, op, b, r2)}。")
    return [line.replace("： ", "：") for line in out]


def _arith_paren(rng):
    inner = rng.choice("+-")
    outer = rng.choice("×÷")
    left = rng.random() < 0.5
    if outer == "×":
        k = rng.randint(2, 12)
        if inner == "+":
            x, y = rng.randint(2, 40), rng.randint(2, 40)
        else:
            x = rng.randint(10, 60)
            y = rng.randint(1, x - 2)
    elif left:  # (x ± y) ÷ k: the bracket must be a multiple of k
        k = rng.randint(2, 9)
        s = k * rng.randint(2, 15)
        if inner == "+":
            x = rng.randint(1, s - 1)
            y = s - x
        else:
            y = rng.randint(1, 40)
            x = s + y
    else:  # k ÷ (x ± y): k must be a multiple of the bracket
        s = rng.randint(2, 12)
        k = s * rng.randint(2, 15)
        if inner == "+":
            x = rng.randint(1, s - 1)
            y = s - x
        else:
            y = rng.randint(1, 20)
            x = s + y
    s = _apply(x, inner, y)
    if left:
        e = f"({x} {inner} {y}) {outer} {k}"
        step2 = (s, outer, k, _apply(s, outer, k))
        middle = f"{s} {outer} {k}"
    else:
        e = f"{k} {outer} ({x} {inner} {y})"
        step2 = (k, outer, s, _apply(k, outer, s))
        middle = f"{k} {outer} {s}"
    steps = [(x, inner, y, s), step2]
    lines = [rng.choice((
        "式子里有括号，要先算括号里面的，再算括号外面的。",
        f"看到 {e} 里的括号，括号内优先计算。",
        f"按运算顺序，{e} 应先算括号。",
    ))]
    lines += _step_lines(rng, steps, middle)
    return e, step2[3], steps, lines


def _gen_arith(rng):
    form = rng.random()
    if form < 0.35:
        q, e, r, lines = _arith_two(rng)
    else:
        if form < 0.8:
            e, r, steps, lines = _arith_three(rng)
        else:
            e, r, steps, lines = _arith_paren(rng)
        q = _ask_arith(rng, e, _ARITH_QUESTIONS + _ARITH_STEPS_QUESTIONS)
        if rng.random() < 0.75:
            lines.append(rng.choice(("检查最后一步：", "倒过来验算：", "验算一下：")) + _inverse(*steps[-1]) + "，对得上。")
        if rng.random() < 0.5:
            lines.append(f"所以 {e} = {r}。")
    ans = rng.choice((f"{e} = {r}", f"{e} = {r}。", f"结果是 {r}。", f"答案是 {r}。", f"计算结果：{r}"))
    return q, lines, ans, str(r)


# ---------------------------------------------------------------------------
# word problems
# ---------------------------------------------------------------------------

SHOP_ITEMS = (  # name, measure word, lowest price, highest price (yuan)
    ("铅笔", "支", 1, 3), ("笔记本", "本", 3, 9), ("橡皮", "块", 1, 3), ("尺子", "把", 2, 5),
    ("苹果", "斤", 4, 9), ("香蕉", "斤", 3, 7), ("牛奶", "盒", 3, 6), ("面包", "个", 4, 9),
    ("毛巾", "条", 8, 20), ("彩笔", "盒", 8, 25), ("气球", "个", 1, 3), ("酸奶", "杯", 4, 8),
    ("速冻饺子", "袋", 12, 25), ("作业本", "本", 2, 4), ("西红柿", "斤", 3, 6), ("钢笔", "支", 8, 20),
    ("文具盒", "个", 10, 25), ("胶水", "瓶", 2, 5), ("练习册", "本", 5, 12), ("橙子", "斤", 3, 8),
    ("葡萄", "斤", 6, 12), ("矿泉水", "瓶", 1, 3), ("冰淇淋", "支", 3, 8), ("袜子", "双", 5, 15),
    ("故事书", "本", 10, 25), ("花盆", "个", 5, 15), ("包子", "个", 1, 3), ("雪糕", "根", 2, 5),
    ("手套", "双", 6, 15), ("蛋糕", "块", 5, 12), ("钥匙扣", "个", 3, 8), ("土豆", "斤", 2, 4),
    ("果汁", "瓶", 3, 7), ("跳绳", "根", 5, 12), ("本子", "本", 2, 5), ("饼干", "包", 3, 9),
)
SHOPS = ("商店", "超市", "小卖部", "文具店", "便利店", "市场", "商场")
# Notes and round sums a customer hands over; the bill is at most 6×25 + 4×25 = 250 yuan.
_PAYMENTS = (10, 20, 50, 100, 200, 300, 500)

SHARE_ITEMS = (  # name, measure word, edible, container, shop
    ("苹果", "个", True, "箱", "水果店"), ("橘子", "个", True, "箱", "水果店"),
    ("梨", "个", True, "箱", "水果店"), ("草莓", "颗", True, "盒", "水果店"),
    ("饼干", "块", True, "盒", "小卖部"), ("糖果", "颗", True, "袋", "小卖部"),
    ("铅笔", "支", False, "盒", "文具店"), ("贴纸", "张", False, "包", "文具店"),
    ("桃子", "个", True, "箱", "水果店"), ("橙子", "个", True, "箱", "水果店"),
    ("巧克力", "块", True, "盒", "超市"), ("面包", "个", True, "箱", "面包店"),
    ("鸡蛋", "个", True, "盒", "超市"), ("包子", "个", True, "笼", "早餐店"),
    ("彩笔", "支", False, "盒", "文具店"), ("作业本", "本", False, "包", "文具店"),
    ("气球", "个", False, "包", "礼品店"), ("玻璃球", "颗", False, "袋", "玩具店"),
    ("卡片", "张", False, "盒", "文具店"), ("小旗", "面", False, "捆", "礼品店"),
)
RECIPIENTS = ("小朋友", "同学", "人", "队员", "朋友", "孩子", "组员")


def _payment(rng, total):
    pay = next((v for v in _PAYMENTS if v > total), None)
    if pay is None:  # bigger than any listed sum: round up to the next hundred
        pay = (total // 100 + 1) * 100
    if rng.random() < 0.3 and pay < 100:
        pay = 100
    return pay


def _word_shopping(rng):
    name = rng.choice(NAMES)
    items = rng.sample(SHOP_ITEMS, 2)
    (i1, u1, lo1, hi1), (i2, u2, lo2, hi2) = items
    q1, p1 = rng.randint(2, 6), rng.randint(lo1, hi1)
    c1 = q1 * p1
    two = rng.random() < 0.65
    if two:
        q2, p2 = rng.randint(1, 4), rng.randint(lo2, hi2)
        c2 = q2 * p2
    else:
        c2 = 0
    total = c1 + c2
    pay = _payment(rng, total)
    change = pay - total
    second = ""
    if two:
        second = "；" + (rng.choice((f"又买了一{u2}{i2}，{p2}元", f"还买了一{u2}{i2}，花了{p2}元")) if q2 == 1
                        else rng.choice((f"又买了{q2}{u2}{i2}，每{u2}{p2}元", f"还买了{q2}{u2}{i2}，单价{p2}元",
                                         f"另外买了{q2}{u2}{i2}，{i2}每{u2}{p2}元")))
    q = rng.choice((
        "{n}带了{pay}元去{shop}，买了{q1}{u1}{i1}，每{u1}{p1}元{s}。应该找回多少元？",
        "{n}买了{q1}{u1}{i1}，单价{p1}元{s}，付给收银员{pay}元，能找回多少钱？",
        "一{u1}{i1}{p1}元，{n}买了{q1}{u1}{s}。{n}付了{pay}元，应找回几元？",
        "{n}在{shop}买了{q1}{u1}{i1}，每{u1}{p1}元{s}。{n}拿出{pay}元，应找回多少元？",
        "{shop}里{i1}每{u1}卖{p1}元，{n}买了{q1}{u1}{s}，给了{pay}元，找回多少元？",
        "{n}用{pay}元买了{q1}{u1}{i1}（每{u1}{p1}元）{s}，还能找回多少钱？",
        "{n}去{shop}买东西：{i1}{q1}{u1}，每{u1}{p1}元{s}。付了{pay}元，找零多少元？",
    )).format(n=name, pay=pay, q1=q1, u1=u1, i1=i1, p1=p1, s=second, shop=rng.choice(SHOPS))
    lines = [rng.choice((
        "题目问找回多少钱，要先算一共花了多少。",
        "求找零，就得先算出总价，再用付的钱减去总价。",
        "找回的钱 = 付的钱 - 花掉的钱，所以先算花掉的钱。",
    ))]
    lines.append(rng.choice((f"{i1}：{q1}×{p1}={c1}（元）。", f"买{i1}花了{q1}×{p1}={c1}元。")))
    if two:
        if q2 == 1:
            lines.append(f"{i2}只买了一{u2}，是{c2}元。")
        else:
            lines.append(f"{i2}：{q2}×{p2}={c2}（元）。")
        lines.append(f"一共花了{c1}+{c2}={total}元。")
    lines.append(rng.choice((f"应找回：{pay}-{total}={change}（元）。", f"付了{pay}元，找回{pay}-{total}={change}元。")))
    if rng.random() < 0.8:
        lines.append(f"验算：{total}+{change}={pay}，正好是付的钱。")
    ans = rng.choice((f"应找回{change}元。", f"{name}应该找回{change}元。", f"能找回{change}元。"))
    return q, lines, ans, str(change)


def _word_share(rng):
    item, u, edible, box, shop = rng.choice(SHARE_ITEMS)
    name = rng.choice(NAMES)
    who = rng.choice(RECIPIENTS)
    form = rng.randrange(4)
    if form == 0:  # even sharing
        k, each = rng.randint(2, 9), rng.randint(2, 12)
        total = k * each
        q = rng.choice((
            f"{name}有{total}{u}{item}，平均分给{k}个{who}，每人能分到几{u}？",
            f"把{total}{u}{item}平均分成{k}份，每份是多少{u}？",
            f"{total}{u}{item}平均分给{k}个{who}，每个{who}分到多少{u}？",
            f"{name}把{total}{u}{item}平均分给{k}个{who}，每人分几{u}？",
            f"{k}个{who}平均分{total}{u}{item}，每人得到几{u}？",
            f"{name}买来{total}{u}{item}，要平均分给{k}个{who}，每人分多少{u}？",
        ))
        lines = [f"“平均分”就是用除法，总数是{total}{u}，分给{k}个人。",
                 f"{total}÷{k}={each}（{u}）。"]
        if rng.random() < 0.8:
            lines.append(f"验算：{each}×{k}={total}，刚好分完。")
        ans, val = f"每人分到{each}{u}。", each
    elif form == 1:  # eat some, share the rest
        k, each = rng.randint(2, 8), rng.randint(2, 10)
        rest = k * each
        eaten = rng.randint(1, 9)
        total = rest + eaten
        used = rng.choice(("先吃了", "自己留了")) if edible else rng.choice(("先用掉了", "自己留了"))
        q = rng.choice((
            f"{name}买了{total}{u}{item}，{used}{eaten}{u}，剩下的平均分给{k}个{who}，每人分几{u}？",
            f"一共有{total}{u}{item}，拿走{eaten}{u}后，把剩下的平均分成{k}份，每份多少{u}？",
            f"{name}有{total}{u}{item}，{used}{eaten}{u}，其余的平均分给{k}个{who}，每人分到几{u}？",
            f"一{box}{item}有{total}{u}，{name}{used}{eaten}{u}，剩下的平均分给{k}个{who}，每人几{u}？",
            f"{name}从{shop}买回{total}{u}{item}，{used}{eaten}{u}，剩下的平均分成{k}份，每份几{u}？",
        ))
        lines = ["这题分两步：先求剩下多少，再平均分。",
                 f"剩下：{total}-{eaten}={rest}（{u}）。",
                 f"平均分：{rest}÷{k}={each}（{u}）。"]
        if rng.random() < 0.7:
            lines.append(f"检查：{each}×{k}+{eaten}={total}，和原来的总数一致。")
        ans, val = rng.choice((f"每人分{each}{u}。", f"每份是{each}{u}。")), each
    elif form == 2:  # work backwards from shares and remainder
        k, each = rng.randint(3, 9), rng.randint(2, 9)
        left = rng.randint(1, k - 1)
        total = k * each + left
        q = rng.choice((
            f"把一些{item}平均分给{k}个{who}，每人{each}{u}，最后还剩{left}{u}。原来一共有多少{u}{item}？",
            f"{name}把{item}分给{k}位{who}，每人{each}{u}，分完还多出{left}{u}，{name}原来有几{u}{item}？",
            f"{name}给{k}个{who}分{item}，每人分到{each}{u}，还剩下{left}{u}。这些{item}一共有多少{u}？",
            f"一{box}{item}分给{k}个{who}，每人{each}{u}，剩{left}{u}，这{box}{item}原来有几{u}？",
        ))
        lines = ["原来的总数 = 分出去的 + 剩下的。",
                 f"分出去的：{each}×{k}={k * each}（{u}）。",
                 f"再加上剩下的：{k * each}+{left}={total}（{u}）。"]
        if rng.random() < 0.7:
            lines.append(f"反过来验证：{total}-{left}={k * each}，{k * each}÷{k}={each}，没问题。")
        ans, val = f"原来一共有{total}{u}。", total
    else:  # boxes, then some sold
        per, boxes = rng.randint(6, 30), rng.randint(3, 12)
        total = per * boxes
        sold = rng.randint(1, total - 1)
        left = total - sold
        q = rng.choice((
            f"{shop}进了{boxes}{box}{item}，每{box}{per}{u}，卖出{sold}{u}后，还剩多少{u}？",
            f"每{box}{item}有{per}{u}，一共{boxes}{box}。卖掉{sold}{u}以后，还剩几{u}？",
            f"{name}家的{shop}有{boxes}{box}{item}，每{box}{per}{u}，今天卖了{sold}{u}，还剩多少{u}？",
            f"一{box}{item}有{per}{u}，{shop}进了{boxes}{box}，卖出去{sold}{u}，剩下几{u}？",
            f"{name}买了{boxes}{box}{item}，每{box}{per}{u}，用掉{sold}{u}，还剩多少{u}？",
        ))
        lines = ["先求一共有多少，再减去卖掉的。",
                 f"总数：{per}×{boxes}={total}（{u}）。",
                 f"还剩：{total}-{sold}={left}（{u}）。"]
        if rng.random() < 0.7:
            lines.append(f"验算：{left}+{sold}={total}，对得上。")
        ans, val = rng.choice((f"还剩{left}{u}。", f"还剩下{left}{u}{item}。")), left
    return q, lines, ans, str(val)


VEHICLES = (  # subjects, verb, speed lo, hi, step, distance unit, time unit, time lo, hi
    (("一辆汽车", "{n}家的汽车", "{n}坐的汽车", "{n}爸爸开的汽车"), "行驶", 40, 90, 5, "千米", "小时", 2, 6),
    (("{n}开车", "{n}妈妈开车"), "开", 40, 90, 5, "千米", "小时", 2, 6),
    (("一辆货车", "{n}叔叔的货车", "运{g}的货车"), "行驶", 40, 80, 5, "千米", "小时", 2, 6),
    (("一辆客车", "{n}坐的客车", "去{l}的客车"), "行驶", 50, 90, 5, "千米", "小时", 2, 6),
    (("一列高铁", "{n}坐的高铁", "开往{l}的高铁"), "行驶", 200, 350, 10, "千米", "小时", 2, 5),
    (("一列火车", "{n}坐的火车", "运{g}的火车"), "行驶", 80, 160, 10, "千米", "小时", 2, 6),
    (("{n}骑自行车",), "骑", 10, 18, 1, "千米", "小时", 2, 4),
    (("{n}骑电动车",), "骑", 15, 30, 1, "千米", "小时", 2, 4),
    (("一艘轮船", "{n}乘坐的轮船", "运{g}的轮船"), "航行", 20, 40, 2, "千米", "小时", 3, 8),
    (("{n}步行", "{n}走路去{l}"), "走", 50, 80, 5, "米", "分钟", 10, 30),
    (("{n}散步",), "走", 40, 70, 5, "米", "分钟", 10, 30),
    (("{n}慢跑",), "跑", 100, 160, 10, "米", "分钟", 10, 40),
    (("{n}游泳",), "游", 20, 50, 5, "米", "分钟", 5, 20),
)
CARGO = ("煤", "粮食", "水果", "蔬菜", "木材", "钢材", "沙子", "化肥", "大米", "家具")


def _word_speed(rng):
    subjects, verb, lo, hi, step, du, tu, tlo, thi = rng.choice(VEHICLES)
    subj = rng.choice(subjects).format(n=rng.choice(NAMES), g=rng.choice(CARGO), l=rng.choice(DESTINATIONS))
    v = rng.randrange(lo, hi + 1, step)
    t = rng.randint(tlo, thi)
    d = v * t
    form = rng.randrange(4) if tu == "小时" else rng.randrange(2)
    if form == 0:
        q = rng.choice((
            f"{subj}每{tu}{verb}{v}{du}，{t}{tu}一共{verb}多少{du}？",
            f"{subj}的速度是每{tu}{v}{du}，照这样{verb}{t}{tu}，能{verb}多远？",
            f"{subj}每{tu}{verb}{v}{du}，{verb}了{t}{tu}，一共{verb}了多少{du}？",
            f"{subj}{t}{tu}{verb}完全程，每{tu}{verb}{v}{du}，全程有多少{du}？",
            f"已知{subj}每{tu}{verb}{v}{du}，那么{t}{tu}能{verb}几{du}？",
        ))
        lines = ["路程 = 速度 × 时间。",
                 f"速度是每{tu}{v}{du}，时间是{t}{tu}，所以路程是{v}×{t}={d}（{du}）。"]
        if rng.random() < 0.8:
            lines.append(f"验算：{d}÷{t}={v}，和速度一致。")
        ans, val = rng.choice((f"一共{verb}了{d}{du}。", f"能{verb}{d}{du}。")), d
    elif form == 1:
        q = rng.choice((
            f"{subj}每{tu}{verb}{v}{du}，{verb}完{d}{du}需要多少{tu}？",
            f"一段路长{d}{du}，{subj}每{tu}{verb}{v}{du}，要用几{tu}？",
            f"{subj}要{verb}{d}{du}，每{tu}{verb}{v}{du}，几{tu}能{verb}完？",
            f"全程{d}{du}，{subj}的速度是每{tu}{v}{du}，需要多少{tu}？",
            f"{subj}每{tu}{verb}{v}{du}，照这个速度，{d}{du}要{verb}几{tu}？",
        ))
        lines = ["时间 = 路程 ÷ 速度。",
                 f"路程{d}{du}，速度每{tu}{v}{du}：{d}÷{v}={t}（{tu}）。"]
        if rng.random() < 0.8:
            lines.append(f"反过来检查：{v}×{t}={d}，正好是全程。")
        ans, val = f"需要{t}{tu}。", t
    elif form == 2:
        v2 = rng.randrange(lo, hi + 1, step)
        t2 = rng.randint(1, 3)
        d2 = v2 * t2
        q = rng.choice((
            f"{subj}先以每小时{v}千米的速度{verb}了{t}小时，又以每小时{v2}千米的速度{verb}了{t2}小时，"
            f"一共{verb}了多少千米？",
            f"{subj}前{t}小时每小时{verb}{v}千米，后{t2}小时每小时{verb}{v2}千米，一共{verb}了多少千米？",
            f"{subj}上午{verb}了{t}小时，每小时{v}千米；下午{verb}了{t2}小时，每小时{v2}千米。全天{verb}了多少千米？",
        ))
        lines = ["速度前后不一样，要分两段算路程再相加。",
                 f"第一段：{v}×{t}={d}（千米）。",
                 f"第二段：{v2}×{t2}={d2}（千米）。",
                 f"合计：{d}+{d2}={d + d2}（千米）。"]
        ans, val = f"一共{verb}了{d + d2}千米。", d + d2
    else:
        # Meeting problems pick their own speeds: the vehicle drawn above may not fit.
        if rng.random() < 0.5:
            v, v2 = rng.randrange(40, 95, 5), rng.randrange(40, 95, 5)
            where = rng.choice(("甲乙两地", "两座城市", "A、B两地", "两个车站"))
            who = rng.choice(("两辆车同时从两地出发相向而行，一辆每小时行{v}千米，另一辆每小时行{v2}千米",
                              "一辆客车和一辆货车同时从两地相对开出，客车每小时行{v}千米，货车每小时行{v2}千米"))
        else:
            v, v2 = rng.randrange(20, 42, 2), rng.randrange(20, 42, 2)
            where = rng.choice(("两个码头", "两个港口"))
            who = "两艘船同时从两边相对开出，速度分别是每小时{v}千米和{v2}千米"
        total = (v + v2) * t
        q = f"{where}相距{total}千米，{who.format(v=v, v2=v2)}，" + rng.choice(
            ("几小时后相遇？", "经过几小时相遇？", "多少小时后两者相遇？", "要多久才能相遇？"))
        lines = ["相向而行时，两者每小时一共缩短的距离是两个速度之和。",
                 f"速度和：{v}+{v2}={v + v2}（千米/小时）。",
                 f"相遇时间：{total}÷{v + v2}={t}（小时）。"]
        if rng.random() < 0.8:
            lines.append(f"验算：{v}×{t}+{v2}×{t}={v * t}+{v2 * t}={total}，正好是全程。")
        ans, val = f"{t}小时后相遇。", t
    return q, lines, ans, str(val)


# Pairs (a, b) whose combined time a*b/(a+b) is a whole number, listed once so
# that work-rate problems never produce fractional answers.
# Equal pairs are left out: two workers with identical speed make a dull problem.
_WORK_PAIRS = [(a, b) for a in range(2, 41) for b in range(a + 1, 61) if (a * b) % (a + b) == 0]

WORK_TASKS = (  # task, (who A, who B) pairs, doing verb, time unit, longest plausible time
    ("修一条路", (("甲队", "乙队"), ("第一队", "第二队"), ("红星队", "光明队")), "单独修", "天", 60),
    ("注满一个水池", (("甲水管", "乙水管"), ("A管", "B管"), ("大水管", "小水管")), "单独开", "小时", 30),
    ("打完一份文件", (("小王", "小李"), ("{n}", "{m}")), "单独打", "小时", 20),
    ("加工一批零件", (("师傅", "徒弟"), ("王师傅", "李师傅"), ("甲车间", "乙车间")), "单独做", "天", 40),
    ("把一块菜地翻一遍", (("爸爸", "哥哥"), ("{n}", "{m}")), "一个人干", "小时", 20),
    ("粉刷一面墙", (("{n}", "{m}"), ("师傅", "徒弟")), "单独刷", "小时", 20),
    ("整理完图书室", (("{n}", "{m}"),), "一个人整理", "小时", 20),
    ("织完一条围巾", (("{n}", "{m}"),), "单独织", "天", 30),
    ("搬完一堆砖", (("{n}", "{m}"), ("甲车", "乙车")), "单独搬", "小时", 20),
    ("种完一片树苗", (("一班", "二班"), ("三班", "四班"), ("{n}", "{m}")), "单独种", "天", 30),
    ("挖完一条水渠", (("甲队", "乙队"), ("东村", "西村")), "单独挖", "天", 60),
    ("印完一批试卷", (("甲打印机", "乙打印机"), ("新打印机", "旧打印机")), "单独印", "小时", 30),
    ("抄完一本书", (("{n}", "{m}"),), "单独抄", "天", 40),
    ("收完一块麦田", (("收割机甲", "收割机乙"), ("{n}家", "{m}家")), "单独收", "天", 30),
    ("装完一车货", (("{n}", "{m}"), ("甲组", "乙组")), "单独装", "小时", 20),
)

MACHINE_GOODS = (("零件", "个"), ("螺丝", "个"), ("玩具", "个"), ("饮料", "瓶"), ("面包", "个"),
                 ("口罩", "个"), ("毛巾", "条"), ("杯子", "个"), ("本子", "本"), ("纸箱", "个"))
HAND_MADE = (("饺子", "包", "个"), ("纸鹤", "折", "只"), ("灯笼", "扎", "个"), ("零件", "做", "个"),
             ("粽子", "包", "个"), ("风筝", "扎", "只"), ("贺卡", "做", "张"), ("小花", "剪", "朵"),
             ("汤圆", "搓", "个"), ("纸船", "折", "只"))


def _word_work(rng):
    form = rng.randrange(3)
    if form == 0:
        task, pairs, verb, tu, longest = rng.choice(WORK_TASKS)
        n1, n2 = rng.sample(NAMES, 2)
        A, B = (w.format(n=n1, m=n2) for w in rng.choice(pairs))
        a, b = rng.choice([pair for pair in _WORK_PAIRS if pair[1] <= longest])
        if rng.random() < 0.5:
            a, b = b, a
        t = a * b // (a + b)
        q = rng.choice((
            f"{task}，{A}{verb}需要{a}{tu}，{B}{verb}需要{b}{tu}。两者合作，需要多少{tu}？",
            f"{A}{verb}{a}{tu}能{task}，{B}{verb}{b}{tu}能完成。如果一起干，几{tu}能完成？",
            f"{task}，{A}{verb}要{a}{tu}完成，{B}{verb}要{b}{tu}完成。{A}和{B}一起做，几{tu}完成？",
            f"要{task}，{A}{verb}需{a}{tu}，{B}{verb}需{b}{tu}，合作要几{tu}？",
            f"{A}和{B}一起{task}。{A}{verb}要{a}{tu}，{B}{verb}要{b}{tu}，合作几{tu}能完成？",
            f"{task}这项工作，{A}{verb}用{a}{tu}，{B}{verb}用{b}{tu}。两者一起做，要用多少{tu}？",
        ))
        if rng.random() < 0.5:
            L = a * b // math.gcd(a, b)
            ra, rb = L // a, L // b
            lines = [f"把总工作量看成{L}份（{a}和{b}的最小公倍数），这样每{tu}的工作量都是整数。",
                     f"{A}每{tu}完成{L}÷{a}={ra}份，{B}每{tu}完成{L}÷{b}={rb}份。",
                     f"合作每{tu}完成{ra}+{rb}={ra + rb}份。",
                     f"需要{L}÷{ra + rb}={t}（{tu}）。"]
            if rng.random() < 0.8:
                lines.append(f"验算：{t}{tu}里{A}完成{ra * t}份，{B}完成{rb * t}份，合计{L}份，正好完成。")
        else:
            s = Fraction(1, a) + Fraction(1, b)
            lines = [f"把整个工作量看作1，{A}每{tu}完成1/{a}，{B}每{tu}完成1/{b}。",
                     f"合作每{tu}完成1/{a}+1/{b}={s.numerator}/{s.denominator}。",
                     f"所需时间：1÷{s.numerator}/{s.denominator}={t}（{tu}）。"]
            if rng.random() < 0.8:
                lines.append(f"检查：{t}×1/{a}+{t}×1/{b}={Fraction(t, a)}+{Fraction(t, b)}=1，正好做完。")
        ans, val = rng.choice((f"合作需要{t}{tu}。", f"一起进行，{t}{tu}就能完成。")), t
    elif form == 1:
        r, m, h = rng.randint(12, 60), rng.randint(2, 9), rng.randint(2, 8)
        goods, u = rng.choice(MACHINE_GOODS)
        total = r * m * h
        q = rng.choice((
            f"一台机器每小时生产{r}{u}{goods}，照这样计算，{m}台同样的机器{h}小时能生产多少{u}{goods}？",
            f"工厂里每台机器每小时能做{r}{u}{goods}，{m}台机器同时工作{h}小时，一共做多少{u}？",
            f"{m}台机器同时生产{goods}，每台每小时生产{r}{u}，{h}小时一共生产多少{u}？",
            f"一条生产线上有{m}台机器，每台每小时做{r}{u}{goods}，工作{h}小时能做多少{u}？",
        ))
        if rng.random() < 0.5:
            lines = [f"先算1台机器{h}小时的产量：{r}×{h}={r * h}（{u}）。",
                     f"再乘台数：{r * h}×{m}={total}（{u}）。"]
        else:
            lines = [f"先算{m}台机器1小时的产量：{r}×{m}={r * m}（{u}）。",
                     f"再乘小时数：{r * m}×{h}={total}（{u}）。"]
        lines.insert(0, "总产量 = 每台每小时的产量 × 台数 × 小时数。")
        if rng.random() < 0.7:
            lines.append(f"换个顺序核对：{r}×{m}×{h}={total}，结果相同。")
        ans, val = f"能生产{total}{u}{goods}。", total
    else:
        thing, verb, u = rng.choice(HAND_MADE)
        n1, n2 = rng.sample(NAMES, 2)
        a, b, t = rng.randint(5, 40), rng.randint(5, 40), rng.randint(2, 8)
        total = (a + b) * t
        q = rng.choice((
            f"{n1}每小时{verb}{a}{u}{thing}，{n2}每小时{verb}{b}{u}。两人一起{verb}{total}{u}{thing}，需要几小时？",
            f"{n1}和{n2}一起{verb}{thing}，{n1}每小时{verb}{a}{u}，{n2}每小时{verb}{b}{u}，{verb}{total}{u}要多少小时？",
            f"要{verb}{total}{u}{thing}，{n1}每小时能{verb}{a}{u}，{n2}每小时能{verb}{b}{u}，两人合作几小时{verb}完？",
        ))
        lines = [f"两人同时干，每小时一共{verb}{a}+{b}={a + b}{u}。",
                 f"需要的时间：{total}÷{a + b}={t}（小时）。"]
        if rng.random() < 0.7:
            lines.append(f"验算：{a + b}×{t}={total}，刚好够数。")
        ans, val = f"需要{t}小时。", t
    return q, lines, ans, str(val)


def _gen_word(rng):
    return rng.choice((_word_shopping, _word_share, _word_speed, _word_work))(rng)


# ---------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------

WORDS = ("banana", "strawberry", "mississippi", "bookkeeper", "committee", "programming",
         "assessment", "success", "parallel", "balloon", "coffee", "cheese", "engineer",
         "referee", "letter", "address", "pepper", "puzzle", "butterfly", "happiness",
         "excellent", "tomorrow", "beginning", "necessary", "accommodate", "possession",
         "elephant", "dinner", "rabbit", "grammar", "volleyball", "millennium", "apple", "bubble",
         "cookie", "kitten", "yellow", "summer", "hello", "little", "pizza", "puppy", "banner",
         "classroom", "football", "basketball", "teacher", "grandmother", "seventeen", "sixteen",
         "pineapple", "watermelon", "chocolate", "mammal", "giraffe", "carrot", "tomato", "potato",
         "umbrella", "window", "library", "calendar", "bottle", "kettle", "scissors", "pillow",
         "mirror", "dessert", "balloons", "goodbye", "weekend", "between", "sweet", "street",
         "agreement", "chess", "assistant", "difference", "different", "attention", "collection",
         "sunflower", "doorbell", "peppermint", "raccoon", "monkey", "honey", "cherry", "berry",
         "parrot", "hippo", "toothbrush", "notebook", "keyboard", "sheep", "needle",
         "noodle", "bamboo", "igloo", "rainbow", "snowman", "penguin", "rocket", "lesson",
         "possible", "tennis", "soccer", "dollar", "village", "cotton", "carpet",
         "freedom", "shopping", "running", "swimming", "beautiful", "wonderful", "eleven",
         "twelve", "seventy", "banana split", "hello world", "good morning", "apple pie",
         "see you soon", "little kitten", "sweet tea", "green tree", "happy birthday",
         "ice cream", "red balloon", "good night", "thank you", "merry christmas", "coffee cup",
         "afternoon", "bedroom", "blackboard", "breakfast", "chicken", "cupcake", "daddy", "eraser",
         "fishbowl", "goldfish", "grasshopper", "hamburger", "homework", "jellyfish", "ladder", "lollipop",
         "mommy", "mushroom", "nanny", "opposite", "paddle", "pepperoni", "playground", "popcorn",
         "raspberry", "saddle", "seesaw", "skateboard", "spoon", "sweater", "toffee", "triangle",
         "tunnel", "waffle", "zipper", "zebra", "goose", "cocoa", "kangaroo", "papaya", "avocado",
         "dragonfly", "grapefruit", "marshmallow", "peanut", "strawberries", "tattoo", "bottleneck")
# Short words that pair up into two-word phrases ("green apple", "sweet puppy").
SHORT_WORDS = ("red", "green", "yellow", "big", "little", "happy", "sweet", "good", "cool", "tall",
               "small", "funny", "apple", "tree", "book", "cat", "dog", "bee", "moon", "ball", "egg",
               "sun", "tea", "food", "door", "boots", "sheep", "bell", "hill", "doll", "grass", "glass",
               "seed", "feet", "room", "zoo", "puppy", "kitten", "cookie", "pizza", "banana", "cherry",
               "letter", "street", "pepper", "coffee", "school", "teacher", "summer", "three", "free",
               "noodle", "rabbit", "bubble", "balloon", "queen", "window", "mango", "lemon", "milk", "fish",
               "duck", "frog", "bird", "star", "river", "flower", "silly", "pretty")

# Short clauses written for this script; joined two or three at a time into a sentence,
# and chosen so that many characters (一, 小, 大, 天, 山, 水, 花 …) repeat across them.
CLAUSES = (
    "我和我的好朋友", "一起去公园玩", "今天天气好", "我们去天台看天空", "一心一意做好一件事",
    "山上有座小山村", "山村里有条小山路", "小猫看小鱼", "小鱼看小猫", "你说我听", "我说你听",
    "大树下面有块大石头", "大石头旁边卧着大白鹅", "读书要读懂", "读懂再读新书", "花开花落",
    "春去春又来", "水清清", "山青青", "水里映着山", "上山容易下山难", "上山下山都要小心",
    "一个人一把伞", "一起走在雨里", "走一步看一步", "一步一个脚印", "多说好话", "多做好事",
    "多读好书", "红花配绿叶", "红灯笼挂在红门上", "门前一条河", "河上一座桥", "桥下小船过",
    "早睡早起", "早饭吃好", "白云飘", "白鸽飞", "白帆在水上", "天上有太阳", "地上有小花",
    "小花开了一朵又一朵", "小鸟在树上唱歌", "树上有个鸟窝", "月亮弯弯挂天上", "星星一闪一闪",
    "小兔子爱吃萝卜", "大萝卜长在地里", "风吹树叶沙沙响", "雨点落在小河里", "小河流水哗啦啦",
    "妈妈买了一个大西瓜", "西瓜又大又甜", "小狗跑来又跑去", "我家门前有棵大树", "大树长得高又高",
    "天天向上", "好好学习", "一二三四五", "上山打老虎", "老虎没打着", "打着小松鼠",
    "松鼠有几只", "一只两只三只", "春天来了", "花儿开了", "草儿绿了", "鸟儿叫了",
    "小草发芽了", "山下有条小河", "河里有鱼也有虾", "天黑了月亮出来了", "月光照在水面上",
    "一年有四季", "四季各不同", "冬天下大雪", "雪人站在门前", "门前的雪人笑哈哈",
    "大家一起来唱歌", "唱歌跳舞真快乐", "快乐的一天", "一天又一天", "一朵白云一朵花",
    "书包里有书", "书上有画", "画里有山有水", "水里的小鱼游来游去", "来来去去真开心",
    "爸爸妈妈和我", "我爱我的家", "家里有只小花猫", "小花猫爱吃鱼", "鱼在水里游",
)
_PUNCT = "，。、；：！？ "


def _count_letter(rng):
    r = rng.random()
    if r < 0.45:  # a two-word phrase made up for this problem
        word = " ".join(rng.sample(SHORT_WORDS, 2))
    else:
        word = rng.choice(WORDS)
    letters = word.replace(" ", "")
    if rng.random() < 0.1:
        letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c not in letters])
    else:
        letter = rng.choice(letters)  # weighted toward repeated letters, the interesting case
    cnt = letters.count(letter)
    label = "短语" if " " in word else "单词"
    w = rng.choice((word, f"“{word}”"))
    L = rng.choice((letter, f"“{letter}”"))
    q = rng.choice((
        "{label} {w} 里有几个字母 {L}？",
        "{w}中字母{L}出现了几次？",
        "数一数：{w} 这个{label}里一共有多少个 {L}？",
        "{w} 里面有几个 {L}？别数错哦。",
        "英文{label} {w} 中有多少个字母 {L}？",
        "请数一下 {w} 里字母 {L} 的个数。",
        "{w} 这个{label}中，{L} 出现了多少次？",
        "在 {w} 里，字母 {L} 一共有几个？",
        "{label} {w} 包含几个 {L}？",
        "字母 {L} 在 {w} 中出现几次？",
        "看看 {w}，里面有多少个 {L}？",
        "{w} 拼写里有几个 {L}？",
        "{label}“{word}”里一共有几个“{letter}”？",
        "英语{label} {w} 里，字母 {L} 有几个？",
    )).format(label=label, w=w, L=L, word=word, letter=letter).replace("  ", " ")
    lines = [rng.choice((
        f"题目问 {word} 里有几个字母 {letter}，我把它拆开逐个看。",
        f"要数 {letter} 出现了几次，最稳妥的办法是一个字母一个字母地检查，不凭感觉猜。",
        f"先把 {word} 一个字母一个字母地写出来，再找 {letter}。",
    ))]
    if " " in word:
        parts = word.split()
        lines.append(f"这个短语有{len(parts)}个单词：" +
                     "；".join(f"{w}（{'-'.join(w)}）里有{w.count(letter)}个" for w in parts) + "。")
        lines.append(f"加起来：{'+'.join(str(w.count(letter)) for w in parts)}={cnt}。")
    else:
        lines.append(f"{word} 拼写为 {'-'.join(word)}，共{len(word)}个字母。")
        pos = [i + 1 for i, c in enumerate(word) if c == letter]
        if pos:
            lines.append(f"其中是 {letter} 的是第{_join_cn(pos)}个字母，一共{cnt}个。")
        else:
            lines.append(f"逐个对照，里面没有一个是 {letter}。")
    if rng.random() < 0.7:
        lines.append(f"再从头核对一遍，{letter} 确实出现了{cnt}次。")
    ans = rng.choice((f"{word} 里有{cnt}个字母 {letter}。", f"一共有{cnt}个 {letter}。",
                      f"字母 {letter} 出现了{cnt}次。"))
    return q, lines, ans, str(cnt)


def _count_char(rng):
    phrase = "，".join(rng.sample(CLAUSES, rng.choice((2, 2, 3))))
    chars = [c for c in phrase if c not in _PUNCT]
    repeated = [c for c in chars if chars.count(c) > 1]
    ch = rng.choice(repeated if repeated and rng.random() < 0.85 else chars)
    cnt = chars.count(ch)
    q = rng.choice((
        f"“{phrase}”这句话里有几个“{ch}”字？",
        f"数一数，下面这句话中“{ch}”出现了几次：{phrase}",
        f"句子“{phrase}”里，“{ch}”字一共有多少个？",
        f"“{phrase}”中，“{ch}”这个字出现了几次？",
        f"请数一数“{phrase}”里有多少个“{ch}”。",
        f"下面这句话里“{ch}”字有几个？{phrase}",
        f"在“{phrase}”这句话中，数一数“{ch}”字的个数。",
        f"“{ch}”在句子“{phrase}”里出现了多少次？",
        f"读一读：{phrase}。这句话里一共有几个“{ch}”字？",
    ))
    lines = [rng.choice((
        f"要数“{ch}”出现几次，我把这句话逐字过一遍，标点不算。",
        f"这句话去掉标点后共{len(chars)}个字，我一个个找“{ch}”。",
    ))]
    pos = [i + 1 for i, c in enumerate(chars) if c == ch]
    lines.append(f"“{ch}”在第{_join_cn(pos)}个字的位置，共{cnt}个。")
    clauses = [c for c in re.split(f"[{_PUNCT}]", phrase) if c]
    if len(clauses) > 1 and rng.random() < 0.7:
        lines.append("按分句核对：" + "，".join(f"“{c}”有{c.count(ch)}个" for c in clauses) +
                     f"，合计{cnt}个，一致。")
    ans = rng.choice((f"这句话里一共有{cnt}个“{ch}”字。", f"“{ch}”字出现了{cnt}次。"))
    return q, lines, ans, str(cnt)


def _count_multiples(rng):
    k = rng.randint(2, 13)
    a = rng.randint(1, 150)
    b = a + rng.randint(k + 10, 300)
    first = -(-a // k) * k
    last = b // k * k
    cnt = (last - first) // k + 1
    q = rng.choice((
        f"从{a}到{b}（包括{a}和{b}）的整数中，能被{k}整除的有多少个？",
        f"{a}到{b}之间（含两端）有几个{k}的倍数？",
        f"在{a}、{a + 1}、{a + 2}……一直到{b}这些整数里，{k}的倍数一共有几个？",
        f"{a}至{b}的整数（包含{a}和{b}）里，有多少个是{k}的倍数？",
        f"从{a}数到{b}，能被{k}整除的整数有几个？",
        f"{k}的倍数在{a}到{b}（含{a}和{b}）之间有多少个？",
    ))
    lines = [f"要数的是区间[{a}, {b}]里{k}的倍数。"]
    if a == 1 or rng.random() < 0.5:
        lines.append(f"第一个{k}的倍数是{first}（{k}×{first // k}），最后一个是{last}（{k}×{last // k}）。")
        lines.append(f"个数 = {last // k}-{first // k}+1={cnt}。")
        if a > 1 and rng.random() < 0.7:
            lines.append(f"换个方法核对：1到{b}里有{b // k}个，1到{a - 1}里有{(a - 1) // k}个，"
                         f"相减得{b // k}-{(a - 1) // k}={cnt}，一致。")
    else:
        lines.append(f"1到{b}里{k}的倍数有{b}÷{k}取整={b // k}个。")
        lines.append(f"1到{a - 1}里有{a - 1}÷{k}取整={(a - 1) // k}个，这些不在范围内，要去掉。")
        lines.append(f"所以是{b // k}-{(a - 1) // k}={cnt}个。")
        if rng.random() < 0.6:
            lines.append(f"核对：范围内最小的是{first}，最大的是{last}，({last}-{first})÷{k}+1={cnt}，一致。")
    ans = rng.choice((f"共有{cnt}个。", f"能被{k}整除的数有{cnt}个。", f"{k}的倍数一共有{cnt}个。"))
    return q, lines, ans, str(cnt)


def _gen_count(rng):
    return rng.choice((_count_letter, _count_letter, _count_char, _count_multiples, _count_multiples))(rng)


# ---------------------------------------------------------------------------
# weekday
# ---------------------------------------------------------------------------

EVENTS = ("运动会", "春游", "秋游", "期末考试", "音乐会", "家长会", "足球比赛", "篮球赛", "画展", "读书节",
          "科技节", "元旦晚会", "游泳比赛", "跳绳比赛", "合唱比赛", "植树活动", "开学典礼", "演讲比赛",
          "书法比赛", "数学竞赛", "文艺演出", "校园开放日")
DESTINATIONS = ("公园", "动物园", "图书馆", "博物馆", "外婆家", "海边", "游乐园", "科技馆", "植物园", "电影院",
          "爷爷家", "超市", "少年宫", "体育馆")

# Bare questions, then questions set in a small story (a birthday, an event, a trip).
_WEEKDAY_AFTER = (
    "今天是{s}，再过{n}天是星期几？", "如果今天是{s}，{n}天后是星期几？", "某天是{s}，从这天起过{n}天，是星期几？",
    "今天{s}，{n}天以后是星期几？", "已知今天是{s}，问{n}天之后是星期几？", "假如今天是{s}，过了{n}天以后是星期几？",
    "今天是{s}，{n}天后是星期几？", "从{s}开始往后数{n}天，是星期几？",
)
_WEEKDAY_AFTER_STORY = (
    "{p}说今天是{s}，那么{n}天后是星期几？", "今天是{s}，{p}的生日在{n}天后，那天是星期几？",
    "今天是{s}，距离{e}还有{n}天，{e}那天是星期几？", "{e}在{n}天后举行，今天是{s}，{e}是星期几？",
    "今天是{s}，{p}要{n}天后才回来，回来那天是星期几？", "今天是{s}，{p}{n}天后要去{l}，那天是星期几？",
    "{p}今天（{s}）借了一本书，{n}天后还书，还书那天是星期几？", "这个{s}，{p}种下一颗种子，{n}天后是星期几？",
    "今天是{s}，再过{n}天就是{e}了，{e}在星期几？", "{p}今天（{s}）报名参加{e}，{e}在{n}天后，是星期几？",
    "今天{s}，{p}和家人约好{n}天后去{l}，那天是星期几？",
)
_WEEKDAY_BEFORE = (
    "今天是{s}，{n}天前是星期几？", "假设今天是{s}，那么{n}天以前是星期几？", "已知今天是{s}，往前数{n}天是星期几？",
    "如果今天是{s}，{n}天之前是星期几？", "今天{s}，{n}天以前是星期几？",
)
_WEEKDAY_BEFORE_STORY = (
    "今天是{s}，{p}{n}天前去了{l}，那天是星期几？", "今天是{s}，{e}是{n}天前举行的，那天是星期几？",
    "今天{s}，{p}说{n}天前就到过{l}了，那天是星期几？", "{e}已经过去{n}天了，今天是{s}，{e}那天是星期几？",
    "今天是{s}，{p}{n}天前买了一盆花，买花那天是星期几？",
)


def _say_weekday(rng, i):
    """Vary how the *question* names a weekday; answers always use WEEKDAYS."""
    name = WEEKDAYS[i]
    options = [name, name, "周" + name[-1], "礼拜" + name[-1]]
    if i == 6:
        options += ["星期天", "礼拜天"]
    return rng.choice(options)


def _gen_weekday(rng):
    start = rng.randrange(7)
    n = rng.randint(3, 400)
    before = rng.random() < 0.2
    r = n % 7
    end = (start - r) % 7 if before else (start + r) % 7
    story = rng.random() < 0.65
    templates = ((_WEEKDAY_BEFORE_STORY if story else _WEEKDAY_BEFORE) if before
                 else (_WEEKDAY_AFTER_STORY if story else _WEEKDAY_AFTER))
    q = rng.choice(templates).format(
        s=_say_weekday(rng, start), n=n, p=rng.choice(NAMES), e=rng.choice(EVENTS), l=rng.choice(DESTINATIONS))
    word = "往前" if before else "往后"
    lines = [f"已知今天是{WEEKDAYS[start]}，要求的是{n}天{'前' if before else '后'}。"]
    if n < 7:
        lines.append(f"{n}天还不到一周，直接一天一天数就行。")
    else:
        lines.append(rng.choice(("一周有7天，每过7天星期几就会重复一次。", "星期是7天一循环，所以只需看天数除以7的余数。")))
        lines.append(f"{n}÷7={n // 7}余{r}。")
    if r == 0:
        lines.append(f"余数是0，正好是整周，所以还是{WEEKDAYS[start]}。")
    else:
        path = [WEEKDAYS[(start - j) % 7 if before else (start + j) % 7] for j in range(1, r + 1)]
        lines.append(f"相当于从{WEEKDAYS[start]}{word}数{r}天：{'、'.join(path)}。")
        if rng.random() < 0.7:
            if before:
                lines.append(f"用编号核对：把星期一到星期日记作1到7，{start + 1}-{r}={start + 1 - r}"
                             + ("，不足1就加7" if start + 1 - r < 1 else "") + f"，得{end + 1}，也就是{WEEKDAYS[end]}。")
            else:
                lines.append(f"用编号核对：把星期一到星期日记作1到7，{start + 1}+{r}={start + 1 + r}"
                             + ("，超过7就减7" if start + 1 + r > 7 else "") + f"，得{end + 1}，也就是{WEEKDAYS[end]}。")
    ans = rng.choice((f"{n}天{'前' if before else '后'}是{WEEKDAYS[end]}。", f"答案是{WEEKDAYS[end]}。",
                      f"是{WEEKDAYS[end]}。"))
    return q, lines, ans, WEEKDAYS[end]


# ---------------------------------------------------------------------------
# date
# ---------------------------------------------------------------------------

def _date_cn(d, year=True):
    return f"{d.year}年{d.month}月{d.day}日" if year else f"{d.month}月{d.day}日"


def _leap_note(y):
    # Years are drawn from 2001-2039, where "divisible by 4" is the whole leap-year rule.
    if calendar.isleap(y):
        return f"{y}年能被4整除（又不是整百年），是闰年，2月有29天"
    return f"{y}年不能被4整除，不是闰年，2月只有28天"


_DATE_QUESTIONS = (
    "{D}再过{n}天是几月几日？", "今天是{D}，{n}天后是哪一天？", "从{D}算起，{n}天之后是几月几号？",
    "{D}往后推{n}天是哪一天？", "今天是{D}，再过{n}天是几月几日？", "{p}在{D}种下一棵小树苗，{n}天后是几月几日？",
    "{e}在{D}之后的第{n}天举行，是哪一天？", "{p}在{D}借了一本书，要在{n}天后归还，归还那天是几月几日？",
    "{D}是{p}的生日，{n}天后是几月几日？", "已知今天是{D}，求{n}天后的日期。", "日历上今天是{D}，过{n}天是几月几号？",
    "{p}{D}出发去{l}，{n}天后回家，回家那天是几月几日？", "从{D}起再过{n}天，是几月几日？", "{D}之后{n}天是哪一天？",
    "{p}从{D}开始每天写日记，{n}天后是几月几日？", "{D}，{p}说{n}天后要去{l}，那天是几月几号？",
)


def _gen_date(rng):
    y = rng.randint(2001, 2039)
    m = rng.randint(1, 12)
    dim = calendar.monthrange(y, m)[1]
    # Bias toward February and month ends: those are where mistakes happen.
    if rng.random() < 0.25:
        m = 2
        dim = calendar.monthrange(y, m)[1]
    d = rng.randint(max(1, dim - 14), dim) if rng.random() < 0.6 else rng.randint(1, dim)
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    dim_next = calendar.monthrange(ny, nm)[1]
    n = rng.randint(1, (dim - d) + dim_next)
    start = datetime.date(y, m, d)
    end = start + datetime.timedelta(days=n)
    canon = _date_cn(end)
    shown = _date_cn(start) if rng.random() < 0.75 else f"{y}年{m}月{d}号"
    q = rng.choice(_DATE_QUESTIONS).format(D=shown, n=n, p=rng.choice(NAMES), e=rng.choice(EVENTS),
                                           l=rng.choice(DESTINATIONS))
    lines = [f"要求的是{_date_cn(start)}之后第{n}天的日期。"]
    month_len = f"{m}月有{dim}天" if m != 2 else _leap_note(y)
    if d + n <= dim:
        lines.append(f"{month_len}。{d}+{n}={d + n}，没有超过{dim}，所以还在{m}月。")
        lines.append(f"结果是{m}月{d + n}日。")
        if rng.random() < 0.6:
            lines.append(f"验算：从{d}日数到{d + n}日，相差{d + n}-{d}={n}天，正确。")
    else:
        to_end = dim - d
        rest = n - to_end
        lines.append(f"{month_len}。从{m}月{d}日到{m}月{dim}日还有{dim}-{d}={to_end}天。")
        lines.append(f"剩下{n}-{to_end}={rest}天要在下个月里数。")
        if m == 12:
            lines.append(f"12月的下一个月是{ny}年1月，所以是{ny}年1月{rest}日。")
        else:
            lines.append(f"下个月是{nm}月，数到第{rest}天，就是{nm}月{rest}日。")
        if rng.random() < 0.7:
            lines.append(f"验算：{to_end}+{rest}={n}，天数对得上。")
    ans = rng.choice((f"是{canon}。", f"{n}天后是{canon}。", f"答案：{canon}"))
    return q, lines, ans, canon


# ---------------------------------------------------------------------------
# unit conversion
# ---------------------------------------------------------------------------

UNITS = (  # big unit, small unit, factor, what is measured: "{q}" is the amount with its unit
    # Contexts are chosen to fit any amount the ranges below can draw (a rope, not an ant).
    ("千米", "米", 1000, ("一段路长{q}", "{p}家到{l}有{q}", "一条河长{q}", "两个村子相距{q}", "{p}骑车骑了{q}",
                        "一条公路长{q}", "一列火车开了{q}")),
    ("公里", "米", 1000, ("一段公路长{q}", "{p}家离{l}{q}", "一条隧道长{q}", "{p}开车开了{q}", "两座城市之间的一段路长{q}")),
    ("米", "厘米", 100, ("一根绳子长{q}", "一块布长{q}", "一根电线长{q}", "一条彩带长{q}", "{p}量得一条走廊长{q}",
                       "一根水管长{q}")),
    ("米", "分米", 10, ("一根木条长{q}", "一段篱笆长{q}", "{p}买的彩带长{q}", "一根水管长{q}", "一条小路长{q}")),
    ("分米", "厘米", 10, ("一根铁丝长{q}", "一条丝带长{q}", "一根木棍长{q}", "{p}剪下的纸条长{q}", "一根竹竿长{q}")),
    ("厘米", "毫米", 10, ("一条线段长{q}", "一根铁丝长{q}", "{p}画的线段长{q}", "一根细绳长{q}", "一张纸条长{q}")),
    ("千克", "克", 1000, ("一袋大米重{q}", "{p}买了{q}苹果", "一箱货物重{q}", "一筐蔬菜重{q}", "一桶油重{q}",
                        "一包面粉重{q}")),
    ("公斤", "克", 1000, ("一筐西瓜重{q}", "{p}称了{q}香蕉", "一袋土豆重{q}", "一袋面粉重{q}", "一箱橘子重{q}")),
    ("吨", "千克", 1000, ("一辆卡车装了{q}货物", "一头大象重{q}", "仓库里有{q}大米", "一堆煤重{q}", "一车沙子重{q}")),
    ("升", "毫升", 1000, ("一桶水有{q}", "一箱饮料共{q}", "{p}家一周喝了{q}牛奶", "鱼缸里有{q}水", "一桶油有{q}",
                        "水箱里有{q}水")),
    ("小时", "分钟", 60, ("一段旅程用了{q}", "{p}坐火车坐了{q}", "一台机器工作了{q}", "{p}一家开车开了{q}",
                        "一场活动进行了{q}", "{p}这周一共练了{q}琴")),
    ("分钟", "秒", 60, ("{p}跑步跑了{q}", "一首曲子长{q}", "{p}跳绳跳了{q}", "一段视频长{q}", "烧一壶水用了{q}",
                       "{p}做完一组练习用了{q}")),
    ("元", "角", 10, ("一个文具盒{q}", "{p}买了一本书，花了{q}", "一盒彩笔{q}", "一本故事书{q}", "{p}的存钱罐里有{q}")),
    ("元", "分", 100, ("一个本子{q}", "{p}买一支钢笔用了{q}", "一袋盐{q}", "一瓶饮料{q}", "一盒牛奶{q}")),
    ("角", "分", 10, ("{p}的零钱有{q}", "{p}捡到{q}钱", "一包零食{q}", "{p}存了{q}")),
)

_UNIT_ASK = ("合多少{t}？", "是多少{t}？", "等于多少{t}？", "换算成{t}是多少？", "也就是多少{t}？", "折合多少{t}？")
_UNIT_BARE = ("{q}等于多少{t}？", "{q}是多少{t}？", "{q}合多少{t}？", "把{q}换算成{t}，是多少？",
              "单位换算：{q} =（ ）{t}", "{q}换成{t}是多少？", "{q}相当于多少{t}？", "请问{q}是几{t}？",
              "{q}折合多少{t}？", "填空：{q} = ___{t}")


def _ask_unit(rng, ctx, q, t):
    if rng.random() < 0.7:
        where = rng.choice(ctx).format(q=q, p=rng.choice(NAMES), l=rng.choice(DESTINATIONS))
        return where + "，" + rng.choice(_UNIT_ASK).format(t=t)
    return rng.choice(_UNIT_BARE).format(q=q, t=t)


def _gen_unit(rng):
    big, small, f, ctx = rng.choice(UNITS)
    money = big in ("元", "角")
    form = rng.random()
    lines = []
    if form < 0.2 and big != "角" and not (money and f == 100):
        # Mixed units such as 3小时20分钟 → minutes.
        a = rng.randint(1, 9)
        b = rng.randint(1, f - 1)
        if f == 1000:
            b = rng.randrange(10, 1000, 10)
        qty = f"{a}{big}{b}{small}"
        q = _ask_unit(rng, ctx, qty, small)
        r = a * f + b
        lines = [f"要把{qty}换算成{small}。", f"1{big}={f}{small}，先把{a}{big}换成{small}，再加上零头。",
                 f"{a}{big}={a}×{f}={a * f}{small}。",
                 f"{a * f}+{b}={r}（{small}）。"]
        ans = f"{qty}等于{r}{small}。"
        return q, lines, ans, str(r)
    if form < 0.6:  # big → small
        if f == 60:
            x = Decimal(rng.randint(1, 40)) / rng.choice((4, 10, 2))
        elif big == "角":
            x = Decimal(rng.randint(1, 99))
        elif f == 10:
            x = Decimal(rng.randint(1, 500)) / 10
        elif f == 100:
            x = Decimal(rng.randint(1, 2000)) / 100
        else:
            x = Decimal(rng.randint(1, 200)) / rng.choice((1, 10, 100))
        r = x * f
        xs, rs = _fmt(x), _fmt(r)
        q = _ask_unit(rng, ctx, f"{xs}{big}", small)
        lines = [f"要把{xs}{big}换算成{small}。",
                 rng.choice((f"1{big}={f}{small}，{big}换成{small}是大单位变小单位，要乘{f}。",
                             f"大单位换小单位用乘法，进率是{f}（1{big}={f}{small}）。"))]
        lines.append(f"{xs}×{f}={rs}。")
        if rng.random() < 0.75:
            lines.append(f"反过来检查：{rs}÷{f}={xs}，没错。")
        ans = rng.choice((f"{xs}{big}等于{rs}{small}。", f"是{rs}{small}。"))
        return q, lines, ans, rs
    # small → big
    if f == 60:
        y = rng.choice((15, 6, 30)) * rng.randint(1, 30)
    elif f == 1000:
        y = rng.randint(1, 99) * rng.choice((10, 50, 100, 1000))
    elif big == "角":
        y = 10 * rng.randint(1, 99)
    else:
        y = rng.randint(1, 999) * (1 if f == 10 else rng.choice((1, 5, 10)))
    r = Decimal(y) / f
    ys, rs = _fmt(y), _fmt(r)
    q = _ask_unit(rng, ctx, f"{ys}{small}", big)
    lines = [f"要把{ys}{small}换算成{big}。",
             rng.choice((f"1{big}={f}{small}，{small}换成{big}是小单位变大单位，要除以{f}。",
                         f"小单位换大单位用除法，进率是{f}。"))]
    if f in (10, 100, 1000):
        shift = {10: "一", 100: "两", 1000: "三"}[f]
        lines.append(f"{ys}÷{f}，就是把小数点向左移动{shift}位，得到{rs}。")
    else:
        lines.append(f"{ys}÷{f}={rs}。")
    if rng.random() < 0.75:
        lines.append(f"验算：{rs}×{f}={ys}，对得上。")
    ans = rng.choice((f"{ys}{small}等于{rs}{big}。", f"是{rs}{big}。"))
    return q, lines, ans, rs


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------

_DECIMAL_PLACES = ("十分位", "百分位", "千分位", "万分位")


_COMPARE_QUESTIONS = (
    "{x}和{y}，哪个更大？", "比较大小：{x}与{y}，谁大？", "{x}和{y}相比，哪个数大一些？",
    "请比较{x}和{y}的大小，说出较大的那个。", "{x}和{y}哪个大？", "{x}与{y}，哪一个数更大？",
    "在{x}和{y}中，哪个数比较大？", "{x}、{y}两个数里，较大的是哪个？", "比一比：{x}和{y}，谁更大？",
    "{x}和{y}比，哪个大？", "请问{x}大还是{y}大？", "{x}与{y}相比较，哪个更大一些？",
    "下面两个数中哪个大：{x}，{y}？", "判断一下，{x}和{y}哪个数更大？", "{x}和{y}这两个数，谁大谁小？说出大的那个。",
    "从{x}和{y}里选出较大的数。", "{x}和{y}，谁更大一些？", "{x}与{y}哪个数大？", "比较{x}和{y}，哪个大？",
    "{x}和{y}中较大的数是哪一个？", "{x}跟{y}比，哪个更大？", "你觉得{x}和{y}哪个大？", "{x}大，还是{y}大？",
    "把{x}和{y}比一比，哪个数更大？", "{p}写了{x}，{p2}写了{y}，谁写的数更大？请说出那个数。",
    "{p}说{x}比{y}大，{p2}说{y}比{x}大。到底哪个数更大？", "{p}的卡片上是{x}，{p2}的卡片上是{y}，哪张卡片上的数大？",
    "{p}和{p2}比大小，{p}选了{x}，{p2}选了{y}，谁选的数大？",
)


def _decimal_lines(x, y):
    """Place-by-place comparison of two different non-negative decimals."""
    xs, ys = _fmt(x), _fmt(y)
    xi, _, xf = xs.partition(".")
    yi, _, yf = ys.partition(".")
    big = xs if x > y else ys
    lines = []
    if xi != yi:
        lines.append(f"先比整数部分：{xs}的整数部分是{xi}，{ys}的是{yi}，{max(int(xi), int(yi))}更大，所以{big}大。")
    else:
        width = max(len(xf), len(yf))
        xf, yf = xf.ljust(width, "0"), yf.ljust(width, "0")
        same = []
        for j in range(width):
            if xf[j] == yf[j]:
                same.append(f"{_DECIMAL_PLACES[j]}都是{xf[j]}")
            else:
                lo, hi = sorted((xf[j], yf[j]))
                tail = f"{_DECIMAL_PLACES[j]}上是{xf[j]}和{yf[j]}，{hi}比{lo}大"
                break
        head = f"整数部分都是{xi}，接着比小数部分" + ("：" + "，".join(same) + "；" if same else "：")
        lines.append(head + tail + f"，所以{big}更大。")
    width = max(len(xf), len(yf))
    if width:
        xp, yp = format(x, f".{width}f"), format(y, f".{width}f")
        lines.append(f"也可以把位数补齐再比：{xp}和{yp}，去掉小数点相当于比{int(xp.replace('.', ''))}和"
                     f"{int(yp.replace('.', ''))}，结论一样。")
    return lines


# Proper fractions whose decimal ends within two places, each pair equally likely.
_TERMINATING_FRACTIONS = [(a, b) for b in (2, 4, 5, 8, 10, 20, 25) for a in range(1, b)]


def _rand_decimal(rng, int_part):
    places = rng.randint(1, 3)
    while True:
        frac = rng.randint(1, 10 ** places - 1)
        if frac % 10:
            return Decimal(int_part) + Decimal(frac) / (10 ** places)


def _gen_compare(rng):
    form = rng.random()
    if form < 0.45:  # two fractions
        while True:
            sub = rng.random()
            # A shared denominator or numerator makes the comparison one look, whatever the
            # size, so those draw from up to 20; otherwise 12 keeps the common denominator small.
            top = 20 if sub < 0.4 else 12
            b, d = rng.randint(2, top), rng.randint(2, top)
            if sub < 0.2:
                d = b
            a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
            if 0.2 <= sub < 0.4:
                c = a = rng.randint(1, min(b, d) - 1)
            if Fraction(a, b) != Fraction(c, d) and (a, b) != (c, d):
                break
        x, y = f"{a}/{b}", f"{c}/{d}"
        big, small = (x, y) if Fraction(a, b) > Fraction(c, d) else (y, x)
        if b == d:
            lines = [f"两个分数的分母都是{b}，分母相同时，分子大的分数大。",
                     f"{max(a, c)}比{min(a, c)}大，所以{big}更大。"]
        elif a == c:
            lines = [f"两个分数的分子都是{a}，分子相同时，分母越小，每一份越大。",
                     f"{min(b, d)}比{max(b, d)}小，所以{big}更大。"]
        else:
            L = b * d // math.gcd(b, d)
            lines = [f"分母不同，先通分，公分母取{b}和{d}的最小公倍数{L}。",
                     f"{x}={a * L // b}/{L}，{y}={c * L // d}/{L}。",
                     f"比较分子：{max(a * L // b, c * L // d)}>{min(a * L // b, c * L // d)}，所以{big}更大。"]
        if rng.random() < 0.7:
            ad, cb = a * d, c * b
            lines.append(f"交叉相乘核对：{a}×{d}={ad}，{c}×{b}={cb}，{max(ad, cb)}>{min(ad, cb)}，结论一致。")
    elif form < 0.8:  # two decimals
        while True:
            i1 = rng.randint(0, 20)
            i2 = i1 if rng.random() < 0.7 else rng.randint(0, 20)
            dx, dy = _rand_decimal(rng, i1), _rand_decimal(rng, i2)
            if dx != dy:
                break
        x, y = _fmt(dx), _fmt(dy)
        big, small = (x, y) if dx > dy else (y, x)
        lines = ["比较小数，先比整数部分，整数部分相同再从十分位开始一位一位比。"] + _decimal_lines(dx, dy)
        bd, sd = (dx, dy) if dx > dy else (dy, dx)
        if len(_fmt(sd).partition(".")[2]) > len(_fmt(bd).partition(".")[2]) and rng.random() < 0.7:
            lines.append("注意：小数位数多并不代表数更大。")
    else:  # fraction vs decimal
        while True:
            a, b = rng.choice(_TERMINATING_FRACTIONS)
            dec = Decimal(a) / b
            other = dec + Decimal(rng.choice((-1, 1)) * rng.randint(1, 20)) / 100
            if 0 < other < 1 and other != dec:
                break
        frac_s, dec_s = f"{a}/{b}", _fmt(other)
        big, small = (frac_s, dec_s) if dec > other else (dec_s, frac_s)
        x, y = (frac_s, dec_s) if rng.random() < 0.5 else (dec_s, frac_s)
        lines = [rng.choice(("一个是分数，一个是小数，先把分数化成小数再比。",
                             "分数和小数不好直接比，把分数换成小数就统一了。")),
                 f"{frac_s}={a}÷{b}={_fmt(dec)}。"]
        lines += _decimal_lines(dec, other)[:1]
        lines.append(f"{_fmt(dec)}就是{frac_s}，所以{big}更大。")
    p, p2 = rng.sample(NAMES, 2)
    q = rng.choice(_COMPARE_QUESTIONS).format(x=x, y=y, p=p, p2=p2)
    ans = rng.choice((f"{big}更大。", f"较大的是{big}。", f"{big}比{small}大。", f"{small}比{big}小，较大的是{big}。"))
    return q, lines, ans, big


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

_GENERATORS = {
    "arith": _gen_arith, "word": _gen_word, "count": _gen_count, "weekday": _gen_weekday,
    "date": _gen_date, "unit": _gen_unit, "compare": _gen_compare,
}


def generate(n, seed, kinds=None, exclude_questions=frozenset()):
    """Return n distinct problems as dicts: kind, question, reasoning, answer, expected.

    ``answer`` is the short answer sentence shown to the model; ``expected`` is the
    canonical result (e.g. '42', '星期三', '2024年3月1日', '3/4') for ``grader.check_answer``.
    Kinds are used round-robin and then shuffled, so every kind is equally present.
    A question in ``exclude_questions`` (e.g. every question of an evaluation set) is never
    returned; it is skipped like a duplicate, so the result is still a function of the
    arguments alone.
    """
    kinds = list(kinds or KINDS)
    for k in kinds:
        if k not in _GENERATORS:
            raise ValueError(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")
    rng = random.Random(seed)
    out, seen = [], set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise RuntimeError(f"could not find {n} distinct problems of kinds {', '.join(kinds)}; ask for fewer")
        kind = kinds[len(out) % len(kinds)]
        q, lines, ans, expected = _GENERATORS[kind](rng)
        q = _frame(rng, q)
        if q in seen or q in exclude_questions:
            continue
        seen.add(q)
        out.append({"kind": kind, "question": q, "reasoning": "\n".join(lines),
                    "answer": ans, "expected": expected})
    rng.shuffle(out)
    return out


def assistant_content(p):
    return f"<think>\n{p['reasoning']}\n</think>\n<answer>\n{p['answer']}\n</answer>"


def to_sft(problems, seed):
    # A separate rng keeps the system-prompt choice from changing the problems.
    rng = random.Random(f"system-{seed}")
    records = []
    for p in problems:
        conv = []
        if rng.random() < SYSTEM_PROMPT_RATE:
            conv.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        conv.append({"role": "user", "content": p["question"]})
        conv.append({"role": "assistant", "content": assistant_content(p)})
        records.append({"conversations": conv})
    return records


def to_eval(problems, seed):
    return [{"id": f"r1-s{seed}-{i:05d}", "kind": p["kind"], "question": p["question"],
             "answer": p["expected"]} for i, p in enumerate(problems)]


EVAL_FILE = Path(__file__).resolve().parents[1] / "data" / "eval" / "reasoning_eval.jsonl"


def write_curriculum(out_path, n, seed, base_path=None, exclude_paths=(EVAL_FILE,)):
    """The distill stage's reasoning curriculum as one sft jsonl file: the records of `base_path`
    (e.g. the hand-written R1 demo records) followed by `n` generated problems of `seed`,
    none of whose questions appears in any of `exclude_paths` (the held-out evaluation set).
    The same arguments always write the same bytes; an existing complete file is reused.
    Written to a temporary name and renamed, so an interrupted run never leaves half a file."""
    out_path = Path(out_path)
    if out_path.is_file():
        return out_path
    excluded = frozenset(q for path in exclude_paths if Path(path).is_file() for q in read_questions(path))
    problems = generate(n, seed, exclude_questions=excluded)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        if base_path:
            with open(base_path, encoding="utf-8") as base:
                for line in base:
                    if line.strip():
                        f.write(line.rstrip("\n") + "\n")
        for record in to_sft(problems, seed):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    return out_path


def jsonl_records(path):
    """(line number, record) for each non-empty line of a jsonl file; ValueError naming the line
    of one that is not JSON."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None


def read_questions(path):
    """Every question in a jsonl file of either format: eval records' ``question`` and the
    user turns of sft records. Raises ValueError naming the line of a record that is neither."""
    questions = []
    for i, rec in jsonl_records(path):
        if isinstance(rec, dict) and isinstance(rec.get("question"), str):
            questions.append(rec["question"])
        elif isinstance(rec, dict) and isinstance(rec.get("conversations"), list):
            questions += [t["content"] for t in rec["conversations"]
                          if isinstance(t, dict) and t.get("role") == "user" and isinstance(t.get("content"), str)]
        else:
            raise ValueError(f"{path}:{i}: neither an eval record (\"question\") nor an sft record (\"conversations\")")
    return questions


def read_eval(path):
    """Eval-format records (id, kind, question, answer) from a jsonl file."""
    problems = []
    for i, rec in jsonl_records(path):
        if not (isinstance(rec, dict) and isinstance(rec.get("kind"), str) and isinstance(rec.get("question"), str)):
            raise ValueError(f"{path}:{i}: not an eval record (needs \"kind\" and \"question\"; "
                             "make one with --format eval)")
        problems.append(rec)
    return problems


def overlap_by_kind(train_questions, eval_problems):
    """How many evaluation questions appear verbatim among the training questions, per kind.

    ``eval_problems`` are dicts with ``kind`` and ``question`` (``generate`` output or eval
    records). Returns {kind: {"overlap": int, "total": int, "percent": float}} in KINDS order
    (other kinds after), plus "all" for every problem together.
    """
    train = train_questions if isinstance(train_questions, (set, frozenset, dict)) else set(train_questions)
    table = {}
    for p in eval_problems:
        row = table.setdefault(p["kind"], {"overlap": 0, "total": 0})
        row["total"] += 1
        row["overlap"] += p["question"] in train
    order = [k for k in KINDS if k in table] + sorted(k for k in table if k not in KINDS)
    table = {k: table[k] for k in order}
    table["all"] = {"overlap": sum(r["overlap"] for r in table.values()),
                    "total": sum(r["total"] for r in table.values())}
    for row in table.values():
        row["percent"] = 100.0 * row["overlap"] / row["total"] if row["total"] else 0.0
    return table


def format_overlap(table):
    lines = [f"{'kind':8s} {'overlap':>7s} {'total':>6s} {'percent':>8s}"]
    lines += [f"{k:8s} {r['overlap']:7d} {r['total']:6d} {r['percent']:7.1f}%" for k, r in table.items()]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="number of records")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="", help=f"comma list from {','.join(KINDS)} (default all)")
    ap.add_argument("--format", choices=("sft", "eval"), default="sft")
    ap.add_argument("--out", default=None, help="output .jsonl path ('-' = stdout, the default "
                                                "unless --check_overlap is given)")
    ap.add_argument("--exclude", action="append", default=[], metavar="JSONL",
                    help="never generate a question found in this sft/eval file (repeatable), "
                         "e.g. the evaluation set when making training data")
    ap.add_argument("--check_overlap", metavar="TRAIN_JSONL",
                    help="print, per kind, how many questions of the evaluation set (the one generated, "
                         "or --eval) appear verbatim in this sft/eval file")
    ap.add_argument("--eval", metavar="EVAL_JSONL", help="with --check_overlap: check this eval-format file "
                                                         "instead of generating problems")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be at least 1, got {args.n}")
    if args.eval and not args.check_overlap:
        ap.error("--eval is only used with --check_overlap")
    if args.eval and args.out:
        ap.error("--out is not used with --eval (the problems are read from the --eval file, not generated)")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] or None
    unknown = [k for k in kinds or () if k not in KINDS]
    if unknown:
        ap.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    for flag, path in [("--exclude", p) for p in args.exclude] + [("--check_overlap", args.check_overlap),
                                                                    ("--eval", args.eval)]:
        if path and not Path(path).is_file():
            ap.error(f"{flag} {path} does not exist")
    try:
        exclude = set()
        for path in args.exclude:
            exclude.update(read_questions(path))
        problems = read_eval(args.eval) if args.eval else generate(args.n, args.seed, kinds, exclude)
        train = set(read_questions(args.check_overlap)) if args.check_overlap else None
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else (None if args.check_overlap else "-")
    if out and not args.eval:
        records = to_sft(problems, args.seed) if args.format == "sft" else to_eval(problems, args.seed)
        f = sys.stdout if out == "-" else open(out, "w", encoding="utf-8", newline="\n")
        try:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        finally:
            if f is not sys.stdout:
                f.close()
        if out != "-":
            print(f"wrote {len(records)} {args.format} records to {out}", file=sys.stderr)
    if train is not None:
        report = sys.stderr if out == "-" else sys.stdout  # never mixed into records on stdout
        print(f"questions of {args.eval or 'this set'} found verbatim in {args.check_overlap} "
              f"({len(train)} distinct questions):", file=report)
        print(format_overlap(overlap_by_kind(train, problems)), file=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
