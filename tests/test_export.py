"""The HuggingFace export: a trained checkpoint becomes a LlamaForCausalLM folder that plain
transformers loads and that computes what XiaoXin computes (logits, greedy decoding, chat
template); it converts back bit for bit; bad input is one sentence and exit code 2."""
import json
import os
import sys

import pytest
import torch

from conftest import DEMO, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import export_hf  # noqa: E402
from Config import GENERATION, LLMConfig  # noqa: E402
from dataset import render_chat  # noqa: E402
from hf_compat import IncompatibleModel, xiaoxin_from_hf  # noqa: E402
from model import XiaoXin  # noqa: E402
from checkpoint import load_model  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "你好，请介绍一下你自己。"}],
    [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "1+1=?"},
     {"role": "assistant", "content": "<think>\n1+1=2\n</think>\n<answer>\n2\n</answer>"},
     {"role": "user", "content": "\n  再加 12 呢？"}],
]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "xiaoxin-distill"
    assert export_hf.main(["--model", "tiny", "--save_dir", str(trained / "ckpt"), "--stage", "distill",
                           "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def native(trained):
    model, _ = load_model(trained / "ckpt" / "distill.pt")
    return model.eval()


@pytest.fixture(scope="module")
def hf_model(exported):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(exported)).eval()


def test_export_folder_is_a_standard_llama(exported, tokenizer):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["eos_token_id"] == 2 and config["pad_token_id"] == 0
    from safetensors import safe_open
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())
        assert "lm_head.weight" not in f.keys()          # tied, as HF saves tied models
    card = (exported / "README.md").read_text(encoding="utf-8")
    chkhsh = export_hf.llama_cpp_hash(exported)
    assert f'chkhsh == "{chkhsh}"' in card and 'res = "smollm"' in card


def test_generation_config_is_the_chat_defaults(exported):
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["do_sample"] == (GENERATION["temperature"] > 0)
    for key, value in GENERATION.items():
        if key in ("temperature", "top_p", "top_k") and not gen["do_sample"]:
            continue
        assert gen[key] == value, key
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 0
    from transformers import GenerationConfig
    loaded = GenerationConfig.from_pretrained(str(exported))
    assert loaded.max_new_tokens == GENERATION["max_new_tokens"] and loaded.top_p == GENERATION["top_p"]


def test_logits_equal_xiaoxin(native, hf_model, tokenizer):
    torch.manual_seed(0)
    ids = torch.randint(0, native.config.vocab_size, (2, 67))
    chat = torch.tensor([tokenizer.encode(render_chat(CONVERSATIONS[1], True)[0])])
    with torch.no_grad():
        for x in (ids, chat):
            assert (native(x).logits - hf_model(x).logits).abs().max().item() <= 1e-4


def greedy_both(native, hf_model, prompt, n=40):
    ours = list(native.generate(prompt, n, temperature=0, eos_token_id=2))
    with torch.no_grad():
        theirs = hf_model.generate(prompt, do_sample=False, max_new_tokens=n, eos_token_id=2, pad_token_id=0,
                                   temperature=None, top_p=None, top_k=None)
    return ours, theirs[0, prompt.shape[1]:].tolist()


def test_greedy_generate_equals_xiaoxin(native, hf_model, tokenizer):
    prompt = torch.tensor([tokenizer.encode(render_chat(CONVERSATIONS[0], True)[0])])
    ours, theirs = greedy_both(native, hf_model, prompt)
    assert theirs == ours


@pytest.fixture(scope="module")
def sharp_export(trained, tmp_path_factory):
    """The distill checkpoint with unit-gain random weights, exported: the tiny trained model
    repeats one token, which would make a decoding comparison meaningless."""
    ckpt = torch.load(trained / "ckpt" / "distill.pt", map_location="cpu", weights_only=False)
    gen = torch.Generator().manual_seed(5)
    for name, w in ckpt["model"].items():
        if w.dim() == 2:
            ckpt["model"][name] = torch.randn(w.shape, generator=gen) * (2 / w.shape[1] ** 0.5)
    root = tmp_path_factory.mktemp("sharp")
    (root / "ckpt").mkdir()
    torch.save(ckpt, root / "ckpt" / "sft.pt")
    assert export_hf.main(["--save_dir", str(root / "ckpt"), "--stage", "sft", "--out", str(root / "hf")]) == 0
    return root


