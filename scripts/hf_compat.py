"""The bridge between XiaoXin and HuggingFace transformers' LLaMA, both ways, plus one
loader that gives the evaluation scripts the same interface to either kind of model.

XiaoXin's parameter names are LlamaForCausalLM's without the `model.` prefix, so the
weights convert by renaming; the config maps field by field (max_seq_len ↔
max_position_embeddings). Going back, a HF folder loads into XiaoXin only when it really
is the same architecture: anything XiaoXin does not implement (biases, rope scaling,
another activation, a head_dim that is not hidden/heads) is refused in one sentence
rather than loaded approximately.

    from hf_compat import llama_config, to_hf_state_dict, xiaoxin_from_hf
    hf_config = llama_config(model.config)                 # transformers.LlamaConfig
    state = to_hf_state_dict(model)                        # "model.layers.0.…" → tensor
    model = xiaoxin_from_hf("exports/xiaoxin-sft")         # or a LlamaForCausalLM instance

    lm = open_lm(hf_dir="exports/xiaoxin-sft")             # or save_dir=…, stage=…, model_name=…
    logits = lm.logits(input_ids, attention_mask)          # B × T × vocab, float32
"""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import Config  # noqa: E402
from checkpoint import (UserError, expected_config, find_stage_checkpoint, load_model, open_tokenizer,  # noqa: E402
                        resolve_device)
from Config import LLMConfig  # noqa: E402
from model import XiaoXin  # noqa: E402

# Buffers some older transformers versions saved with the weights; derived from the config.
DERIVED_BUFFERS = ("rotary_emb.inv_freq",)


class IncompatibleModel(UserError):
    """A HF model that XiaoXin cannot represent exactly."""


def transformers_major() -> int:
    import transformers
    return int(transformers.__version__.split(".")[0])


# ---------------------------------------------------------------- XiaoXin → HF

def llama_config(config: LLMConfig, **token_ids):
    """transformers.LlamaConfig describing exactly the model `config` describes.

    token_ids may set bos_token_id / eos_token_id / pad_token_id (default: none of them,
    since XiaoXin's tokenizer has no BOS and the ids belong to the tokenizer, not the shape)."""
    from transformers import LlamaConfig
    fields = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim, max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range, hidden_act="silu",
        attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
        architectures=["LlamaForCausalLM"],
    )
    fields.update(token_ids)
    # transformers 5 moved rope_theta into rope_parameters; 4.x reads rope_theta and would
    # silently ignore rope_parameters (and fall back to theta 10000).
    if transformers_major() >= 5:
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": float(config.rope_theta)}
    else:
        fields.update(rope_theta=float(config.rope_theta), rope_scaling=None)
    return LlamaConfig(**fields)


