"""The report card (scripts/report.py) and the batched reasoning evaluator behind it
(scripts/eval_reasoning.py): batched greedy replies equal one-at-a-time ones, and a report
of the tiny four-stage run has every field, with numbers that agree with each other."""
import csv
import json
import sys

import pytest

from conftest import DEMO, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import eval_reasoning  # noqa: E402
import report  # noqa: E402
from dataset import load_tokenizer, render_chat  # noqa: E402

FIXTURE_CEVAL = ROOT / "tests" / "fixtures" / "ceval_tiny"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ROOT / "XiaoXin_tokenizer")


def load(ckpt, stage):
    model, _ = report.load_model(ckpt / f"{stage}.pt")
    return model.eval()


def one_at_a_time(model, tok, question, max_new_tokens):
    """Greedy reply with batch 1, written out independently of eval_reasoning."""
    import torch
    ids = tok.encode(render_chat([{"role": "user", "content": question}], add_generation_prompt=True)[0])
    out = []
    with torch.inference_mode():
        for token in model.generate(torch.tensor([ids]), max_new_tokens, temperature=0,
                                    eos_token_id=[tok.im_end_id, tok.pad_id]):
            if token in (tok.im_end_id, tok.pad_id):
                break
            out.append(token)
    return tok.decode(out)


def shaken(ckpt, tok):
    """The tiny distilled model with weight noise (so greedy replies differ from prompt to prompt)
    and a louder <|im_end|> (so some replies end early and others run on)."""
    import torch
    model = load(ckpt, "distill")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.embed_tokens.weight[tok.im_end_id] *= 2
    return model


def test_batched_replies_equal_one_at_a_time_greedy_replies(trained, tok):
    """Prompts of different lengths share a left-padded batch; a row that ends early keeps emitting
    <|im_end|> while the others go on. Any padding, ordering or early-stop slip would change some reply."""
    problems = eval_reasoning.read_problems(ROOT / "data" / "eval" / "reasoning_eval.jsonl")[:24]
    lengths = [len(eval_reasoning.chat_prompt_ids(tok, [{"role": "user", "content": p["question"]}], 24, 1024))
               for p in problems]
    chunks = [sorted(lengths)[i:i + 4] for i in range(0, len(lengths), 4)]
    assert sum(len(set(c)) > 1 for c in chunks) >= 3      # batches of 4 mix prompt lengths: padding is used
    for name, model in (("shaken", shaken(trained / "ckpt", tok)), ("sft", load(trained / "ckpt", "sft"))):
        batched = eval_reasoning.evaluate(model, tok, problems, max_new_tokens=24, batch_size=4)
        alone = [one_at_a_time(model, tok, p["question"], 24) for p in problems]
        assert [r["reply"] for r in batched["results"]] == alone, name
        # batch size only changes speed
        assert eval_reasoning.evaluate(model, tok, problems, 24, batch_size=64)["results"] == batched["results"]
        if name == "shaken":     # the comparison had something to catch
            assert len({r["reply"] for r in batched["results"]}) >= 12
            assert 0 < batched["unfinished"] < len(problems)


def test_evaluate_grades_and_counts_consistently(trained, tok):
    from grader import score
    problems = eval_reasoning.read_problems(ROOT / "data" / "eval" / "reasoning_eval.jsonl")[:30]
    r = eval_reasoning.evaluate(load(trained / "ckpt", "distill"), tok, problems, max_new_tokens=12)
    assert r["n"] == len(r["results"]) == 30
    assert [x["id"] for x in r["results"]] == [p["id"] for p in problems]      # input order kept
    assert r["correct"] == sum(x["correct"] for x in r["results"]) and r["accuracy"] == r["correct"] / 30
    assert r["well_formed"] == sum(x["well_formed"] for x in r["results"]) and r["format_rate"] == r["well_formed"] / 30
    assert sum(k["n"] for k in r["by_kind"].values()) == 30
    assert sum(k["correct"] for k in r["by_kind"].values()) == r["correct"]
    for kind, k in r["by_kind"].items():
        assert k["n"] == sum(p["kind"] == kind for p in problems) and k["accuracy"] == k["correct"] / k["n"]
    for x, p in zip(r["results"], problems):
        assert (x["kind"], x["question"], x["expected"]) == (p["kind"], p["question"], p["answer"])
        assert score(x["kind"], x["expected"], x["reply"]) == {"correct": x["correct"], "well_formed": x["well_formed"]}


