"""The shipped tokenizer: lossless, the right special ids, reasoning tags as single
non-special tokens, a chat template equal to the training renderer, and compression."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from conftest import ROOT, SHARED
from dataset import render_chat

SAMPLES = ["你好，世界！", "  leading spaces\tand tabs\n\nnew lines  ", "全角，标点。“引号”……——", "ＡＢＣ１２３",
           "emoji 😀🎉 and ñ é ü", "x = [i**2 for i in range(10)]  # code", "<|im_start|>user\n嗨<|im_end|>",
           "<think>\n1+1=2\n</think>\n<answer>\n2\n</answer>", "\u200b零宽\u3000全角空格", ""]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_examples(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_round_trip_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_and_reasoning_tokens(tokenizer):
    t = tokenizer.tokenizer
    assert [t.token_to_id(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert tokenizer.vocab_size == 6400
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(tokenizer.encode(tag)) == 1, tag
    ids = tokenizer.encode("<think>想</think><answer>答</answer><|im_end|>")
    # Clients decode with skip_special_tokens=True: the tags must survive, <|im_end|> must not.
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>想</think><answer>答</answer>"


def test_tags_are_not_split_inside_words(tokenizer):
    # A "weight <think> ×10" trick only works if the tag is one token and nothing else is.
    think = tokenizer.tokenizer.token_to_id("<think>")
    assert think not in tokenizer.encode("the thinker thinks < think >")


CONVERSATIONS = [
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是小新。"}],
    [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "1+1=?"},
     {"role": "assistant", "content": "<think>\n1+1=2\n</think>\n<answer>\n2\n</answer>"},
     {"role": "user", "content": "\n  再加一呢？"}, {"role": "assistant", "content": "3"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_equals_training_renderer(tokenizer, messages, add_generation_prompt):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(ROOT / "XiaoXin_tokenizer"))
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ours, _ = render_chat(messages, add_generation_prompt)
    assert text == ours
    encoded = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    assert list(ids) == tokenizer.encode(ours)
    assert hf.eos_token_id == 2 and hf.pad_token_id == 0


def test_training_info_records_sources_and_hash():
    info = json.loads((ROOT / "XiaoXin_tokenizer" / "training_info.json").read_text())
    import hashlib
    assert info["tokenizer_sha256"] == hashlib.sha256((ROOT / "XiaoXin_tokenizer" / "tokenizer.json").read_bytes()).hexdigest()
    assert info["trained_on"]


def test_retrain_on_small_corpus(tmp_path):
    import train_tokenizer
    corpus = tmp_path / "c.jsonl"
    import random
    rng = random.Random(0)
    alphabet = "今天气很好我们去公园散步学习读书写字吃饭喝水春夏秋冬山水花草树木日月星云风雨雪"
    lines = ["今天天气很好"] + ["".join(rng.choice(alphabet) for _ in range(40)) for _ in range(400)]
    corpus.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in lines), encoding="utf-8")
    out = tmp_path / "tok"
    assert train_tokenizer.main(["--data_path", str(corpus), "--out_dir", str(out), "--vocab_size", "600"]) == 0
    from dataset import load_tokenizer
    tok = load_tokenizer(out)
    assert tok.vocab_size == 600 and tok.decode(tok.encode("今天天气很好")) == "今天天气很好"
    assert train_tokenizer.main(["--data_path", str(tmp_path / "missing.jsonl")]) == 2


@pytest.mark.skipif(not (SHARED / "minimind_tokenizer_v2").is_dir(), reason="../shared/data is absent")
def test_compresses_chinese_better_than_minimind():
    """≥ 1.05× MiniMind's characters per token on every held-out genre (neither tokenizer trained on it);
    scripts/compare_tokenizers.py prints the same figures as a table."""
    import sys
    from tokenizers import Tokenizer
    sys.path.insert(0, str(ROOT / "scripts"))
    from compare_tokenizers import chars_per_token, genre_texts
    ours = Tokenizer.from_file(str(ROOT / "XiaoXin_tokenizer" / "tokenizer.json"))
    theirs = Tokenizer.from_file(str(SHARED / "minimind_tokenizer_v2" / "tokenizer.json"))
    genres = genre_texts(ROOT / "data" / "eval" / "tokenizer_eval.jsonl", SHARED / "ceval" / "val")
    assert len(genres) == 4
    for genre, texts in genres.items():
        ratio = chars_per_token(ours, texts) / chars_per_token(theirs, texts)
        assert ratio >= 1.05, f"{genre}: {ratio:.3f}"