def test_greedy_generate_equals_xiaoxin_on_a_varied_path(sharp_export, tokenizer):
    from transformers import AutoModelForCausalLM
    native, _ = load_model(sharp_export / "ckpt" / "sft.pt")
    hf_model = AutoModelForCausalLM.from_pretrained(str(sharp_export / "hf")).eval()
    prompt = torch.tensor([tokenizer.encode(render_chat(CONVERSATIONS[1], True)[0])])
    ours, theirs = greedy_both(native.eval(), hf_model, prompt, n=40)
    assert theirs == ours
    assert len(set(ours)) > 12      # a long, varied path: many chances for the two to part


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_autotokenizer_chat_template_equals_render_chat(exported, tokenizer, messages, add_generation_prompt):
    from transformers import AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(str(exported))
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ours = render_chat(messages, add_generation_prompt)[0]
    assert text == ours
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(ours)
    assert hf_tok.eos_token_id == 2 and hf_tok.pad_token_id == 0 and hf_tok.bos_token_id is None


def test_round_trip_gives_identical_weights(exported, native):
    back = xiaoxin_from_hf(exported)
    assert back.config == native.config
    a, b = native.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_untied_and_gqa_shapes():
    from hf_compat import to_hf_model
    torch.manual_seed(2)
    config = LLMConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=3, max_seq_len=64, rope_theta=5e4,
                       tie_word_embeddings=False)
    model = XiaoXin(config).eval()
    back = xiaoxin_from_hf(to_hf_model(model))
    assert back.config == config
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("change,message", [
    ({"attention_bias": True}, "biases"),
    ({"mlp_bias": True}, "biases"),
    ({"hidden_act": "gelu"}, "activation 'gelu'"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}}, "rope scaling 'linear'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic'"),
    ({"head_dim": 16}, "head_dim"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "only LLaMA-architecture"),
])
def test_incompatible_hf_configs_are_refused(exported, tmp_path, change, message):
    import shutil
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(IncompatibleModel, match=message) as err:
        xiaoxin_from_hf(folder)
    assert "\n" not in str(err.value) and str(err.value).endswith(".")


def test_missing_weights_are_refused(exported, tmp_path):
    import shutil
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    state = load_file(str(folder / "model.safetensors"))
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(128)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(IncompatibleModel, match="missing layers.1.mlp.up_proj.weight; unexpected"):
        xiaoxin_from_hf(folder)