def test_evaluate_scores_a_model_that_answers_right():
    """The scoring path on replies known to be right or wrong: a stand-in model that 'generates' a
    fixed reply to each prompt, in one left-padded batch whose rows finish at different steps."""
    import torch
    from dataset import load_tokenizer as lt
    tok = lt(ROOT / "XiaoXin_tokenizer")
    problems = [{"id": "a", "kind": "arith", "question": "3 + 4 = ?", "answer": "7"},
                {"id": "b", "kind": "arith", "question": "5 + 4 = ?", "answer": "9"},
                {"id": "c", "kind": "weekday", "question": "今天星期一，明天星期几？", "answer": "星期二"}]
    replies = {"3 + 4 = ?": "<think>\n3 + 4 = 7\n</think>\n<answer>\n7\n</answer>",
               "5 + 4 = ?": "<think>\n5加4\n</think>\n<answer>\n等于8\n</answer>",
               "今天星期一，明天星期几？": "明天是星期二"}
    by_prompt = {tuple(eval_reasoning.chat_prompt_ids(tok, [{"role": "user", "content": q}], 64, 1024)):
                 tok.encode(a) + [tok.im_end_id] for q, a in replies.items()}

    class Scripted(torch.nn.Module):
        config = type("C", (), {"max_seq_len": 1024})

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, x, max_new_tokens, temperature, eos_token_id, attention_mask=None):
            masks = attention_mask.tolist() if attention_mask is not None else [[1] * x.shape[1]] * len(x)
            rows = [by_prompt[tuple(t for t, m in zip(r, mask) if m)] for r, mask in zip(x.tolist(), masks)]
            for step in range(max(len(r) for r in rows)):
                col = [r[step] if step < len(r) else eos_token_id[0] for r in rows]
                yield col[0] if len(rows) == 1 else torch.tensor(col)

    r = eval_reasoning.evaluate(Scripted(), tok, problems, max_new_tokens=64)
    assert [x["reply"] for x in r["results"]] == [replies[p["question"]] for p in problems]
    assert [(x["correct"], x["well_formed"]) for x in r["results"]] == [(True, True), (False, True), (True, False)]
    assert (r["correct"], r["well_formed"], r["unfinished"]) == (2, 2, 0)
    assert r["by_kind"]["arith"] == {"correct": 1, "n": 2, "well_formed": 2, "accuracy": 0.5, "format_rate": 1.0}


def test_histories_keep_the_last_run_of_an_append_only_log(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    steps = [(1, 9.0), (2, 8.0), (3, 7.0), (1, 9.5), (2, 8.5), (3, 7.5), (4, 6.5), (3, 7.4), (4, 6.4)]
    (log / "SFT_steps.jsonl").write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in steps)
                                         + "not json\n")
    (log / "SFT.log").write_text("data: …\nstep 3: validation loss 7.2000\nresumed\nstep 2: validation loss 8.1\n"
                                 "step 4: validation loss 6.9000\n")
    h = report.read_history({"stage": "sft", "results": {}}, log)
    assert (h["step"], h["loss"]) == ([1, 2, 3, 4], [9.5, 8.5, 7.4, 6.4])      # the resumed run's steps win
    assert (h["val_step"], h["val_loss"]) == ([2, 4], [8.1, 6.9])
    recorded = {"step": [5, 10], "loss": [3.0, 2.0], "val_step": [10], "val_loss": [2.5]}
    h = report.read_history({"stage": "sft", "results": {}, "history": recorded}, log)
    assert (h["step"], h["loss"], h["val_step"], h["val_loss"], h["source"]) == ([5, 10], [3.0, 2.0], [10], [2.5], "record")


def test_tokens_without_a_count_are_an_upper_bound(tmp_path):
    record = {"stage": "sft", "_path": tmp_path / "sft.json", "results": {"steps": 10},
              "train_config": {"batch_size": 8, "accumulation_steps": 2, "max_seq_len": 512, "log_dir": str(tmp_path)}}
    row = report.stage_row(record, tmp_path, None)
    assert (row["tokens"], row["tokens_estimated"], row["loss_tokens"]) == (8 * 2 * 512 * 10, True, None)
    assert "upper bound" in row["tokens_note"] and row["history"]["step"] == [] and not row["has_checkpoint"]
    record["results"]["tokens"] = {"computed": 5000, "loss": 1200}
    row = report.stage_row(record, tmp_path, None)
    assert (row["tokens"], row["loss_tokens"], row["tokens_estimated"]) == (5000, 1200, False)


