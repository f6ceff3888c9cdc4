"""Export a XiaoXin stage checkpoint as a standard HuggingFace LLaMA folder.

    python scripts/export_hf.py --model default --save_dir out --stage sft --out exports/xiaoxin-sft
    python scripts/export_hf.py --stage distill --out exports/xiaoxin-r1 --dtype bfloat16

The folder loads with no custom code:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained("exports/xiaoxin-sft")
    model = AutoModelForCausalLM.from_pretrained("exports/xiaoxin-sft")
    ids = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    print(tok.decode(model.generate(ids)[0, ids.shape[1]:], skip_special_tokens=True))

It holds config.json (LlamaForCausalLM), model.safetensors (float32 unless --dtype),
generation_config.json (Config.GENERATION's sampling settings, as eval_model.py uses them),
the tokenizer files with the ChatML chat template, and a README.md model card. Before the
folder is moved into place, the export is loaded back with transformers and its logits are
compared with XiaoXin's (skip with --skip_verify).

config.json carries RoPE θ both in transformers 5's `rope_parameters` and in the legacy
top-level `rope_theta` / `rope_scaling` that transformers 4.x (and readers that follow its
layout) read: without them 4.x silently uses θ = 10,000.

llama.cpp: convert_hf_to_gguf.py identifies a BPE pre-tokenizer by the sha256 of the token
ids of a fixed probe text, so no newly trained vocabulary is recognised out of the box. The
model card prints that hash for this tokenizer and the 3-line block the converter needs
(XiaoXin's pre-tokenizer behaves exactly like its existing "smollm" entry), with copy-paste
steps; the folder's `Modelfile` imports the converted GGUF into Ollama with the ChatML template.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import Config  # noqa: E402
from checkpoint import (UserError, expected_config, find_stage_checkpoint, is_reasoning_stage, load_model,  # noqa: E402
                        open_tokenizer, run_cli)

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
VERIFY_ATOL = 1e-4       # float32 export vs XiaoXin: same arithmetic up to kernel order

# The fixed probe text llama.cpp's convert_hf_to_gguf.py tokenizes to fingerprint a BPE
# pre-tokenizer (llama.cpp PR #6920); the fingerprint is sha256(str(token_ids)).
LLAMA_CPP_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 "
    "?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
LLAMA_CPP_PRE = "smollm"   # Digits(individual) then the GPT-2 byte-level regex: XiaoXin's pre-tokenizer

# Ollama's TEMPLATE (Go text/template): each message as ChatML, then the assistant's header, so
# it renders exactly what render_chat(messages, add_generation_prompt=True) and the tokenizer's
# chat template render (tested).
OLLAMA_TEMPLATE = ("{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="expected model size (checked against the checkpoint)")
    p.add_argument("--save_dir", default="out", help="folder holding <stage>.pt")
    p.add_argument("--stage", default=None, help=f"one of {', '.join(Config.STAGES)}; default: the latest present")
    p.add_argument("--out", required=True, help="folder to write the HF export into")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--tokenizer_dir", default="XiaoXin_tokenizer")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier export")
    p.add_argument("--skip_verify", action="store_true", help="do not load the export back to compare logits")
    return p.parse_args(argv)


def validate(args):
    expected_config(args.model)
    if args.stage is not None and args.stage not in Config.STAGES:
        raise UserError(f"--stage {args.stage!r} is not one of: {', '.join(Config.STAGES)}.")
    if args.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype {args.dtype!r} is not one of: float32, bfloat16, float16.")
    if not Path(args.save_dir).is_dir():
        raise UserError(f"--save_dir {args.save_dir} does not exist; train a stage first or pass the folder "
                        f"that holds its .pt files.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise UserError(f"--out {out} already holds files; pass --overwrite to replace them.")
        if not (out / "config.json").is_file():   # --overwrite deletes the folder: only ever an old export
            raise UserError(f"--out {out} holds files but no config.json, so it is not an earlier export; "
                            f"--overwrite only replaces exports, choose a new folder.")


def generation_config(tok) -> dict:
    """generation_config.json with exactly the sampling settings eval_model.py defaults to."""
    import transformers
    g = Config.GENERATION
    sampling = g["temperature"] > 0
    config = {"do_sample": sampling}
    if sampling:   # with greedy decoding HF rejects (and ignores) the sampling knobs
        config.update(temperature=g["temperature"], top_p=g["top_p"], top_k=g["top_k"])
    config.update(repetition_penalty=g["repetition_penalty"], max_new_tokens=g["max_new_tokens"],
                  eos_token_id=tok.im_end_id, pad_token_id=tok.pad_id,
                  transformers_version=transformers.__version__)
    return config


def write_tokenizer(tok, out: Path, max_seq_len: int):
    for name in TOKENIZER_FILES:
        src = tok.path / name
        if src.is_file():
            shutil.copyfile(src, out / name)
    # Tell HF the real context length: the trained tokenizer does not know the model's.
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["model_max_length"] = max_seq_len
    cfg_file.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def llama_cpp_hash(directory: Path) -> str:
    """The chkhsh convert_hf_to_gguf.py will compute for this folder's tokenizer."""
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(str(directory)).encode(LLAMA_CPP_PROBE)
    return hashlib.sha256(str(ids).encode()).hexdigest()


