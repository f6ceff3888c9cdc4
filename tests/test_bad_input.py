"""Bad input, tried systematically: every malformed record or file is one clear sentence
naming the file and line (or a counted skip), never a traceback or a silent wrong result."""
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import SFT
import pretrain
from conftest import ROOT, run_args
from dataset import DataError, build_token_cache

GOOD_PRETRAIN = json.dumps({"text": "今天天气很好。"}, ensure_ascii=False)
GOOD_SFT = json.dumps({"conversations": [{"role": "user", "content": "你好"},
                                         {"role": "assistant", "content": "你好！"}]}, ensure_ascii=False)

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "human", ""]),
                                           "content": st.text(max_size=6) | st.integers()}), max_size=4)
bad_lines = st.one_of(
    json_values.map(json.dumps),                                             # any JSON at all
    st.builds(lambda m: json.dumps({"conversations": m}), messages),         # any message list
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),               # arbitrary bytes
    st.text(max_size=20),                                                    # arbitrary text
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=bad_lines, kind=st.sampled_from(["pretrain", "sft"]))
def test_any_line_is_accepted_or_named(tmp_path_factory, tokenizer, line, kind):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "data.jsonl"
    good = GOOD_PRETRAIN if kind == "pretrain" else GOOD_SFT
    path.write_bytes((good + "\n" + line.replace("\n", " ") + "\n" + good + "\n").encode("utf-8", "surrogatepass"))
    try:
        cache = build_token_cache(path, kind, tokenizer, tmp / "cache", quiet=True)
        assert cache.num_records in (2, 3)                    # the odd line was a valid record (or blank)
    except DataError as e:
        assert str(e).startswith(f"{path} line 2: ") and "--skip_bad_lines" in str(e)
        cache = build_token_cache(path, kind, tokenizer, tmp / "cache", skip_bad_lines=True, quiet=True)
        assert cache.num_records == 2 and list(cache.lines) == [1, 3]


def cli(tmp_path, module, *flags):
    return module.main(run_args(tmp_path, "--max_steps", "1", *flags))


@pytest.mark.parametrize("content,message", [
    ('[{"text": "a"}, {"text": "b"}]\n', "line 1: expected a JSON object, found list"),
    (GOOD_PRETRAIN + "\n" + '{"text": "被截断的', "line 2: invalid JSON"),
    ("", "is empty"),
    ("\n\n  \n", "has no usable records"),
])
def test_bad_files_stop_the_cli_with_one_sentence(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    assert cli(tmp_path, pretrain, "--data_path", str(path)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err


def test_many_bad_lines_are_counted_and_skippable(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([GOOD_PRETRAIN, "{oops", '{"text": ""}', GOOD_PRETRAIN, "[]"] * 3) + "\n", encoding="utf-8")
    assert cli(tmp_path, pretrain, "--data_path", str(path)) == 2
    err = capsys.readouterr().err
    assert "line 2: invalid JSON" in err and "(8 other bad lines)" in err
    assert cli(tmp_path, pretrain, "--data_path", str(path), "--skip_bad_lines", "--val_path", "") == 0
    assert "skipped 9 bad lines" in capsys.readouterr().out


def test_tokenizer_without_chat_template(tmp_path, capsys):
    import shutil
    broken = tmp_path / "tok"
    shutil.copytree(ROOT / "XiaoXin_tokenizer", broken)
    config = json.loads((broken / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    assert cli(tmp_path, pretrain, "--tokenizer_dir", str(broken)) == 2
    assert "has no chat_template" in capsys.readouterr().err


def test_truncated_checkpoint_is_one_sentence(tmp_path, capsys):
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert cli(tmp_path, SFT, "--init_from", str(ckpt)) == 2
    assert "could not be read" in capsys.readouterr().err


class Payload:
    """Stands in for any pickled object: unpickling it would import and run its class's code."""


def test_checkpoint_with_code_objects_is_refused(tmp_path, capsys):
    import torch
    ckpt = tmp_path / "untrusted.pt"
    torch.save({"model": {}, "config": {}, "extra": Payload()}, ckpt)
    assert cli(tmp_path, SFT, "--init_from", str(ckpt)) == 2
    err = capsys.readouterr().err
    assert "holds objects other than tensors and plain data" in err and str(ckpt) in err


def test_unknown_flag_and_value(tmp_path, capsys):
    assert cli(tmp_path, pretrain, "--no_such_flag", "1") == 2
    assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
    assert cli(tmp_path, pretrain, "--compile", "sometimes") == 2
    assert "--compile 'sometimes' is not one of" in capsys.readouterr().err


def test_auto_dtype_on_a_gpu_with_emulated_bf16_is_fp16(monkeypatch):
    """T4/V100/20-series report bf16 as supported only by emulation: auto must pick fp16 there,
    and bf16 on a card that has it in hardware."""
    import torch
    import checkpoint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    native = {"value": False}

    def is_bf16_supported(including_emulation=True):
        return True if including_emulation else native["value"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert checkpoint.resolve_device("cuda", "auto")[1] == torch.float16
    native["value"] = True
    assert checkpoint.resolve_device("cuda", "auto")[1] == torch.bfloat16


def read_only_folder(tmp_path):
    """A folder nothing can be written under: a chmod-ed one, or for root (whom permissions do not
    stop) a path in sysfs."""
    import os
    from pathlib import Path
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "out"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without sysfs: no folder is read-only here")
    return Path("/sys/xiaoxin-read-only/out")


@pytest.mark.parametrize("flag", ["--save_dir", "--log_dir"])
def test_a_read_only_output_folder_is_one_sentence_naming_the_flag(tmp_path, capsys, flag):
    args = run_args(tmp_path, "--max_steps", "1", "--max_seq_len", "64")
    args[args.index(flag) + 1] = str(read_only_folder(tmp_path))
    assert pretrain.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag} ") and "is not writable" in err[0], err
