#!/usr/bin/env python3
"""Synthetic step-by-step reasoning problems for XiaoXin's R1-style distillation stage.

Every problem is generated from random parameters and its answer is computed by code,
so the data can be produced in any amount, is always correct, and can also be used to
*measure* a trained model (the eval format plus ``check_answer``).

Kinds of problems (``--kinds``, default all):
    arith    two/three-term integer arithmetic with + - × ÷ (and brackets)
    word     word problems: shopping and change, sharing, speed×time, work rates
    count    counting letters/characters, counting multiples in a range
    weekday  which weekday is N days after/before a given weekday
    date     which date is N days after a given date (same or next month)
    unit     km↔m, kg↔g, hours↔minutes, yuan↔jiao/fen
    compare  which of two fractions/decimals is larger

Output formats (``--format``):
    sft   {"conversations": [{"role": "user", ...}, {"role": "assistant", "content":
          "<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>"}]}
    eval  {"id": ..., "kind": ..., "question": ..., "answer": "<canonical answer>"}

Usage (from the repository root):
    python scripts/gen_reasoning.py --n 300 --seed 0 --out data/r1_synth.jsonl
    python scripts/gen_reasoning.py --n 200 --seed 7 --format eval --out eval.jsonl
    python scripts/gen_reasoning.py --n 50 --kinds date,weekday --out dates.jsonl
    python scripts/gen_reasoning.py --selftest

As a library:
    from scripts.gen_reasoning import generate, check_answer
    problems = generate(100, seed=1)            # list of dicts
    check_answer("date", "2024年3月1日", reply)  # -> bool

Same seed and arguments always give a byte-identical file. Standard library only.
"""

import argparse
import calendar
import datetime
import json
import math
import random
import re
import sys
import unicodedata
from decimal import Decimal
from fractions import Fraction

KINDS = ("arith", "word", "count", "weekday", "date", "unit", "compare")

# A small share of records carries a system prompt so the model also learns to
# reason when one is present (the chat template always allows it).
SYSTEM_PROMPTS = (
    "你是小新，请先思考再回答。",
    "你是小新，一个中文小助手。回答前请一步一步想清楚。",
    "请先一步步推理，再给出最终答案。",
)
SYSTEM_PROMPT_RATE = 0.08

NAMES = ("小明", "小红", "小刚", "小丽", "乐乐", "小雨", "朵朵", "天天", "小林",
         "妈妈", "爸爸", "爷爷", "奶奶", "王阿姨", "李叔叔", "张老师", "小芳", "阿杰")


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
    "计算：{e} = ?",
    "{e} 等于多少？",
    "请帮我算一下 {e}。",
    "{e} 的结果是多少？",
    "口算一下：{e}",
    "不用计算器，{e} 是多少？",
    "{e} = ？请写出计算过程。",
    "小新，{e} 得几？",
)


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
    lines = [rng.choice((
        f"题目要算 {e}，只有一步{_OP_NAME[op]}法。",
        f"这是一道{_OP_NAME[op]}法题：{e}。",
        f"先看清题目：要求 {e} 的结果。",
        f"要算的是 {e}，一步就能完成，但要算仔细。",
    ))]
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
    return e, r, lines


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
        e, r, lines = _arith_two(rng)
    else:
        if form < 0.8:
            e, r, steps, lines = _arith_three(rng)
        else:
            e, r, steps, lines = _arith_paren(rng)
        if rng.random() < 0.75:
            lines.append(rng.choice(("检查最后一步：", "倒过来验算：", "验算一下：")) + _inverse(*steps[-1]) + "，对得上。")
        if rng.random() < 0.5:
            lines.append(f"所以 {e} = {r}。")
    q = rng.choice(_ARITH_QUESTIONS).format(e=e)
    ans = rng.choice((f"{e} = {r}", f"{e} = {r}。", f"结果是 {r}。", f"答案是 {r}。", f"计算结果：{r}"))
    return q, lines, ans, str(r)


# ---------------------------------------------------------------------------
# word problems
# ---------------------------------------------------------------------------

