"""Stage 5 of XiaoXin: reinforcement learning with verifiable rewards (GRPO).

Distillation teaches the model to imitate reasoning; here it is rewarded for reaching answers a
program can check, as DeepSeek-R1 was (GRPO, arXiv:2402.03300; R1, arXiv:2501.12948). Starts from
distill.pt (or the latest earlier stage) and writes grpo.pt, a reasoning checkpoint like distill's.

    python grpo.py [--prompts_per_step 32 --group_size 8 --max_new_tokens 512 --temperature 1.0]
                   [--data_path prompts.jsonl] [--kl_coef 0.0] [--grpo_iterations 1] [--resume] ...
    torchrun --nproc_per_node 4 grpo.py

One optimiser step (GRPOTrainer.step_batches, then the shared loop in trainer.py):

1. Prompts. By default the curriculum (scripts/gen_reasoning.py) makes them: rollout r's global
   list is `generate(prompts_per_step × ranks, seed (--seed, r))` with every question of the
   held-out evaluation files left out by exact text, so any number can be drawn and none is ever
   one the report card grades. `--data_path` takes a jsonl of {"question", "answer", "kind"}
   instead (kind picks the checker; gen_reasoning.py --format eval writes such files), reshuffled
   every epoch. Each prompt is the chat-rendered user turn plus the assistant header. Under DDP
   the global list is fixed and rank k takes its k-th share, so 2 ranks run exactly what 1 rank
   runs with twice --prompts_per_step (tested).
2. Rollout. G = --group_size completions per prompt from the current policy (eval mode, no
   grad), all of this rank's prompts in ONE left-padded `model.generate` call with the KV cache,
   sampled from the full softmax at --temperature (no top-k/top-p: the log-probabilities the loss
   uses are then those of the distribution that really sampled). Every random draw is a pure
   function of (seed, rollout, global prompt index, sample index, position): each prompt has its
   own torch.Generator seeded from the first three, which draws a uniform per (position, sample)
   up front, and a token is picked by inverting the row's cumulative distribution at that uniform.
   So batch composition, rank count and resume cannot change which completions are drawn.
3. Rewards. --correct_reward (1.0) × grader.score's `correct` + --format_reward (0.1) × its
   `well_formed` (exactly one <think>…</think> then one non-empty <answer>…</answer>). 0.1: a wrong
   answer in the right form must stay far below any right answer, but among wrong answers
   the well-formed one wins, so RL does not erode the format distillation taught, and a group
   whose samples are all wrong still carries signal when their formats differ.
4. Advantages: reward minus the group mean (Dr. GRPO, arXiv:2503.20783), not divided by the
   group's std as in GRPO: that division weights groups that are nearly all right or all wrong
   (small std) far above the rest, a difficulty bias; --scale_by_std restores it. A group whose
   rewards are all equal has zero advantage and teaches nothing: its tokens are dropped from the
   loss and from the token count (DAPO's dynamic-sampling filter, arXiv:2503.14476, without
   re-sampling) and `dropped_groups` logs the share.
5. Loss (grpo_loss): the PPO clipped surrogate (arXiv:1707.06347) per completion token
   (the reply and its closing <|im_end|>; never the prompt or the padding after eos),
   -min(ρA, clip(ρ, 1-clip_low, 1+clip_high)A) with ρ = π(token)/π_old(token), clip_high > clip_low
   being DAPO's clip-higher; plus --kl_coef × the k3 estimate of KL(π‖π_ref)
   (exp(d) - d - 1, d = log π_ref - log π; Schulman's approximation, as in GRPO) to the frozen
   starting model. --kl_coef defaults to 0, as in DAPO, Dr. GRPO and nanochat: a checkable reward
   cannot be gamed by drifting the way a learned reward model can, and the reference forward costs a
   third of a training step; the KL is still measured (not trained on) every --log_step steps.
   --grpo_iterations μ reuses one rollout for μ optimiser steps: π_old's log-probs are computed
   once after the rollout; with μ = 1 they equal the current policy's, so ρ = 1 and the step is
   the plain policy gradient (they are then taken from the forward itself, not recomputed).
   Normalisation: the token sum is divided by the completion tokens of the whole step over every
   rank (the trainer's token-level division; DAPO). GRPO's per-sequence 1/|o| gives each token of
   a short reply more weight than a token of a long one, so a long wrong reply is penalised less
   per token and lengths drift upward (Dr. GRPO's length bias); the token-level mean does not.
6. Logged every step (console, log/grpo.log, SwanLab, log/grpo_steps.jsonl, the plot): reward,
   accuracy, format_rate, completion_len, truncated (no eos within --max_new_tokens),
   dropped_groups, kl, clip_frac, entropy, rollout_tok_s. Validation (before the first step, every
   --eval_step and at the end): greedy accuracy and format rate on the first --val_problems of
   --val_path (the report card's problems), via scripts/eval_reasoning.evaluate; grpo.json gets
   initial_/final_val_accuracy and the history (the curves of reward and held-out accuracy).
"""
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import UserError, load_checkpoint
from dataset import Batch, file_sha256, render_chat
from grader import score
from model import XiaoXin
from scripts.eval_reasoning import evaluate as evaluate_reasoning, read_problems
from scripts.gen_reasoning import EVAL_FILE, KINDS, generate, read_questions
from trainer import Trainer, metric_means, run_stage

