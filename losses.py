"""Training objectives: what a stage minimises, computed from the model and one batch.

A stage names its objective in Config.STAGES (`loss="losses.cross_entropy"`); trainer.py calls
it for training and for validation, and `scripts/data_doctor.py loss` calls it to score records,
so all three see the same arithmetic. An objective is a function

    loss(model, batch) -> (row_sums, metrics)

- `batch` is a dataset.Batch on the training device: input_ids, targets and loss_mask
  (B × T tensors) and `batch.extra`, any further per-row or per-token arrays the stage's batches
  carry (advantages, old log-probs, reference log-probs, …), moved to the device with the rest.
- `row_sums` (B, float32): the per-token loss summed over each row's loss-mask tokens. The trainer
  sums the rows and divides by the loss-mask tokens of the whole optimiser step (every
  micro-batch, every rank), so accumulation and data parallelism do not change the loss:
  token-level normalisation, which is also DAPO's choice for policy gradients (arXiv:2503.14476).
- `metrics`: {name: (sum, count)}, each a tensor on the batch's device or a Python number, e.g.
  {"kl": ((kl * mask).sum(), mask.sum()), "reward": (rewards.sum(), len(rewards))}. The trainer adds sums and counts over micro-batches, steps and ranks and logs
  sum / count (console, log file, SwanLab, steps jsonl, plots) without a host sync per micro-step;
  in validation they appear as val_<name>.

The model is called inside autocast; an objective upcasts what needs fp32 itself.
"""
import dataclasses
import importlib

import numpy as np
import torch
import torch.nn.functional as F

import Config


def cross_entropy(model, batch):
    """Next-token cross-entropy on loss-mask tokens: pretraining, SFT and R1 distillation."""
    return masked_cross_entropy(model(batch.input_ids).logits, batch.targets, batch.loss_mask), {}


def masked_cross_entropy(logits, targets, loss_mask):
    """Per-row sums of next-token cross-entropy over loss-mask tokens, computed in fp32."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return (ce.view_as(loss_mask) * loss_mask).sum(1)


def stage_loss(stage: str):
    """The objective Config.STAGES[stage].loss names ("module.function")."""
    spec = Config.STAGES[stage].loss
    module, _, name = spec.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ValueError(f"Config.STAGES[{stage!r}].loss = {spec!r} names no function; "
                         f"write it as module.function, e.g. losses.cross_entropy.") from None


def to_device(batch, device):
    """The batch with its arrays (and every array in batch.extra) as tensors on `device`;
    `lines` stays on the host. numpy arrays and tensors are both accepted."""
    def move(a):
        t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
        if device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)
    return dataclasses.replace(batch, input_ids=move(batch.input_ids), targets=move(batch.targets),
                               loss_mask=move(batch.loss_mask), extra={k: move(v) for k, v in batch.extra.items()})
