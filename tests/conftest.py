"""Shared fixtures: the repo on sys.path, an isolated output layout, and one tiny model
trained through all four stages on the bundled demo data (built once per test session)."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
SHARED = ROOT.parent / "shared" / "data"
DEMO = ROOT / "data" / "demo"

TINY_STAGE_ARGS = {
    "pretrain": ["--max_seq_len", "128", "--batch_size", "8", "--max_steps", "6"],
    "sft": ["--max_seq_len", "512", "--batch_size", "8", "--max_steps", "4"],
    "sft_long": ["--max_seq_len", "1024", "--batch_size", "4", "--max_steps", "2"],
    "distill": ["--max_seq_len", "1024", "--batch_size", "4", "--max_steps", "2"],
}


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
    """out dir holding tiny pretrain/sft/sft_long/distill checkpoints trained on the demo data."""
    import SFT, SFT_long, distill, pretrain
    out = tmp_path_factory.mktemp("trained")
    for stage, module in (("pretrain", pretrain), ("sft", SFT), ("sft_long", SFT_long), ("distill", distill)):
        assert module.main(run_args(out, *TINY_STAGE_ARGS[stage])) == 0, stage
    return out