@pytest.fixture(scope="module")
def card(trained, tmp_path_factory):
    """A report of the tiny run, on 5 file problems (one of them a training question) topped up to 14."""
    out = tmp_path_factory.mktemp("report")
    problems = eval_reasoning.read_problems(ROOT / "data" / "eval" / "reasoning_eval.jsonl")[:4]
    trained_q = next(m["content"] for line in (DEMO / "r1_mix_1024.jsonl").read_text(encoding="utf-8").splitlines()
                     for m in json.loads(line)["conversations"] if m["role"] == "user")
    problems.insert(2, {"id": "seen", "kind": "arith", "question": trained_q, "answer": "1"})
    eval_file = out / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems), encoding="utf-8")
    result = report.build_report(trained / "ckpt", eval_data=eval_file, n_eval=14, out_dir=out, max_new_tokens=8,
                                 ceval_dir=FIXTURE_CEVAL, sample_tokens=6, fluency_tokens=6, n_fluency=5,
                                 progress=False)
    return result, out, problems, trained_q


def test_report_card_has_every_field_and_consistent_numbers(card, trained):
    r, out, file_problems, trained_q = card
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == r
    ckpt = trained / "ckpt"

    # one row per trained stage, in pipeline order, with the record's numbers
    names = [s["stage"] for s in r["stages"]]
    assert names[:4] == ["pretrain", "sft", "sft_long", "distill"]
    assert sorted(names) == sorted(p.stem for p in ckpt.glob("*.json"))
    for s in r["stages"]:
        record = json.loads((ckpt / f"{s['stage']}.json").read_text(encoding="utf-8"))
        res, cfg = record["results"], record["train_config"]
        assert s["steps"] == res["steps"] == cfg["max_steps"] and s["has_checkpoint"]
        assert s["wall_seconds"] == res["wall_seconds"] and s["final_val_loss"] == res["final_val_loss"]
        assert s["final_train_loss"] == res["final_train_loss"]
        assert not s["tokens_estimated"]        # the trainer counts them
        assert (s["tokens"], s["loss_tokens"]) == (res["tokens"]["computed"], res["tokens"]["loss"])
        assert 0 <= s["loss_tokens"] <= s["tokens"]
        if s["stage"] != "grpo":   # a tiny GRPO run may drop every group (all rewards equal): no loss tokens
            assert s["loss_tokens"] > 0
        h = s["history"]
        assert h["source"] == "record"
        assert h["step"] == list(range(1, res["steps"] + 1)) and len(h["loss"]) == res["steps"]
        assert h["loss"][-1] == pytest.approx(res["final_train_loss"], abs=1e-4)    # log_step 1
        if res["final_val_loss"] is not None:
            assert h["val_step"][-1] == res["steps"] and h["val_loss"][-1] == pytest.approx(res["final_val_loss"])
        else:       # a stage that validates other metrics (GRPO)
            assert h["val_loss"] == [] and s["final_metrics"]

    # held-out reasoning after each stage that can answer, never on a training question
    ev = r["reasoning"]
    src = ev["problems"]
    assert ev["n"] == 14 and (src["file_problems"], src["file_in_training"], src["from_file"]) == (5, 1, 4)
    assert src["generated"] == 10 and src["generated_seed"] == report.EVAL_TOPUP_SEED
    assert list(ev["stages"])[:3] == ["sft", "sft_long", "distill"] and "pretrain" not in ev["stages"]
    for stage, s in ev["stages"].items():
        assert s["n"] == len(s["results"]) == 14
        assert s["accuracy"] == s["correct"] / 14 == sum(x["correct"] for x in s["results"]) / 14
        assert s["format_rate"] == s["well_formed"] / 14 == sum(x["well_formed"] for x in s["results"]) / 14
        assert sum(k["n"] for k in s["by_kind"].values()) == 14
        assert sum(k["correct"] for k in s["by_kind"].values()) == s["correct"]
        questions = [x["question"] for x in s["results"]]
        assert trained_q not in questions and len(set(questions)) == 14
        assert questions[:4] == [p["question"] for p in file_problems if p["id"] != "seen"]
        assert s["max_new_tokens"] == 8

    # bits per byte: pretraining text for pretrain and the latest stage, SFT answers for sft and the latest
    latest = r["latest_stage"]
    assert latest == names[-1]
    got = {(b["name"], b["stage"]) for b in r["bits_per_byte"]}
    assert got == {("pretraining text", "pretrain"), ("pretraining text", latest),
                   ("SFT answers", "sft"), ("SFT answers", latest)}
    for b in r["bits_per_byte"]:
        assert 0 < b["bits_per_byte"] < 20 and b["tokens"] > 0 and b["bytes"] > 0

    f = r["sft_fluency"]
    assert f["n"] == len(f["rows"]) == 5 and f["max_new_tokens"] == 6
    assert f["reproduced"] == sum(row["similarity"] >= 0.9 for row in f["rows"])
    assert f["reproduced_share"] == f["reproduced"] / 5
    assert f["mean_similarity"] == pytest.approx(sum(row["similarity"] for row in f["rows"]) / 5)
    assert f["fluent"] == sum(row["fluent"] for row in f["rows"]) and f["fluent_share"] == f["fluent"] / 5
    assert f["cut_off"] == sum(not row["finished"] for row in f["rows"])
    for row in f["rows"]:
        assert row["fluent"] == report.fluent(row["reply"], row["finished"])
    assert f["bits_per_byte"] == next(b["bits_per_byte"] for b in r["bits_per_byte"]
                                      if (b["name"], b["stage"]) == ("SFT answers", "sft"))

    c = r["ceval"]
    questions = sum(len(list(csv.DictReader(f.open(encoding="utf-8")))) for f in (FIXTURE_CEVAL / "val").glob("*.csv"))
    assert c["n"] == questions and set(c["subjects"]) == {"high_school_geography", "middle_school_mathematics"}
    assert c["accuracy"] == c["correct"] / c["n"] and c["stage"] == latest

    samples = r["samples"]
    assert samples["stages"] == ["sft", [s for s in ev["stages"] if report.is_reasoning_stage(s)][-1]]
    assert len(samples["rows"]) == len(report.SAMPLE_PROMPTS)
    assert all(set(row["replies"]) == set(samples["stages"]) for row in samples["rows"])

    m = r["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["versions"]["torch"] and m["versions"]["python"] and m["device"] == "cpu"
    assert r["seconds"] > 0 and set(r["timings"]) >= {"reasoning", "samples", "fluency", "bits_per_byte", "ceval"}


def test_report_page_and_figures(card):
    r, out, _, _ = card
    md = (out / "report.md").read_text(encoding="utf-8")
    for stage in [s["stage"] for s in r["stages"]]:
        assert f"| {stage} |" in md
    for stage, s in r["reasoning"]["stages"].items():
        assert f"| {stage} | **{s['accuracy']:.1%}** ({s['correct']}/{s['n']})" in md
    assert "](report_loss.png)" in md and "](report_accuracy.png)" in md and "## C-Eval" in md
    pytest.importorskip("matplotlib")
    assert r["plots"] == {"loss": "report_loss.png", "accuracy": "report_accuracy.png"}
    for name in r["plots"].values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000


def test_report_without_matplotlib_or_ceval_still_writes(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "_pyplot", lambda: None)
    r = report.build_report(trained / "ckpt", n_eval=2, out_dir=tmp_path, max_new_tokens=2, ceval_dir=tmp_path / "none",
                            sample_tokens=2, fluency_tokens=2, n_fluency=1, progress=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if "matplotlib" in line]
    assert len(notes) == 1
    assert r["plots"] == {"loss": None, "accuracy": None} and not list(tmp_path.glob("*.png"))
    assert "skipped" in r["ceval"] and (tmp_path / "report.md").is_file()
    assert r["reasoning"]["n"] == 2


def test_report_cli_errors_in_one_sentence(tmp_path, capsys):
    assert report.main(["--save_dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --save_dir") and len(err.splitlines()) == 1
    assert report.main(["--save_dir", str(tmp_path)]) == 2
    assert "no stage record" in capsys.readouterr().err


def test_publish_copies_one_report_into_assets_and_the_readme_block(card, tmp_path):
    """--publish is the only way the README's numbers and figures change: they come from one
    report.json, together, and the text around the markers is kept."""
    r, out, _, _ = card
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold numbers\n{report.README_END}\noutro\n", encoding="utf-8")
    assets = tmp_path / "assets"
    assets.mkdir()
    written = report.publish(out, readme=readme, assets=assets)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith(f"{report.README_END}\noutro\n") and "old numbers" not in text
    for stage, s in r["reasoning"]["stages"].items():
        assert f"| {stage} | **{s['accuracy']:.1%}** | {s['format_rate']:.1%} |" in text
    for st in r["stages"]:
        assert f"| {st['stage']} | {st['steps']} |" in text
    assert (assets / "report.md").read_text(encoding="utf-8") == (out / "report.md").read_text(encoding="utf-8")
    assert json.loads((assets / "report.json").read_text(encoding="utf-8"))["created"] == r["created"]
    assert readme in written
    # publishing again replaces the block rather than adding a second one
    report.publish(out, readme=readme, assets=assets)
    assert readme.read_text(encoding="utf-8").count(report.README_START) == 1
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(report.UserError, match="report:start"):
        report.publish(out, readme=readme, assets=assets)


def test_pass_at_k_is_the_unbiased_estimate():
    """pass@k from n samples with c correct = the share of k-subsets holding a correct one (enumerated)."""
    from itertools import combinations
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(combinations([True] * c + [False] * (n - c), k))
                assert eval_reasoning.pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets))