def to_hf_state_dict(model: XiaoXin) -> dict:
    """LlamaForCausalLM's state dict for `model`'s weights (copies, contiguous, same dtype).
    With tied embeddings lm_head.weight is left out, as HF saves tied models."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        hf_name = name if name == "lm_head.weight" else "model." + name
        state[hf_name] = tensor.detach().clone().contiguous()
    return state


def to_hf_model(model: XiaoXin, **token_ids):
    """A LlamaForCausalLM (eval mode, XiaoXin's dtype) holding a copy of `model`'s weights."""
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM(llama_config(model.config, **token_ids))
    state = to_hf_state_dict(model)
    if model.config.tie_word_embeddings:
        # The in-memory HF model lists the tied head under both names; give it both, then load strictly.
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    if model.config.tie_word_embeddings:
        hf.tie_weights()
    return hf.to(next(model.parameters()).dtype).eval()


# ---------------------------------------------------------------- HF → XiaoXin

def _get(hf_config, name, default=None):
    return hf_config.get(name, default) if isinstance(hf_config, dict) else getattr(hf_config, name, default)


def _rope_theta(hf_config, source: str) -> float:
    """rope_theta from either config layout, refusing any rope scaling XiaoXin does not do."""
    params = _get(hf_config, "rope_parameters")
    scaling = _get(hf_config, "rope_scaling")
    for p in (params, scaling):
        if isinstance(p, dict):
            kind = p.get("rope_type", p.get("type", "default"))
            if kind not in ("default", None):
                raise IncompatibleModel(f"{source} uses rope scaling {kind!r}; XiaoXin implements only plain RoPE "
                                        f"(rope_type 'default').")
            # transformers 5 keeps a per-layer-type dict for some models; not a LLaMA layout.
            if any(isinstance(v, dict) for v in p.values()):
                raise IncompatibleModel(f"{source} has per-layer rope parameters, which XiaoXin does not support.")
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = _get(hf_config, "rope_theta")
    return float(theta if theta is not None else 10000.0)


def llmconfig_from_hf(hf_config, source: str = "the HF model") -> LLMConfig:
    """XiaoXin's LLMConfig for a LLaMA-architecture HF config (object or config.json dict),
    or IncompatibleModel naming the first thing XiaoXin cannot represent."""
    model_type = _get(hf_config, "model_type")
    archs = _get(hf_config, "architectures") or []
    if model_type not in ("llama", None) or (archs and "LlamaForCausalLM" not in archs):
        raise IncompatibleModel(f"{source} is a {model_type or archs[0]} model; only LLaMA-architecture "
                                f"(LlamaForCausalLM) folders load into XiaoXin.")
    for flag, what in (("attention_bias", "attention biases"), ("mlp_bias", "MLP biases")):
        if _get(hf_config, flag, False):
            raise IncompatibleModel(f"{source} has {what} ({flag}=true); XiaoXin has no biases.")
    act = _get(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise IncompatibleModel(f"{source} uses activation {act!r}; XiaoXin's SwiGLU uses 'silu'.")
    if (_get(hf_config, "pretraining_tp", 1) or 1) != 1:
        raise IncompatibleModel(f"{source} sets pretraining_tp={_get(hf_config, 'pretraining_tp')}; XiaoXin "
                                f"needs the plain (pretraining_tp=1) projections.")
    hidden, heads = _get(hf_config, "hidden_size"), _get(hf_config, "num_attention_heads")
    head_dim = _get(hf_config, "head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        raise IncompatibleModel(f"{source} has head_dim {head_dim} with {heads} heads and hidden_size {hidden}; "
                                f"XiaoXin needs head_dim = hidden_size / num_attention_heads.")
    kv_heads = _get(hf_config, "num_key_value_heads") or heads
    try:
        return LLMConfig(
            vocab_size=_get(hf_config, "vocab_size"), hidden_size=hidden,
            intermediate_size=_get(hf_config, "intermediate_size"),
            num_hidden_layers=_get(hf_config, "num_hidden_layers"), num_attention_heads=heads,
            num_key_value_heads=kv_heads, max_seq_len=_get(hf_config, "max_position_embeddings"),
            rope_theta=_rope_theta(hf_config, source), rms_norm_eps=_get(hf_config, "rms_norm_eps"),
            tie_word_embeddings=bool(_get(hf_config, "tie_word_embeddings", False)),
            initializer_range=_get(hf_config, "initializer_range", 0.02))
    except ValueError as e:  # LLMConfig's own shape checks
        raise IncompatibleModel(f"{source}: {e}") from None


def _read_hf_weights(directory: Path) -> dict:
    """All tensors of a HF folder: model.safetensors, its sharded form, or pytorch_model.bin."""
    from safetensors.torch import load_file
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(str(directory / shard)))
        return state
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise UserError(f"{directory} holds no weights (model.safetensors, model.safetensors.index.json "
                    f"or pytorch_model.bin).")


def xiaoxin_from_hf(hf_dir_or_model) -> XiaoXin:
    """A float32 XiaoXin (eval mode) with the weights of a HF LLaMA folder or LlamaForCausalLM.

    Loading is strict: every XiaoXin parameter must come from the source and every source
    tensor must land somewhere (a tied lm_head may be absent or equal to the embeddings)."""
    if isinstance(hf_dir_or_model, (str, Path)):
        directory = Path(hf_dir_or_model)
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise UserError(f"{directory} is not a HuggingFace model folder (it has no config.json).")
        try:
            hf_config = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{config_file} is not valid JSON ({e.msg} at line {e.lineno}).") from None
        source = str(directory)
        state = _read_hf_weights(directory)
    else:
        hf_config, source = hf_dir_or_model.config, type(hf_dir_or_model).__name__
        state = hf_dir_or_model.state_dict()
    config = llmconfig_from_hf(hf_config, source)
    model = XiaoXin(config)
    renamed = {}
    for name, tensor in state.items():
        if name.endswith(DERIVED_BUFFERS):
            continue
        key = name[len("model."):] if name.startswith("model.") else name
        renamed[key] = tensor
    if config.tie_word_embeddings:
        head = renamed.pop("lm_head.weight", None)
        embed = renamed.get("embed_tokens.weight")
        if head is not None and embed is not None and not torch.equal(head.float(), embed.float()):
            raise IncompatibleModel(f"{source} sets tie_word_embeddings but its lm_head.weight differs from "
                                    f"embed_tokens.weight.")
        if embed is not None:
            renamed["lm_head.weight"] = embed   # XiaoXin's state dict lists the tied weight under both names
    expected = model.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}"] if unexpected else [])
        raise IncompatibleModel(f"{source}'s weights do not match its config as a LLaMA model ({'; '.join(parts)}).")
    for name, tensor in renamed.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise IncompatibleModel(f"{source}: {name} has shape {tuple(tensor.shape)} but its config implies "
                                    f"{tuple(expected[name].shape)}.")
    model.load_state_dict({k: v.float() for k, v in renamed.items()}, strict=True)
    return model.eval()


# ---------------------------------------------------------------- one interface for scoring

class ScoringLM:
    """A causal LM and its tokenizer behind the few calls the evaluation scripts need.

    encode(text) → ids without special-token additions; encode_with_offsets(text) → (ids, start
    character of each token); logits(ids, mask) → float32 logits; max_len; special_ids (ids that
    stand for no text); token_bytes[id] = UTF-8 bytes of a token (None if unknown); doc_start_id
    (the end-of-text token a document is read after)."""

    def __init__(self, forward, encode_with_offsets, max_len: int, special_ids, token_bytes, vocab_size: int,
                 doc_start_id, description: str, device, dtype):
        self._forward, self.encode_with_offsets, self.max_len = forward, encode_with_offsets, max_len
        self.special_ids, self.token_bytes, self.vocab_size = set(special_ids), token_bytes, vocab_size
        self.doc_start_id, self.description, self.device, self.dtype = doc_start_id, description, device, dtype

    def encode(self, text: str) -> list[int]:
        return self.encode_with_offsets(text)[0]

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward(input_ids.to(self.device),
                             None if attention_mask is None else attention_mask.to(self.device)).float()


def byte_level_token_facts(tokenizer_json: Path, vocab_size: int) -> tuple[list[int] | None, set[int]]:
    """(UTF-8 byte length of every token, ids of the special tokens) of a byte-level BPE
    tokenizer.json. Added tokens count their literal text; special ones count 0 bytes, since
    they stand for no text. The lengths are None for a tokenizer that is not byte-level."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    if "ByteLevel" not in json.dumps(spec.get("decoder")):
        return None, special
    # GPT-2's reversible byte ↔ printable-character table, rebuilt from its definition:
    # printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    char_to_byte, extra = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            char_to_byte[chr(256 + extra)] = b
            extra += 1
    sizes = [0] * vocab_size
    for token, index in spec["model"]["vocab"].items():
        if index < vocab_size:
            sizes[index] = sum(1 if c in char_to_byte else len(c.encode("utf-8")) for c in token)
    for added in spec.get("added_tokens", []):
        if added["id"] < vocab_size:
            sizes[added["id"]] = 0 if added.get("special") else len(added["content"].encode("utf-8"))
    return sizes, special


def check_model_source(args):
    """The checks eval_bench.py and eval_ppl.py share: a native checkpoint or --hf_dir, not both."""
    if args.hf_dir and (args.model or args.stage or args.save_dir):
        raise UserError("--hf_dir replaces --model/--save_dir/--stage; pass one or the other.")
    if args.stage is not None and args.stage not in Config.STAGES:
        raise UserError(f"--stage {args.stage!r} is not one of: {', '.join(Config.STAGES)}.")
    if not args.hf_dir and not Path(args.save_dir or "out").is_dir():
        raise UserError(f"--save_dir {args.save_dir or 'out'} does not exist; pass the folder holding the "
                        f"stage checkpoints, or --hf_dir.")


def open_lm(*, hf_dir=None, save_dir=None, stage=None, model_name=None, tokenizer_dir="XiaoXin_tokenizer",
            device="auto", dtype="auto") -> ScoringLM:
    """Load a native XiaoXin checkpoint (save_dir + stage, checked against --model) or an
    exported/other HF causal-LM folder (hf_dir) for scoring. User mistakes → UserError."""
    dev, torch_dtype = resolve_device(device, dtype, training=False)
    if hf_dir is not None:
        hf_dir = Path(hf_dir)
        if not (hf_dir / "config.json").is_file():
            raise UserError(f"--hf_dir {hf_dir} is not a HuggingFace model folder (it has no config.json).")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(str(hf_dir))
            model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"--hf_dir {hf_dir} could not be loaded by transformers: {str(e).splitlines()[0]}") from None
        model = model.to(dev).eval()
        vocab_size = model.config.vocab_size
        tok_json = hf_dir / "tokenizer.json"
        token_bytes, special = None, set(tok.all_special_ids)
        if tok_json.is_file():
            token_bytes, listed = byte_level_token_facts(tok_json, vocab_size)
            special |= listed
        max_len = getattr(model.config, "max_position_embeddings", None) or tok.model_max_length

        def forward(ids, mask):
            return model(input_ids=ids, attention_mask=mask).logits

        def encode_with_offsets(text):
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            return enc["input_ids"], [a for a, _ in enc["offset_mapping"]]

        return ScoringLM(forward, encode_with_offsets, int(max_len), special, token_bytes, vocab_size,
                         tok.eos_token_id, f"hf:{hf_dir}", dev, torch_dtype)

    tok = open_tokenizer(tokenizer_dir)
    checkpoint = find_stage_checkpoint(save_dir, stage)
    model, _ = load_model(checkpoint, expected_config(model_name), tok.hash)
    model = model.to(dev, torch_dtype).eval()
    token_bytes, special = byte_level_token_facts(tok.path / "tokenizer.json", model.config.vocab_size)

    def forward(ids, mask):  # causal + right padding: a mask changes nothing for the real positions
        return model(ids).logits

    def encode_with_offsets(text):
        enc = tok.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, [a for a, _ in enc.offsets]

    return ScoringLM(forward, encode_with_offsets, model.config.max_seq_len, special, token_bytes,
                     model.config.vocab_size, tok.im_end_id, f"xiaoxin:{checkpoint}", dev, torch_dtype)
