"""The reasoning curriculum the distill stage trains on, and the Muon option of the optimiser."""
import json

import pytest
import torch

import distill
import pretrain
from conftest import DEMO, run_args
from test_train import assert_same_weights, interrupt_then_resume, pretrain_file, weights  # noqa: F401  (fixture)

from scripts import gen_reasoning


def user_questions(path):
    return gen_reasoning.read_questions(path)


def test_curriculum_is_deterministic_and_never_holds_a_held_out_question(tmp_path):
    base = DEMO / "r1_mix_1024.jsonl"
    a = gen_reasoning.write_curriculum(tmp_path / "a.jsonl", 3000, seed=5, base_path=base)
    b = gen_reasoning.write_curriculum(tmp_path / "b.jsonl", 3000, seed=5, base_path=base)
    c = gen_reasoning.write_curriculum(tmp_path / "c.jsonl", 3000, seed=6, base_path=base)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    lines = a.read_text(encoding="utf-8").splitlines()
    base_lines = [line for line in base.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[:len(base_lines)] == base_lines          # the hand-written records come first, unchanged
    assert len(lines) == len(base_lines) + 3000
    held_out = set(user_questions(gen_reasoning.EVAL_FILE))
    assert len(held_out) >= 200
    assert not held_out & set(user_questions(a))
    assert not held_out & set(user_questions(c))


def test_curriculum_excludes_exactly_the_given_questions(tmp_path):
    """The exclusion is by exact question text: a generated set made with the first run's
    questions excluded shares none of them, though the same seed would reproduce them."""
    first = gen_reasoning.write_curriculum(tmp_path / "first.jsonl", 500, seed=9, exclude_paths=())
    again = gen_reasoning.write_curriculum(tmp_path / "again.jsonl", 500, seed=9, exclude_paths=(first,))
    assert set(user_questions(first)) and not set(user_questions(first)) & set(user_questions(again))


def test_distill_trains_on_the_generated_curriculum(tmp_path, trained, capsys):
    out = tmp_path / "run"
    args = run_args(out, "--init_from", str(trained / "ckpt" / "sft_long.pt"), "--reasoning_problems", "64",
                    "--max_seq_len", "512", "--batch_size", "8", "--max_steps", "2")
    assert distill.main(args) == 0
    files = list((out / "cache" / "curriculum").glob("r1_mix_1024+reasoning64-seed*.jsonl"))
    assert len(files) == 1
    base = sum(1 for line in (DEMO / "r1_mix_1024.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    assert sum(1 for _ in files[0].open(encoding="utf-8")) == base + 64
    assert f"→" in capsys.readouterr().out
    record = json.loads((out / "ckpt" / "distill.json").read_text())
    assert record["train_config"]["reasoning_problems"] == 64
    # what the report card reads: tokens seen and the loss curve
    tokens = record["results"]["tokens"]
    assert 0 < tokens["loss"] < tokens["computed"] <= 2 * 8 * 512
    assert record["history"]["step"] == [1, 2] and len(record["history"]["loss"]) == 2
    assert (out / "assets" / "distill_loss.png").is_file()


def test_reasoning_problems_refused_for_plain_text_stage(tmp_path, capsys):
    assert pretrain.main(run_args(tmp_path, "--reasoning_problems", "10")) == 2
    assert "plain text" in capsys.readouterr().err


def test_muon_trains_hidden_matrices_and_resumes_exactly(tmp_path, pretrain_file, monkeypatch):  # noqa: F811
    import trainer
    from Config import model_config
    from model import XiaoXin
    cfg = trainer.parse_args("pretrain", ["--optimizer", "muon", "--data_path", str(pretrain_file)])[0]
    opt = trainer.configure_optimizer(XiaoXin(model_config("tiny")), cfg, torch.device("cpu"))
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    assert len([p for g in muon.param_groups for p in g["params"]]) == 7 * 2   # q k v o gate up down × 2 layers
    adam_params = [p for g in adamw.param_groups for p in g["params"]]
    assert any(p.dim() == 2 for p in adam_params)                 # the embedding stays with AdamW

    common = ["--data_path", str(pretrain_file), "--max_seq_len", "32", "--batch_size", "4", "--epochs", "2",
              "--save_step", "3", "--val_path", "", "--optimizer", "muon"]
    interrupt_then_resume(tmp_path, common, monkeypatch)
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    # and Muon really trained something different from AdamW
    assert pretrain.main(run_args(tmp_path / "adamw", *common[:-2])) == 0
    a, m = weights(tmp_path / "adamw"), weights(tmp_path / "full")
    assert not torch.equal(a["layers.0.mlp.up_proj.weight"], m["layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("flag", [["--optimizer", "sgd"], ["--reasoning_problems", "-1"]])
def test_bad_curriculum_and_optimizer_flags_are_one_sentence(tmp_path, flag, capsys):
    assert distill.main(run_args(tmp_path, *flag)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --") and "Traceback" not in err