SHOP_ITEMS = (  # name, measure word, lowest price, highest price (yuan)
    ("铅笔", "支", 1, 3), ("笔记本", "本", 3, 9), ("橡皮", "块", 1, 3), ("尺子", "把", 2, 5),
    ("苹果", "斤", 4, 9), ("香蕉", "斤", 3, 7), ("牛奶", "盒", 3, 6), ("面包", "个", 4, 9),
    ("毛巾", "条", 8, 20), ("彩笔", "盒", 8, 25), ("气球", "个", 1, 3), ("酸奶", "杯", 4, 8),
    ("速冻饺子", "袋", 12, 25), ("作业本", "本", 2, 4), ("西红柿", "斤", 3, 6),
)

SHARE_ITEMS = (  # name, measure word, edible, container, shop
    ("苹果", "个", True, "箱", "水果店"), ("橘子", "个", True, "箱", "水果店"),
    ("梨", "个", True, "箱", "水果店"), ("草莓", "颗", True, "盒", "水果店"),
    ("饼干", "块", True, "盒", "小卖部"), ("糖果", "颗", True, "袋", "小卖部"),
    ("铅笔", "支", False, "盒", "文具店"), ("贴纸", "张", False, "包", "文具店"),
)


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
    pay = next(v for v in (10, 20, 50, 100, 200) if v > total)
    if rng.random() < 0.3 and pay < 100:
        pay = 100
    change = pay - total
    if two:
        second = (f"又买了一{u2}{i2}，{p2}元" if q2 == 1
                  else rng.choice((f"又买了{q2}{u2}{i2}，每{u2}{p2}元", f"还买了{q2}{u2}{i2}，单价{p2}元")))
    q = rng.choice((
        "{n}带了{pay}元去商店，买了{q1}{u1}{i1}，每{u1}{p1}元{s}。应该找回多少元？",
        "{n}买了{q1}{u1}{i1}，单价{p1}元{s}，付给收银员{pay}元，能找回多少钱？",
        "一{u1}{i1}{p1}元，{n}买了{q1}{u1}{s}。{n}付了{pay}元，应找回几元？",
    )).format(n=name, pay=pay, q1=q1, u1=u1, i1=i1, p1=p1, s=("；" + second) if two else "")
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
    form = rng.randrange(4)
    if form == 0:  # even sharing
        k, each = rng.randint(2, 9), rng.randint(2, 12)
        total = k * each
        q = rng.choice((
            f"{name}有{total}{u}{item}，平均分给{k}个小朋友，每人能分到几{u}？",
            f"把{total}{u}{item}平均分成{k}份，每份是多少{u}？",
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
            f"{name}买了{total}{u}{item}，{used}{eaten}{u}，剩下的平均分给{k}个人，每人分几{u}？",
            f"盒子里有{total}{u}{item}，拿走{eaten}{u}后，把剩下的平均分成{k}份，每份多少{u}？",
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
            f"把一些{item}平均分给{k}个小朋友，每人{each}{u}，最后还剩{left}{u}。原来一共有多少{u}{item}？",
            f"{name}把{item}分给{k}位同学，每人{each}{u}，分完还多出{left}{u}，{name}原来有几{u}{item}？",
        ))
        lines = [f"原来的总数 = 分出去的 + 剩下的。",
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
        ))
        lines = ["先求一共有多少，再减去卖掉的。",
                 f"总数：{per}×{boxes}={total}（{u}）。",
                 f"还剩：{total}-{sold}={left}（{u}）。"]
        if rng.random() < 0.7:
            lines.append(f"验算：{left}+{sold}={total}，对得上。")
        ans, val = rng.choice((f"还剩{left}{u}。", f"还剩下{left}{u}{item}。")), left
    return q, lines, ans, str(val)


VEHICLES = (  # subject, verb, speed lo, hi, step, distance unit, time unit, time lo, hi
    ("一辆汽车", "行驶", 40, 90, 5, "千米", "小时", 2, 6),
    ("一列高铁", "行驶", 200, 350, 10, "千米", "小时", 2, 5),
    ("{n}骑自行车", "骑", 10, 18, 1, "千米", "小时", 2, 4),
    ("一艘轮船", "航行", 20, 40, 2, "千米", "小时", 3, 8),
    ("{n}步行", "走", 50, 80, 5, "米", "分钟", 10, 30),
    ("{n}慢跑", "跑", 100, 160, 10, "米", "分钟", 10, 40),
)


