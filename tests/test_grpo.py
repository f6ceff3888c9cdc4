"""The GRPO stage (grpo.py): advantages, the completion-token mask, the clipped surrogate, a toy
task whose reward must rise, exact resume after SIGKILL and DDP equivalence, the prompt sources,
and that grpo.pt works wherever a checkpoint is used."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import grpo
from Config import model_config
from checkpoint import open_tokenizer, save_atomic
from conftest import ROOT, run_args
from dataset import Batch, render_chat
from model import XiaoXin
from test_train import assert_same_weights, weights

# A stage script with a toy reward that a random tiny model can learn in a few steps: the share of
# even token ids in the completion (about 1/2 at the start, so no group is ever all equal).
TOY_SCRIPT = '''import sys
sys.path.insert(0, {root!r})
from grpo import GRPOTrainer
from trainer import run_stage


class EvenTokens(GRPOTrainer):
    def grade(self, problem, reply, completion):
        share = sum(t % 2 == 0 for t in completion) / len(completion)
        return share, share > 0.5, False


def main(argv=None):
    return run_stage("grpo", argv, EvenTokens)


if __name__ == "__main__":
    sys.exit(main())
'''


@pytest.fixture(scope="module")
def tok():
    return open_tokenizer(ROOT / "XiaoXin_tokenizer")


def start_checkpoint(out, tok, seed=0, eos_bias=0.0):
    """A random tiny model saved as <out>/ckpt/distill.pt, the checkpoint grpo starts from. With
    eos_bias the final norm keeps one dimension and the two end tokens' embeddings point along it
    in opposite senses, so one of them is likely at every position and replies end at varied lengths."""
    torch.manual_seed(seed)
    model = XiaoXin(model_config("tiny"))
    if eos_bias:
        with torch.no_grad():
            model.norm.weight.zero_()
            model.norm.weight[0] = 1.0
            model.embed_tokens.weight[tok.im_end_id, 0] = eos_bias
            model.embed_tokens.weight[tok.pad_id, 0] = -eos_bias
    save_atomic({"model": model.state_dict(), "config": model.config.to_dict(), "tokenizer_hash": tok.hash,
                 "stage": "distill"}, out / "ckpt" / "distill.pt")
    return model


def toy_script(tmp_path):
    path = tmp_path / "toy_grpo.py"
    path.write_text(TOY_SCRIPT.format(root=str(ROOT)), encoding="utf-8")
    return path


def toy(tmp_path, name="main"):
    import runpy
    return runpy.run_path(str(toy_script(tmp_path)))[name]


def steps_log(out):
    return [json.loads(line) for line in (out / "log" / "grpo_steps.jsonl").read_text().splitlines()]


def logged(out):
    """The console/log-file numbers of every logged step (means over all ranks), as dicts."""
    rows = []
    for line in (out / "log" / "grpo.log").read_text().splitlines():
        if line.startswith("epoch ") and " loss " in line:
            words = line.split(" loss ", 1)[1].split(" lr ")[0].split()
            rows.append({"loss": float(words[0]), **{k: float(v) for k, v in zip(words[1::2], words[2::2])}})
    return rows


def env(**extra):
    e = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT), **extra)
    e.pop("RANK", None)
    return e


TOY = ["--max_seq_len", "128", "--group_size", "4", "--max_new_tokens", "8", "--val_problems", "0",
       "--learning_rate", "1e-2", "--warmup_iters", "1", "--batch_size", "6"]


# ---------------------------------------------------------------- the algorithm, piece by piece

def test_advantages_are_zero_mean_per_group_and_zero_for_equal_groups():
    rewards = np.array([[1.0, 0.0, 0.0, 1.1], [0.1, 0.1, 0.1, 0.1], [1.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]])
    for scale in (False, True):
        adv = grpo.group_advantages(rewards, scale_by_std=scale)
        assert np.allclose(adv.sum(1), 0, atol=1e-12)
        assert (adv[1] == 0).all() and (adv[3] == 0).all()
        assert (np.sign(adv[0]) == [1, -1, -1, 1]).all() and adv[2, 0] > 0 > adv[2, 1]
    # Dr. GRPO: the reward minus the group mean, nothing else; GRPO: then divided by the std
    assert np.allclose(grpo.group_advantages(rewards)[2], [0.75, -0.25, -0.25, -0.25])
    assert np.allclose(grpo.group_advantages(rewards, True)[2], np.array([0.75, -0.25, -0.25, -0.25]) / 0.5, atol=1e-5)


def test_completions_end_at_the_first_eos_and_the_mask_covers_them_only(tok):
    """generate keeps a finished row emitting padding; the completion is cut after its first eos,
    and the loss mask is 1 on exactly the completion's tokens (eos included)."""
    eos, pad = tok.im_end_id, tok.pad_id
    script = [[11, 12, eos, pad, pad], [21, 22, 23, 24, 25], [31, pad, pad, pad, pad]]   # pad is an end token too

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, x, max_new_tokens, eos_token_id, attention_mask, sampler):
            assert x.shape == (3, 4) and attention_mask.tolist()[1] == [0, 0, 1, 1]   # left padding, masked
            for step in range(5):
                sampler(torch.zeros(3, 8))
                yield torch.tensor([row[step] for row in script])

    prompts = [[5, 6, 7, 8], [9, 10], [40, 41, 42]]
    groups = grpo.sample_groups(Scripted(), prompts, [1, 2, 3], 1, 5, 1.0, [eos, pad], pad)
    completions = [g[0] for g in groups]
    assert completions == [[11, 12, eos], [21, 22, 23, 24, 25], [31, pad]]
    input_ids, targets, mask = grpo.completion_batch(prompts, completions, pad)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c) - 1
        assert input_ids[i, :n].tolist() == (p + c)[:-1] and targets[i, :n].tolist() == (p + c)[1:]
        assert targets[i, mask[i] == 1].tolist() == c                   # the completion, eos included
        assert mask[i, :len(p) - 1].sum() == 0 and mask[i, n:].sum() == 0  # not the prompt, not the padding


