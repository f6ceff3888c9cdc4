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
