"""Benchmark and perplexity evaluation: valid, sane JSON; the harness's C-Eval prompt format;
accuracies and bits per byte that match a brute-force recomputation; one-sentence errors."""
import json
import math
import sys

import pytest
import torch

from conftest import DEMO, ROOT, SHARED

sys.path.insert(0, str(ROOT / "scripts"))
import eval_bench  # noqa: E402
import eval_ppl  # noqa: E402
from dataset import check_pretrain, render_chat  # noqa: E402
from checkpoint import load_model  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "ceval_tiny"
CEVAL = SHARED / "ceval"


@pytest.fixture(scope="module")
def ckpt(trained):
    return trained / "ckpt"


@pytest.fixture(scope="module")
def native(ckpt):
    model, _ = load_model(ckpt / "distill.pt")
    return model.eval()


def run_bench(ckpt, tmp_path, *extra, name="bench.json") -> dict:
    out = tmp_path / name
    rc = eval_bench.main(["--model", "tiny", "--save_dir", str(ckpt), "--stage", "distill", "--json", str(out),
                          "--quiet", "--details", *extra])
    assert rc == 0
    return json.loads(out.read_text(encoding="utf-8"))


def assert_sane(result: dict, n: int, subjects: dict):
    assert result["n"] == n == sum(s["n"] for s in result["subjects"].values())
    assert {k: v["n"] for k, v in result["subjects"].items()} == subjects
    assert 0.0 <= result["overall"] <= 1.0
    assert result["overall"] == pytest.approx(result["correct"] / result["n"])
    assert result["macro"] == pytest.approx(sum(s["acc"] for s in result["subjects"].values()) / len(subjects))
    for s in result["subjects"].values():
        assert s["acc"] == pytest.approx(s["correct"] / s["n"])
    assert len(result["details"]) == n
    assert sum(d["pred"] == d["answer"] for d in result["details"]) == result["correct"]


def brute_force_loglik(model, tokenizer, prompt: str) -> list[float]:
    """log P(" X" | prompt) for X in A..D, one full forward pass per option, no shortcuts."""
    scores = []
    for letter in "ABCD":
        ctx = tokenizer.encode(prompt)
        whole = tokenizer.encode(prompt + " " + letter)
        assert whole[:len(ctx)] == ctx
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
        scores.append(sum(logprobs[p - 1, whole[p]].item() for p in range(len(ctx), len(whole))))
    return scores


def hand_written_prompt(subject_zh: str, row: dict, shot: dict | None) -> str:
    """The harness's C-Eval prompt, spelled out here independently of eval_bench."""
    def block(r):
        return f"{r['question'].strip()}\nA. {r['A']}\nB. {r['B']}\nC. {r['C']}\nD. {r['D']}\n答案："
    head = f"以下是中国关于{subject_zh}的单项选择题，请选出其中的正确答案。\n\n"
    return head + (block(shot) + " " + shot["answer"] + "\n\n" if shot else "") + block(row)


def read_csv(path) -> list[dict]:
    import csv
    import io
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


@pytest.mark.parametrize("shots", [0, 1])
def test_bench_on_tiny_fixture(ckpt, native, tokenizer, tmp_path, shots):
    result = run_bench(ckpt, tmp_path, "--data_dir", str(FIXTURE), "--shots", str(shots))
    assert_sane(result, 7, {"high_school_geography": 3, "middle_school_mathematics": 4})
    assert result["shots"] == shots and result["split"] == "val" and result["truncated"] == 0
    # Every question scored again by brute force from a hand-written prompt.
    clear, brute_correct = 0, 0
    for subject, zh in (("high_school_geography", "高中地理"), ("middle_school_mathematics", "初中数学")):
        rows = read_csv(FIXTURE / "val" / f"{subject}_val.csv")
        shot = read_csv(FIXTURE / "dev" / f"{subject}_dev.csv")[0] if shots else None
        for row in rows:
            expected = brute_force_loglik(native, tokenizer, hand_written_prompt(zh, row, shot))
            detail = next(d for d in result["details"] if d["subject"] == subject and d["id"] == row["id"])
            assert detail["loglik"] == pytest.approx(expected, abs=1e-4)
            best, second = sorted(expected, reverse=True)[:2]
            brute_pred = "ABCD"[expected.index(best)]
            brute_correct += brute_pred == row["answer"]
            if best - second > 1e-3:     # an untrained model can nearly tie; float noise may then pick either
                clear += 1
                assert detail["pred"] == brute_pred
    assert clear >= 1
    if clear == 7:
        assert result["correct"] == brute_correct