def test_step_batches_mask_the_sampled_completions_only(tmp_path, tok):
    """What the loop is really fed: every micro-batch row is a chat-rendered curriculum prompt then
    one sampled completion (ending at its first end token, or max_new_tokens long); the loss mask
    is 1 on the completion alone, and the step's token count is the mask's sum."""
    start_checkpoint(tmp_path, tok, eos_bias=9.0)
    from trainer import parse_args
    cfg, _ = parse_args("grpo", run_args(tmp_path, *TOY, "--prompts_per_step", "4", "--max_new_tokens", "12"))
    trainer = toy(tmp_path, "EvenTokens")(cfg)
    trainer.setup()
    try:
        _, problems, _ = trainer.rollout_problems(0)
        epoch, batches, n_tokens = trainer.step_batches(0)
        rendered = {tuple(trainer.prompt_ids(p)) for p in problems}
        lengths, rows = [], 0
        for b in batches:
            for ids, tgt, mask in zip(b.input_ids, b.targets, b.loss_mask):
                on = np.flatnonzero(mask)
                assert on.size and (np.diff(on) == 1).all()                    # one contiguous span
                prompt, completion = list(ids[:on[0] + 1]), list(tgt[on])
                assert tuple(prompt) in rendered
                ends = [i for i, t in enumerate(completion) if t in (tok.im_end_id, tok.pad_id)]
                assert ends == [len(completion) - 1] or (not ends and len(completion) == 12)
                assert (tgt[on[-1] + 1:] == tok.pad_id).all()
                lengths.append(len(completion))
                rows += 1
        assert sum(b.loss_mask.sum() for b in batches) == n_tokens == sum(lengths)
        assert len(set(lengths)) > 2 and min(lengths) < 12             # replies really end at varied places
        stats = dict(zip(grpo.ROLLOUT_STATS, batches[0].extra["rollout"]))
        assert rows == (stats["groups"] - stats["dropped"]) * 4 and stats["rows"] == 16
        assert trainer.step_batches(0)[1] is batches                    # one rollout per step, not re-sampled
    finally:
        trainer.close()


