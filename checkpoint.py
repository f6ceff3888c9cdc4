"""Checkpoints and the rest of what every program shares: errors, device, tokenizer, the CLI wrapper.

Nothing here trains or chats; the stage scripts, chat, export, evaluation, serving and the
data tools all come here for the same few things:

    from checkpoint import UserError, find_stage_checkpoint, load_model, open_tokenizer, resolve_device, run_cli
    tok = open_tokenizer("XiaoXin_tokenizer")
    model, ckpt = load_model(find_stage_checkpoint("out", None), None, tok.hash)   # latest stage, strictly
    device, dtype = resolve_device("auto", "auto", training=False)

A stage writes `<save_dir>/<stage>.pt`: {"model": state dict, "config": LLMConfig as a dict,
"tokenizer_hash", "stage"}; resume checkpoints add optimiser, scaler, step and RNG state.
Every load is `torch.load(weights_only=True)` followed by a strict `load_state_dict`.
"""
import os
import pickle
import sys
import tempfile
from pathlib import Path

import torch

import Config
from Config import LLMConfig

ROOT = Path(__file__).resolve().parent


class UserError(Exception):
    """A mistake the user can fix; printed as one sentence, no traceback."""


def run_cli(parse, run, argv=None) -> int:
    """The body of every program's main(): `parse(argv)` the flags (argparse prints its own
    complaint: exit 2, or 0 for --help), then `run(args)`, whose int is the exit code (anything
    else: 0). A UserError (or a dataset.DataError) becomes one line `error: …` on stderr and
    exit 2; Ctrl-C exits 130; a closed output pipe ends quietly."""
    from dataset import DataError
    try:
        args = parse(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        code = run(args)
        return code if isinstance(code, int) else 0
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # output piped into head and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# ---------------------------------------------------------------- device, model size, tokenizer

def resolve_device(device_name: str, dtype_name: str, training: bool = True) -> tuple[torch.device, torch.dtype]:
    """--device/--dtype to torch objects. "auto" device: CUDA when available, else CPU. "auto" dtype:
    bf16 where the GPU supports it (else fp16); on CPU bf16 for training when oneDNN has fast bf16
    (AMX/AVX512-BF16), else fp32 (and always fp32 for inference, where bf16 decoding is slower)."""
    name = "cuda" if device_name == "auto" and torch.cuda.is_available() else \
        ("cpu" if device_name == "auto" else device_name)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {device_name!r} is not a device torch knows (try cpu or cuda).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device_name} was asked for but CUDA is not available here.")
    dtype = dtype_name
    if dtype == "auto":
        if device.type == "cuda":
            dtype = "bfloat16" if gpu_has_native_bf16() else "float16"
        else:
            dtype = "bfloat16" if training and cpu_has_fast_bf16() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype {dtype!r} is not one of: auto, float32, bfloat16, float16.")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bfloat16 is not supported by this GPU; use --dtype float16.")
    if dtype == "float16" and device.type == "cpu" and training:
        raise UserError("--dtype float16 is for GPUs; on CPU use bfloat16 or float32.")
    return device, getattr(torch, dtype)


# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets, for MFU,
# matched in this order against torch.cuda.get_device_name(): the H100 PCIe card runs at lower
# clocks and power than the SXM module ("NVIDIA H100 80GB HBM3"), and NVL sits between them.
# GeForce cards: the rate with fp32 accumulation, which is what autocast uses.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("H800 PCIe", 756.0), ("H800", 989.4), ("GH200", 989.4), ("A100", 312.0), ("A800", 312.0),
                    ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
                    ("RTX 4090", 165.2), ("RTX 4080", 97.5), ("RTX 3090", 71.0), ("RTX 5090", 209.5),
                    ("A6000", 154.8), ("V100", 125.0), ("T4", 65.0)]   # V100/T4: fp16 (no bf16 units)


def peak_flops(device) -> tuple[float | None, str]:
    """(datasheet peak FLOP/s, device name) of a CUDA device; (None, name) where unknown or on CPU."""
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, name
    return None, name


