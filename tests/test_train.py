"""The training loop: accumulation invariance, exact resume, stage chaining, clear errors."""
import json

import pytest
import torch

import SFT
import distill
import pretrain
from conftest import DEMO, run_args

TEXTS = ["今天天气很好，我们一起去公园散步。", "水在零摄氏度时会结冰。", "学习需要耐心和坚持。",
         "The quick brown fox jumps over the lazy dog.", "一年有十二个月，一周有七天。"]


@pytest.fixture
def pretrain_file(tmp_path):
    path = tmp_path / "pt.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"{t}第{i}条。" * (1 + i % 4)}, ensure_ascii=False)
                              for i, t in enumerate(TEXTS * 12)) + "\n", encoding="utf-8")
    return path


def weights(out, stage="pretrain"):
    return torch.load(out / "ckpt" / f"{stage}.pt", map_location="cpu")["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            assert torch.allclose(a[k], b[k], atol=atol, rtol=0), k
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = []
    for i, t in enumerate(TEXTS * 4):  # answers of very different lengths, so micro-batches differ in loss tokens
        rows.append({"conversations": [{"role": "user", "content": f"问题{i}"},
                                       {"role": "assistant", "content": t * (1 + (i * 7) % 5)}]})
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_accumulation_does_not_change_the_gradient(tmp_path, pretrain_file, sft_file, monkeypatch):
    """One micro-batch of 20 vs two of 10 with unequal loss-token counts: the loss is normalised by
    the whole step's loss tokens, so the gradient (and the update) is the same."""
    assert pretrain.main(run_args(tmp_path / "init", "--data_path", str(pretrain_file), "--max_seq_len", "32",
                                  "--max_steps", "1", "--val_path", "")) == 0
    import trainer
    grads = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm):
        params = list(params)
        grads.append([p.grad.clone() for p in params])
        return clip(params, max_norm)
    monkeypatch.setattr(trainer.torch.nn.utils, "clip_grad_norm_", recording_clip)
    common = ["--data_path", str(sft_file), "--max_seq_len", "128", "--max_steps", "1", "--val_path", "",
              "--init_from", str(tmp_path / "init" / "ckpt" / "pretrain.pt")]
    assert SFT.main(run_args(tmp_path / "a", *common, "--batch_size", "20", "--accumulation_steps", "1")) == 0
    assert SFT.main(run_args(tmp_path / "b", *common, "--batch_size", "10", "--accumulation_steps", "2")) == 0
    assert len(grads) == 2  # one step of each run, each over all 20 samples
    for ga, gb in zip(grads[0], grads[1]):
        assert (ga - gb).norm() <= 1e-5 * ga.norm()   # a per-micro-batch mean would be off by ~10%
    assert_same_weights(weights(tmp_path / "a", "sft"), weights(tmp_path / "b", "sft"), atol=1e-5)


def interrupt_then_resume(tmp_path, common, monkeypatch):
    """Run pretraining once straight through (tmp_path/full) and once stopped right after step 4
    as Ctrl-C would (it saves and exits 130), then --resume'd to the end (tmp_path/cut)."""
    assert pretrain.main(run_args(tmp_path / "full", *common)) == 0
    import trainer
    original = trainer.Trainer.step_batches

    def interrupting(self, step):
        if step == 4:
            self.stop_requested = True
        return original(self, step)
    monkeypatch.setattr(trainer.Trainer, "step_batches", interrupting)
    assert pretrain.main(run_args(tmp_path / "cut", *common)) == 130
    monkeypatch.setattr(trainer.Trainer, "step_batches", original)
    assert not (tmp_path / "cut" / "ckpt" / "pretrain.pt").exists()
    assert pretrain.main(run_args(tmp_path / "cut", *common, "--resume")) == 0


def test_resume_continues_the_identical_run(tmp_path, pretrain_file, monkeypatch, capsys):
    common = ["--data_path", str(pretrain_file), "--max_seq_len", "32", "--batch_size", "4", "--epochs", "2",
              "--accumulation_steps", "2", "--save_step", "3", "--val_path", ""]
    interrupt_then_resume(tmp_path, common, monkeypatch)
    assert "at step 5" in capsys.readouterr().out
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "cut"))   # bitwise, CPU fp32