def test_multi_token_continuations_score_like_brute_force(native, tokenizer):
    """Options whose continuation is several tokens take the per-option path: same numbers."""
    class NativeLM:
        max_len, encode = native.config.max_seq_len, staticmethod(tokenizer.encode)

        @staticmethod
        def logits(x, mask):
            with torch.no_grad():
                return native(x).logits.float()

    prompt = "问题：天空是什么颜色？\n答案："
    options = [" 蓝色", " 绿色的", " A", " 红"]
    requests = [[eval_bench.encode_pair(NativeLM, prompt, o) for o in options]]
    (scores,), _ = eval_bench.score_requests(NativeLM, requests, batch_size=3, progress=False)
    for option, got in zip(options, scores):
        ctx, whole = tokenizer.encode(prompt), tokenizer.encode(prompt + option)
        with torch.no_grad():
            logprobs = torch.log_softmax(native(torch.tensor([whole])).logits[0].double(), dim=-1)
        assert got == pytest.approx(sum(logprobs[p - 1, whole[p]].item() for p in range(len(ctx), len(whole))),
                                    abs=1e-4)


def test_cmmlu_layout(ckpt, tmp_path):
    data = tmp_path / "cmmlu"
    for split in ("dev", "test"):
        (data / split).mkdir(parents=True)
        (data / split / "astronomy.csv").write_text(
            ",Question,A,B,C,D,Answer\n0,太阳系中最大的行星是？,地球,木星,火星,金星,B\n"
            "1,月球绕地球一周大约需要？,一天,一周,一个月,一年,C\n", encoding="utf-8")
    result = run_bench(ckpt, tmp_path, "--data_dir", str(data), "--shots", "1")
    assert result["split"] == "test"
    assert_sane(result, 2, {"astronomy": 2})
    q = eval_bench.read_questions(data / "test" / "astronomy.csv", "astronomy")
    context = eval_bench.build_context(q[0][1], q[0][:1], q[1])
    assert context.startswith("以下是关于astronomy的单项选择题，请直接给出正确答案的选项。\n\n太阳系中最大的行星是？\nA. 地球")


@pytest.mark.skipif(not CEVAL.is_dir(), reason="../shared/data/ceval is absent")
def test_bench_on_shared_ceval(ckpt, native, tokenizer, tmp_path):
    result = run_bench(ckpt, tmp_path, "--data_dir", str(CEVAL / "val"), "--shots", "1", "--limit", "1",
                       "--subjects", "accountant,logic,high_school_physics")
    assert_sane(result, 3, {"accountant": 1, "logic": 1, "high_school_physics": 1})
    rows = eval_bench.read_questions(CEVAL / "val" / "accountant_val.csv", "accountant")[0]
    shot = eval_bench.read_questions(CEVAL / "dev" / "accountant_dev.csv", "accountant")[0][0]
    q = rows[0]
    prompt = ("以下是中国关于注册会计师的单项选择题，请选出其中的正确答案。\n\n"
              f"{shot.question.strip()}\nA. {shot.options[0]}\nB. {shot.options[1]}\nC. {shot.options[2]}\n"
              f"D. {shot.options[3]}\n答案： {shot.answer}\n\n"
              f"{q.question.strip()}\nA. {q.options[0]}\nB. {q.options[1]}\nC. {q.options[2]}\nD. {q.options[3]}\n答案：")
    detail = next(d for d in result["details"] if d["subject"] == "accountant")
    assert detail["loglik"] == pytest.approx(brute_force_loglik(native, tokenizer, prompt), abs=1e-4)


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    import export_hf
    out = tmp_path_factory.mktemp("hf") / "distill"
    assert export_hf.main(["--save_dir", str(ckpt), "--stage", "distill", "--out", str(out), "--skip_verify"]) == 0
    return out


