"""Stages are data: a new stage is one Config.STAGES entry and a script of a few lines (plus, for
another objective, one loss function), and every program picks it up with no other edit."""
import dataclasses
import json
import shutil
import sys

import pytest
import torch

import Config
import eval_model
from conftest import DEMO, ROOT, run_args

sys.path.insert(0, str(ROOT / "scripts"))
import export_hf  # noqa: E402

SCRIPT = '''"""A stage that exists only for a test: {doc}"""
import sys

{imports}from trainer import run_stage
{body}

def main(argv=None) -> int:
    return run_stage("{name}", argv{trainer})


if __name__ == "__main__":
    sys.exit(main())
'''


def add_stage(monkeypatch, tmp_path, name, doc, imports="", body="", trainer="", **entry) -> None:
    """Register `name` for this test only, with its script written to tmp_path (importable from
    there, so the entry's loss may name a function in it)."""
    script = tmp_path / f"{name}.py"
    script.write_text(SCRIPT.format(name=name, doc=doc, imports=imports, body=body,
                                    trainer=f", {trainer}" if trainer else ""), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    fields = dict(script=str(script), log_name=name, data_kind="sft", starts_from=("sft", "pretrain"),
                  loss="losses.cross_entropy", about=f"test model from the {name} stage",
                  train=Config.TrainConfig(data_path=str(DEMO / "sft_1024.jsonl"), max_seq_len=512),
                  demo={})
    fields.update(entry)
    monkeypatch.setitem(Config.STAGES, name, Config.Stage(**fields))


def test_a_stage_is_one_registry_entry_and_a_short_script(trained, tmp_path, monkeypatch, capsys):
    """SFT again, on another file under another name: it trains, chains from the latest earlier
    stage it lists, and chat, export and the stage lists all know it."""
    from trainer import run_script
    add_stage(monkeypatch, tmp_path, "sft_again", "SFT once more, on the long conversations.")
    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    shutil.copy(trained / "ckpt" / "sft.pt", out / "ckpt" / "sft.pt")
    args = run_args(out, "--batch_size", "4", "--max_steps", "2", "--cache_dir", str(trained / "cache"))
    assert run_script("sft_again", args) == 0
    assert f"initialised from {out / 'ckpt' / 'sft.pt'}" in capsys.readouterr().out
    record = json.loads((out / "ckpt" / "sft_again.json").read_text())
    assert record["stage"] == "sft_again" and record["init_from"].endswith("sft.pt")
    assert record["train_config"]["data_path"].endswith("sft_1024.jsonl") and record["results"]["steps"] == 2
    assert (out / "log" / "sft_again.log").is_file() and (out / "assets" / "sft_again_loss.png").is_file()

    # chat: a --stage choice, and the latest stage present (it is last in the registry)
    from checkpoint import find_stage_checkpoint
    assert find_stage_checkpoint(out / "ckpt", None).name == "sft_again.pt"
    assert eval_model.main(["--save_dir", str(out / "ckpt"), "--stage", "sft_again", "--prompt", "你好",
                            "--temperature", "0", "--max_new_tokens", "6"]) == 0
    assert "(stage sft_again)" in capsys.readouterr().err
    chat = eval_model.Chat(out / "ckpt" / "sft_again.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")
    assert chat.stage == "sft_again" and not chat.reasoning
    assert isinstance(chat.reply([{"role": "user", "content": "你好"}], max_new_tokens=6, temperature=0), str)

    # export, with the registry's description on the model card
    export = tmp_path / "export"
    assert export_hf.main(["--save_dir", str(out / "ckpt"), "--stage", "sft_again", "--out", str(export)]) == 0
    assert "test model from the sft_again stage" in (export / "README.md").read_text(encoding="utf-8")

    # and a stage missing from the registry is still refused by name
    assert eval_model.main(["--save_dir", str(out / "ckpt"), "--stage", "sft_twice", "--prompt", "hi"]) == 2


@dataclasses.dataclass
class WeightedConfig(Config.TrainConfig):
    """A stage's own hyperparameter: a TrainConfig subclass, whose fields become flags."""
    row_weight: float = 1.0


def test_a_stage_with_its_own_objective_flags_and_batch_fields(tmp_path, monkeypatch, trained):
    """A loss that reads an extra per-row array its Trainer subclass attaches to every batch
    (sized by the stage's own flag): the loop moves the array to the device, optimises that
    loss, and logs its metrics to the console line, the steps jsonl, the history and the plot."""
    from trainer import run_script
    body = '''

class WeightedTrainer(Trainer):
    def step_batches(self, step):
        epoch, batches, n_loss_tokens = super().step_batches(step)
        for b in batches:
            b.extra["row_weight"] = np.full(len(b.input_ids), self.cfg.row_weight, dtype=np.float32)
        return epoch, batches, n_loss_tokens


def weighted_loss(model, batch):
    rows, _ = cross_entropy(model, batch)
    weight = batch.extra["row_weight"]
    assert weight.device == rows.device
    return rows * weight, {"row_weight": (weight.sum(), len(weight)),
                           "masked_tokens": (batch.loss_mask.sum(), len(weight))}
'''
    imports = "import numpy as np\n\nfrom losses import cross_entropy\nfrom trainer import Trainer\n"
    add_stage(monkeypatch, tmp_path, "weighted_sft", "cross-entropy weighted per row.", imports=imports,
              body=body, trainer="WeightedTrainer", loss="weighted_sft.weighted_loss",
              train=WeightedConfig(data_path=str(DEMO / "sft_1024.jsonl"), max_seq_len=512))
    add_stage(monkeypatch, tmp_path, "plain_sft", "the same stage with the shipped objective.")
    common = ["--batch_size", "4", "--max_steps", "3", "--val_path", "", "--accumulation_steps", "2",
              "--cache_dir", str(trained / "cache"), "--init_from", str(trained / "ckpt" / "sft.pt")]
    assert run_script("weighted_sft", run_args(tmp_path / "w", *common, "--row_weight", "0.25", "--save_step", "2")) == 0
    assert run_script("plain_sft", run_args(tmp_path / "p", *common)) == 0

    weighted = [json.loads(x) for x in (tmp_path / "w" / "log" / "weighted_sft_steps.jsonl").read_text().splitlines()]
    plain_steps = [json.loads(x) for x in (tmp_path / "p" / "log" / "plain_sft_steps.jsonl").read_text().splitlines()]
    assert [s["row_weight"] for s in weighted] == [0.25] * 3
    assert all(s["masked_tokens"] > 10 for s in weighted) and "row_weight" not in plain_steps[0]
    # Same start and batches: the first step's loss is exactly the plain loss, weighted.
    assert weighted[0]["loss"] == pytest.approx(0.25 * plain_steps[0]["loss"], abs=2e-5)
    log = (tmp_path / "w" / "log" / "weighted_sft.log").read_text()
    assert " row_weight 0.25 " in log and " masked_tokens " in log
    ckpt = torch.load(tmp_path / "w" / "ckpt" / "weighted_sft.pt", weights_only=True)
    record = json.loads((tmp_path / "w" / "ckpt" / "weighted_sft.json").read_text())
    assert ckpt["stage"] == "weighted_sft" and record["train_config"]["row_weight"] == 0.25
    resume = torch.load(tmp_path / "w" / "ckpt" / "checkpoints" / "weighted_sft" / "step_0000002.pt", weights_only=True)
    assert resume["history"]["row_weight"] == [0.25, 0.25] and len(resume["history"]["masked_tokens"]) == 2
    assert (tmp_path / "w" / "assets" / "weighted_sft_loss.png").stat().st_size > 0


def test_stage_lists_come_from_the_registry():
    """The shipped chain, in order; every entry's script runs its own stage, starts only from
    earlier stages, and names an objective that exists."""
    from losses import stage_loss
    names = list(Config.STAGES)
    assert names[:4] == ["pretrain", "sft", "sft_long", "distill"]
    for name, entry in Config.STAGES.items():
        script = ROOT / entry.script
        assert f'run_stage("{name}"' in script.read_text(encoding="utf-8"), name
        assert all(names.index(earlier) < names.index(name) for earlier in entry.starts_from), name
        assert callable(stage_loss(name)), name