ROLLOUT_STATS = ("rows", "reward", "correct", "well_formed", "tokens", "truncated", "groups", "dropped", "seconds")


# ---------------------------------------------------------------- the algorithm

def group_advantages(rewards: np.ndarray, scale_by_std: bool = False) -> np.ndarray:
    """rewards (prompts × G) → advantages: each reward minus its group's mean (Dr. GRPO), divided
    by the group's std only with scale_by_std (GRPO). Exactly 0 for a group of equal rewards."""
    rewards = np.asarray(rewards, dtype=np.float64)
    adv = rewards - rewards.mean(axis=1, keepdims=True)
    if scale_by_std:
        adv = adv / (rewards.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    adv[np.ptp(rewards, axis=1) == 0] = 0.0
    return adv


def rollout_seed(seed: int, rollout: int, prompt_index: int) -> int:
    """The seed of one prompt's random stream: mixed from (seed, rollout, global prompt index)."""
    return int(np.random.SeedSequence([seed % 2**63, rollout, prompt_index]).generate_state(1, np.uint64)[0])


@torch.no_grad()
def sample_groups(model, prompts: list[list[int]], seeds: list[int], group_size: int, max_new_tokens: int,
                  temperature: float, eos_ids: list[int], pad_id: int) -> list[list[list[int]]]:
    """group_size completions of every prompt, all in one left-padded generate call with the KV
    cache. completions[p][g]: the sampled ids up to and including the first eos (all
    max_new_tokens of them when none came). Prompt p's randomness comes from a generator seeded
    with seeds[p] alone: a uniform per (position, sample), turned into a token by inverting the
    row's cumulative distribution, so a completion does not depend on what else is in the batch."""
    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(group_size)]
    width = max(len(p) for p in rows)
    x = torch.tensor([[pad_id] * (width - len(p)) + p for p in rows], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
    uniforms = torch.stack([torch.rand(max_new_tokens, group_size, device=device,
                                       generator=torch.Generator(device=device).manual_seed(s)) for s in seeds])
    uniforms = uniforms.transpose(1, 2).reshape(len(rows), max_new_tokens)   # row p·G + g, column = position
    position = 0

    def sample(logits):
        nonlocal position
        cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
        u = uniforms[:, position:position + 1] * cdf[:, -1:]
        position += 1
        return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)

    steps = [torch.as_tensor(t, device=device).view(-1) for t in
             model.generate(x, max_new_tokens, eos_token_id=eos_ids, attention_mask=mask, sampler=sample)]
    tokens = torch.stack(steps, dim=1).tolist()
    eos = set(eos_ids)
    completions = []
    for row in tokens:
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        completions.append(row[:end])
    return [completions[p * group_size:(p + 1) * group_size] for p in range(len(prompts))]