def test_resume_without_checkpoint_is_one_sentence(tmp_path, pretrain_file, capsys):
    assert pretrain.main(run_args(tmp_path, "--data_path", str(pretrain_file), "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume was given but") and "Traceback" not in err


def test_user_errors_exit_cleanly(tmp_path, pretrain_file, capsys):
    cases = [(["--model", "huge"], "--model 'huge' is unknown"),
             (["--dtype", "fp8"], "--dtype 'fp8' is not one of"),
             (["--data_path", str(tmp_path / "nope.jsonl")], "nope.jsonl does not exist"),
             (["--batch_size", "0"], "--batch_size must be at least 1"),
             (["--max_seq_len", "99999"], "exceeds the model's max_seq_len")]
    for flags, message in cases:
        argv = run_args(tmp_path, "--data_path", str(pretrain_file), *flags)
        assert pretrain.main(argv) == 2, flags
        assert message in capsys.readouterr().err


def test_stage_without_previous_weights_says_what_to_run(tmp_path, capsys):
    assert SFT.main(run_args(tmp_path, "--max_steps", "1")) == 2
    assert "run python pretrain.py first" in capsys.readouterr().err


def test_checkpoint_from_another_config_is_rejected(tmp_path, trained, capsys):
    args = run_args(tmp_path, "--init_from", str(trained / "ckpt" / "pretrain.pt"), "--max_steps", "1")
    args[args.index("tiny")] = "small"
    assert SFT.main(args) == 2
    assert "different model config" in capsys.readouterr().err


def test_demo_fallback_chaining_and_outputs(trained):
    """The session fixture trained all four stages on the demo data with no --data_path."""
    ckpt = trained / "ckpt"
    for stage in ("pretrain", "sft", "sft_long", "distill"):
        record = json.loads((ckpt / f"{stage}.json").read_text())
        assert record["train_config"]["data_path"].endswith(f"data/demo/{record['train_config']['data_path'].split('/')[-1]}")
        assert record["results"]["final_val_loss"] is not None
        assert (trained / "assets" / f"{stage}_loss.png").is_file()
    assert json.loads((ckpt / "sft.json").read_text())["init_from"].endswith("pretrain.pt")
    assert json.loads((ckpt / "distill.json").read_text())["init_from"].endswith("sft_long.pt")
    assert (trained / "log" / "Pretrain.log").read_text().count("loss") >= 3
    steps = [json.loads(line) for line in (trained / "log" / "Pretrain_steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 7)) and all(1 <= s["lines"][0] <= s["lines"][1] for s in steps)


def test_distill_falls_back_to_sft_when_long_stage_skipped(tmp_path, trained, capsys):
    import shutil
    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    shutil.copy(trained / "ckpt" / "sft.pt", out / "ckpt" / "sft.pt")
    assert distill.main(run_args(out, "--max_steps", "1", "--max_seq_len", "1024", "--batch_size", "2",
                                 "--cache_dir", str(trained / "cache"))) == 0
    assert f"initialised from {out / 'ckpt' / 'sft.pt'}" in capsys.readouterr().out


def test_loss_goes_down(trained):
    history = [json.loads((trained / "ckpt" / f"{s}.json").read_text())["results"] for s in ("pretrain",)]
    log = (trained / "log" / "Pretrain.log").read_text().splitlines()
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log if " loss " in line and "step" in line]
    assert losses[-1] < losses[0] and history[0]["steps"] == 6


def test_a_stage_without_matplotlib_still_finishes(tmp_path, pretrain_file, monkeypatch, capsys):
    """matplotlib is an optional extra (a bare GPU machine may lack it): the stage must end with
    its weights, record and one note, not a traceback after the weights are saved."""
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert pretrain.main(run_args(tmp_path, "--data_path", str(pretrain_file), "--max_seq_len", "32",
                                  "--max_steps", "2", "--val_path", "")) == 0
    out = capsys.readouterr().out
    assert "matplotlib is not installed" in out and (tmp_path / "ckpt" / "pretrain.pt").is_file()
    record = json.loads((tmp_path / "ckpt" / "pretrain.json").read_text())
    assert record["history"]["step"] == list(range(1, record["results"]["steps"] + 1))
    assert not list((tmp_path / "assets").glob("*.png"))


def test_a_compile_failure_in_the_first_backward_falls_back_to_eager(tmp_path, pretrain_file, monkeypatch, capsys):
    """AOTAutograd compiles the backward at the first .backward(): a failure there must not kill
    the run. The step is redone eagerly, so the run ends exactly as an eager run does."""
    import model as model_module

    class BrokenBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("inductor: backward kernel failed to build")

    def fake_compile(fn, **kwargs):     # a "compiled" loss whose forward works and backward fails
        def compiled(*args):
            row_sums, metrics = fn(*args)
            return BrokenBackward.apply(row_sums), metrics
        return compiled
    monkeypatch.setattr(model_module.torch, "compile", fake_compile)
    common = ["--data_path", str(pretrain_file), "--max_seq_len", "32", "--batch_size", "4", "--max_steps", "3",
              "--val_path", ""]
    eager = run_args(tmp_path / "eager", *common)
    eager[eager.index("--compile") + 1] = "off"
    assert pretrain.main(eager) == 0
    compiled = run_args(tmp_path / "compiled", *common)
    compiled[compiled.index("--compile") + 1] = "on"
    assert pretrain.main(compiled) == 0
    out = capsys.readouterr().out
    assert out.count("torch.compile failed in the backward pass") == 1
    assert_same_weights(weights(tmp_path / "eager"), weights(tmp_path / "compiled"))


def test_compiled_sft_on_varying_lengths_builds_few_graphs(tmp_path, trained, monkeypatch, capsys):
    """Issue 15: a compiled run pads batches to stable shapes (lengths to a multiple of 64, every
    batch --batch_size rows) and compiles the length as a symbol, so the demo's varying SFT lengths
    cost a bounded number of graphs, reported at the end; the padding carries no loss, so the run
    ends where an eager, unpadded run does. Graphs are counted by dynamo, whatever the backend, so
    the test compiles with aot_eager (no code generation) to stay fast."""
    import functools
    import model as model_module
    import trainer
    monkeypatch.setattr(model_module.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    lengths, shapes = set(), set()
    original = trainer.Trainer.step_batches

    def recording(self, step):
        epoch, batches, n = original(self, step)
        for b in batches:
            lengths.add(int((b.loss_mask.sum(0) > 0).nonzero()[0].max()) if b.loss_mask.any() else 0)
            shapes.add(b.input_ids.shape)
        return epoch, batches, n
    monkeypatch.setattr(trainer.Trainer, "step_batches", recording)
    common = ["--data_path", str(DEMO / "sft_512.jsonl"), "--val_path", "", "--max_seq_len", "512",
              "--batch_size", "6", "--max_steps", "5", "--init_from", str(trained / "ckpt" / "pretrain.pt")]
    compiled = run_args(tmp_path / "compiled", *common)
    compiled[compiled.index("--compile") + 1] = "on"
    assert SFT.main(compiled) == 0
    out = capsys.readouterr().out
    assert len(lengths) >= 4                                      # the data's lengths do vary
    assert all(s[0] == 6 and s[1] % 64 == 0 for s in shapes)      # stable shapes
    graphs = json.loads((tmp_path / "compiled" / "ckpt" / "sft.json").read_text())["results"]["compiled_graphs"]
    assert graphs == 1 and "compiled 1 graphs" in out            # unpadded: 2 (torch 2.13 automatic dynamic)
    monkeypatch.setattr(trainer.Trainer, "step_batches", original)
    assert SFT.main(run_args(tmp_path / "eager", *common)) == 0
    assert_same_weights(weights(tmp_path / "eager", "sft"), weights(tmp_path / "compiled", "sft"), atol=2e-6)


def test_prefetched_batches_are_the_loop_s_own_in_the_same_order(tmp_path, pretrain_file, sft_file):
    """Issue 15: on CUDA the coming steps' batches are built in a background thread. They must be
    exactly step_batches(step), step after step, from any starting step (a resume), for packed
    rows and length-bucketed conversations alike; an error there surfaces in the loop."""
    import numpy as np
    import trainer
    for stage, data in (("pretrain", pretrain_file), ("sft", sft_file)):
        cfg, _ = trainer.parse_args(stage, run_args(tmp_path / stage, "--data_path", str(data), "--max_seq_len", "64",
                                                    "--batch_size", "3", "--accumulation_steps", "2", "--epochs", "2"))
        run = trainer.Trainer(cfg)
        run.tok = trainer.open_tokenizer(cfg.tokenizer_dir)
        run.setup_data()
        run.stable_shapes = False
        total = run.steps_per_epoch * 2
        for first in (0, total // 2 + 1):
            prefetcher = trainer.BatchPrefetcher(run.step_batches, first, total, torch.device("cpu"))
            for step in range(first, total):
                epoch, batches, n = prefetcher.get(step)
                want_epoch, want, want_n = run.step_batches(step)
                assert (epoch, n, len(batches)) == (want_epoch, want_n, len(want)), (stage, step)
                for b, w in zip(batches, want):
                    for name in ("input_ids", "targets", "loss_mask"):
                        assert torch.equal(getattr(b, name), torch.from_numpy(getattr(w, name))), (stage, step, name)
                    assert np.array_equal(b.lines, w.lines)
            prefetcher.close()
        run.close()

    def broken(step):
        if step == 2:
            raise ValueError("bad row")
        return 0, [], 0
    prefetcher = trainer.BatchPrefetcher(broken, 0, 5, torch.device("cpu"))
    prefetcher.get(0), prefetcher.get(1)
    with pytest.raises(ValueError, match="bad row"):
        prefetcher.get(2)
    prefetcher.close()


def test_prefetch_and_deferred_reads_keep_resume_exact(tmp_path, pretrain_file, monkeypatch, capsys):
    """Both CUDA paths forced on the CPU: batches from the background thread, each step's values
    read one step late with the skip decided on the device. Stopped part-way (the stop is asked
    for from the prefetch thread, steps ahead of the loop) and resumed, the run ends bit for bit
    where the uninterrupted one does, with each step in the steps log once."""
    import trainer
    monkeypatch.setattr(trainer.Trainer, "prefetch", True)
    monkeypatch.setattr(trainer.Trainer, "defer_step_read", True)
    common = ["--data_path", str(pretrain_file), "--max_seq_len", "32", "--batch_size", "4", "--epochs", "2",
              "--accumulation_steps", "2", "--save_step", "3", "--val_path", "", "--log_step", "100"]
    interrupt_then_resume(tmp_path, common, monkeypatch)
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    steps = [json.loads(line) for line in (tmp_path / "cut" / "log" / "Pretrain_steps.jsonl").read_text().splitlines()]
    full = [json.loads(line) for line in (tmp_path / "full" / "log" / "Pretrain_steps.jsonl").read_text().splitlines()]
    assert steps == full and [s["step"] for s in steps] == list(range(1, len(steps) + 1))


def test_a_non_finite_step_is_skipped_and_counted_when_read_a_step_late(tmp_path, pretrain_file, monkeypatch, capsys):
    """The deferred NaN guard (CUDA with fused AdamW; forced here on the CPU, where fused AdamW
    honours the same device-side skip flag) must skip and report a non-finite step exactly as the
    per-step host check does: the same weights, steps log, message and count, and the same stop
    after --max_bad_steps."""
    import losses
    import trainer
    real_loss, real_optimizer = losses.cross_entropy, trainer.configure_optimizer
    calls = {"n": 0}

    def nan_on_the_second_step(model, batch):
        calls["n"] += 1
        rows, metrics = real_loss(model, batch)
        return (rows * float("nan") if calls["n"] == 2 else rows), metrics
    monkeypatch.setattr(losses, "cross_entropy", nan_on_the_second_step)
    # both runs on fused AdamW, so they may be compared bit for bit
    monkeypatch.setattr(trainer, "configure_optimizer", lambda m, c, d, fused=None: real_optimizer(m, c, d, fused=True))
    common = ["--data_path", str(pretrain_file), "--max_seq_len", "32", "--batch_size", "2", "--max_steps", "5",
              "--val_path", "", "--accumulation_steps", "1", "--log_step", "100"]
    runs = {}
    for deferred in (False, True):
        calls["n"] = 0
        monkeypatch.setattr(trainer.Trainer, "defer_step_read", deferred)
        assert pretrain.main(run_args(tmp_path / str(deferred), *common)) == 0
        out = capsys.readouterr().out
        assert "step 2: non-finite loss or gradient, step skipped (1 so far); source lines" in out
        record = json.loads((tmp_path / str(deferred) / "ckpt" / "pretrain.json").read_text())
        steps = (tmp_path / str(deferred) / "log" / "Pretrain_steps.jsonl").read_text().splitlines()
        runs[deferred] = record["results"]["skipped_steps"], steps, weights(tmp_path / str(deferred))
    assert runs[True][0] == runs[False][0] == 1
    assert runs[True][1] == runs[False][1] and json.loads(runs[True][1][1])["spike"]
    assert_same_weights(runs[True][2], runs[False][2])
    assert all(torch.isfinite(v).all() for v in runs[True][2].values())

    monkeypatch.setattr(losses, "cross_entropy", lambda model, batch: (real_loss(model, batch)[0] * float("nan"), {}))
    assert pretrain.main(run_args(tmp_path / "stop", *common, "--max_bad_steps", "2")) == 2
    assert "2 optimiser steps in a row had a non-finite loss" in capsys.readouterr().err


def test_auto_batch_search_finds_the_largest_fitting_divisor():
    """--batch_size auto's search against every answer: the largest micro-batch that divides the
    step's sequences and fits under a fake memory limit, in a handful of probes."""
    import trainer
    for per_step in (1, 8, 12, 96, 256):
        for limit in (0, 1, 5, 31, 32, 33, 64, 100, 1000):
            for start in (1, 8, 32):
                probes = []
                got = trainer.largest_fitting_batch(lambda b: probes.append(b) or b <= limit, per_step, start)
                assert got == max([d for d in range(1, per_step + 1) if per_step % d == 0 and d <= limit], default=0)
                assert len(probes) <= 9 and len(set(probes)) == len(probes)


def test_batch_size_auto_keeps_tokens_per_step_and_resume(tmp_path, pretrain_file, monkeypatch, capsys):
    """--batch_size auto with the "does it fit" probe replaced by a fake memory limit: the largest
    micro-batch under it, accumulation adjusted so a step keeps the stage's sequences; a resume
    keeps the checkpoint's split even where the probe would now choose another. On the CPU (no
    probe) it keeps the stage's default and says so."""
    import trainer
    common = ["--data_path", str(pretrain_file), "--max_seq_len", "32", "--batch_size", "auto",
              "--accumulation_steps", "2", "--val_path", "", "--epochs", "3", "--max_steps", "3", "--save_step", "2"]
    assert pretrain.main(run_args(tmp_path / "cpu", *common)) == 0
    assert "on cpu it keeps the stage's 32 × accumulation 2" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "cpu" / "ckpt" / "pretrain.json").read_text())["train_config"]
    assert (cfg["batch_size"], cfg["accumulation_steps"], cfg["auto_batch_size"]) == (32, 2, True)

    limit = {"rows": 20}
    monkeypatch.setattr(trainer.Trainer, "batch_fits_probe", lambda self: lambda b: b * 32 <= limit["rows"] * 32)
    assert pretrain.main(run_args(tmp_path / "gpu", *common)) == 0
    assert "--batch_size auto: 16 × accumulation 4 = 64 sequences per step" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "gpu" / "ckpt" / "pretrain.json").read_text())["train_config"]
    assert (cfg["batch_size"], cfg["accumulation_steps"]) == (16, 4)
    limit["rows"] = 64      # the probe would now take the whole step in one micro-batch
    (tmp_path / "gpu" / "ckpt" / "pretrain.pt").unlink()
    assert pretrain.main(run_args(tmp_path / "gpu", *common, "--max_steps", "5", "--resume")) == 0
    assert "16 × accumulation 4, as in the checkpoint" in capsys.readouterr().out
    limit["rows"] = 0
    assert pretrain.main(run_args(tmp_path / "none", *common)) == 2
    assert "not even one sequence" in capsys.readouterr().err
