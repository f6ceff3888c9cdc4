"""The one training loop behind every stage: pretrain.py, SFT.py, SFT_long.py, distill.py, ...

A stage script only says which stage it is; everything else comes from its entry in
Config.STAGES (data kind, the stages it starts from, objective, defaults, demo profile),
overridden by command-line flags. Runs on CPU, one GPU, or many under torchrun (DDP).

    python pretrain.py [--model default] [--batch_size 32] [--max_steps 100] [--resume] ...
    torchrun --nproc_per_node 4 pretrain.py

Adding a stage
--------------
1. An entry in Config.STAGES. Flags of its own: make its `train` a TrainConfig subclass
   (in Config.py); every field becomes a flag.
2. A script of a few lines (see SFT.py) whose `main(argv=None)` returns `run_stage("name", argv)`;
   the demo runner and the tests call that `main` (run_script).
3. If its objective differs, one function `loss(model, batch) -> (row_sums, metrics)`, named
   by the entry's `loss` (losses.py says what it returns). Extra inputs ride in batch.extra.
4. If its batches do not come from a jsonl token cache (reinforcement learning samples them
   from the current model), a Trainer subclass, `run_stage("name", argv, MyTrainer)`, overriding:

   setup_data(self) -> None
       before the model exists: set self.steps_per_epoch (optimiser steps per epoch) and
       whatever the batches need. To use the model or self.init_path (the checkpoint the
       stage started from, also after --resume; e.g. a frozen reference), extend setup().
   data_signature(self) -> dict
       what must not change for --resume to continue the same run (e.g. a prompt file's hash).
   step_batches(self, step) -> (epoch, batches, n_loss_tokens)
       this rank's micro-batches (dataset.Batch of numpy arrays or tensors, any device) for
       optimiser step `step`, and the loss-mask tokens of the whole step over all ranks
       (all_reduce that count when batches are made on the fly). The loop moves each batch
       to the device, calls the loss, and divides by n_loss_tokens. `batch.lines` holds ids
       that trace a step back to its data (source lines, prompt indices; may be empty). Sample
       from self.raw_model (self.model may be the DDP wrapper, which the loss gets).
       An overriding step_batches runs on the main thread, in step order (the trainer's own
       runs ahead in a background thread on CUDA, which is only right for batches that do not
       depend on the model); set the class attribute prefetch = True if yours do not either.
   evaluate(self) -> dict[str, float]
       validation numbers to log, e.g. {"val_accuracy": 0.41}; {} when there is nothing to
       validate on. The last ones go into <stage>.json's results as final_<name>.
   stage_state(self) -> dict, load_stage_state(self, state)
       state of the stage's own (tensors and plain data) that a resume checkpoint must carry,
       e.g. the weights a rollout was sampled with when several steps reuse it; {} by default.

   Resume stays exact when step_batches is a pure function of (seed, step) or draws only from
   the global torch/numpy/python RNGs, which a resume checkpoint saves and restores.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import queue
import random
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

import Config
from Config import LLMConfig, TrainConfig, model_config
from checkpoint import (ROOT, UserError, check_writable, load_checkpoint, open_tokenizer, peak_flops,
                        previous_stage_checkpoint, resolve_device, save_atomic, stage_weights)
from dataset import DataError, epoch_batches, file_sha256, make_dataset, padding_fraction
from losses import stage_loss, to_device
from model import CompileOrEager, XiaoXin, training_flops_per_token

LENGTH_BUCKET = 64   # compiled runs pad batch lengths up to a multiple of this: a few shapes, a few graphs
CPU_COMPILE_MIN_TOKENS = 4_000_000   # --compile auto on CPU: below this, compile time outweighs its gain


# ---------------------------------------------------------------- configuration

def parse_args(stage: str, argv=None) -> tuple[TrainConfig, bool]:
    entry = Config.STAGES[stage]
    base = dataclasses.replace(entry.train, stage=stage)
    parser = argparse.ArgumentParser(prog=entry.script, description=f"XiaoXin {stage} stage; defaults come "
                                     f"from Config.py, flags override them for one run.",
                                     argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(base):
        if f.name in ("stage", "auto_batch_size"):
            continue
        default = getattr(base, f.name)
        if f.name == "batch_size":
            parser.add_argument("--batch_size", type=int_or_auto, help=f"sequences per micro-batch, or auto: the "
                                f"largest that fits, same tokens per step (default {default!r})")
        elif isinstance(default, bool):
            parser.add_argument(f"--{f.name}", action="store_true", help=f"(default {default})")
        else:
            parser.add_argument(f"--{f.name}", type=type(default), help=f"(default {default!r})")
    parser.add_argument("--resume", action="store_true", help="continue the latest checkpoint of this stage")
    try:
        given = vars(parser.parse_args(argv))
    except SystemExit as e:
        if e.code:  # argparse already printed the reason
            raise UserError("invalid command-line flags (see above).") from None
        raise
    resume = given.pop("resume", False)
    cfg = base
    if "data_path" not in given and not Path(real_data(stage)).is_file() and entry.demo:
        demo = dict(entry.demo)
        for key in ("data_path", "val_path"):   # the demo files ship with the repository
            if demo.get(key) and not Path(demo[key]).is_absolute():
                demo[key] = str(ROOT / demo[key])
        cfg = dataclasses.replace(cfg, **demo)
        settings = ", ".join(f"{k}={v}" for k, v in entry.demo.items() if k not in given and not k.endswith("_path"))
        data = f"on the bundled demo data {entry.demo['data_path']} " if "data_path" in entry.demo else ""
        whose = "" if base.data_path else f" (the data of the {entry.starts_from[0]} stage it starts from)"
        print(f"{real_data(stage)}{whose} not found, so training {data}with the demo profile "
              f"({settings}); download the real data with python scripts/download_data.py.", flush=True)
    if given.get("batch_size") == "auto":
        # The stage's micro-batch × --accumulation_steps stays the step's size; Trainer.choose_batch_size
        # splits it into the largest micro-batch that fits.
        given["batch_size"] = cfg.batch_size
        given["auto_batch_size"] = True
    cfg = dataclasses.replace(cfg, **given)
    validate(cfg)
    return cfg, resume


def int_or_auto(text: str):
    return text if text == "auto" else int(text)


def real_data(stage: str) -> str:
    """The file whose presence selects a stage's real defaults over its demo profile: its own
    --data_path default, or, for a stage that makes its own data (GRPO's curriculum prompts), that
    of the stage it starts from — a model distilled on the real data gets the real RL settings."""
    entry = Config.STAGES[stage]
    while not entry.train.data_path and entry.starts_from:
        entry = Config.STAGES[entry.starts_from[0]]
    return entry.train.data_path


def validate(cfg: TrainConfig):
    if cfg.model not in Config.MODELS:
        raise UserError(f"--model {cfg.model!r} is unknown; choose one of: {', '.join(Config.MODELS)}.")
    choices = {"dtype": ("auto", "float32", "bfloat16", "float16"), "compile": ("auto", "on", "off"),
               "tracker": ("swanlab", "none"), "optimizer": ("adamw", "muon")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"--{name} {getattr(cfg, name)!r} is not one of: {', '.join(allowed)}.")
    positive = ("epochs", "batch_size", "accumulation_steps", "max_seq_len", "log_step", "save_step", "keep_checkpoints")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(cfg, name)}).")
    if cfg.tokenize_workers < 0:
        raise UserError(f"--tokenize_workers must be 0 (all cores) or more (got {cfg.tokenize_workers}).")
    if cfg.reasoning_problems < 0:
        raise UserError(f"--reasoning_problems must be 0 or more (got {cfg.reasoning_problems}).")
    if cfg.reasoning_problems and Config.STAGES[cfg.stage].data_kind != "sft":
        raise UserError(f"--reasoning_problems adds conversations; the {cfg.stage} stage trains on plain text.")
    if not cfg.learning_rate > 0:
        raise UserError(f"--learning_rate must be positive (got {cfg.learning_rate}).")
    if cfg.max_seq_len > model_config(cfg.model).max_seq_len:
        raise UserError(f"--max_seq_len {cfg.max_seq_len} exceeds the model's max_seq_len "
                        f"{model_config(cfg.model).max_seq_len} (Config.py).")
    if cfg.data_path and not Path(cfg.data_path).is_file():
        raise UserError(f"--data_path {cfg.data_path} does not exist.")
    if cfg.val_path and not Path(cfg.val_path).is_file():
        raise UserError(f"--val_path {cfg.val_path} does not exist.")
    for flag in ("save_dir", "log_dir", "plot_dir", "cache_dir"):   # plot/cache default to folders in save_dir
        if getattr(cfg, flag):
            check_writable(getattr(cfg, flag), f"--{flag}")


# ---------------------------------------------------------------- optimisation

def numpy_rng_state():
    """numpy's global RNG state as plain Python values, so checkpoints hold no numpy objects
    and load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return [name, keys.tolist(), pos, has_gauss, cached]


def set_numpy_rng_state(state):
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def configure_optimizer(model, cfg: TrainConfig, device, fused: bool | None = None):
    """AdamW (weight decay on matrices only: decaying norms' gains toward 0 only hurts), or with
    --optimizer muon, Muon on the attention and MLP matrices and AdamW on the rest."""
    hidden = [p for name, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in name
              and "lm_head" not in name] if cfg.optimizer == "muon" else []
    taken = {id(p) for p in hidden}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in taken]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-8,
                              fused=device.type == "cuda" if fused is None else fused)
    if not hidden:
        return adamw
    # Muon (Jordan et al. 2024; Liu et al., arXiv:2502.16982) orthogonalises each matrix's momentum
    # by Newton-Schulz iterations. "match_rms_adamw" scales its update to AdamW's RMS, so one
    # --learning_rate serves both. The embedding (tied to the output head) stays with AdamW, as
    # Muon is meant for hidden matrices only.
    muon = torch.optim.Muon(hidden, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    return Optimizers(muon, adamw)


class Optimizers:
    """Several optimisers stepped as one: the loop, the GradScaler and resume see one object."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list:
        # Read anew each time: load_state_dict replaces an optimiser's group dicts.
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict):
        if len(state.get("optimizers", ())) != len(self.optimizers):
            raise UserError("this checkpoint was saved with another --optimizer; resume with the same one.")
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)


def lr_at(step: int, total: int, cfg: TrainConfig, warmup: int) -> float:
    """Linear warmup, then cosine decay to learning_rate × min_lr_ratio (arXiv:1608.03983)."""
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.learning_rate * cfg.min_lr_ratio
    return floor + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (cfg.learning_rate - floor)


# ---------------------------------------------------------------- micro-batch size (--batch_size auto)

AUTO_BATCH_MEMORY_SHARE = 0.9   # --batch_size auto leaves a tenth of the GPU free: allocator fragmentation, and
                                # a compiled graph's buffers differ from the eager probe's


def largest_fitting_batch(fits, per_step: int, start: int) -> int:
    """The largest micro-batch that divides `per_step` (the sequences of one optimiser step, so
    micro-batch × accumulation keeps the step's size exactly) and for which fits(size) is true;
    0 if not even 1 fits. Assumes fitting is monotone in the size. Starts at the largest divisor
    ≤ `start`, doubles while it fits (halves while it does not), then bisects: a few probes."""
    sizes = [d for d in range(1, per_step + 1) if per_step % d == 0]

    def at_most(x):     # index of the largest size ≤ x (0 if none)
        return max((k for k, d in enumerate(sizes) if d <= x), default=0)
    lo, hi = -1, len(sizes)          # sizes[lo] fits (-1: none known); sizes[hi] does not (len: none known)
    probe = at_most(start)
    while hi - lo > 1:
        if fits(sizes[probe]):
            lo = probe
        else:
            hi = probe
        if hi == len(sizes):
            probe = max(lo + 1, at_most(2 * sizes[lo]))
        elif lo == -1:
            probe = min(hi - 1, at_most(sizes[hi] // 2))
        else:
            probe = (lo + hi) // 2
    return sizes[lo] if lo >= 0 else 0


def cuda_batch_probe(model_config: LLMConfig, seq_len: int, device, autocast, optimizer_bytes_per_param: int):
    """fits(batch_size) for --batch_size auto on CUDA: one forward and backward of a fresh model of
    the run's size on batch_size × seq_len random tokens, with the stages' cross-entropy in the run's
    dtype; it fits if nothing ran out of memory and the peak, plus the optimiser's state (which the
    probe does not allocate), stays within AUTO_BATCH_MEMORY_SHARE of the memory free at the start.
    Eager, so on the safe side of a compiled step (compile fuses the fp32 logits away)."""
    from losses import masked_cross_entropy
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    budget = AUTO_BATCH_MEMORY_SHARE * (free + torch.cuda.memory_reserved(device))
    base = torch.cuda.memory_allocated(device)
    model = XiaoXin(model_config).to(device)
    optimizer_bytes = optimizer_bytes_per_param * model.num_parameters()

    def fits(batch_size: int) -> bool:
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.randint(model_config.vocab_size, (batch_size, seq_len + 1), device=device)
            with autocast():
                logits = model(x[:, :-1]).logits
            masked_cross_entropy(logits, x[:, 1:], torch.ones(batch_size, seq_len, device=device)).sum().backward()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        except torch.OutOfMemoryError:
            peak = math.inf
        finally:
            model.zero_grad(set_to_none=True)
            x = logits = None
            torch.cuda.empty_cache()
        return peak + optimizer_bytes <= budget
    fits.release = lambda: (model.cpu(), torch.cuda.empty_cache())
    return fits


# ---------------------------------------------------------------- distributed

@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


# ---------------------------------------------------------------- metrics

def add_metrics(pairs: dict, metrics: dict, device) -> dict:
    """pairs[name] += (sum, count) for each metric a loss returned, on the device: no host sync.
    (A Python number becomes a device tensor by a fill kernel, not a host-to-device copy.)"""
    def on_device(value):
        if isinstance(value, torch.Tensor):
            return value.detach().to(device, torch.float64).sum()
        return torch.full((), float(value), dtype=torch.float64, device=device)
    for name, (total, count) in metrics.items():
        pair = torch.stack([on_device(total), on_device(count)])
        pairs[name] = pairs[name] + pair if name in pairs else pair
    return pairs


def metric_means(pairs: dict, dist: "Dist") -> dict[str, float]:
    """sum / count of each metric, the sums and counts first added over ranks: one all-reduce and
    one host sync for all of them."""
    if not pairs:
        return {}
    names = sorted(pairs)
    stacked = torch.stack([pairs[n] for n in names])
    if dist.enabled:
        torch.distributed.all_reduce(stacked)
    return {n: s / c if c else float("nan") for n, (s, c) in zip(names, stacked.tolist())}


# ---------------------------------------------------------------- batches and step records off the critical path

class BatchPrefetcher:
    """Builds the micro-batches of the coming optimiser steps in a background thread, in step
    order, and on CUDA copies them to the device from pinned memory without blocking, so the GPU
    does not wait between steps while numpy gathers rows from the token cache. The batches are
    make(step) for step = first, first + 1, …: the same pure function of the step as without
    prefetching, so the order, and resume, do not change. A bounded queue keeps it at most
    `depth` steps ahead. (The copies go to the device's default stream, which the loop computes
    on, so a batch is on the device before any kernel that reads it runs.)"""

    def __init__(self, make, first: int, last: int, device, depth: int = 2):
        self.queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(make, first, last, device), daemon=True,
                                       name="batch-prefetch")
        self.thread.start()

    def _fill(self, make, first, last, device):
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)     # the current device is per thread
            for step in range(first, last):
                epoch, batches, n_loss_tokens = make(step)
                if not self._put((step, epoch, [to_device(b, device) for b in batches], n_loss_tokens)):
                    return
        except BaseException as e:   # raised in the loop by get(), with its traceback
            self._put(e)

    def _put(self, item) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def get(self, step: int):
        """(epoch, batches on the device, loss tokens of the step) of optimiser step `step`."""
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        made, *rest = item
        if made != step:
            raise RuntimeError(f"the batch prefetcher made step {made} where the loop asked for step {step}")
        return rest

    def close(self):
        self.stopped.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.1)   # unblock a put in progress
            except queue.Empty:
                pass
        self.thread.join()


@dataclasses.dataclass
class StepRecord:
    """What the host needs of one optimiser step: its loss and gradient norm (the NaN guard) and
    its metrics (the steps log). `values` stays a device tensor until read(); on CUDA
    copy_to_host() starts an asynchronous copy into pinned memory, so reading it one step
    later does not stall the GPU."""
    step: int                  # 1-based, as logged
    n_loss_tokens: int
    names: list                # metric names, in the order of their (sum, count) pairs in values
    lines: list                # each micro-batch's source lines
    values: torch.Tensor       # [loss sum, grad norm, metric sum, metric count, …] (float64)
    ready: object = None       # a CUDA event once the copy is queued

    def copy_to_host(self):
        if self.values.device.type == "cuda":
            self.values = self.values.to("cpu", non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()

    def read(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.values.tolist()


# ---------------------------------------------------------------- logging

class RunLog:
    """Console + log file + optional SwanLab, on the main rank only. `history` keeps every logged
    value for the plots and the resume checkpoint: training values under "step", validation
    values (val_*) under "val_step"."""

    def __init__(self, cfg: TrainConfig, enabled: bool):
        self.enabled = enabled
        self.file = None
        self.tracker = None
        self.history = {"step": [], "loss": [], "lr": [], "val_step": [], "val_loss": []}
        if not enabled:
            return
        Path(cfg.log_dir).mkdir(parents=True, exist_ok=True)
        self.file = open(Path(cfg.log_dir) / f"{Config.STAGES[cfg.stage].log_name}.log", "a", encoding="utf-8")
        if cfg.tracker == "swanlab":
            self.tracker = start_swanlab(cfg)

    def print(self, text: str):
        if not self.enabled:
            return
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def metrics(self, step: int, values: dict):
        if not self.enabled:
            return
        validation = all(k.startswith("val_") for k in values)
        self.history["val_step" if validation else "step"].append(step)
        for key, value in values.items():
            if key != "tokens_per_s":
                self.history.setdefault(key, []).append(value)
        if self.tracker is not None:
            self.tracker.log(values, step=step)

    def close(self):
        if self.tracker is not None:
            self.tracker.finish()
        if self.file:
            self.file.close()


def start_swanlab(cfg: TrainConfig):
    try:
        import swanlab
    except ImportError:
        print("swanlab is not installed; continuing without experiment tracking (pip install swanlab).")
        return None
    # Cloud only when the user has logged in (swanlab login) or set SWANLAB_API_KEY; offline otherwise,
    # because swanlab.init() without a mode would prompt for a key and fail without a terminal.
    mode = "cloud" if os.environ.get("SWANLAB_API_KEY") or swanlab_logged_in() else "offline"
    try:
        return swanlab.init(project="XiaoXin", experiment_name=f"{cfg.stage}-{cfg.model}", mode=mode,
                            logdir=str(Path(cfg.log_dir) / "swanlab"), config=dataclasses.asdict(cfg))
    except Exception as e:
        print(f"swanlab could not start ({e}); continuing without experiment tracking.")
        return None


def swanlab_logged_in() -> bool:
    try:
        from swanlab.env import get_save_dir
        return (Path(get_save_dir()) / ".netrc").is_file()
    except Exception:
        return (Path.home() / ".swanlab" / ".netrc").is_file()


def save_plot(history: dict, path: Path, title: str) -> bool:
    """Loss (with validation loss) and learning rate, then one panel per other logged value.
    Without matplotlib (an optional extra on a bare GPU box) there is no figure, and no failure:
    the weights are already saved and the numbers are in the stage's json and steps log."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    others = [k for k in history if k not in ("step", "loss", "lr", "val_step", "val_loss")]
    panels = 2 + len(others)
    cols = min(panels, 3)
    fig, axes = plt.subplots(-(-panels // cols), cols, figsize=(5 * cols, 3.6 * -(-panels // cols)), squeeze=False)
    axes = axes.flatten()
    ax1, ax2 = axes[0], axes[1]
    ax1.plot(history["step"], history["loss"], label="train")
    if history["val_step"] and history.get("val_loss"):
        ax1.plot(history["val_step"], history["val_loss"], "o-", label="validation")
    ax1.set_xlabel("optimiser step"); ax1.set_ylabel("loss"); ax1.legend(); ax1.set_title(title)
    ax2.plot(history["step"], history["lr"]); ax2.set_xlabel("optimiser step"); ax2.set_ylabel("learning rate")
    for ax, key in zip(axes[2:], others):
        validation = key.startswith("val_")
        ax.plot(history["val_step" if validation else "step"], history[key], "o-" if validation else "-")
        ax.set_xlabel("optimiser step"); ax.set_ylabel(key)
    for ax in axes[panels:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- the loop

class Trainer:
    # record_step flags a step whose loss jumps above 1.5× its running mean; a stage whose loss is
    # no error measure (a policy-gradient surrogate is centred on 0 and changes sign) turns it off.
    flag_loss_spikes = True
    # None: decided by the device (trainer.prefetch_wanted, defer_step_read below); True or False
    # forces it, e.g. for tests on the CPU.
    prefetch = None            # build the coming steps' batches in a background thread
    defer_step_read = None     # read each step's NaN guard and record a step late, skipping on the device

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg, self.resume = cfg, resume
        self.dist = init_distributed(cfg.device)
        self.device, self.dtype = resolve_device(cfg.device, cfg.dtype)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.log = RunLog(cfg, self.dist.main)
        self.stop_requested = False
        self.steps_file = None

    # -- setup
    def setup(self):
        cfg, log = self.cfg, self.log
        torch.manual_seed(cfg.seed); np.random.seed(cfg.seed); random.seed(cfg.seed)
        if self.resume and not list(self.checkpoint_dir().glob("step_*.pt")):
            raise UserError(f"--resume was given but {self.checkpoint_dir()} holds no checkpoint to resume from.")
        self.tok = open_tokenizer(cfg.tokenizer_dir)
        self.model_config = model_config(cfg.model)
        if self.tok.vocab_size != self.model_config.vocab_size:
            raise UserError(f"tokenizer {cfg.tokenizer_dir} has {self.tok.vocab_size} tokens but --model {cfg.model} "
                            f"expects {self.model_config.vocab_size}.")
        if cfg.auto_batch_size:
            self.choose_batch_size()
            cfg = self.cfg
        self.setup_data()
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup = cfg.warmup_iters
        if self.warmup >= self.total_steps:
            self.warmup = max(1, self.total_steps // 10)
            log.print(f"note: --warmup_iters {cfg.warmup_iters} ≥ the run's {self.total_steps} steps; warming up for {self.warmup}.")

        model = XiaoXin(self.model_config)
        self.init_path = None
        if not self.resume:
            self.init_path = Path(cfg.init_from) if cfg.init_from else previous_stage_checkpoint(cfg.stage, cfg.save_dir)
            if self.init_path is not None:
                ckpt = load_checkpoint(self.init_path, self.model_config, self.tok.hash)
                model.load_state_dict(ckpt["model"], strict=True)
                log.print(f"initialised from {self.init_path}")
        self.raw_model = model.to(self.device)
        want_deferred = self.device.type == "cuda" if self.defer_step_read is None else self.defer_step_read
        self.optimizer = configure_optimizer(self.raw_model, cfg, self.device, fused=self.device.type == "cuda"
                                             or want_deferred)
        # Reading a step's values one step late needs an optimiser that can skip a non-finite step
        # on the device (fused AdamW). Muon cannot: it keeps one host sync per step.
        self.defer_read = want_deferred and getattr(self.optimizer, "_step_supports_amp_scaling", False)
        if want_deferred and not self.defer_read:
            log.print(f"note: --optimizer {cfg.optimizer} cannot skip a non-finite step on the device, so each "
                      f"step's loss and gradient norm are read on the host before its update (one sync per step).")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        self.tokens_seen = {"computed": 0, "loss": 0}
        if self.resume:
            self.load_resume_state()
        self.model = self.raw_model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.model = DDP(self.model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None)

        self.loss = stage_loss(cfg.stage)

        def forward_loss(batch):
            return self.loss(self.model, batch)
        # Model and loss compile as one graph: the fp32 upcast and cross-entropy over the
        # 6400-way logits then fuse, which is most of what compile gains at this model size.
        self.forward_loss = CompileOrEager(forward_loss, log.print) if self.compile_wanted() else forward_loss
        # Under torch.compile every new batch shape is a new graph (tens of seconds each): compiled
        # runs fill every batch to --batch_size rows (the last of an epoch too) and pad lengths to
        # a multiple of LENGTH_BUCKET, and where lengths vary (conversations) the length is
        # compiled as a symbol, so one graph serves all of them. Eager runs pad nothing: there
        # padding would only cost time.
        self.stable_shapes = isinstance(self.forward_loss, CompileOrEager)
        self.dynamic_length = self.stable_shapes and getattr(self, "bucket", False)

        self.open_steps_file()
        n_params = self.raw_model.num_parameters()
        tokens_per_step = cfg.batch_size * cfg.accumulation_steps * self.dist.world * cfg.max_seq_len
        log.print(f"{cfg.stage}: model {cfg.model} ({n_params / 1e6:.2f}M parameters), device {self.device}, "
                  f"dtype {str(self.dtype).replace('torch.', '')}, "
                  f"compile {'on' if isinstance(self.forward_loss, CompileOrEager) else 'off'}, world_size={self.dist.world}, effective batch "
                  f"{cfg.batch_size}×{cfg.accumulation_steps}×{self.dist.world} = "
                  f"{cfg.batch_size * cfg.accumulation_steps * self.dist.world} sequences ≤ {tokens_per_step} tokens; "
                  f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps")

    def choose_batch_size(self):
        """--batch_size auto: the largest micro-batch that fits this GPU (largest_fitting_batch over
        batch_fits_probe), with --accumulation_steps adjusted so the optimiser step keeps the stage's
        batch_size × accumulation_steps sequences. A resumed run keeps the split it started with
        (its checkpoint's), so it sees the same batches. Without a probe (CPU, MPS), the stage's
        default stays."""
        cfg = self.cfg
        per_step = cfg.batch_size * cfg.accumulation_steps
        if self.resume:
            files = sorted(self.checkpoint_dir().glob("step_*.pt"))
            chosen = load_checkpoint(files[-1])["train_config"] if files else None
            if chosen:
                self.cfg = dataclasses.replace(cfg, batch_size=chosen["batch_size"],
                                               accumulation_steps=chosen["accumulation_steps"])
                self.log.print(f"--batch_size auto: {chosen['batch_size']} × accumulation {chosen['accumulation_steps']}, "
                               f"as in the checkpoint this run resumes")
                return
        fits = self.batch_fits_probe()
        if fits is None:
            self.log.print(f"note: --batch_size auto measures GPU memory; on {self.device.type} it keeps the stage's "
                           f"{cfg.batch_size} × accumulation {cfg.accumulation_steps}.")
            return
        tried = {}
        batch = largest_fitting_batch(lambda b: tried.setdefault(b, fits(b)), per_step, cfg.batch_size)
        getattr(fits, "release", lambda: None)()
        if batch == 0:
            raise UserError(f"--batch_size auto: not even one sequence of --max_seq_len {cfg.max_seq_len} fits in "
                            f"{self.device} memory with --model {cfg.model}; lower --max_seq_len or choose a smaller model.")
        self.cfg = dataclasses.replace(cfg, batch_size=batch, accumulation_steps=per_step // batch)
        self.log.print(f"--batch_size auto: {batch} × accumulation {per_step // batch} = {per_step} sequences per step "
                       f"(tried: {', '.join(f'{b} ' + ('fits' if ok else 'does not') for b, ok in sorted(tried.items()))})")

    def batch_fits_probe(self):
        """fits(batch_size) -> bool for --batch_size auto, or None where memory cannot be measured."""
        if self.device.type != "cuda":
            return None
        per_param = 8 + (4 if self.dist.enabled else 0)    # AdamW's two fp32 moments; DDP's gradient buckets
        return cuda_batch_probe(self.model_config, self.cfg.max_seq_len, self.device, self.autocast, per_param)

    def setup_data(self):
        """The stage's jsonl files as token caches (built once): self.train_data, self.val_data,
        and self.steps_per_epoch."""
        cfg = self.cfg
        kind = Config.STAGES[cfg.stage].data_kind
        if not cfg.data_path and not cfg.reasoning_problems:
            raise UserError(f"--data_path is empty; the {cfg.stage} stage trains on a jsonl file.")
        cache_root = cfg.cache_dir or str(Path(cfg.save_dir) / "cache")
        data_path = cfg.data_path
        try:
            # Rank 0 tokenises; the others wait and then open the finished cache.
            if self.dist.enabled and not self.dist.main:
                torch.distributed.barrier()
            if cfg.reasoning_problems:
                data_path = self.curriculum_path(cache_root)
            self.train_data = make_dataset(data_path, kind, self.tok, cache_root, cfg.max_seq_len,
                                           cfg.skip_bad_lines, quiet=not self.dist.main, workers=cfg.tokenize_workers)
            self.val_data = make_dataset(cfg.val_path, kind, self.tok, cache_root, cfg.max_seq_len, cfg.skip_bad_lines,
                                         quiet=not self.dist.main, workers=cfg.tokenize_workers) if cfg.val_path else None
            if self.dist.enabled and self.dist.main:
                torch.distributed.barrier()
        except DataError as e:
            raise UserError(str(e)) from None
        self.bucket = kind == "sft"
        micro_per_epoch = len(epoch_batches(self.train_data, cfg.batch_size, cfg.seed, 0, bucket=self.bucket))
        self.steps_per_epoch = -(-micro_per_epoch // (cfg.accumulation_steps * self.dist.world))
        data_desc = f"{self.train_data.num_samples} {'rows' if kind == 'pretrain' else 'conversations'}"
        if self.bucket:
            batches = epoch_batches(self.train_data, cfg.batch_size, cfg.seed, 0, bucket=True)
            data_desc += f", padding {padding_fraction(self.train_data, batches):.1%} of computed tokens (length-bucketed)"
        self.log.print(f"data: {data_path} → {self.train_data.cache.meta['num_tokens']} tokens, {data_desc}")

    def curriculum_path(self, cache_root) -> Path:
        """--data_path's records plus --reasoning_problems generated problems, written once under
        the cache directory (never into the repository); the held-out evaluation questions are
        excluded by exact text, so the report card measures problems the model never saw."""
        from scripts import gen_reasoning
        cfg = self.cfg
        # Named by everything its bytes depend on: the base records, the held-out set it avoids,
        # the generator's code, the count and the seed.
        inputs = [p for p in (cfg.data_path, gen_reasoning.EVAL_FILE, gen_reasoning.__file__) if p and Path(p).is_file()]
        digest = hashlib.sha256("".join(file_sha256(p) for p in inputs).encode()).hexdigest()[:12]
        stem = Path(cfg.data_path).stem if cfg.data_path else "curriculum"
        path = Path(cache_root) / "curriculum" / f"{stem}+reasoning{cfg.reasoning_problems}-seed{cfg.seed}-{digest}.jsonl"
        if not path.is_file():
            self.log.print(f"generating {cfg.reasoning_problems} reasoning problems (seed {cfg.seed}) into {path}")
        return gen_reasoning.write_curriculum(path, cfg.reasoning_problems, cfg.seed, base_path=cfg.data_path or None)

    def data_signature(self) -> dict:
        return {"data": self.train_data.cache.meta["source"]["sha256"]}

    def compile_wanted(self) -> bool:
        mode = self.cfg.compile
        if mode == "off":
            return False
        if mode == "auto" and self.device.type != "cuda":
            # On CPU compile pays ~1.7× (scripts/bench.py) but costs about a minute per stage
            # (more when SFT batch shapes vary), so auto uses it only for runs long enough to win.
            planned = self.total_steps * self.cfg.batch_size * self.cfg.accumulation_steps * self.cfg.max_seq_len
            if planned < CPU_COMPILE_MIN_TOKENS:
                return False
        if sys.platform == "win32":
            self.log.print("warning: torch.compile is unavailable on Windows; running eagerly.")
            return False
        if self.device.type == "cuda":
            try:
                import triton  # noqa: F401
            except ImportError:
                self.log.print("warning: torch.compile needs triton, which is not installed; running eagerly.")
                return False
        return True

    # -- checkpoints
    def checkpoint_dir(self) -> Path:
        return Path(self.cfg.save_dir) / "checkpoints" / self.cfg.stage

    def plan_signature(self) -> dict:
        """What must match for a resumed run to be the same run."""
        c = self.cfg
        return {"model": self.model_config.to_dict(), "batch_size": c.batch_size, "max_seq_len": c.max_seq_len,
                "seed": c.seed, "epochs": c.epochs, "tokenizer": self.tok.hash, **self.data_signature()}

    def save_resume_state(self):
        if not self.dist.main:
            return
        if self.steps_file is not None:
            self.steps_file.flush()    # the steps log on disk reaches the checkpoint (open_steps_file)
        state = {
            "model": self.raw_model.state_dict(), "config": self.model_config.to_dict(),
            "tokenizer_hash": self.tok.hash, "stage": self.cfg.stage,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.step, "world_size": self.dist.world, "tokens_seen": self.tokens_seen,
            "accumulation_steps": self.cfg.accumulation_steps, "plan": self.plan_signature(),
            "init_from": str(self.init_path or ""),
            "history": self.log.history, "train_config": dataclasses.asdict(self.cfg),
            "stage_state": self.stage_state(),
            "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        path = self.checkpoint_dir() / f"step_{self.step:07d}.pt"
        save_atomic(state, path)
        old = sorted(self.checkpoint_dir().glob("step_*.pt"))[:-self.cfg.keep_checkpoints]
        for p in old:
            p.unlink(missing_ok=True)
        self.log.print(f"saved checkpoint {path}")

    def stage_state(self) -> dict:
        """A stage's own resume state (see the module docstring); none for data-file stages."""
        return {}

    def load_stage_state(self, state: dict):
        pass

    def load_resume_state(self):
        files = sorted(self.checkpoint_dir().glob("step_*.pt"))
        if not files:
            raise UserError(f"--resume was given but {self.checkpoint_dir()} holds no checkpoint to resume from.")
        path = files[-1]
        ckpt = load_checkpoint(path, self.model_config, self.tok.hash)
        plan = self.plan_signature()
        for key, value in ckpt["plan"].items():
            if plan.get(key) != value:
                raise UserError(f"cannot resume from {path}: its {key} ({value}) differs from this run's "
                                f"({plan.get(key)}); resume with the same flags and data.")
        self.raw_model.load_state_dict(ckpt["model"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = ckpt["step"]
        self.tokens_seen = ckpt.get("tokens_seen", {"computed": 0, "loss": 0})
        self.init_path = Path(ckpt["init_from"]) if ckpt.get("init_from") else None
        if ckpt["accumulation_steps"] * ckpt["world_size"] != self.cfg.accumulation_steps * self.dist.world:
            raise UserError(f"cannot resume from {path}: it used accumulation {ckpt['accumulation_steps']} × "
                            f"world size {ckpt['world_size']}; keep that product the same "
                            f"(e.g. --accumulation_steps {ckpt['accumulation_steps'] * ckpt['world_size'] // self.dist.world}) "
                            f"so the run sees the same batches.")
        self.log.history.update(ckpt.get("history", {}))
        self.load_stage_state(ckpt.get("stage_state") or {})
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"]); set_numpy_rng_state(rng["numpy"]); random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.log.print(f"resumed from {path} at step {self.step}")

    def save_final(self, results: dict):
        if not self.dist.main:
            return
        cfg = self.cfg
        path = stage_weights(cfg.save_dir, cfg.stage)
        save_atomic({"model": self.raw_model.state_dict(), "config": self.model_config.to_dict(),
                     "tokenizer_hash": self.tok.hash, "stage": cfg.stage}, path)
        record = {"stage": cfg.stage, "train_config": dataclasses.asdict(cfg),
                  "model_config": self.model_config.to_dict(), "init_from": str(self.init_path or ""),
                  "tokenizer_hash": self.tok.hash, "results": results, "history": self.log.history}
        path.with_suffix(".json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
        self.log.print(f"saved {path}")

    # -- batches
    def step_batches(self, step: int):
        """This rank's micro-batches for optimiser step `step`, and the global loss-token count."""
        cfg = self.cfg
        per_step = cfg.accumulation_steps * self.dist.world
        epoch, first = divmod(step * per_step, self.steps_per_epoch * per_step)
        plan = self.epoch_plan(epoch)
        chunk = plan[first:first + per_step]
        mine = [chunk[i] for i in range(self.dist.rank, len(chunk), self.dist.world)]
        shape = {"rows": cfg.batch_size, "length_multiple": LENGTH_BUCKET} if self.stable_shapes else {}
        batches = [self.train_data.batch(idx, **shape) for idx in mine]
        # A rank left without a micro-batch at the end of an epoch runs a zero-loss one so
        # every rank takes part in the same gradient all-reduce.
        if not batches:
            empty = self.train_data.batch(plan[0], **shape)
            empty.loss_mask[:] = 0
            batches = [empty]
        count = int(sum(self.train_data.loss_tokens[idx].sum() for idx in chunk))
        return epoch, batches, count

    def epoch_plan(self, epoch: int):
        if getattr(self, "_plan_epoch", None) != epoch:
            self._plan = epoch_batches(self.train_data, self.cfg.batch_size, self.cfg.seed, epoch, bucket=self.bucket)
            self._plan_epoch = epoch
        return self._plan

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The stage's loss on --val_path, per loss-mask token over all ranks, as {"val_loss": …}
        (and the loss's metrics as val_<name>); {} without validation data."""
        if self.val_data is None:
            return {}
        self.model.eval()
        pairs = {}
        plan = epoch_batches(self.val_data, self.cfg.batch_size, 0, 0, shuffle=False, bucket=self.bucket)
        for idx in plan[self.dist.rank::self.dist.world]:
            b = to_device(self.val_data.batch(idx), self.device)
            with self.autocast():
                row_sums, metrics = self.loss(self.raw_model, b)
            add_metrics(pairs, {"loss": (row_sums.sum(), b.loss_mask.sum()), **metrics}, self.device)
        if not pairs and self.dist.enabled:   # a rank with no validation batch still joins the all-reduce
            add_metrics(pairs, {"loss": (0.0, 0.0)}, self.device)
        self.model.train()
        return {f"val_{k}": v for k, v in metric_means(pairs, self.dist).items()}

    # -- main loop
    def train(self) -> dict:
        cfg, log = self.cfg, self.log
        self.setup()
        self.install_signal_handlers()
        self.model.train()
        peak, device_name = peak_flops(self.device)
        flops_tok = training_flops_per_token(self.model_config, cfg.max_seq_len)
        t_start, first_step = time.perf_counter(), self.step
        t_log, tokens_since_log, steps_since_log = t_start, 0, 0
        loss_accum, metric_accum = torch.zeros((), device=self.device), {}
        self.bad_in_a_row, self.bad_total = 0, 0
        pending = None      # the previous step's record, when its values are read one step late
        last_val = {}
        world = self.dist.world
        self.prefetcher = BatchPrefetcher(self.step_batches, self.step, self.total_steps, self.device) \
            if self.prefetch_wanted() else None
        while self.step < self.total_steps:
            step = self.step
            lr = lr_at(step, self.total_steps, cfg, self.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            epoch, batches, n_loss_tokens = (self.prefetcher.get(step) if self.prefetcher else self.step_batches(step))
            self.tokens_seen["loss"] += int(n_loss_tokens)
            try:
                step_loss, step_metrics, computed = self.accumulate(batches, n_loss_tokens)
            except Exception as e:
                if not self.fall_back_to_eager(e):
                    raise
                step_loss, step_metrics, computed = self.accumulate(batches, n_loss_tokens)
            tokens_since_log += computed
            self.tokens_seen["computed"] += computed * world
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
            names = sorted(step_metrics)
            record = StepRecord(step + 1, n_loss_tokens, names, [b.lines for b in batches],
                                torch.cat([torch.stack([step_loss.double(), grad_norm.double()]),
                                           *(step_metrics[n] for n in names)]))
            if self.defer_read:
                # No host sync: the optimiser skips a non-finite step on the device, and the step's
                # values reach the host while the next step computes; they are read then.
                self.step_unless_non_finite(step_loss, grad_norm)
                record.copy_to_host()
                if pending is not None:
                    self.finish_step(pending)
                pending = record
            else:
                # One host sync per optimiser step (never per micro-step): the finiteness check and
                # the per-step record that traces loss spikes back to source lines.
                finite = self.finish_step(record)
                if finite or self.dtype == torch.float16:
                    # fp16: the GradScaler itself skips steps with inf gradients while it calibrates.
                    self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            loss_accum += step_loss / max(n_loss_tokens, 1)
            for name, pair in step_metrics.items():
                metric_accum[name] = metric_accum[name] + pair if name in metric_accum else pair
            steps_since_log += 1
            self.step += 1
            epoch_end = self.step % self.steps_per_epoch == 0

            if self.step % cfg.log_step == 0 or self.step == self.total_steps:
                if self.dist.enabled:
                    torch.distributed.all_reduce(loss_accum)
                loss = float(loss_accum) / steps_since_log  # one host sync per log interval
                means = metric_means(metric_accum, self.dist)
                now = time.perf_counter()
                tok_s = tokens_since_log * world / (now - t_log)
                eta = (now - t_start) / max(1, self.step - first_step) * (self.total_steps - self.step)
                mfu = f" mfu {tok_s * flops_tok / peak:.1%}" if peak else ""
                shown = "".join(f" {k} {v:.4g}" for k, v in means.items())
                log.print(f"epoch {epoch + 1}/{cfg.epochs} step {self.step}/{self.total_steps} loss {loss:.4f}{shown} "
                          f"lr {lr:.2e} {tok_s:,.0f} tok/s{mfu} eta {format_seconds(eta)}")
                log.metrics(self.step, {"loss": loss, **means, "lr": lr, "tokens_per_s": tok_s})
                loss_accum.zero_()
                metric_accum = {}
                t_log, tokens_since_log, steps_since_log = now, 0, 0
            if (cfg.eval_step and self.step % cfg.eval_step == 0) or epoch_end or self.step == self.total_steps:
                values = self.evaluate()
                if values:
                    last_val = values
                    log.print(f"step {self.step}: validation " +
                              ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in values.items()))
                    log.metrics(self.step, values)
            saving = (self.step % cfg.save_step == 0 and self.step < self.total_steps) or self.stop_requested
            if pending is not None and (saving or self.step == self.total_steps):
                self.finish_step(pending)     # the steps log reaches each checkpoint and the end
                pending = None
            if self.step % cfg.save_step == 0 and self.step < self.total_steps:
                self.save_resume_state()
            if self.stop_requested:
                self.save_resume_state()
                log.print(f"stopped at step {self.step}; continue with python {Config.STAGES[cfg.stage].script} --resume")
                raise KeyboardInterrupt
        self.close_prefetcher()
        if isinstance(self.forward_loss, CompileOrEager) and self.forward_loss.works:
            log.print(f"compiled {self.forward_loss.graphs} graphs")
        results = {"steps": self.step, "final_train_loss": self.log.history["loss"][-1] if self.log.history["loss"] else None,
                   "final_val_loss": None, **{f"final_{k}": v for k, v in last_val.items()},
                   "skipped_steps": self.bad_total, "wall_seconds": round(time.perf_counter() - t_start, 1),
                   # computed: every position of every batch (padding included, × ranks); loss: loss-mask tokens
                   "tokens": dict(self.tokens_seen),
                   "compiled_graphs": self.forward_loss.graphs if isinstance(self.forward_loss, CompileOrEager) else None}
        self.save_final(results)
        if self.dist.main and self.log.history["step"]:
            plot = Path(cfg.plot_dir or Path(cfg.save_dir) / "plots") / f"{cfg.stage}_loss.png"
            if save_plot(self.log.history, plot, f"XiaoXin {cfg.stage} ({cfg.model})"):
                log.print(f"wrote {plot}")
            else:
                log.print("note: matplotlib is not installed, so no loss plot (pip install matplotlib); "
                          "the curve is in the stage's json and steps log.")
        return results

    def accumulate(self, batches, n_loss_tokens: int):
        """Forward and backward over this rank's micro-batches of one optimiser step: the summed
        loss, the metrics (device tensors) and the positions computed."""
        world = self.dist.world
        step_loss, step_metrics, computed = torch.zeros((), device=self.device), {}, 0
        for i, b in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.model.no_sync()
            with sync:
                b = to_device(b, self.device)
                if self.dynamic_length:
                    for t in (b.input_ids, b.targets, b.loss_mask):
                        torch._dynamo.mark_dynamic(t, 1)
                with self.autocast():
                    row_sums, metrics = self.forward_loss(b)
                loss_sum = row_sums.sum()
                # DDP averages gradients over ranks; × world turns that into a sum over ranks.
                self.scaler.scale(loss_sum * (world / max(n_loss_tokens, 1))).backward()
            step_loss += loss_sum.detach()
            add_metrics(step_metrics, metrics, self.device)
            computed += int(b.loss_mask.shape[0] * b.loss_mask.shape[1])
        return step_loss, step_metrics, computed

    def fall_back_to_eager(self, error: Exception) -> bool:
        """AOTAutograd compiles the backward lazily, at the first .backward() of each graph, so an
        inductor/Triton failure can surface there, after CompileOrEager's forward check passed.
        Then: one warning, the step's gradients dropped, and the step run again eagerly."""
        if not isinstance(self.forward_loss, CompileOrEager) or self.forward_loss.works is False \
                or isinstance(error, torch.OutOfMemoryError):
            return False
        self.log.print(f"warning: torch.compile failed in the backward pass ({type(error).__name__}: "
                       f"{str(error).splitlines()[0][:160] if str(error) else ''}); running eagerly. "
                       f"Pass --compile off to skip the attempt.")
        self.forward_loss.works = False
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def finish_step(self, record: StepRecord) -> bool:
        """Read a step's values on the host (the one sync of a step, or none where it was copied a
        step ago), append its record to the steps log, count it if it was non-finite and stop
        after --max_bad_steps such steps in a row. Returns whether it was finite."""
        cfg, world = self.cfg, self.dist.world
        host = record.read()
        step_value = host[0] / max(record.n_loss_tokens, 1) * world
        finite = math.isfinite(host[1]) and math.isfinite(step_value)
        self.record_step(record.step, step_value, {n: s / c if c else float("nan") for n, s, c in
                                                   zip(record.names, host[2::2], host[3::2])}, record.lines)
        if finite:
            self.bad_in_a_row = 0
            return True
        self.bad_in_a_row += 1
        self.bad_total += 1
        lines = sorted(set(int(x) for batch_lines in record.lines for x in batch_lines))
        self.log.print(f"step {record.step}: non-finite loss or gradient, step skipped ({self.bad_total} so far); "
                       f"source lines {format_lines(lines)} of {cfg.data_path}")
        if self.bad_in_a_row >= cfg.max_bad_steps:
            raise UserError(f"{self.bad_in_a_row} optimiser steps in a row had a non-finite loss or gradient; "
                            f"the last one came from lines {format_lines(lines)} of {cfg.data_path}. "
                            f"Check that data, or lower --learning_rate.")
        return False

    def step_unless_non_finite(self, step_loss, grad_norm):
        """The optimiser step, skipped on the device when the loss or the gradient norm is not
        finite: fused AdamW reads a `found_inf` flag and leaves weights, moments and step count
        untouched where it is 1 (the hook torch's GradScaler uses for fused optimisers), so the
        host need not look first. fp16: the GradScaler sets that flag itself."""
        if self.dtype == torch.float16:
            self.scaler.step(self.optimizer)
            return
        optimizer = self.optimizer
        optimizer.grad_scale = None
        optimizer.found_inf = (~(torch.isfinite(step_loss) & torch.isfinite(grad_norm))).float()
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf

    def prefetch_wanted(self) -> bool:
        """Batches are built in a background thread (BatchPrefetcher) on CUDA, where building them
        on the main thread leaves the GPU idle, and only for batches read from the token cache:
        a stage that makes its own step_batches (GRPO samples them from the model being trained)
        may need this step's update before it can make the next step's batches."""
        if self.prefetch is not None:
            return self.prefetch
        own = getattr(self.step_batches, "__func__", None) is Trainer.step_batches
        return own and self.device.type == "cuda"

    def close_prefetcher(self):
        if getattr(self, "prefetcher", None) is not None:
            self.prefetcher.close()
            self.prefetcher = None

    def record_step(self, step: int, loss: float, metrics: dict, batch_lines: list):
        """Append {step, loss, this rank's metrics, first/last source line} to log/<Stage>_steps.jsonl;
        a step whose loss jumps above 1.5× the running mean also lists every source line, so the
        samples behind a spike can be found (scripts/data_doctor.py loss scores them one by one)."""
        if not self.dist.main:
            return
        lines = np.unique(np.concatenate([np.asarray(x, dtype=np.int64) for x in batch_lines]))
        record = {"step": step, "loss": round(loss, 5), **{k: round(v, 5) for k, v in metrics.items()},
                  "lines": [int(lines[0]), int(lines[-1])] if len(lines) else []}
        mean = getattr(self, "_loss_mean", None)
        if not math.isfinite(loss) or (self.flag_loss_spikes and mean is not None and step > self.warmup
                                       and loss > 1.5 * mean):
            record["spike"] = True
            record["all_lines"] = lines.tolist()
        if math.isfinite(loss):
            self._loss_mean = loss if mean is None else 0.95 * mean + 0.05 * loss
        self.steps_file.write(json.dumps(record) + "\n")
        if step % self.cfg.log_step == 0:
            self.steps_file.flush()

    def open_steps_file(self):
        """log/<Stage>_steps.jsonl holds each step of this run once: a fresh run starts it anew, and
        a resumed run drops the records past its checkpoint (steps run after the last save and
        before a crash or kill, which it runs again) and any line a kill cut short."""
        if not self.dist.main:
            return
        path = Path(self.cfg.log_dir) / f"{Config.STAGES[self.cfg.stage].log_name}_steps.jsonl"
        kept = []
        if self.resume and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= self.step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    pass
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        self.steps_file = open(path, "a", encoding="utf-8")

    def install_signal_handlers(self):
        def request_stop(signum, frame):
            if self.stop_requested:  # second Ctrl-C: give up at once
                raise KeyboardInterrupt
            self.stop_requested = True
            self.log.print("stop requested; saving a checkpoint after this step (Ctrl-C again to abort)")
        try:
            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGTERM, request_stop)
        except ValueError:  # not the main thread (e.g. called from a test harness thread)
            pass

    def close(self):
        self.close_prefetcher()
        self.log.close()
        if self.steps_file is not None:
            self.steps_file.close()
        if self.dist.enabled and torch.distributed.is_initialized():
            # Wait for rank 0 to finish writing before any rank tears the group down: a rank that
            # leaves early makes gloo abort the others ("connection closed by peer").
            try:
                torch.distributed.barrier()
            finally:
                torch.distributed.destroy_process_group()


def format_lines(lines, limit: int = 12) -> str:
    shown = ", ".join(str(x) for x in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def format_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_stage(stage: str, argv=None, trainer_class=None) -> int:
    """Entry point of every stage script: returns a process exit code. `trainer_class`: a
    Trainer subclass for a stage that makes its own batches (see the module docstring)."""
    trainer = None
    old_handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    try:
        cfg, resume = parse_args(stage, argv)
        trainer = (trainer_class or Trainer)(cfg, resume)
        trainer.train()
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except torch.OutOfMemoryError:
        print(f"error: out of GPU memory; try a smaller --batch_size with more --accumulation_steps "
              f"(the effective batch stays the same).", file=sys.stderr, flush=True)
        return 3
    finally:
        if trainer is not None:
            trainer.close()
        try:
            signal.signal(signal.SIGINT, old_handlers[0]); signal.signal(signal.SIGTERM, old_handlers[1])
        except ValueError:
            pass


def run_script(stage: str, argv=None) -> int:
    """Run a stage's script (Config.STAGES[stage].script) in this process and return its exit
    code: how the demo runner and the tests chain the stages."""
    script = Path(Config.STAGES[stage].script)
    return runpy.run_path(str(script if script.is_absolute() else ROOT / script))["main"](argv)