def write_legacy_rope_keys(config_file: Path, rope_theta: float):
    """Add the top-level rope_theta / rope_scaling that transformers 4.x reads (it ignores
    rope_parameters and would fall back to θ = 10,000); transformers 5 reads either layout."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["rope_theta"] = float(rope_theta)
    config["rope_scaling"] = None
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ollama_modelfile(gguf_name: str, gen: dict, context: int) -> str:
    """An Ollama Modelfile for the GGUF that llama.cpp's converter writes from this folder."""
    params = [("stop", '"<|im_end|>"'), ("num_ctx", context)]
    if gen.get("do_sample"):
        params += [("temperature", gen["temperature"]), ("top_p", gen["top_p"])]
        if gen.get("top_k"):
            params.append(("top_k", gen["top_k"]))
    else:
        params.append(("temperature", 0))
    params += [("repeat_penalty", gen["repetition_penalty"]), ("num_predict", gen["max_new_tokens"])]
    lines = [f"# ollama create xiaoxin -f Modelfile   (after converting this folder to {gguf_name})",
             f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""']
    return "\n".join(lines + [f"PARAMETER {k} {v}" for k, v in params]) + "\n"


def training_record(ckpt_path: Path) -> dict | None:
    """The stage's training record (<stage>.json beside <stage>.pt), if it was kept."""
    try:
        return json.loads(ckpt_path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def training_line(ckpt_path: Path, context: int) -> str:
    """What the checkpoint's own record says it was trained on, for the model card."""
    record = training_record(ckpt_path) or {}
    train = record.get("train_config") or {}
    name = ckpt_path.with_suffix(".json").name
    if "max_seq_len" not in train:
        return (f"No training record (`{name}`) was found beside the checkpoint, so the sequence length this "
                f"stage trained on is not known; the model's context is {context} tokens.")
    results = record.get("results") or {}
    data = f"`{Path(train['data_path']).name}`" if train.get("data_path") else "the generated reasoning curriculum"
    done = []
    if results.get("steps"):
        done.append(f"{results['steps']:,} optimiser steps")
    computed = (results.get("tokens") or {}).get("computed")
    if computed:
        done.append(f"{computed:,} tokens")
    return (f"This stage trained on {data}{' (' + ', '.join(done) + ')' if done else ''} with sequences of at "
            f"most {train['max_seq_len']} tokens, as its training record `{name}` says; the model's context "
            f"is {context} tokens.")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_card(name: str, stage: str, model, ckpt_path: Path, tok, dtype: str, chkhsh: str, gen: dict) -> str:
    c = model.config
    n_params = model.num_parameters()
    sampling = ", ".join(f"{k}={gen[k]}" for k in ("do_sample", "temperature", "top_p", "top_k",
                                                    "repetition_penalty", "max_new_tokens") if k in gen)
    reasoning_note = ("This model writes `<think>…</think>` before `<answer>…</answer>`; both tags are "
                      "ordinary tokens and survive `skip_special_tokens=True`.") if is_reasoning_stage(stage) else ""
    about = Config.STAGES[stage].about if stage in Config.STAGES else f"model from the {stage} stage"
    train = (training_record(ckpt_path) or {}).get("train_config") or {}
    trained_len = f"{train['max_seq_len']} tokens" if "max_seq_len" in train else "an unrecorded length"
    gguf = f"{name}.gguf"
    return f"""---
language:
- zh
library_name: transformers
pipeline_tag: text-generation
tags:
- llama
- xiaoxin
---

# {name}

XiaoXin (小新) {stage} checkpoint: a {n_params / 1e6:.1f}M-parameter LLaMA-architecture
{about}. Trained from scratch with the XiaoXin code base; exported by
`scripts/export_hf.py` as a plain `LlamaForCausalLM`, so it needs no custom code.
{training_line(ckpt_path, c.max_seq_len)}

| | |
|---|---|
| layers / hidden / heads / kv heads | {c.num_hidden_layers} / {c.hidden_size} / {c.num_attention_heads} / {c.num_key_value_heads} |
| SwiGLU width | {c.intermediate_size} |
| context | {c.max_seq_len} tokens (RoPE θ = {c.rope_theta:g}); trained on sequences of at most {trained_len} |
| vocabulary | {c.vocab_size} (byte-level BPE; `<\\|im_end\\|>` = {tok.im_end_id} ends a turn, `<\\|endoftext\\|>` = {tok.pad_id} pads) |
| tied embeddings | {c.tie_word_embeddings} |
| weights | {dtype}, `model.safetensors` |
| source | `{ckpt_path.name}` (sha256 {file_sha256(ckpt_path)[:16]}…), tokenizer hash {tok.hash} |

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}")
messages = [{{"role": "user", "content": "你好，介绍一下你自己"}}]
ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                              return_dict=True)["input_ids"]
out = model.generate(ids)            # sampling settings come from generation_config.json
print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
```

The chat format is ChatML (`<|im_start|>role\\n…<|im_end|>\\n`), no BOS token and no default
system prompt. `generation_config.json` holds the settings XiaoXin's own chat uses: {sampling}.
{reasoning_note}

## llama.cpp / GGUF and Ollama

`convert_hf_to_gguf.py` recognises a BPE pre-tokenizer by the sha256 of the ids its
fixed probe text encodes to; a newly trained vocabulary is never in its table, so it stops
with "BPE pre-tokenizer was not recognized". This tokenizer's fingerprint is

    chkhsh = {chkhsh}

XiaoXin's pre-tokenizer (each newline isolated, each digit split off, then the GPT-2
byte-level regex; no merge spans a newline) tokenizes exactly like llama.cpp's existing
`{LLAMA_CPP_PRE}` pre-tokenizer (`\\p{{N}}` then the GPT-2 regex), so the converter needs one
3-line block in `get_vocab_base_pre()`, which now lives in `conversion/base.py` (older
checkouts: `convert_hf_to_gguf.py`), placed before its `if res is None:`:

```python
        if chkhsh == "{chkhsh}":
            # ref: XiaoXin (this export)
            res = "{LLAMA_CPP_PRE}"
```

Copy-paste steps, run in the folder that holds this export (`{name}/`):

```bash
git clone --depth 1 https://github.com/ggml-org/llama.cpp
pip install sentencepiece     # without it the converter dies before it reaches the tokenizer
python - <<'EOF'              # adds the 3-line block above
from pathlib import Path
f = next(p for p in (Path("llama.cpp/conversion/base.py"), Path("llama.cpp/convert_hf_to_gguf.py")) if p.is_file())
src = f.read_text(encoding="utf-8")
block = '        if chkhsh == "{chkhsh}":\\n            # ref: XiaoXin (this export)\\n            res = "{LLAMA_CPP_PRE}"\\n'
at = src.index("        if res is None:", src.index("def get_vocab_base_pre("))
f.write_text(src if block in src else src[:at] + block + src[at:], encoding="utf-8")
EOF
python llama.cpp/convert_hf_to_gguf.py {name} --outtype f32 --outfile {name}/{gguf}
cmake -S llama.cpp -B llama.cpp/build && cmake --build llama.cpp/build -j --target llama-cli llama-tokenize
llama.cpp/build/bin/llama-tokenize -m {name}/{gguf} -p "你好，1314" --ids     # the ids AutoTokenizer gives
llama.cpp/build/bin/llama-cli -m {name}/{gguf} -cnv
```

If your converter prints a different chkhsh, use the one it prints (it depends only on the
tokenizer files). The rest needs nothing special: the architecture is `LlamaForCausalLM`
(GQA, tied embeddings), `<|im_end|>` becomes the GGUF end-of-turn/EOS token, no BOS is
added (`add_bos_token: false`), and the ChatML chat template is read from
`tokenizer_config.json`. `--outtype f16` halves the file.

Ollama: this folder's `Modelfile` points at `./{gguf}` and carries the ChatML template (each
message as `<|im_start|>role`, newline, content, `<|im_end|>`, newline; then
`<|im_start|>assistant` and a newline) with `<|im_end|>` as the stop token:

```bash
ollama create xiaoxin -f {name}/Modelfile
ollama run xiaoxin "你好"
```

## Limitations

A model of this size knows little, makes things up and follows instructions loosely; it
is for learning and experiments, not for advice or production use. The XiaoXin code is MIT
licensed; the weights inherit the terms of the data they were trained on.
"""


def make_readable(directory: Path):
    """mkdtemp (and safetensors) create owner-only files; give the export the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for f in directory.iterdir():
        f.chmod(0o666 & ~umask)


def compare_logits(model, out: Path, tok, dtype: str) -> float:
    """Load the export the way a user would and return max |logit difference| on a chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM
    from dataset import render_chat
    text, _ = render_chat([{"role": "user", "content": "你好，请介绍一下你自己。1+1=?"},
                           {"role": "assistant", "content": "<think>\n想一想\n</think>\n<answer>\n2\n</answer>"}])
    ids = torch.tensor([tok.encode(text)])
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=getattr(torch, dtype)).eval()
    with torch.inference_mode():
        ours = model.float()(ids).logits
        theirs = hf(ids).logits.float()
    return (ours - theirs).abs().max().item()


def export(args) -> Path:
    import torch
    from hf_compat import to_hf_model
    validate(args)
    tok = open_tokenizer(args.tokenizer_dir)
    ckpt_path = find_stage_checkpoint(args.save_dir, args.stage)
    model, ckpt = load_model(ckpt_path, expected_config(args.model), tok.hash)
    model.eval()
    stage = ckpt.get("stage") or ckpt_path.stem
    if tok.vocab_size > model.config.vocab_size:
        raise UserError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the checkpoint's vocabulary is "
                        f"{model.config.vocab_size}; pass the --tokenizer_dir it was trained with.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and move into place at the end: a failed export leaves no half folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        hf = to_hf_model(model, eos_token_id=tok.im_end_id, pad_token_id=tok.pad_id)
        hf.to(getattr(torch, args.dtype)).save_pretrained(str(tmp))
        write_legacy_rope_keys(tmp / "config.json", model.config.rope_theta)
        gen = generation_config(tok)
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        (tmp / "Modelfile").write_text(ollama_modelfile(f"{out.name}.gguf", gen, model.config.max_seq_len),
                                       encoding="utf-8")
        write_tokenizer(tok, tmp, model.config.max_seq_len)
        chkhsh = llama_cpp_hash(tmp)
        (tmp / "README.md").write_text(model_card(out.name, stage, model, ckpt_path, tok, args.dtype, chkhsh, gen),
                                       encoding="utf-8")
        if not args.skip_verify:
            diff = compare_logits(model, tmp, tok, args.dtype)
            print(f"verify: max |logit difference| vs XiaoXin = {diff:.2e}", file=sys.stderr)
            if args.dtype == "float32" and diff > VERIFY_ATOL:
                raise RuntimeError(f"the exported model's logits differ from XiaoXin's by {diff:.2e} "
                                   f"(> {VERIFY_ATOL}); the export is wrong, please report it")
        make_readable(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"exported {ckpt_path} (stage {stage}, {args.dtype}) to {out}")
    print(f"llama.cpp pre-tokenizer fingerprint (chkhsh): {chkhsh} → map it to {LLAMA_CPP_PRE!r} "
          f"(see {out / 'README.md'})", file=sys.stderr)
    return out


def main(argv=None) -> int:
    return run_cli(parse_args, export, argv)


if __name__ == "__main__":
    sys.exit(main())