def gpu_has_native_bf16() -> bool:
    """bf16 in hardware (Ampere and later). torch.cuda.is_bf16_supported() also says yes where bf16 is
    only emulated (T4, V100, 20-series), which is slower than fp16 with a GradScaler there."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:       # torch without the argument: compute capability 8.0+ has native bf16
        return torch.cuda.get_device_capability()[0] >= 8


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def expected_config(model_name: str | None) -> LLMConfig | None:
    """The LLMConfig --model NAME promises, to check a checkpoint against (None: accept any)."""
    if not model_name:
        return None
    if model_name not in Config.MODELS:
        raise UserError(f"--model {model_name!r} is unknown; choose one of: {', '.join(Config.MODELS)}.")
    return Config.model_config(model_name)


def open_tokenizer(directory):
    """dataset.load_tokenizer on --tokenizer_dir, found relative to the repository when it is not a
    folder here (so the shipped XiaoXin_tokenizer works from any working directory)."""
    from dataset import DataError, load_tokenizer
    directory = Path(directory)
    if not directory.is_dir() and not directory.is_absolute() and (ROOT / directory).is_dir():
        directory = ROOT / directory
    try:
        return load_tokenizer(directory)
    except DataError as e:
        raise UserError(str(e)) from None


# ---------------------------------------------------------------- files

def check_writable(folder, flag: str):
    """Create `folder` if needed and make (and remove) a file in it, so that a read-only location
    (a flag's value, or a default folder in a read-only checkout) is one sentence naming the flag
    before any work is done, not a traceback at the first save."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UserError(f"{flag} {folder} is not writable ({e.strerror or e}); pass {flag} a folder you can "
                        f"write to.") from None


def stage_weights(save_dir, stage: str) -> Path:
    return Path(save_dir) / f"{stage}.pt"


def save_atomic(obj, path: Path):
    """Write to a temp file then rename: a kill during the save never corrupts `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, config: LLMConfig | None = None, tokenizer_hash: str | None = None) -> dict:
    """Read a XiaoXin checkpoint with weights_only=True: tensors and plain data only, so a
    checkpoint someone hands you cannot run code when loaded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"checkpoint {path} holds objects other than tensors and plain data "
                        f"({str(e).splitlines()[0][:160]}); refusing to unpickle it.") from None
    except Exception as e:
        raise UserError(f"checkpoint {path} could not be read ({type(e).__name__}); it may be truncated.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path} is not a XiaoXin checkpoint.")
    if config is not None and ckpt["config"] != config.to_dict():
        diff = {k: (v, config.to_dict().get(k)) for k, v in ckpt["config"].items() if config.to_dict().get(k) != v}
        raise UserError(f"checkpoint {path} was trained with a different model config "
                        f"({', '.join(f'{k}: checkpoint {a} vs requested {b}' for k, (a, b) in diff.items())}); "
                        f"pass the matching --model.")
    if tokenizer_hash and ckpt.get("tokenizer_hash") not in (None, tokenizer_hash):
        raise UserError(f"checkpoint {path} was trained with a different tokenizer "
                        f"(hash {ckpt['tokenizer_hash']}, this one is {tokenizer_hash}).")
    return ckpt


def load_model(path, config: LLMConfig | None = None, tokenizer_hash=None):
    """(XiaoXin, checkpoint dict) from a weights or resume checkpoint, loaded strictly."""
    from model import XiaoXin
    ckpt = load_checkpoint(path, config, tokenizer_hash)
    model = XiaoXin(LLMConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    return model, ckpt


# ---------------------------------------------------------------- finding a stage

def previous_stage_checkpoint(stage: str, save_dir) -> Path | None:
    """The weights a stage starts from: the first of its registry's starts_from present in
    save_dir; None for a stage that trains from scratch."""
    starts_from = Config.STAGES[stage].starts_from
    if not starts_from:
        return None
    for previous in starts_from:
        path = stage_weights(save_dir, previous)
        if path.is_file():
            return path
    first = Config.STAGES[starts_from[-1]].script
    raise UserError(f"{Config.STAGES[stage].script} starts from an earlier stage's weights, but {save_dir} has none "
                    f"({', '.join(p + '.pt' for p in starts_from)}); run python {first} first "
                    f"(with the same --save_dir), or pass --init_from PATH.")


def find_stage_checkpoint(save_dir, stage: str | None) -> Path:
    """<save_dir>/<stage>.pt, or with no stage the latest stage (in registry order) present there."""
    if stage:
        if stage not in Config.STAGES:
            raise UserError(f"--stage {stage!r} is not one of: {', '.join(Config.STAGES)}.")
        path = stage_weights(save_dir, stage)
        if not path.is_file():
            raise UserError(f"--stage {stage}: {path} does not exist; train that stage first.")
        return path
    latest_first = list(Config.STAGES)[::-1]
    for s in latest_first:
        if stage_weights(save_dir, s).is_file():
            return stage_weights(save_dir, s)
    raise UserError(f"{save_dir} holds no trained stage ({', '.join(s + '.pt' for s in latest_first)}); "
                    f"run python {Config.STAGES[latest_first[-1]].script} (and the later stages) first, "
                    f"or pass --save_dir.")


def is_reasoning_stage(stage: str) -> bool:
    """Whether a stage's replies are <think>…</think><answer>…</answer> (unknown stages: no)."""
    entry = Config.STAGES.get(stage)
    return bool(entry and entry.reasoning)