def test_pre_tokenizer_equals_llama_cpp_smollm(tokenizer):
    """The model card tells llama.cpp users to map XiaoXin's hash to 'smollm' (digits split,
    then the GPT-2 regex, no newline isolation). That is only right if isolating newlines
    never changes a tokenization, i.e. no merge involves a newline."""
    from tokenizers import Tokenizer, pre_tokenizers
    twin = Tokenizer.from_file(str(tokenizer.path / "tokenizer.json"))
    twin.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    texts = [export_hf.LLAMA_CPP_PROBE, "a  \n\n b\r\n\t\n  x 12 345\n", " \n \n", "代码:\n    for i in range(10):\n"]
    for path in sorted(DEMO.glob("*.jsonl"))[:2]:
        for line in path.read_text(encoding="utf-8").splitlines()[:40]:
            record = json.loads(line)
            texts += [record["text"]] if "text" in record else [m["content"] for m in record["conversations"]]
    for text in texts:
        assert twin.encode(text).ids == tokenizer.encode(text), text[:40]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_stage_is_one_sentence(trained, tmp_path, capsys):
    rc = export_hf.main(["--save_dir", str(trained / "ckpt"), "--stage", "final", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "--stage 'final' is not one of" in one_error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_stage_not_trained_is_one_sentence(trained, tmp_path, capsys):
    import shutil
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(trained / "ckpt" / "pretrain.pt", ckpt)
    rc = export_hf.main(["--save_dir", str(ckpt), "--stage", "sft", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "sft.pt does not exist" in one_error_line(capsys)


def test_missing_save_dir_is_one_sentence(tmp_path, capsys):
    rc = export_hf.main(["--save_dir", str(tmp_path / "nowhere"), "--stage", "sft", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "--save_dir" in one_error_line(capsys)


def test_wrong_model_size_and_busy_out_are_one_sentence(trained, exported, tmp_path, capsys):
    rc = export_hf.main(["--model", "default", "--save_dir", str(trained / "ckpt"), "--stage", "sft",
                         "--out", str(tmp_path / "x")])
    assert rc == 2 and "different model config" in one_error_line(capsys)
    rc = export_hf.main(["--save_dir", str(trained / "ckpt"), "--stage", "sft", "--out", str(exported)])
    assert rc == 2 and "--overwrite" in one_error_line(capsys)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    rc = export_hf.main(["--save_dir", str(trained / "ckpt"), "--stage", "sft", "--out", str(tmp_path / "mine"),
                         "--overwrite"])
    assert rc == 2 and "not an earlier export" in one_error_line(capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- readers other than transformers 5

def read_like_transformers_4(config: dict) -> tuple[float, object]:
    """What LlamaConfig of transformers 4.56-4.57 takes from config.json for RoPE: the top-level
    rope_theta (default 10,000) and rope_scaling; it has no notion of rope_parameters."""
    return float(config.get("rope_theta", 10000.0)), config.get("rope_scaling")


def test_rope_theta_is_written_for_transformers_4_and_5(exported, native):
    config = json.loads((exported / "config.json").read_text())
    theta = native.config.rope_theta
    assert theta != 10000.0                                   # else a reader falling back would look right
    assert read_like_transformers_4(config) == (theta, None)
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": theta}
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(str(exported)).rope_parameters["rope_theta"] == theta


TF4_PYTHON = os.environ.get("XIAOXIN_TF4_PYTHON")
TF4_SCRIPT = """
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM
assert transformers.__version__.startswith("4."), transformers.__version__
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"version": transformers.__version__, "theta": model.config.rope_theta, "logits": logits.tolist()}))
"""


@pytest.mark.skipif(not TF4_PYTHON, reason="set XIAOXIN_TF4_PYTHON to a python with transformers 4.x "
                                           "(e.g. a venv with pip install 'transformers==4.57.1')")
def test_transformers_4_round_trip(exported, native, tokenizer):
    """Slow, opt-in: a real transformers 4.x, in its own interpreter, loads the export and computes
    XiaoXin's logits. Without the legacy keys it used θ = 10,000 and the logits parted by up to 1.31."""
    import subprocess
    ids = [tokenizer.encode(render_chat(CONVERSATIONS[1], True)[0])]
    done = subprocess.run([TF4_PYTHON, "-c", TF4_SCRIPT, str(exported), json.dumps(ids)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["theta"] == native.config.rope_theta
    with torch.no_grad():
        ours = native(torch.tensor(ids)).logits
    assert (ours - torch.tensor(result["logits"])).abs().max().item() <= 1e-4


def render_go_template(template: str, data: dict) -> str:
    """The subset of Go's text/template that Ollama templates of this kind use: literal text,
    {{ .Field }}, {{ range .List }}…{{ end }}, and the {{- / -}} whitespace trims."""
    import re
    pieces = re.split(r"({{-?\s*.*?\s*-?}})", template)
    # apply trims to the neighbouring text, as text/template does
    for i, piece in enumerate(pieces):
        if piece.startswith("{{-") and i > 0:
            pieces[i - 1] = pieces[i - 1].rstrip()
        if piece.endswith("-}}") and i + 1 < len(pieces):
            pieces[i + 1] = pieces[i + 1].lstrip()

    def run(start: int, scope: dict, out: list) -> int:
        i = start
        while i < len(pieces):
            piece = pieces[i]
            action = re.fullmatch(r"{{-?\s*(.*?)\s*-?}}", piece)
            if not action:
                out.append(piece)
            elif action.group(1) == "end":
                return i
            elif action.group(1).startswith("range "):
                items = scope[action.group(1).split()[1].lstrip(".")]
                end = i
                for item in items:
                    end = run(i + 1, item, out)
                if not items:
                    end = run(i + 1, {}, [])
                i = end
            else:
                out.append(str(scope[action.group(1).lstrip(".")]))
            i += 1
        return i
    out = []
    run(0, data, out)
    return "".join(out)


def modelfile_template(modelfile: str) -> str:
    import re
    return re.search(r'^TEMPLATE """(.*?)"""$', modelfile, flags=re.S | re.M).group(1)


def test_ollama_modelfile_renders_like_the_chat_template(exported):
    from transformers import AutoTokenizer
    modelfile = (exported / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./xiaoxin-distill.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    template = modelfile_template(modelfile)
    assert render_go_template("a{{ .X }} {{- range .L }}[{{ .Y }}]{{ end -}} b", {"X": 1, "L": [{"Y": 2}]}) == "a1[2]b"
    hf_tok = AutoTokenizer.from_pretrained(str(exported))
    for messages in CONVERSATIONS + [[{"role": "user", "content": "  {{ .Content }} 多行\n\n内容  "}]]:
        rendered = render_go_template(template, {"Messages": [{"Role": m["role"], "Content": m["content"]}
                                                               for m in messages]})
        assert rendered == render_chat(messages, add_generation_prompt=True)[0]
        assert rendered == hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_model_card_states_the_recorded_training_length(trained, exported, tmp_path):
    card = (exported / "README.md").read_text(encoding="utf-8")
    record = json.loads((trained / "ckpt" / "distill.json").read_text())
    length = record["train_config"]["max_seq_len"]
    assert f"with sequences of at most {length} tokens, as its training record `distill.json` says" in card
    assert f"trained on sequences of at most {length} tokens |" in card and "512-token" not in card
    import shutil
    bare = tmp_path / "ckpt"
    bare.mkdir()
    shutil.copy(trained / "ckpt" / "sft.pt", bare)                # a checkpoint without its record
    assert export_hf.main(["--save_dir", str(bare), "--stage", "sft", "--out", str(tmp_path / "hf"),
                           "--skip_verify"]) == 0
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "No training record (`sft.json`)" in card and "512-token" not in card


def test_model_card_llama_cpp_edit_applies(exported, tmp_path):
    """The card's copy-paste step inserts the 3-line block into get_vocab_base_pre() of
    conversion/base.py, and the converter's function then maps this tokenizer's hash to smollm."""
    import re
    import subprocess
    card = (exported / "README.md").read_text(encoding="utf-8")
    assert "conversion/base.py" in card and "pip install sentencepiece" in card
    snippet = re.search(r"python - <<'EOF'[^\n]*\n(.*?)\nEOF\n", card, flags=re.S).group(1)
    chkhsh = export_hf.llama_cpp_hash(exported)
    fake = tmp_path / "llama.cpp" / "conversion"
    fake.mkdir(parents=True)
    (fake / "base.py").write_text(
        "class TextModel:\n"
        "    def get_vocab_base_pre(self, chkhsh) -> str:\n"
        "        res = None\n"
        "        if chkhsh == \"855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249\":\n"
        "            # ref: https://huggingface.co/HuggingFaceTB/SmolLM-135M\n"
        "            res = \"smollm\"\n"
        "\n"
        "        if res is None:\n"
        "            raise NotImplementedError(\"BPE pre-tokenizer was not recognized\")\n"
        "        return res\n")
    for _ in range(2):                                            # running it twice adds the block once
        subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True)
    source = (fake / "base.py").read_text()
    assert source.count(chkhsh) == 1 and len(source.splitlines()) == 13
    namespace = {}
    exec(source, namespace)
    assert namespace["TextModel"]().get_vocab_base_pre(chkhsh) == "smollm"