def test_sampled_evaluation_counts_pass_at_k_per_problem(trained, tok, monkeypatch):
    """--samples K --temperature T: K seeded replies per problem, pass@1 = the mean share correct,
    pass@K = the share of problems with any correct reply. The grader is replaced by a rule on the
    reply text so that the tiny model gets a mix of right and wrong replies to count."""
    def rule(kind, answer, reply):
        return {"correct": len(reply) % 3 == 0, "well_formed": len(reply) % 2 == 0}
    monkeypatch.setattr(eval_reasoning, "score", rule)
    model = load(trained / "ckpt", "sft")
    problems = eval_reasoning.read_problems(ROOT / "data" / "eval" / "reasoning_eval.jsonl")[:6]
    result = eval_reasoning.evaluate(model, tok, problems, max_new_tokens=6, batch_size=8, samples=4,
                                     temperature=1.5, seed=3)
    counts = []
    for r in result["results"]:
        assert len(r["replies"]) == 4
        counts.append(sum(rule("", "", text)["correct"] for text in r["replies"]))
        assert r["correct_samples"] == counts[-1] and r["correct"] == counts[-1] / 4
    assert 0 < sum(counts) < 24 and len({len(t) for r in result["results"] for t in r["replies"]}) > 2
    assert result["accuracy"] == pytest.approx(sum(counts) / 24) == pytest.approx(result["pass_at"][1])
    assert result["pass_at"][4] == pytest.approx(sum(c > 0 for c in counts) / 6)
    assert list(result["pass_at"]) == [1, 2, 4] and result["pass_at"][1] <= result["pass_at"][2] <= result["pass_at"][4]
    assert result["format_rate"] == pytest.approx(
        sum(len(t) % 2 == 0 for r in result["results"] for t in r["replies"]) / 24)
    again = eval_reasoning.evaluate(model, tok, problems, max_new_tokens=6, batch_size=8, samples=4,
                                    temperature=1.5, seed=3)
    assert again["results"] == result["results"]                     # seeded
    other = eval_reasoning.evaluate(model, tok, problems, max_new_tokens=6, batch_size=8, samples=4,
                                    temperature=1.5, seed=4)
    assert [r["replies"] for r in other["results"]] != [r["replies"] for r in result["results"]]


@pytest.mark.parametrize("text, loop", [
    ("我没有联网,我没有联网,我没有联网,我没有联网。", "我没有联网,我没有联网,我没有联网,"),
    ("可以加水，但在一定在一定在一定在一定的", "在一定在一定在一定在一定"),
    ("我我我我我我我我我", "我我我我我我我我我"),
    ("16" + "0" * 21, "0" * 21),
    ("一共10000000元。", ""),                       # seven zeros: a number, not a loop
    ("先断它的食物和水：厨余及时处理，食物密封。", ""),
    ("5 × 3.5 = 17.5，需要17.5元。", ""),
])
def test_sft_fluency_names_the_loops_of_an_undertrained_model(text, loop):
    assert report.looping(text) == loop
    assert report.fluent(text, True) == (not loop)
    assert not report.fluent(text, False)                  # cut off at the cap: not a sentence
    assert not report.fluent("Hello, world.", True)        # no Chinese