def completion_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
    """Right-padded next-token rows of prompt + completion: (input_ids, targets, loss_mask), the
    mask 1 exactly on the targets that are completion tokens (its eos included), 0 on the prompt
    and on the padding after the completion."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    T = max(len(s) for s in seqs) - 1
    input_ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    targets = np.full((len(seqs), T), pad_id, dtype=np.int64)
    loss_mask = np.zeros((len(seqs), T), dtype=np.float32)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        input_ids[i, :len(s) - 1] = s[:-1]
        targets[i, :len(s) - 1] = s[1:]
        loss_mask[i, len(p) - 1:len(s) - 1] = 1.0
    return input_ids, targets, loss_mask


def token_logprobs(model, input_ids, targets, temperature):
    """log π(target) per position at the sampling temperature, fp32, and the log-softmax itself."""
    logits = model(input_ids).logits.float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1), logp_all


def grpo_loss(model, batch):
    """The clipped surrogate (+ optional k3 KL) per completion token, summed per row (losses.py).

    batch.extra: "advantages" (B,), "settings" [temperature, clip_low, clip_high, kl_coef],
    optionally "old_logp" (B × T; absent when --grpo_iterations is 1: π_old = π), "ref_logp"
    (B × T; the KL is then measured, and trained on when kl_coef > 0) and "rollout" (this rank's
    rollout totals, ROLLOUT_STATS, on its first micro-batch, turned into the logged metrics)."""
    x, mask = batch.extra, batch.loss_mask
    temperature, clip_low, clip_high, kl_coef = x["settings"].unbind()
    logp, logp_all = token_logprobs(model, batch.input_ids, batch.targets, temperature)
    old = x["old_logp"] if "old_logp" in x else logp.detach()
    ratio = torch.exp(logp - old)
    adv = x["advantages"].unsqueeze(1)
    unclipped, clipped = ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    n = mask.sum()
    metrics = {}
    if "ref_logp" in x:
        d = x["ref_logp"] - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + kl_coef * kl
        metrics["kl"] = ((kl.detach() * mask).sum(), n)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        metrics["entropy"] = ((entropy * mask).sum(), n)
        metrics["clip_frac"] = (((clipped < unclipped).float() * mask).sum(), n)
    if "rollout" in x:
        s = dict(zip(ROLLOUT_STATS, x["rollout"].unbind()))
        metrics.update(reward=(s["reward"], s["rows"]), accuracy=(s["correct"], s["rows"]),
                       format_rate=(s["well_formed"], s["rows"]), completion_len=(s["tokens"], s["rows"]),
                       truncated=(s["truncated"], s["rows"]), dropped_groups=(s["dropped"], s["groups"]),
                       rollout_tok_s=(s["tokens"], s["seconds"]))
    return (per_token * mask).sum(1), metrics


# ---------------------------------------------------------------- prompts

def read_prompt_file(path, skip_bad_lines: bool = False) -> list[dict]:
    """{"question", "answer", "kind"} records of a jsonl file (plus their line numbers); a bad line is
    one sentence naming file:line, or skipped and counted with skip_bad_lines."""
    problems, bad = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(f"{path}:{line_no} is not JSON ({e.msg})")
                continue
            if not (isinstance(rec, dict) and all(isinstance(rec.get(k), str) and rec[k].strip() for k in ("question", "kind"))
                    and isinstance(rec.get("answer"), (str, int, float))):
                bad.append(f"{path}:{line_no} is not a prompt {{\"question\", \"answer\", \"kind\"}} "
                           f"(question and kind strings, answer a string or number)")
            elif rec["kind"] not in KINDS:
                bad.append(f"{path}:{line_no} has kind {rec['kind']!r}, for which there is no checker "
                           f"(one of: {', '.join(KINDS)})")
            else:
                problems.append({"kind": rec["kind"], "question": rec["question"], "answer": str(rec["answer"]),
                                 "line": line_no})
    if bad and not skip_bad_lines:
        more = f"; {len(bad) - 1} more bad lines" if len(bad) > 1 else ""
        raise UserError(f"{bad[0]}{more}. Fix the file or pass --skip_bad_lines.")
    if not problems:
        raise UserError(f"--data_path {path} holds no prompts.")
    return problems


# ---------------------------------------------------------------- the stage

class GRPOTrainer(Trainer):
    """Batches sampled from the model: see the module docstring for what one step does."""
    flag_loss_spikes = False

    def setup_data(self):
        cfg = self.cfg
        self.check_flags()
        held_out = [Path(cfg.val_path)] if cfg.val_path else []
        if EVAL_FILE.is_file() and EVAL_FILE.resolve() not in [p.resolve() for p in held_out]:
            held_out.append(EVAL_FILE)
        self.val_set = read_problems(cfg.val_path)[:cfg.val_problems] if cfg.val_path and cfg.val_problems else []
        self.exclude = frozenset(q for p in held_out for q in read_questions(p))
        self.prompts_global = cfg.prompts_per_step * self.dist.world
        if cfg.data_path:
            self.problems = read_prompt_file(cfg.data_path, cfg.skip_bad_lines)
            too_long = [p for p in self.problems if len(self.prompt_ids(p)) > cfg.max_seq_len - cfg.max_new_tokens]
            if too_long:
                raise UserError(f"{cfg.data_path}:{too_long[0]['line']}: the prompt is longer than --max_seq_len "
                                f"{cfg.max_seq_len} minus --max_new_tokens {cfg.max_new_tokens} "
                                f"({len(too_long)} such lines); raise --max_seq_len or shorten them.")
            source, per_epoch = f"{cfg.data_path} ({len(self.problems)} prompts)", len(self.problems)
        else:
            self.problems = None
            source = f"the reasoning curriculum (scripts/gen_reasoning.py, {len(self.exclude)} held-out questions excluded)"
            per_epoch = cfg.num_prompts
        self.rollouts_per_epoch = -(-per_epoch // self.prompts_global)
        self.steps_per_epoch = self.rollouts_per_epoch * cfg.grpo_iterations
        self._rollout, self._rollout_policy, self._saved_policy = None, None, None
        self.log.print(f"data: {source}; {cfg.prompts_per_step} prompts × {cfg.group_size} samples per rank "
                       f"({self.prompts_global} prompts per rollout over {self.dist.world} rank(s)), ≤ "
                       f"{cfg.max_new_tokens} new tokens at temperature {cfg.temperature}, {cfg.grpo_iterations} "
                       f"optimiser step(s) per rollout; validation on {len(self.val_set)} problems of {cfg.val_path or '-'}")

    def check_flags(self):
        cfg = self.cfg
        rules = [("group_size", cfg.group_size >= 2, "at least 2 (advantages compare samples of one prompt)"),
                 ("prompts_per_step", cfg.prompts_per_step >= 1, "at least 1"),
                 ("max_new_tokens", 1 <= cfg.max_new_tokens < cfg.max_seq_len, f"between 1 and --max_seq_len - 1"),
                 ("temperature", cfg.temperature > 0, "positive (greedy samples of a group would all be equal)"),
                 ("grpo_iterations", cfg.grpo_iterations >= 1, "at least 1"),
                 ("clip_low", 0 <= cfg.clip_low < 1, "in [0, 1)"), ("clip_high", cfg.clip_high >= 0, "0 or more"),
                 ("kl_coef", cfg.kl_coef >= 0, "0 or more"), ("val_problems", cfg.val_problems >= 0, "0 or more"),
                 ("num_prompts", cfg.num_prompts >= 1, "at least 1")]
        for name, ok, what in rules:
            if not ok:
                raise UserError(f"--{name} must be {what} (got {getattr(cfg, name)}).")

    def data_signature(self) -> dict:
        cfg = self.cfg
        keys = ("group_size", "max_new_tokens", "temperature", "grpo_iterations", "correct_reward", "format_reward",
                "scale_by_std", "num_prompts")
        return {"prompts": file_sha256(cfg.data_path) if cfg.data_path else "curriculum",
                "prompts_per_rollout": self.prompts_global, **{k: getattr(cfg, k) for k in keys}}

    def setup(self):
        super().setup()
        cfg = self.cfg
        self.eos_ids = [self.tok.im_end_id, self.tok.pad_id]
        # The frozen starting model: trained against when --kl_coef > 0, else only measured.
        self.ref_model = XiaoXin(self.model_config)
        self.ref_model.load_state_dict(load_checkpoint(self.init_path, self.model_config, self.tok.hash)["model"])
        self.ref_model.to(self.device).eval().requires_grad_(False)
        if self.step == 0 and self.val_set:   # the starting point of the held-out accuracy curve
            values = self.evaluate()
            self.log.print("step 0: validation " + ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in values.items()))
            self.log.metrics(0, values)

    # -- prompts
    def prompt_ids(self, problem) -> list[int]:
        return self.tok.encode(render_chat([{"role": "user", "content": problem["question"]}], add_generation_prompt=True)[0])

    def rollout_problems(self, rollout: int) -> tuple[int, list[dict], list[int]]:
        """(epoch, the rollout's global prompt list, their line numbers or curriculum indices)."""
        cfg, P = self.cfg, self.prompts_global
        epoch, k = divmod(rollout, self.rollouts_per_epoch)
        if self.problems is None:
            made = generate(P, seed=f"grpo-{cfg.seed}-{rollout}", exclude_questions=self.exclude)
            return epoch, [{"kind": p["kind"], "question": p["question"], "answer": p["expected"]} for p in made], \
                list(range(rollout * P, rollout * P + P))
        order = np.random.default_rng([cfg.seed % 2**63, epoch]).permutation(len(self.problems))
        chosen = [self.problems[i] for i in order[k * P:(k + 1) * P]]
        return epoch, chosen, [p["line"] for p in chosen]

    # -- batches
    def step_batches(self, step: int):
        first = step - step % self.cfg.grpo_iterations
        if self._rollout is None or self._rollout[0] != first:
            self._rollout = (first, *self.rollout(first))
        return self._rollout[1:]

    def rollout(self, first_step: int):
        """Sample, grade and batch rollout first_step // grpo_iterations: (epoch, micro-batches, completion
        tokens of the step over all ranks)."""
        cfg, G = self.cfg, self.cfg.group_size
        rollout = first_step // cfg.grpo_iterations
        epoch, problems, lines = self.rollout_problems(rollout)
        start = self.dist.rank * cfg.prompts_per_step
        mine = range(start, min(start + cfg.prompts_per_step, len(problems)))
        policy = self.raw_model
        if first_step != self.step:          # resumed between the iterations of this rollout
            policy = self.rollout_policy(first_step)
        elif cfg.grpo_iterations > 1:        # kept for a resume checkpoint written before the rollout is used up
            self._rollout_policy = {"step": first_step,
                                    "model": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}}
        prompts = [self.prompt_ids(problems[i]) for i in mine]
        if any(len(p) > cfg.max_seq_len - cfg.max_new_tokens for p in prompts):
            raise UserError(f"a generated prompt is longer than --max_seq_len {cfg.max_seq_len} minus --max_new_tokens "
                            f"{cfg.max_new_tokens}; raise --max_seq_len.")
        t0 = time.perf_counter()
        completions = []
        if prompts:
            policy.eval()
            with self.autocast():
                completions = sample_groups(policy, prompts, [rollout_seed(cfg.seed, rollout, i) for i in mine], G,
                                            cfg.max_new_tokens, cfg.temperature, self.eos_ids, self.tok.pad_id)
            policy.train()
        seconds = time.perf_counter() - t0

        rewards = np.zeros((len(prompts), G))
        stats = dict.fromkeys(ROLLOUT_STATS, 0.0)
        for p, group in enumerate(completions):
            for g, completion in enumerate(group):
                ended = completion[-1] in self.eos_ids
                text = self.tok.decode(completion[:-1] if ended else completion)
                rewards[p, g], correct, well_formed = self.grade(problems[mine[p]], text, completion)
                stats["correct"] += correct
                stats["well_formed"] += well_formed
                stats["tokens"] += len(completion)
                stats["truncated"] += not ended
        advantages = group_advantages(rewards, cfg.scale_by_std)
        kept = [p for p in range(len(prompts)) if np.any(advantages[p] != 0)]
        stats.update(rows=len(prompts) * G, reward=rewards.sum(), groups=len(prompts), dropped=len(prompts) - len(kept),
                     seconds=seconds)

        rows = [(prompts[p], completions[p][g], advantages[p, g], lines[mine[p]]) for p in kept for g in range(G)]
        if not rows:   # every rank joins the step's gradient all-reduce, with a zero-weight row if need be
            rows = [(prompts[0], completions[0][0], 0.0, lines[mine[0]])] if prompts else \
                [(self.prompt_ids(problems[0]), [self.tok.im_end_id], 0.0, lines[0])]
        n_tokens = sum(len(r[1]) for r in rows) if kept else 0
        rows.sort(key=lambda r: len(r[0]) + len(r[1]))     # similar lengths share a micro-batch: less padding
        settings = np.array([cfg.temperature, cfg.clip_low, cfg.clip_high, cfg.kl_coef], dtype=np.float32)
        # The KL to the starting model is measured every --log_step steps even when it is not trained on.
        with_ref = cfg.kl_coef > 0 or any((s + 1) % cfg.log_step == 0 for s in
                                          range(first_step, first_step + cfg.grpo_iterations))
        batches = []
        for i in range(0, len(rows), cfg.batch_size):
            chunk = rows[i:i + cfg.batch_size]
            input_ids, targets, loss_mask = completion_batch([r[0] for r in chunk], [r[1] for r in chunk], self.tok.pad_id)
            if not kept:
                loss_mask[:] = 0
            extra = {"advantages": np.array([r[2] for r in chunk], dtype=np.float32), "settings": settings}
            if i == 0:
                extra["rollout"] = np.array([stats[k] for k in ROLLOUT_STATS], dtype=np.float64)
            batch = Batch(input_ids, targets, loss_mask, np.array([r[3] for r in chunk], dtype=np.int64), extra)
            needs = ([("old_logp", policy)] if cfg.grpo_iterations > 1 else []) + ([("ref_logp", self.ref_model)] if with_ref else [])
            if needs:
                ids, tgt = torch.from_numpy(input_ids).to(self.device), torch.from_numpy(targets).to(self.device)
                with torch.no_grad(), self.autocast():
                    for name, model in needs:
                        extra[name] = token_logprobs(model, ids, tgt, cfg.temperature)[0]
            batches.append(batch)
        if self.dist.enabled:
            total = torch.tensor(float(n_tokens), device=self.device)
            torch.distributed.all_reduce(total)
            n_tokens = int(total.item())
        return epoch, batches, n_tokens

    def grade(self, problem: dict, reply: str, completion: list[int]) -> tuple[float, bool, bool]:
        """(reward, correct, well_formed) of one completion: its text (without the eos) graded by
        grader.py. `completion` (the token ids) is there for a subclass with another reward."""
        s = score(problem["kind"], problem["answer"], reply)
        return self.cfg.correct_reward * s["correct"] + self.cfg.format_reward * s["well_formed"], s["correct"], s["well_formed"]

    def validation_precision(self):
        """Validation decodes as the report card does: in the training dtype on a GPU, fp32 on a CPU.
        (Rollouts use the training dtype everywhere: 64 rows at once decode 1.3-1.5× faster in bf16
        than fp32 on this project's CPUs, unlike batch-1 chat.)"""
        return self.autocast() if self.device.type == "cuda" else contextlib.nullcontext()

    # -- resume in the middle of a rollout's iterations
    def stage_state(self) -> dict:
        if self._rollout_policy is not None and self.step % self.cfg.grpo_iterations:
            return {"rollout_policy": self._rollout_policy}
        return {}

    def load_stage_state(self, state: dict):
        self._saved_policy = state.get("rollout_policy")

    def rollout_policy(self, first_step: int):
        """The weights rollout `first_step` was sampled with, from the resume checkpoint."""
        saved = self._saved_policy
        if saved is None or saved["step"] != first_step:
            raise UserError(f"the resume checkpoint lacks the policy of the rollout at step {first_step}; "
                            f"resume from a checkpoint written by this version of grpo.py.")
        model = XiaoXin(self.model_config)
        model.load_state_dict(saved["model"])
        self._rollout_policy = saved
        return model.to(self.device)

    # -- validation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy held-out accuracy and format rate on the validation problems, shared over ranks."""
        if not self.val_set:
            return {}
        mine = self.val_set[self.dist.rank::self.dist.world]
        pairs = {"accuracy": torch.zeros(2, dtype=torch.float64, device=self.device),
                 "format_rate": torch.zeros(2, dtype=torch.float64, device=self.device)}
        if mine:
            self.raw_model.eval()
            with self.validation_precision():
                r = evaluate_reasoning(self.raw_model, self.tok, mine, max_new_tokens=self.cfg.max_new_tokens)
            self.raw_model.train()
            pairs["accuracy"] += torch.tensor([r["correct"], r["n"]], dtype=torch.float64, device=self.device)
            pairs["format_rate"] += torch.tensor([r["well_formed"], r["n"]], dtype=torch.float64, device=self.device)
        return {f"val_{k}": v for k, v in metric_means(pairs, self.dist).items()}

    def save_final(self, results: dict):
        h = self.log.history
        if h.get("val_step") and h["val_step"][0] == 0:
            results.update(initial_val_accuracy=h["val_accuracy"][0], initial_val_format_rate=h["val_format_rate"][0])
        results["val_problems"] = len(self.val_set)
        super().save_final(results)


def main(argv=None) -> int:
    return run_stage("grpo", argv, GRPOTrainer)


if __name__ == "__main__":
    sys.exit(main())