def test_hf_dir_scores_like_the_native_checkpoint(ckpt, exported, tmp_path):
    native_result = run_bench(ckpt, tmp_path, "--data_dir", str(FIXTURE), "--shots", "1")
    out = tmp_path / "hf.json"
    assert eval_bench.main(["--hf_dir", str(exported), "--data_dir", str(FIXTURE), "--shots", "1", "--quiet",
                            "--details", "--dtype", "float32", "--json", str(out)]) == 0
    hf_result = json.loads(out.read_text(encoding="utf-8"))
    assert hf_result["overall"] == native_result["overall"]
    for a, b in zip(native_result["details"], hf_result["details"]):
        assert a["pred"] == b["pred"] and a["loglik"] == pytest.approx(b["loglik"], abs=1e-4)
    data = DEMO / "sft_512_val.jsonl"
    ppl_native = run_ppl(ckpt, tmp_path, data, "--limit", "6")
    out = tmp_path / "hf_ppl.json"
    assert eval_ppl.main(["--hf_dir", str(exported), "--data", str(data), "--limit", "6", "--quiet",
                          "--dtype", "float32", "--json", str(out)]) == 0
    ppl_hf = json.loads(out.read_text(encoding="utf-8"))
    assert (ppl_hf["tokens"], ppl_hf["bytes"]) == (ppl_native["tokens"], ppl_native["bytes"])
    assert ppl_hf["bits_per_byte"] == pytest.approx(ppl_native["bits_per_byte"], rel=1e-5)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_bench_user_errors(ckpt, tmp_path, capsys):
    base = ["--save_dir", str(ckpt), "--stage", "distill", "--quiet"]
    assert eval_bench.main(base + ["--data_dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in error_line(capsys)
    assert eval_bench.main(base + ["--data_dir", str(FIXTURE), "--hf_dataset", "ceval/ceval-exam"]) == 2
    assert "exactly one of" in error_line(capsys)
    assert eval_bench.main(base[:2] + ["--stage", "final", "--data_dir", str(FIXTURE)]) == 2
    assert "--stage 'final'" in error_line(capsys)
    bad = tmp_path / "bad" / "val"
    bad.mkdir(parents=True)
    (bad / "x_val.csv").write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n", encoding="utf-8")
    assert eval_bench.main(base + ["--data_dir", str(bad)]) == 2
    assert "x_val.csv row 2 has answer 'E'" in error_line(capsys)
    lonely = tmp_path / "lonely" / "val"      # no dev/ beside it
    lonely.mkdir(parents=True)
    (lonely / "x_val.csv").write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n", encoding="utf-8")
    assert eval_bench.main(base + ["--data_dir", str(lonely), "--shots", "2"]) == 2
    assert "needs dev examples" in error_line(capsys)


# ---------------------------------------------------------------- perplexity

def run_ppl(ckpt, tmp_path, data, *extra, stage="distill") -> dict:
    out = tmp_path / "ppl.json"
    assert eval_ppl.main(["--save_dir", str(ckpt), "--stage", stage, "--data", str(data), "--json", str(out),
                          "--quiet", *extra]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def brute_force_bpb(model, tokenizer, texts_and_spans, after_doc_end=True) -> tuple[float, int]:
    """Bits per byte the slow way: a whole forward per document, bytes counted on the text. Plain
    text is read after a document end (<|im_end|>); a conversation from its own first token, as the
    SFT loader feeds it, so its first token is context only."""
    nll_bits, n_bytes = 0.0, 0
    for text, spans in texts_and_spans:
        enc = tokenizer.tokenizer.encode(text, add_special_tokens=False)
        lead = [tokenizer.im_end_id] if after_doc_end else []
        ids = lead + enc.ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        for i, (token, (start, _)) in enumerate(zip(enc.ids, enc.offsets)):
            if token in (0, 1, 2) or (spans is not None and not any(a <= start < b for a, b in spans)):
                continue
            if not after_doc_end and i == 0:
                continue
            # the logits at position p predict ids[p + 1]; token i of the text sits at len(lead) + i
            nll_bits -= logprobs[len(lead) + i - 1, token].item() / math.log(2)
        scored_text = text if spans is None else "".join(text[a:b] for a, b in spans)
        n_bytes += len(scored_text.replace("<|im_end|>", "").encode("utf-8"))
    return nll_bits / n_bytes, n_bytes


def test_ppl_bits_per_byte_two_ways_on_text(ckpt, native, tokenizer, tmp_path):
    data = DEMO / "pretrain_val.jsonl"
    result = run_ppl(ckpt, tmp_path, data, "--limit", "5")
    texts = [(check_pretrain(json.loads(line)), None) for line in data.read_text(encoding="utf-8").splitlines()[:5]]
    bpb, n_bytes = brute_force_bpb(native, tokenizer, texts)
    assert result["documents"] == 5 and result["bytes"] == n_bytes
    assert result["bits_per_byte"] == pytest.approx(bpb, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(result["nll"] / result["tokens"]))
    # bits/byte and bits/token describe the same text tokens: their ratio is bytes per token.
    assert result["bits_per_byte"] == pytest.approx(result["nll_text"] / math.log(2) / result["bytes"])


def test_ppl_bits_per_byte_two_ways_on_conversations(ckpt, native, tokenizer, tmp_path):
    from dataset import check_conversation
    data = DEMO / "r1_mix_1024_val.jsonl"
    result = run_ppl(ckpt, tmp_path, data, "--limit", "4")
    docs = [render_chat(check_conversation(json.loads(line)))
            for line in data.read_text(encoding="utf-8").splitlines()[:4]]
    bpb, n_bytes = brute_force_bpb(native, tokenizer, docs, after_doc_end=False)
    assert result["bytes"] == n_bytes and result["bits_per_byte"] == pytest.approx(bpb, rel=1e-6)


def test_ppl_loss_equals_the_trainers_validation_loss(ckpt, tmp_path):
    """Assistant-only scoring of the SFT validation file is what the trainer validates on."""
    summary = json.loads((ckpt / "sft.json").read_text())
    result = run_ppl(ckpt, tmp_path, summary["train_config"]["val_path"], stage="sft")
    assert result["loss"] == pytest.approx(summary["results"]["final_val_loss"], abs=1e-4)


def test_sliding_windows_score_every_token_once():
    for n, max_len, stride in [(10, 4, 2), (10, 4, 4), (9, 4, 3), (3, 8, 4), (100, 16, 5)]:
        seen = []
        for start, end, first in eval_ppl.windows(n, max_len, stride):
            assert end - start <= max_len
            assert first - start >= min(max_len - stride, first)   # each token keeps ≥ max_len-stride context
            seen += list(range(first, end))
        assert seen == list(range(1, n))


def test_ppl_long_text_file_with_windows(ckpt, tmp_path):
    text = "".join(json.loads(line)["text"] for line in (DEMO / "pretrain_val.jsonl").read_text(
        encoding="utf-8").splitlines()[:3])
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    result = run_ppl(ckpt, tmp_path, tmp_path / "book.txt", "--max_len", "64", "--stride", "48")
    assert result["windows"] > 3 and result["documents"] == 1
    assert result["bytes"] == len(text.encode("utf-8")) and math.isfinite(result["bits_per_byte"])


def test_ppl_user_errors(ckpt, tmp_path, capsys):
    assert eval_ppl.main(["--save_dir", str(ckpt), "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in error_line(capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "好"}\n{"conversations": []}\n', encoding="utf-8")
    assert eval_ppl.main(["--save_dir", str(ckpt), "--data", str(bad)]) == 2
    assert "bad.jsonl line 2" in error_line(capsys)
    assert eval_ppl.main(["--hf_dir", str(tmp_path), "--stage", "sft", "--data", str(bad)]) == 2
    assert "replaces" in error_line(capsys)