def test_identical_policies_give_ratio_one_and_the_plain_policy_gradient(tok):
    torch.manual_seed(0)
    model = XiaoXin(model_config("tiny"))
    prompts = [[1, 5, 9, 12], [1, 7], [1, 8, 8]]
    completions = [[30, 31, 2], [40, 41, 42, 43], [50, 2]]
    input_ids, targets, mask = (torch.from_numpy(a) for a in grpo.completion_batch(prompts, completions, 0))
    adv = torch.tensor([0.7, -0.2, -0.5])
    settings = torch.tensor([0.8, 0.2, 0.28, 0.0])
    with torch.no_grad():
        old = grpo.token_logprobs(model, input_ids, targets, 0.8)[0]

    def grads_of(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    for extra in ({"old_logp": old}, {}):              # given π_old = π, or taken from the forward (μ = 1)
        batch = Batch(input_ids, targets, mask, np.zeros(3), {"advantages": adv, "settings": settings, **extra})
        rows, metrics = grpo.grpo_loss(model, batch)
        assert metrics["clip_frac"][0] == 0
        torch.testing.assert_close(rows, -(adv[:, None] * mask).sum(1))     # ratio exactly 1
        clipped = grads_of(rows.sum())
        logp = grpo.token_logprobs(model, input_ids, targets, 0.8)[0]
        plain = grads_of(-(adv[:, None] * logp * mask).sum())
        for a, b in zip(clipped, plain):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

    # A policy far above π_old on a positive-advantage row is clipped: that row then carries no gradient.
    shifted = old.clone()
    shifted[0] -= 1.0                                   # ratio e > 1 + clip_high on row 0
    batch = Batch(input_ids, targets, mask, np.zeros(3), {"advantages": adv, "settings": settings, "old_logp": shifted})
    rows, metrics = grpo.grpo_loss(model, batch)
    assert metrics["clip_frac"][0] == mask[0].sum()
    only_first = grads_of(rows[0])
    assert all(g.abs().max() == 0 for g in only_first)


def test_each_prompt_samples_the_same_completions_whatever_else_is_in_the_batch(tok):
    """A prompt's samples depend on its own seed only: alone or batched with a longer prompt
    (so left-padded), they are the same tokens."""
    torch.manual_seed(1)
    model = XiaoXin(model_config("tiny")).eval()
    a, b = [1, 20, 21, 22, 23, 24, 25, 26], [1, 30, 31]
    together = grpo.sample_groups(model, [a, b], [11, 22], 3, 10, 1.0, [2, 0], 0)
    alone = grpo.sample_groups(model, [b], [22], 3, 10, 1.0, [2, 0], 0)
    assert together[1] == alone[0]
    assert len({tuple(c) for c in together[0] + together[1]}) == 6          # and the samples differ
    assert grpo.sample_groups(model, [b], [23], 3, 10, 1.0, [2, 0], 0) != alone


# ---------------------------------------------------------------- prompts

def test_curriculum_prompts_are_seeded_and_never_held_out(tmp_path, tok):
    start_checkpoint(tmp_path, tok)
    from trainer import parse_args
    cfg, _ = parse_args("grpo", run_args(tmp_path, *TOY, "--prompts_per_step", "64"))
    trainer = grpo.GRPOTrainer(cfg)
    trainer.setup_data()      # needs no model: the curriculum is made from the flags alone
    held_out = {p["question"] for p in grpo.read_problems(ROOT / "data" / "eval" / "reasoning_eval.jsonl")}
    assert trainer.exclude >= held_out and len(trainer.val_set) == 0
    seen = []
    for rollout in range(3):
        _, problems, indices = trainer.rollout_problems(rollout)
        assert len(problems) == 64 and indices == list(range(64 * rollout, 64 * rollout + 64))
        assert not {p["question"] for p in problems} & held_out
        assert {p["kind"] for p in problems} == set(grpo.KINDS)
        seen.append([p["question"] for p in problems])
    assert seen[0] != seen[1] and trainer.rollout_problems(1)[1] == trainer.rollout_problems(1)[1]


def test_a_prompt_file_and_its_errors(tmp_path, tok, capsys):
    start_checkpoint(tmp_path, tok)
    good = [{"question": f"{i} + 1 = ?", "answer": str(i + 1), "kind": "arith"} for i in range(5)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good), encoding="utf-8")
    from trainer import parse_args
    cfg, _ = parse_args("grpo", run_args(tmp_path, *TOY, "--prompts_per_step", "2", "--data_path", str(path)))
    trainer = grpo.GRPOTrainer(cfg)
    trainer.tok = tok
    trainer.setup_data()
    assert trainer.steps_per_epoch == 3
    chosen = [q for r in range(3) for q in (p["question"] for p in trainer.rollout_problems(r)[1])]
    assert sorted(chosen) == sorted(p["question"] for p in good)         # an epoch is every prompt once
    assert trainer.rollout_problems(3)[0] == 1 and trainer.rollout_problems(3)[1] != trainer.rollout_problems(0)[1]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good[0]) + "\n" + json.dumps({"question": "hi", "kind": "poem", "answer": "x"}) + "\n")
    assert grpo.main(run_args(tmp_path, *TOY, "--data_path", str(bad))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:2 has kind 'poem'") and len(err.splitlines()) == 1
    assert grpo.main(run_args(tmp_path, *TOY, "--group_size", "1")) == 2
    assert "--group_size must be at least 2" in capsys.readouterr().err


# ---------------------------------------------------------------- whole runs

def test_mean_reward_rises_on_a_toy_task(tmp_path, tok):
    start_checkpoint(tmp_path, tok)
    args = run_args(tmp_path, *TOY, "--prompts_per_step", "2", "--max_steps", "14", "--group_size", "8",
                    "--learning_rate", "3e-2")
    assert toy(tmp_path)(args) == 0
    steps = steps_log(tmp_path)
    rewards = [s["reward"] for s in steps]
    assert len(rewards) == 14 and np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.25, rewards
    assert not any("spike" in s for s in steps)     # a surrogate centred on 0 is no error to watch for spikes
    record = json.loads((tmp_path / "ckpt" / "grpo.json").read_text())
    assert record["results"]["steps"] == 14 and record["init_from"].endswith("distill.pt")
    log = (tmp_path / "log" / "grpo.log").read_text()
    for name in ("reward", "accuracy", "format_rate", "completion_len", "dropped_groups", "kl", "clip_frac",
                 "entropy"):
        assert f" {name} " in log, name


def test_sigkill_then_resume_continues_the_same_run(tmp_path, tok):
    """Two optimiser steps per rollout and a checkpoint between them: the resumed run re-samples
    that rollout with the saved policy and ends bit for bit where the uninterrupted run ends."""
    common = [*TOY, "--prompts_per_step", "2", "--max_steps", "6", "--grpo_iterations", "2", "--kl_coef", "0.1",
              "--save_step", "3", "--log_step", "1000"]
    main = toy(tmp_path)
    start_checkpoint(tmp_path / "full", tok)
    assert main(run_args(tmp_path / "full", *common)) == 0

    cut = tmp_path / "cut"
    start_checkpoint(cut, tok)
    proc = subprocess.Popen([sys.executable, str(toy_script(tmp_path)), *run_args(cut, *common)], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = cut / "ckpt" / "checkpoints" / "grpo" / "step_0000003.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "ckpt" / "grpo.pt").exists(), "the run finished before it could be killed"
    assert torch.load(ckpt, weights_only=True)["stage_state"]["rollout_policy"]["step"] == 2
    assert main(run_args(cut, *common, "--resume")) == 0
    assert_same_weights(weights(tmp_path / "full", "grpo"), weights(cut, "grpo"))
    full, resumed = steps_log(tmp_path / "full"), steps_log(cut)
    assert [s["reward"] for s in full[3:]] == [s["reward"] for s in resumed if s["step"] > 3]
    assert "resumed from" in (cut / "log" / "grpo.log").read_text()


def test_ddp_two_ranks_equal_one_rank_with_twice_the_prompts(tmp_path, tok):
    # lr 1e-3: Adam turns a rounding difference in a near-zero gradient into a step of up to lr.
    common = [*TOY, "--max_steps", "3", "--kl_coef", "0.1", "--grpo_iterations", "2", "--learning_rate", "1e-3"]
    script = toy_script(tmp_path)
    start_checkpoint(tmp_path / "one", tok)
    start_checkpoint(tmp_path / "two", tok)
    single = subprocess.run([sys.executable, str(script), *run_args(tmp_path / "one", *common, "--prompts_per_step", "4")],
                            cwd=ROOT, env=env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-4000:]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *run_args(tmp_path / "two", *common, "--prompts_per_step", "2")],
                          cwd=ROOT, env=env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-8000:]
    assert "world_size=2" in done.stdout and "4 prompts per rollout over 2 rank(s)" in done.stdout
    one, two = logged(tmp_path / "one"), logged(tmp_path / "two")      # means over ranks
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "reward", "accuracy", "completion_len", "kl", "entropy"):   # printed to 4 digits
            assert a[key] == pytest.approx(b[key], rel=2e-3, abs=1e-5), (key, a, b)
    assert_same_weights(weights(tmp_path / "one", "grpo"), weights(tmp_path / "two", "grpo"), atol=1e-5)


