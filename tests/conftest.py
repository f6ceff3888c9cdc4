"""Shared fixtures: the repo on sys.path, an isolated output layout, and one tiny model
trained through every stage of Config.STAGES on the bundled demo data (built once per test session)."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
SHARED = ROOT.parent / "shared" / "data"
DEMO = ROOT / "data" / "demo"

# Short runs for the fixture; a stage not listed gets the default (its demo profile's lengths).
TINY_STAGE_ARGS = {
    "pretrain": ["--max_seq_len", "128", "--batch_size", "8", "--max_steps", "6"],
    "sft": ["--max_seq_len", "512", "--batch_size", "8", "--max_steps", "4"],
    "grpo": ["--max_seq_len", "256", "--batch_size", "8", "--max_steps", "2", "--prompts_per_step", "2",
             "--group_size", "2", "--max_new_tokens", "8", "--val_problems", "4"],
}


def tiny_stage_args(stage: str) -> list[str]:
    import Config
    if stage in TINY_STAGE_ARGS:
        return TINY_STAGE_ARGS[stage]
    demo = Config.STAGES[stage].demo
    # A small curriculum: the demo's tens of thousands of generated problems would only cost tokenising time.
    curriculum = ["--reasoning_problems", "200"] if demo.get("reasoning_problems") else []
    return ["--max_seq_len", str(demo.get("max_seq_len", 512)), "--batch_size", "4", "--max_steps", "2", *curriculum]


def run_args(out: Path, *extra) -> list[str]:
    """Flags that send every output of a training run under `out` (never into the git tree)."""
    return ["--model", "tiny", "--dtype", "float32", "--tracker", "none", "--compile", "off",
            "--save_dir", str(out / "ckpt"), "--log_dir", str(out / "log"), "--plot_dir", str(out / "assets"),
            "--cache_dir", str(out / "cache"), "--log_step", "1", *extra]


@pytest.fixture(scope="session")
def tokenizer():
    from dataset import load_tokenizer
    return load_tokenizer(ROOT / "XiaoXin_tokenizer")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """out dir holding a tiny checkpoint of every registered stage, trained in order on the demo data."""
    import Config
    from trainer import run_script
    out = tmp_path_factory.mktemp("trained")
    for stage in Config.STAGES:
        assert run_script(stage, run_args(out, *tiny_stage_args(stage))) == 0, stage
    return out