def _word_speed(rng):
    subj, verb, lo, hi, step, du, tu, tlo, thi = rng.choice(VEHICLES)
    subj = subj.format(n=rng.choice(NAMES))
    v = rng.randrange(lo, hi + 1, step)
    t = rng.randint(tlo, thi)
    d = v * t
    form = rng.randrange(4) if tu == "小时" else rng.randrange(2)
    if form == 0:
        q = rng.choice((
            f"{subj}每{tu}{verb}{v}{du}，{t}{tu}一共{verb}多少{du}？",
            f"{subj}的速度是每{tu}{v}{du}，照这样{verb}{t}{tu}，能{verb}多远？",
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
        q = (f"{subj}先以每小时{v}千米的速度{verb}了{t}小时，又以每小时{v2}千米的速度{verb}了{t2}小时，"
             f"一共{verb}了多少千米？")
        lines = ["速度前后不一样，要分两段算路程再相加。",
                 f"第一段：{v}×{t}={d}（千米）。",
                 f"第二段：{v2}×{t2}={d2}（千米）。",
                 f"合计：{d}+{d2}={d + d2}（千米）。"]
        ans, val = f"一共{verb}了{d + d2}千米。", d + d2
    else:
        # Meeting problems pick their own speeds: the vehicle drawn above may not fit.
        if rng.random() < 0.5:
            v, v2 = rng.randrange(40, 95, 5), rng.randrange(40, 95, 5)
            where, who = "甲乙两地", "两辆车同时从两地出发相向而行，一辆每小时行{v}千米，另一辆每小时行{v2}千米"
        else:
            v, v2 = rng.randrange(20, 42, 2), rng.randrange(20, 42, 2)
            where, who = "两个码头", "两艘船同时从两个码头相对开出，速度分别是每小时{v}千米和{v2}千米"
        total = (v + v2) * t
        q = f"{where}相距{total}千米，{who.format(v=v, v2=v2)}，" + rng.choice(("几小时后相遇？", "经过几小时相遇？"))
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

WORK_TASKS = (  # task, who A, who B, doing verb, time unit, longest plausible time
    ("修一条路", "甲队", "乙队", "单独修", "天", 60),
    ("注满一个水池", "甲水管", "乙水管", "单独开", "小时", 30),
    ("打完一份文件", "小王", "小李", "单独打", "小时", 20),
    ("加工一批零件", "师傅", "徒弟", "单独做", "天", 40),
    ("把一块菜地翻一遍", "爸爸", "哥哥", "一个人干", "小时", 20),
)


def _word_work(rng):
    form = rng.randrange(3)
    if form == 0:
        task, A, B, verb, tu, longest = rng.choice(WORK_TASKS)
        a, b = rng.choice([pair for pair in _WORK_PAIRS if pair[1] <= longest])
        if rng.random() < 0.5:
            a, b = b, a
        t = a * b // (a + b)
        q = rng.choice((
            f"{task}，{A}{verb}需要{a}{tu}，{B}{verb}需要{b}{tu}。两者合作，需要多少{tu}？",
            f"{A}{verb}{a}{tu}能{task}，{B}{verb}{b}{tu}能完成。如果一起干，几{tu}能完成？",
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
        total = r * m * h
        q = rng.choice((
            f"一台机器每小时生产{r}个零件，照这样计算，{m}台同样的机器{h}小时能生产多少个零件？",
            f"工厂里每台机器每小时能做{r}个零件，{m}台机器同时工作{h}小时，一共做多少个？",
        ))
        if rng.random() < 0.5:
            lines = [f"先算1台机器{h}小时的产量：{r}×{h}={r * h}（个）。",
                     f"再乘台数：{r * h}×{m}={total}（个）。"]
        else:
            lines = [f"先算{m}台机器1小时的产量：{r}×{m}={r * m}（个）。",
                     f"再乘小时数：{r * m}×{h}={total}（个）。"]
        lines.insert(0, "总产量 = 每台每小时的产量 × 台数 × 小时数。")
        if rng.random() < 0.7:
            lines.append(f"换个顺序核对：{r}×{m}×{h}={total}，结果相同。")
        ans, val = f"能生产{total}个零件。", total
    else:
        thing, verb = rng.choice((("饺子", "包"), ("纸鹤", "折"), ("灯笼", "扎"), ("零件", "做")))
        n1, n2 = rng.sample(NAMES[:9], 2)
        a, b, t = rng.randint(5, 40), rng.randint(5, 40), rng.randint(2, 8)
        total = (a + b) * t
        q = (f"{n1}每小时{verb}{a}个{thing}，{n2}每小时{verb}{b}个。"
             f"两人一起{verb}{total}个{thing}，需要几小时？")
        lines = [f"两人同时干，每小时一共{verb}{a}+{b}={a + b}个。",
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
         "hello world", "good morning", "apple pie", "see you soon", "little kitten",
         "elephant", "dinner", "rabbit", "grammar", "volleyball", "millennium", "sweet tea")

# Short phrases written for this script; each repeats some characters on purpose.
PHRASES = (
    "我和我的好朋友一起去公园玩",
    "今天天气好，我们去天台看天空",
    "一心一意做好一件事",
    "山上有座小山村，山村里有条小山路",
    "小猫看小鱼，小鱼看小猫",
    "你说我听，我说你听",
    "大树下面有块大石头，大石头旁边卧着一只大白鹅",
    "读书要读懂，读懂再读新书",
    "花开花落，春去春又来",
    "水清清，山青青，水里映着山",
    "上山容易下山难，上山下山都要小心",
    "一个人一把伞，一起走在雨里",
    "走一步，看一步，一步一个脚印",
    "多说好话，多做好事，多读好书",
    "红花配绿叶，红灯笼挂在红门上",
    "门前一条河，河上一座桥，桥下小船过",
    "早睡早起，早饭吃好",
    "白云飘，白鸽飞，白帆在水上",
)

_PUNCT = "，。、；：！？ "


def _count_letter(rng):
    word = rng.choice(WORDS)
    letters = word.replace(" ", "")
    if rng.random() < 0.1:
        letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c not in letters])
    else:
        letter = rng.choice(letters)  # weighted toward repeated letters, the interesting case
    cnt = letters.count(letter)
    label = "短语" if " " in word else "单词"
    q = rng.choice((
        f"{label} {word} 里有几个字母 {letter}？",
        f"“{word}”中字母“{letter}”出现了几次？",
        f"数一数：{word} 这个{label}里一共有多少个 {letter}？",
        f"{word} 里面有几个 {letter}？别数错哦。",
    ))
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
    phrase = rng.choice(PHRASES)
    chars = [c for c in phrase if c not in _PUNCT]
    repeated = [c for c in chars if chars.count(c) > 1]
    ch = rng.choice(repeated if repeated and rng.random() < 0.85 else chars)
    cnt = chars.count(ch)
    q = rng.choice((
        f"“{phrase}”这句话里有几个“{ch}”字？",
        f"数一数，下面这句话中“{ch}”出现了几次：{phrase}",
        f"句子“{phrase}”里，“{ch}”字一共有多少个？",
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

WEEKDAYS = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")


def _say_weekday(rng, i):
    """Vary how the *question* names a weekday; answers always use WEEKDAYS."""
    name = WEEKDAYS[i]
    short = "周" + name[-1]
    options = [name, name, short]
    if i == 6:
        options.append("星期天")
    return rng.choice(options)


def _gen_weekday(rng):
    start = rng.randrange(7)
    n = rng.randint(3, 400)
    before = rng.random() < 0.2
    r = n % 7
    end = (start - r) % 7 if before else (start + r) % 7
    s_name = _say_weekday(rng, start)
    if before:
        q = rng.choice((f"今天是{s_name}，{n}天前是星期几？", f"假设今天是{s_name}，那么{n}天以前是星期几？"))
    else:
        q = rng.choice((
            f"今天是{s_name}，再过{n}天是星期几？",
            f"如果今天是{s_name}，{n}天后是星期几？",
            f"某天是{s_name}，从这天起过{n}天，是星期几？",
        ))
    word = "往前" if before else "往后"
    lines = [rng.choice(("一周有7天，每过7天星期几就会重复一次。", "星期是7天一循环，所以只需看天数除以7的余数。"))]
    if n < 7:
        lines[0] = f"{n}天还不到一周，直接一天一天数就行。"
    else:
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
    if calendar.isleap(y):
        return f"{y}年能被4整除（又不是整百年），是闰年，2月有29天"
    return f"{y}年不能被4整除，不是闰年，2月只有28天"


def _gen_date(rng):
    y = rng.randint(2019, 2030)
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
    q = rng.choice((
        f"{_date_cn(start)}再过{n}天是几月几日？",
        f"今天是{_date_cn(start)}，{n}天后是哪一天？",
        f"从{_date_cn(start)}算起，{n}天之后是几月几号？",
        f"{_date_cn(start)}往后推{n}天是哪一天？",
    ))
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

UNITS = (  # big unit, small unit, factor, context templates (big→small)
    ("千米", "米", 1000, ("一段路长{x}千米，合多少米？", "{x}千米等于多少米？")),
    ("千克", "克", 1000, ("一袋大米重{x}千克，是多少克？", "{x}千克等于多少克？")),
    ("公斤", "克", 1000, ("一个西瓜重{x}公斤，合多少克？", "{x}公斤是多少克？")),
    ("小时", "分钟", 60, ("看一部电影用了{x}小时，是多少分钟？", "{x}小时等于多少分钟？")),
    ("元", "角", 10, ("一支笔{x}元，等于多少角？", "{x}元是多少角？")),
    ("元", "分", 100, ("一个本子{x}元，合多少分？", "{x}元等于多少分？")),
    ("角", "分", 10, ("{x}角等于多少分？",)),
)


def _gen_unit(rng):
    big, small, f, ctx = rng.choice(UNITS)
    form = rng.random()
    if form < 0.2 and big != "角" and f != 100:
        # Mixed units such as 3小时20分钟 → minutes.
        a = rng.randint(1, 9)
        b = rng.randint(1, f - 1)
        if f == 1000:
            b = rng.randrange(10, 1000, 10)
        q = rng.choice((f"{a}{big}{b}{small}是多少{small}？", f"把{a}{big}{b}{small}换算成{small}，是多少？"))
        r = a * f + b
        lines = [f"1{big}={f}{small}，先把{a}{big}换成{small}，再加上零头。",
                 f"{a}{big}={a}×{f}={a * f}{small}。",
                 f"{a * f}+{b}={r}（{small}）。"]
        ans = f"{a}{big}{b}{small}等于{r}{small}。"
        return q, lines, ans, str(r)
    if form < 0.6:  # big → small
        if f == 60:
            x = Decimal(rng.randint(1, 40)) / rng.choice((4, 10, 2))
        elif big == "角":
            x = Decimal(rng.randint(1, 30))
        elif f == 10:
            x = Decimal(rng.randint(1, 500)) / 10
        elif f == 100:
            x = Decimal(rng.randint(1, 2000)) / 100
        else:
            x = Decimal(rng.randint(1, 200)) / rng.choice((1, 10, 100))
        r = x * f
        xs, rs = _fmt(x), _fmt(r)
        q = rng.choice(ctx + (f"{xs}{big}合多少{small}？", f"单位换算：{xs}{big} =（ ）{small}")).format(x=xs)
        lines = [rng.choice((f"1{big}={f}{small}，{big}换成{small}是大单位变小单位，要乘{f}。",
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
        y = 10 * rng.randint(1, 30)
    else:
        y = rng.randint(1, 999) * (1 if f == 10 else rng.choice((1, 5, 10)))
    r = Decimal(y) / f
    ys, rs = _fmt(y), _fmt(r)
    q = rng.choice((f"{ys}{small}等于多少{big}？", f"{ys}{small}是多少{big}？",
                    f"把{ys}{small}换算成{big}，是多少？", f"单位换算：{ys}{small} =（ ）{big}"))
    lines = [rng.choice((f"1{big}={f}{small}，{small}换成{big}是小单位变大单位，要除以{f}。",
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

_PLACES = ("十分位", "百分位", "千分位", "万分位")


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
                same.append(f"{_PLACES[j]}都是{xf[j]}")
            else:
                lo, hi = sorted((xf[j], yf[j]))
                tail = f"{_PLACES[j]}上是{xf[j]}和{yf[j]}，{hi}比{lo}大"
                break
        head = f"整数部分都是{xi}，接着比小数部分" + ("：" + "，".join(same) + "；" if same else "：")
        lines.append(head + tail + f"，所以{big}更大。")
    width = max(len(xf), len(yf))
    if width:
        xp, yp = format(x, f".{width}f"), format(y, f".{width}f")
        lines.append(f"也可以把位数补齐再比：{xp}和{yp}，去掉小数点相当于比{int(xp.replace('.', ''))}和"
                     f"{int(yp.replace('.', ''))}，结论一样。")
    return lines


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
            b, d = rng.randint(2, 12), rng.randint(2, 12)
            if sub < 0.2:
                d = b
            a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
            if sub >= 0.2 and sub < 0.4:
                c = a = rng.randint(1, min(b, d) - 1) if min(b, d) > 1 else 1
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
            b = rng.choice((2, 4, 5, 8, 10, 20, 25))
            a = rng.randint(1, b - 1)
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
    q = rng.choice((
        f"{x}和{y}，哪个更大？",
        f"比较大小：{x}与{y}，谁大？",
        f"{x}和{y}相比，哪个数大一些？",
        f"请比较{x}和{y}的大小，说出较大的那个。",
    ))
    ans = rng.choice((f"{big}更大。", f"较大的是{big}。", f"{big}比{small}大。"))
    return q, lines, ans, big


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

_GENERATORS = {
    "arith": _gen_arith, "word": _gen_word, "count": _gen_count, "weekday": _gen_weekday,
    "date": _gen_date, "unit": _gen_unit, "compare": _gen_compare,
}


def generate(n, seed, kinds=None):
    """Return n distinct problems as dicts: kind, question, reasoning, answer, expected.

    ``answer`` is the short answer sentence shown to the model; ``expected`` is the
    canonical result (e.g. '42', '星期三', '2024年3月1日', '3/4') for check_answer.
    Kinds are used round-robin and then shuffled, so every kind is equally present.
    """
    kinds = list(kinds or KINDS)
    for k in kinds:
        if k not in _GENERATORS:
            raise ValueError(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")
    rng = random.Random(seed)
    out, seen = [], {}
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise RuntimeError("could not find enough distinct problems")
        kind = kinds[len(out) % len(kinds)]
        q, lines, ans, expected = _GENERATORS[kind](rng)
        if q in seen:  # duplicates would just be dropped by dedup later
            continue
        seen[q] = True
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


# ---------------------------------------------------------------------------
# answer checking
# ---------------------------------------------------------------------------

_NUM = r"\d+(?:\.\d+)?(?:/\d+)?"
_CN_NUM = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5,
           "六": 6, "七": 7, "八": 8, "九": 9}
_CN_UNIT = {"十": 10, "百": 100, "千": 1000}
_WEEK_NORMAL = {"一": "一", "二": "二", "三": "三", "四": "四", "五": "五", "六": "六",
                "日": "日", "天": "日", "七": "日"}


def _final_segment(text):
    """The part of a reply that holds the final answer."""
    text = unicodedata.normalize("NFKC", text or "")
    found = re.findall(r"<answer>(.*?)</answer>", text, re.S)
    found = [f for f in found if f.strip()]
    if found:
        return found[-1]
    if "<answer>" in text:  # unterminated answer block (generation cut off)
        return text.rsplit("<answer>", 1)[1]
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    return text


def _cn_to_int(s):
    total, cur = 0, 0
    for ch in s:
        if ch in _CN_NUM:
            cur = _CN_NUM[ch]
        elif ch in _CN_UNIT:
            total += (cur or 1) * _CN_UNIT[ch]
            cur = 0
    return total + cur


def _to_fraction(s):
    s = s.replace(",", "")
    if "/" in s:
        a, b = s.split("/")
        return Fraction(int(a), int(b)) if int(b) else None
    return Fraction(Decimal(s))


def _last_number(seg):
    seg = re.sub(r"(?<=\d),(?=\d{3})", "", seg)
    nums = re.findall(r"\d+(?:\.\d+)?", seg)
    if nums:
        return Fraction(Decimal(nums[-1]))
    # Fall back to Chinese numerals ("有三个") only when no digits are present.
    cn = re.findall(r"[零〇一二两三四五六七八九十百千]+", seg)
    return Fraction(_cn_to_int(cn[-1])) if cn else None


def _weekday_of(seg):
    m = re.findall(r"(?:星期|礼拜)([一二三四五六日天七])", seg)
    if not m:
        m = re.findall(r"周([一二三四五六日天])", seg)
    return "星期" + _WEEK_NORMAL[m[-1]] if m else None


def _date_of(seg):
    best = None
    for m in re.finditer(r"(?:(\d{4})\s*年\s*)?(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]", seg):
        best = (m.end(), m.group(1), m.group(2), m.group(3))
    for m in re.finditer(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", seg):
        if best is None or m.end() > best[0]:
            best = (m.end(), m.group(1), m.group(2), m.group(3))
    if best is None:
        return None
    return (int(best[1]) if best[1] else None, int(best[2]), int(best[3]))


def _larger_of(seg):
    """Which number a comparison reply names as the larger one."""
    seg = re.sub(r"(\d+)\s*分之\s*(\d+)", r"\2/\1", seg)
    hits = []
    masked = seg
    for m in re.finditer(rf"({_NUM})\s*比\s*({_NUM})\s*(?:要|还|更|稍)?\s*(大|小)", seg):
        hits.append((m.end(), m.group(1) if m.group(3) == "大" else m.group(2)))
        # Hide "X比Y大" so the looser patterns below cannot read "Y大" as the answer.
        masked = masked[:m.start()] + "#" * (m.end() - m.start()) + masked[m.end():]
    for m in re.finditer(rf"(?:更大|较大|大)的?(?:那个|数)?(?:是|为)\s*[:：]?\s*({_NUM})", masked):
        hits.append((m.end(), m.group(1)))
    for m in re.finditer(rf"({_NUM})\s*(?:更大|较大|大)(?!约|概|致|小)", masked):
        hits.append((m.end(), m.group(1)))
    if hits:
        return max(hits)[1]
    nums = re.findall(_NUM, seg)
    return nums[-1] if nums else None


def check_answer(kind, expected, reply_text):
    """True if the final answer in reply_text equals the canonical ``expected``.

    The answer is read from the last non-empty <answer>…</answer> block if there is
    one (else the text after </think>, else the whole reply). Numbers are compared
    by value, so '3500米。' matches '3500' and '2.50' matches '2.5'.
    """
    seg = _final_segment(reply_text)
    expected = unicodedata.normalize("NFKC", str(expected)).strip()
    try:
        if kind == "weekday":
            got = _weekday_of(seg)
            return got is not None and got == _weekday_of(expected)
        if kind == "date":
            got, want = _date_of(seg), _date_of(expected)
            if got is None or want is None:
                return False
            if got[0] is not None and want[0] is not None and got[0] != want[0]:
                return False
            return got[1:] == want[1:]
        if kind == "compare":
            got = _larger_of(seg)
            return got is not None and _to_fraction(got) == _to_fraction(expected)
        got = _last_number(seg)
        return got is not None and got == _to_fraction(expected)
    except (ValueError, ArithmeticError, KeyError):
        return False


# ---------------------------------------------------------------------------
# self test
# ---------------------------------------------------------------------------

def _perturb(kind, expected):
    """A plausible but wrong answer in the same format."""
    if kind == "weekday":
        return WEEKDAYS[(WEEKDAYS.index(expected) + 1) % 7]
    if kind == "date":
        y, m, d = (int(v) for v in re.match(r"(\d+)年(\d+)月(\d+)日", expected).groups())
        return _date_cn(datetime.date(y, m, d) + datetime.timedelta(days=1))
    if "/" in expected:
        a, b = expected.split("/")
        return f"{int(a) + 1}/{b}"
    return _fmt(Decimal(expected) + 1)


def _replace_value(text, old, new):
    # Replace only whole numbers (not the '3' inside '13' or '3.5').
    return re.sub(rf"(?<![\d./]){re.escape(old)}(?![\d/]|\.\d)", new, text)


def selftest(n=2000, seed=20240601):
    problems = generate(n, seed)
    assert generate(n, seed) == problems, "generation is not deterministic"
    counts = {}
    for p in problems:
        k, exp = p["kind"], p["expected"]
        counts[k] = counts.get(k, 0) + 1
        lines = p["reasoning"].split("\n")
        assert 2 <= len(lines) <= 8 and all(line.strip() for line in lines), p
        assert _replace_value(p["answer"], exp, "@") != p["answer"], ("answer lacks result", p)
        full = assistant_content(p)
        assert check_answer(k, exp, full), ("true answer rejected", p)
        assert check_answer(k, exp, p["answer"]), ("bare answer rejected", p)
        assert check_answer(k, exp, p["reasoning"] + "\n" + p["answer"]), ("untagged answer rejected", p)
        wrong = _perturb(k, exp)
        bad = _replace_value(p["answer"], exp, wrong)
        assert not check_answer(k, exp, bad), ("wrong answer accepted", p, bad)
        bad_full = f"<think>\n{p['reasoning']}\n</think>\n<answer>\n{bad}\n</answer>"
        assert not check_answer(k, exp, bad_full), ("wrong tagged answer accepted", p, bad)
        if k == "arith":  # independent recomputation
            expr = p["answer"].split("=")[0].replace("×", "*").replace("÷", "/")
            if "=" in p["answer"]:
                assert abs(eval(expr) - int(exp)) < 1e-9, p  # noqa: S307 - our own text
        if k == "compare":  # the canonical answer must be the larger of the two numbers
            nums = re.findall(_NUM, p["question"])
            assert len(nums) == 2 and _to_fraction(exp) == max(_to_fraction(v) for v in nums), p
    # Tolerance of hand-written replies.
    cases = [
        ("arith", "27", "<think>\n5 × 3 = 15\n</think>\n<answer>\n答案是27。\n</answer>", True),
        ("arith", "27", "结果是 28。", False),
        ("unit", "3500", "3.5千米等于3500米。", True),
        ("unit", "2.5", "是2.50小时", True),
        ("word", "3", "每人分到三个。", True),
        ("weekday", "星期日", "那天是星期天。", True),
        ("weekday", "星期日", "是周六", False),
        ("date", "2024年3月1日", "<answer>3月1号</answer>", True),
        ("date", "2024年3月1日", "2024-03-02", False),
        ("compare", "3/4", "四分之三？不，3/4比2/3大。", True),
        ("compare", "3/4", "2/3更大", False),
        ("compare", "0.7", "较大的是0.70", True),
    ]
    for kind, exp, reply, want in cases:
        assert check_answer(kind, exp, reply) is want, (kind, exp, reply)
    print(f"selftest ok: {len(problems)} problems, per kind {dict(sorted(counts.items()))}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="number of records")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="", help=f"comma list from {','.join(KINDS)} (default all)")
    ap.add_argument("--format", choices=("sft", "eval"), default="sft")
    ap.add_argument("--out", default="-", help="output .jsonl path ('-' = stdout)")
    ap.add_argument("--selftest", action="store_true", help="run the checks and exit")
    args = ap.parse_args(argv)
    if args.selftest:
        selftest()
        return 0
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] or None
    unknown = [k for k in kinds or () if k not in KINDS]
    if unknown:
        ap.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    problems = generate(args.n, args.seed, kinds)
    records = to_sft(problems, args.seed) if args.format == "sft" else to_eval(problems, args.seed)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print(f"wrote {len(records)} {args.format} records to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