def test_grpo_checkpoint_chats_evaluates_and_exports(trained, tmp_path, capsys):
    """The fixture's chain ends with grpo (trained from its distill.pt with validation on): the
    checkpoint is a reasoning one for chat, the reasoning eval and export."""
    import eval_model
    ckpt = trained / "ckpt"
    record = json.loads((ckpt / "grpo.json").read_text())
    assert record["init_from"].endswith("distill.pt")
    r = record["results"]
    assert 0 <= r["final_val_accuracy"] <= 1 and 0 <= r["initial_val_accuracy"] <= 1 and r["val_problems"] > 0
    assert record["history"]["val_step"][0] == 0 and record["history"]["val_step"][-1] == r["steps"]
    assert eval_model.main(["--save_dir", str(ckpt), "--stage", "grpo", "--prompt", "你好", "--temperature", "0",
                            "--max_new_tokens", "6"]) == 0
    assert "(stage grpo)" in capsys.readouterr().err
    assert eval_model.Chat(ckpt / "grpo.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32").reasoning
    sys.path.insert(0, str(ROOT / "scripts"))
    import eval_reasoning
    import export_hf
    out = tmp_path / "eval.json"
    assert eval_reasoning.main(["--save_dir", str(ckpt), "--stage", "grpo", "--limit", "3", "--max_new_tokens", "8",
                                "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 3
    assert export_hf.main(["--save_dir", str(ckpt), "--stage", "grpo", "--out", str(tmp_path / "hf")]) == 0
    assert "reinforcement learning" in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


def test_real_rl_settings_follow_the_distill_stage_s_real_data(tmp_path, monkeypatch, capsys):
    """GRPO makes its own prompts, so whether it runs its demo profile or its real defaults follows
    the data of the stage it starts from: a model distilled on the real data gets the real settings."""
    import Config
    from trainer import parse_args
    monkeypatch.chdir(tmp_path)
    demo, _ = parse_args("grpo", [])
    assert (demo.model, demo.max_new_tokens) == (Config.STAGES["grpo"].demo["model"], 192)
    assert "dataset/r1_mix_1024.jsonl (the data of the distill stage it starts from) not found" in capsys.readouterr().out
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "r1_mix_1024.jsonl").write_text("{}\n", encoding="utf-8")
    (tmp_path / "data" / "eval").mkdir(parents=True)   # the real val_path is relative to the working folder
    (tmp_path / "data" / "eval" / "reasoning_eval.jsonl").symlink_to(ROOT / "data" / "eval" / "reasoning_eval.jsonl")
    real, _ = parse_args("grpo", [])
    assert real == Config.STAGES["grpo"].train.__class__(**{**vars(Config.STAGES["grpo"].train), "stage": "grpo"})
    assert "demo profile" not in capsys.readouterr().out
