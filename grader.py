"""Grades a model's reply to one of XiaoXin's generated reasoning problems.

A reply is expected to look like ``<think>…</think><answer>…</answer>``. The grader reads
the final answer out of it and compares it, by value, with the canonical answer that
``scripts/gen_reasoning.py`` computed (``'42'``, ``'2.5'``, ``'3/4'``, ``'星期三'``,
``'2024年3月1日'``). The evaluator, the report card and the reinforcement-learning reward
all grade through this module, so they agree on what counts as right. Standard library only.

    from grader import score, check_answer, parse_reply
    score("arith", "42", "<think>\\n6 × 7 = 42\\n</think>\\n<answer>\\n答案是42。\\n</answer>")
    # -> {'correct': True, 'well_formed': True}

Rules, in one place:
- The answer graded is the LAST non-empty ``<answer>…</answer>`` block; failing that, the text
  after an unterminated ``<answer>`` (a cut-off generation); failing that, the text after the
  last ``</think>``; failing that, the whole reply. ``check_answer`` grades only that text.
- A reply is well formed when it is exactly one ``<think>…</think>`` followed by exactly one
  non-empty ``<answer>…</answer>``, with only whitespace around and between them. Several answer
  blocks, a missing tag or text outside the blocks make it ill formed (its last answer is still
  graded). ``score`` reports both; a reward that wants the format should require both.
- The answer is NFKC-normalised before it is read, so full-width digits (１２３) read as 123.
- Numbers compare by value: '3500米。' matches 3500, '2.50' matches 2.5, '1,200' matches 1200.
  The LAST number in the answer is the one graded; Chinese numerals (三, 十二, 一百零五) are
  read only when the answer has no digits. Weekdays accept 星期/礼拜/周 with 日/天; dates accept
  2024年3月1日, 3月1号, 2024-03-01 and Chinese-numeral months and days (三月一日); a comparison
  reply may name the larger number ('3/4更大', '较大的是0.7', '3/4比2/3大', '2/3比3/4小').
"""

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from fractions import Fraction

WEEKDAYS = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")

_NUM = r"\d+(?:\.\d+)?(?:/\d+)?"
_CN_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5,
             "六": 6, "七": 7, "八": 8, "九": 9}
_CN_UNIT = {"十": 10, "百": 100, "千": 1000}
_CN_RUN = "[零〇一二两三四五六七八九十百千]+"
_WEEK_NORMAL = {"一": "一", "二": "二", "三": "三", "四": "四", "五": "五", "六": "六",
                "日": "日", "天": "日", "七": "日"}
_WELL_FORMED = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.S)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _normalize(text):
    return unicodedata.normalize("NFKC", text or "")


def _final_segment(text):
    """The part of a reply that holds the final answer; see the module rules."""
    text = text or ""
    found = [f for f in re.findall(r"<answer>(.*?)</answer>", text, re.S) if f.strip()]
    if found:
        return found[-1]
    if "<answer>" in text:  # unterminated answer block (generation cut off)
        return text.rsplit("<answer>", 1)[1]
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    return text


def parse_reply(text):
    """(think, answer, well_formed) of a reply.

    ``think`` is the inside of the first ``<think>…</think>`` block ('' without one), ``answer``
    the text that is graded (see the module rules), both stripped; ``well_formed`` says whether
    the reply is exactly one think block followed by one non-empty answer block.
    """
    text = text or ""
    m = _WELL_FORMED.fullmatch(text)
    well_formed = bool(m) and m.group(2).strip() != "" and not any(
        tag in part for part in m.groups() for tag in _TAGS)
    t = re.search(r"<think>(.*?)</think>", text, re.S)
    think = t.group(1).strip() if t else ""
    return think, _final_segment(text).replace("</answer>", "").strip(), well_formed


def _cn_to_int(s):
    """'三' -> 3, '十二' -> 12, '一百零五' -> 105, '两千' -> 2000."""
    total, cur = 0, 0
    for ch in s:
        if ch in _CN_DIGIT:
            cur = _CN_DIGIT[ch]
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
    # A minus is a sign only where it cannot be subtraction ("得数是 -5", not "12 - 5").
    nums = re.findall(r"(?:(?<![\d)])(?<![\d)] )-\s*)?\d+(?:\.\d+)?", seg)
    if nums:
        return Fraction(Decimal(nums[-1].replace(" ", "")))
    # Chinese numerals ("每人分到三个") only when no digits are present.
    cn = re.findall(_CN_RUN, seg)
    return Fraction(_cn_to_int(cn[-1])) if cn else None


def _weekday_of(seg):
    m = re.findall(r"(?:星期|礼拜)([一二三四五六日天七])", seg)
    if not m:
        m = re.findall(r"周([一二三四五六日天])", seg)
    return "星期" + _WEEK_NORMAL[m[-1]] if m else None


def _date_of(seg):
    """(year or None, month, day) of the last date written in seg, or None."""
    seg = re.sub(rf"({_CN_RUN})(?=\s*[月日号])", lambda m: str(_cn_to_int(m.group(1))), seg)
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


def _grade_segment(kind, expected, seg):
    seg = _normalize(seg)
    expected = _normalize(str(expected)).strip()
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
    except (ValueError, ArithmeticError, KeyError, InvalidOperation):
        return False


def check_answer(kind, expected, reply_text):
    """True if the final answer in reply_text equals the canonical ``expected`` for this kind.

    Only the answer is judged, not the format (see ``score`` for both).
    """
    return _grade_segment(kind, expected, _final_segment(reply_text))


def score(kind, expected, reply_text):
    """{'correct': bool, 'well_formed': bool} for one reply; see the module rules."""
    _, answer, well_formed = parse_reply(reply_text)
    return {"correct": _grade_segment(kind, expected, answer), "well_formed": well_formed}
