"""Faults and scale: torchrun DDP equals single-process accumulation, SIGKILL + --resume
equals an uninterrupted run, non-finite steps are skipped and reported."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import pretrain
from conftest import ROOT, run_args
from test_train import assert_same_weights, weights


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "pt.jsonl"
    rows = [{"text": f"第{i}篇：今天学习了{i % 7 + 1}个新词语，明天继续努力。" * (1 + i % 3)} for i in range(60)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def env(**extra):
    e = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT), **extra)
    e.pop("RANK", None)
    return e


def losses(log_file):
    return [float(line.split(" loss ")[1].split()[0]) for line in log_file.read_text().splitlines()
            if " loss " in line and "step " in line]


def test_ddp_two_ranks_equal_one_rank_with_double_accumulation(tmp_path, corpus):
    common = ["--data_path", str(corpus), "--max_seq_len", "32", "--batch_size", "4", "--max_steps", "4",
              "--val_path", "", "--seed", "7"]
    # Warm the token cache first so both runs read the same one.
    single = run_args(tmp_path / "one", *common, "--accumulation_steps", "2", "--cache_dir", str(tmp_path / "cache"))
    subprocess.run([sys.executable, "pretrain.py", *single], cwd=ROOT, env=env(OMP_NUM_THREADS="1"), check=True,
                   capture_output=True)
    ddp = run_args(tmp_path / "two", *common, "--accumulation_steps", "1", "--cache_dir", str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "pretrain.py", *ddp], cwd=ROOT, env=env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-8000:]
    assert "world_size=2" in done.stdout and "4×1×2 = 8 sequences" in done.stdout
    assert done.stdout.count("saved ") == 1                      # rank 0 alone writes
    a, b = losses(tmp_path / "one" / "log" / "Pretrain.log"), losses(tmp_path / "two" / "log" / "Pretrain.log")
    assert len(a) == len(b) == 4 and all(abs(x - y) < 1e-5 for x, y in zip(a, b))
    assert_same_weights(weights(tmp_path / "one"), weights(tmp_path / "two"), atol=1e-5)


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, corpus):
    # Same thread count in the subprocess as here, so float reductions match bit for bit.
    common = ["--data_path", str(corpus), "--max_seq_len", "16", "--batch_size", "2", "--epochs", "1",
              "--save_step", "3", "--val_path", "", "--accumulation_steps", "1", "--log_step", "1000"]
    assert pretrain.main(run_args(tmp_path / "full", *common)) == 0
    total = json.loads((tmp_path / "full" / "ckpt" / "pretrain.json").read_text())["results"]["steps"]

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "pretrain.py", *run_args(cut, *common)], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = cut / "ckpt" / "checkpoints" / "pretrain"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpt_dir.glob("step_0000006.pt")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "ckpt" / "pretrain.pt").exists(), "the run finished before it could be killed"
    assert pretrain.main(run_args(cut, *common, "--resume")) == 0
    assert_same_weights(weights(tmp_path / "full"), weights(cut))   # bitwise on CPU fp32
    resumed = (cut / "log" / "Pretrain.log").read_text()
    assert "resumed from" in resumed and f"step {total}/{total}" in resumed


def test_resume_with_another_world_size_product_refuses(tmp_path, corpus, capsys):
    common = ["--data_path", str(corpus), "--max_seq_len", "16", "--batch_size", "2", "--save_step", "2",
              "--max_steps", "3", "--val_path", ""]
    assert pretrain.main(run_args(tmp_path, *common)) == 0
    assert pretrain.main(run_args(tmp_path, *common, "--resume", "--accumulation_steps", "4")) == 2
    assert "keep that product the same" in capsys.readouterr().err


def test_checkpoints_are_atomic_and_pruned(tmp_path, corpus):
    common = ["--data_path", str(corpus), "--max_seq_len", "16", "--batch_size", "2", "--save_step", "2",
              "--max_steps", "9", "--val_path", "", "--keep_checkpoints", "2"]
    assert pretrain.main(run_args(tmp_path, *common)) == 0
    kept = sorted(p.name for p in (tmp_path / "ckpt" / "checkpoints" / "pretrain").iterdir())
    assert kept == ["step_0000006.pt", "step_0000008.pt"]          # last two, no .tmp left behind


def test_non_finite_steps_are_skipped_then_stop_with_source_lines(tmp_path, corpus, monkeypatch, capsys):
    import losses
    real = losses.cross_entropy
    calls = {"n": 0}

    def sometimes_nan(model, batch):      # the stage's objective, as Config.STAGES names it
        calls["n"] += 1
        rows, metrics = real(model, batch)
        return (rows * float("nan") if calls["n"] == 2 else rows), metrics
    monkeypatch.setattr(losses, "cross_entropy", sometimes_nan)
    common = ["--data_path", str(corpus), "--max_seq_len", "16", "--batch_size", "2", "--max_steps", "4", "--val_path", "",
              "--accumulation_steps", "1"]
    assert pretrain.main(run_args(tmp_path / "a", *common)) == 0
    out = capsys.readouterr().out
    assert "step 2: non-finite loss or gradient, step skipped (1 so far); source lines" in out
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "a").values())
    steps = [json.loads(line) for line in (tmp_path / "a" / "log" / "Pretrain_steps.jsonl").read_text().splitlines()]
    assert steps[1]["step"] == 2 and steps[1]["spike"] and steps[1]["all_lines"]   # traceable to its source lines

    monkeypatch.setattr(losses, "cross_entropy", lambda model, batch: (real(model, batch)[0] * float("nan"), {}))
    assert pretrain.main(run_args(tmp_path / "b", *common, "--max_bad_steps", "2")) == 2
    err = capsys.readouterr().err
    assert "2 optimiser steps in a row had a non-finite loss" in err and "pt.jsonl" in err


def test_ctrl_c_saves_a_checkpoint_before_exiting(tmp_path, corpus):
    args = run_args(tmp_path, "--data_path", str(corpus), "--max_seq_len", "16", "--batch_size", "2",
                    "--epochs", "50", "--val_path", "", "--accumulation_steps", "1", "--save_step", "100000")
    proc = subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=ROOT, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in proc.stdout:            # wait until training is under way
        if "step 3/" in line:
            break
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130
    assert "stopped at step" in out and "--resume" in out
    assert list((tmp_path / "ckpt" / "checkpoints" / "pretrain").glob("step_*.pt"))


def test_steps_log_holds_each_step_once_after_a_resume(tmp_path, corpus):
    """Issue 14 item 13: a resume re-runs the steps after its checkpoint; their records must not
    appear twice in log/<Stage>_steps.jsonl (nor a fresh run's after an older run's)."""
    common = ["--data_path", str(corpus), "--max_seq_len", "16", "--batch_size", "2", "--save_step", "3",
              "--max_steps", "8", "--val_path", "", "--accumulation_steps", "1"]
    assert pretrain.main(run_args(tmp_path, *common)) == 0
    steps_file = tmp_path / "log" / "Pretrain_steps.jsonl"
    with open(steps_file, "a") as f:
        f.write('{"step": 9, "lo')                          # a line a kill cut short
    assert pretrain.main(run_args(tmp_path, *common, "--resume")) == 0   # from step 6: runs 7 and 8 again
    assert [json.loads(line)["step"] for line in steps_file.read_text().splitlines()] == list(range(1, 9))
    assert pretrain.main(run_args(tmp_path, *common)) == 0
    assert [json.loads(line)["step"] for line in steps_file.read_text().splitlines()] == list(range(1, 9))
