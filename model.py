"""XiaoXin: a LLaMA-3-style decoder written from scratch.

RMSNorm (computed in fp32), rotary position embedding (rotate-half layout),
grouped-query attention through `scaled_dot_product_attention`, SwiGLU feed-forward,
pre-norm residual blocks, no biases, optionally tied input/output embeddings.
Parameter names mirror HuggingFace's `LlamaForCausalLM` (without its `model.` prefix),
so export and import are a rename. This file knows nothing about data, files or training.

    from Config import model_config
    from model import XiaoXin
    model = XiaoXin(model_config("default"))
    logits = model(input_ids).logits                    # B × T × vocab
    for token_id in model.generate(prompt_ids, 64, temperature=0):   # streamed
        ...
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from Config import GENERATION, LLMConfig


@dataclass
class CausalLMOutput:
    logits: torch.Tensor


class RMSNorm(nn.Module):
    """Root-mean-square norm (arXiv:1910.07467). Statistics in fp32 even under autocast,
    because the mean of squares of bf16 activations loses too many bits."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float):
    """cos/sin tables for rotary embedding (arXiv:2104.09864), rotate-half layout as in LLaMA."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """HF's x * cos + rotate_half(x) * sin, with rotate_half(x1, x2) = (-x2, x1), written out per half.

    Both halves of the cos/sin tables are equal (rope_tables concatenates the
    frequencies twice), so this is the same arithmetic as the rotate-half form,
    bit for bit (a + (-b) == a - b in IEEE; tested). It is written this way because
    torch.compile (inductor, CPU, torch 2.13) produces NaN gradients for the
    chunk/neg/cat of rotate_half under bf16 autocast; this form compiles cleanly
    and is equally fast (notes/LOG.md).
    x: B × H × T × D; cos/sin: T × D fp32 tables, cast to the activation dtype as HF does.
    """
    half = x.shape[-1] // 2
    return rope_halves(x, cos[..., :half].to(x.dtype), sin[..., :half].to(x.dtype))


def rope_halves(x, cos, sin):
    """The rotation itself, given the first half of the tables already in x's dtype."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


STATIC_SPAN = 256   # static decoding attends over the first multiple of this many cache slots


class KVCache:
    """Keys and values for every layer, allocated once for a whole generate() call
    (growing them with torch.cat each token would copy the cache T times)."""

    def __init__(self, config: LLMConfig, batch_size: int, max_len: int, device, dtype):
        # One tensor per layer rather than one stacked tensor: under torch.compile a write into a
        # slice of a shared buffer is functionalised into a copy of the whole buffer per layer
        # (64 MB per token for the default model), while a write into its own input is done in place.
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.max_len, self.dtype = max_len, dtype

    def prefill(self, layer: int, k, v):
        """Store a prompt's keys and values at the start of the cache."""
        self.k[layer][:, :, :k.shape[2]] = k
        self.v[layer][:, :, :v.shape[2]] = v


def sdpa_takes_gqa(q) -> bool:
    """Whether SDPA's fast kernel for q can share K/V heads itself (enable_gqa). On CUDA only the
    flash kernel can, and it runs only in fp16/bf16: an fp32 run (--dtype float32) with enable_gqa
    falls to the math kernel, which materialises the T × T scores, so there K/V are copied per query
    head and the memory-efficient kernel runs instead. On CPU the flash kernel takes GQA in any dtype."""
    return q.device.type != "cuda" or q.dtype in (torch.float16, torch.bfloat16)


class Attention(nn.Module):
    def __init__(self, config: LLMConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None, key_mask=None):
        """The whole sequence at once (training, scoring, a prompt); with `cache`, its keys and
        values are stored for decode() to continue from. `key_mask` (B × T, bool; False at
        left padding) keeps every real token from seeing padding."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache.prefill(self.layer_index, k, v)
        # Grouped-query attention (arXiv:2305.13245): each K/V head serves a group of query heads;
        # enable_gqa lets the kernel share them instead of copying K/V once per query head.
        gqa = self.n_kv_heads != self.n_heads
        if gqa and not sdpa_takes_gqa(q):
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            gqa = False
        if key_mask is None:
            # is_causal: no T × T mask is materialised.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            # Causal, and padding keys hidden; a padding query sees itself, so no softmax row is empty.
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            itself = torch.eye(T, dtype=torch.bool, device=x.device)
            mask = causal & (key_mask[:, None, None, :T] | itself)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


    def decode(self, x, cos, sin, cache: KVCache, pos, visible=None):
        """One new token per row (x: B × 1 × C), the same arithmetic as forward() in fewer ops.

        At batch 1 the weights are read once per token and everything else is per-op overhead,
        so this path is lean: the three projections land side by side and q and k rotate in
        one call. cos/sin: the first half of the tables at this position, in x's dtype.
        pos is an int ("dynamic": attend over the filled part of the cache) or a 1-element
        tensor with `visible` (1 × span) masking the unwritten positions of the first `span`
        ("static": shapes change only when span steps up, so torch.compile builds a few
        graphs for a whole generation instead of one per position).
        """
        B, H, KV = x.shape[0], self.n_heads, self.n_kv_heads
        qkv = torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1).view(B, H + 2 * KV, self.head_dim)
        qk = rope_halves(qkv[:, :H + KV], cos, sin)
        k, v = qk[:, H:], qkv[:, H + KV:]
        if not torch.is_tensor(pos):
            cache.k[self.layer_index][:, :, pos] = k
            cache.v[self.layer_index][:, :, pos] = v
            keys = cache.k[self.layer_index][:, :, :pos + 1]
            values = cache.v[self.layer_index][:, :, :pos + 1]
        else:
            keys, values = cache.k[self.layer_index], cache.v[self.layer_index]
            keys[:, :, pos] = k.unsqueeze(2)
            values[:, :, pos] = v.unsqueeze(2)
            span = visible.shape[-1]
            keys, values = keys[:, :, :span], values[:, :, :span]
        # The query heads of a group share K/V: fold the group into the query-length axis.
        q = qk[:, :H].view(B, KV, H // KV, self.head_dim)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        return self.o_proj(out.reshape(B, 1, -1))


class SwiGLU(nn.Module):
    """Gated feed-forward (arXiv:2002.05202): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LLMConfig, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin, cache=None, key_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, key_mask)
        return x + self.mlp(self.post_attention_layernorm(x))

    def decode(self, x, cos, sin, cache, pos, visible=None):
        x = x + self.self_attn.decode(self.input_layernorm(x), cos, sin, cache, pos, visible)
        return x + self.mlp(self.post_attention_layernorm(x))


class XiaoXin(nn.Module):
    def __init__(self, config: LLMConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.decode_mode, self._decode_fn = "dynamic", None
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        # Not persistent: derived from the config, so checkpoints stay small and exact.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """All initialisation lives here. Normal(0, 0.02) everywhere; the two projections
        that write into the residual stream are scaled by 1/sqrt(2·layers) (as GPT-2 does) so the residual's variance does not grow with depth."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith("o_proj") or name.endswith("down_proj")
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def set_decode_mode(self, mode: str, warn=None):
        """How generate() runs each new token: "dynamic" (eager, attention over the filled part
        of the cache), "static" (eager, fixed shapes) or "compiled" (static under torch.compile:
        least Python overhead per token, after a one-off compilation; falls back to "static"
        with a message to `warn` if compilation fails). On CPU the compiled step also gets
        inductor's C++ wrapper, which removes the Python call per kernel (notes/LOG.md)."""
        if mode not in ("dynamic", "static", "compiled"):
            raise ValueError(f"unknown decode mode {mode!r}")
        self.decode_mode = mode
        self._decode_fn = self._decode
        if mode == "compiled":
            cpu = next(self.parameters()).device.type == "cpu"
            self._decode_fn = CompileOrEager(self._decode, warn or print, dynamic=False,
                                             options={"cpp_wrapper": True} if cpu else None)

    def _decode(self, token, pos, cache: KVCache, span: int | None = None, key_mask=None):
        """Logits (B × V, fp32) for one new token per row, read from and written to cache.
        Dynamic: pos is an int. Static (span given): pos is a 1-element tensor and attention
        covers the first `span` cache slots with the unwritten ones masked, so the shapes stay
        fixed while span does. `key_mask` (B × ≥ span, bool) hides left padding."""
        half = self.config.head_dim // 2
        if span is None:
            cos, sin, visible = self.rope_cos[pos, :half], self.rope_sin[pos, :half], None
        else:
            cos = self.rope_cos[:, :half].index_select(0, pos)
            sin = self.rope_sin[:, :half].index_select(0, pos)
            visible = (torch.arange(span, device=token.device) <= pos).view(1, -1)
        if key_mask is not None:
            width = pos + 1 if span is None else span
            rows = key_mask[:, :width].view(key_mask.shape[0], 1, 1, width)
            visible = rows if visible is None else rows & visible
        cos, sin = cos.to(cache.dtype), sin.to(cache.dtype)
        x = self.embed_tokens(token)
        for layer in self.layers:
            x = layer.decode(x, cos, sin, cache, pos, visible)
        return self.lm_head(self.norm(x))[:, -1].float()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def forward(self, input_ids, cache: KVCache | None = None, last_only: bool = False, key_mask=None):
        """Logits for a whole sequence from position 0; `cache` (generate's prefill) keeps its keys
        and values, `last_only` computes the last position's logits only, `key_mask` (B × T bool,
        False at left padding) hides padding from every real token."""
        T = input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.config.max_seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, cache, key_mask)
        x = self.norm(x)
        if last_only:
            x = x[:, -1:]
        return CausalLMOutput(logits=self.lm_head(x))

    @torch.inference_mode()
    def generate(self, input_ids, max_new_tokens: int = GENERATION["max_new_tokens"],
                 temperature: float = GENERATION["temperature"], top_k: int = GENERATION["top_k"],
                 top_p: float = GENERATION["top_p"], repetition_penalty: float = GENERATION["repetition_penalty"],
                 eos_token_id=None, generator: torch.Generator | None = None, attention_mask=None, sampler=None):
        """Yield each new token as it is sampled: an int for batch 1, else a (B,) tensor.
        The sampling defaults are Config.GENERATION's, as in chat, serving and the HF export.

        temperature=0 is greedy. repetition_penalty follows HuggingFace (arXiv:1909.05858):
        logits of every token already present in prompt or output are divided by the penalty
        when positive and multiplied when negative. Stops after an eos token (which is yielded),
        after max_new_tokens, or when max_seq_len is reached.

        Prompts of different lengths go in one batch left-padded, with `attention_mask` (B × T,
        1 for prompt tokens, 0 for the padding before them). RoPE attention depends only on the
        distance between tokens, so each row then decodes as it would alone (tested).

        `sampler(logits) -> (B,) token ids` (logits B × V, fp32) replaces the built-in sampling
        and its settings (temperature, top_k, top_p, repetition_penalty, generator): e.g. GRPO's
        rollouts, which draw each row's randomness from a stream of its own (grpo.py).
        """
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("generate() needs at least one prompt token")
        total = min(T + max_new_tokens, self.config.max_seq_len)
        if T >= total:
            return
        static = self.decode_mode != "dynamic"
        param = next(self.parameters())
        # Static decoding always allocates max_seq_len so every call reuses one compiled graph.
        cache = KVCache(self.config, B, self.config.max_seq_len if static else total, input_ids.device, param.dtype
                        if not torch.is_autocast_enabled(input_ids.device.type) else
                        torch.get_autocast_dtype(input_ids.device.type))
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        eos_ids = torch.tensor(sorted(eos), device=input_ids.device, dtype=torch.long)
        seen = None
        if repetition_penalty != 1.0:
            seen = torch.zeros(B, self.config.vocab_size, dtype=torch.bool, device=input_ids.device)
            seen.scatter_(1, input_ids, True)
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        key_mask = None
        if attention_mask is not None:
            real = attention_mask.to(input_ids.device).bool()
            key_mask = torch.ones(B, cache.max_len, dtype=torch.bool, device=input_ids.device)
            key_mask[:, :T] = real
            if seen is not None:   # padding is not "already present": count each row's own tokens
                seen.zero_().scatter_(1, torch.where(real, input_ids, input_ids[:, -1:]), True)
        logits = self(input_ids, cache=cache, last_only=True, key_mask=key_mask).logits[:, -1].float()
        for pos in range(T, total):
            next_token = (sampler(logits) if sampler is not None else
                          sample_next(logits, temperature, top_k, top_p, repetition_penalty, seen, generator))
            if B == 1:
                token = int(next_token)
                yield token
                if token in eos:
                    return
            else:
                # Finished rows keep emitting eos so the batch stays rectangular.
                if len(eos):
                    next_token = torch.where(finished, eos_ids[0], next_token)
                    finished |= torch.isin(next_token, eos_ids)
                yield next_token
                if bool(finished.all()):
                    return
            if seen is not None:
                seen.scatter_(1, next_token.view(B, 1), True)
            if pos + 1 >= total:
                return
            if static:
                position = torch.tensor([pos], device=input_ids.device)
                # Attend over the cache in steps of STATIC_SPAN slots, not all max_seq_len of them.
                span = min(cache.max_len, (pos // STATIC_SPAN + 1) * STATIC_SPAN)
                logits = self._decode_fn(next_token.view(B, 1), position, cache, span, key_mask)
            else:
                logits = self._decode(next_token.view(B, 1), pos, cache, None, key_mask)


def training_flops_per_token(config: LLMConfig, seq_len: int) -> float:
    """Training FLOPs per token, the count MFU divides by (trainer, scripts/bench.py and
    scripts/gpu_check.py all use this one).

    PaLM's definition (Chowdhery et al., arXiv:2204.02311, appendix B): 6N + 12·L·H·Q·T, where
    N is the number of matmul parameters (2 FLOPs per parameter forward, 4 backward: Kaplan et al.,
    arXiv:2001.08361, section 2.1), and 12·L·H·Q·T the attention scores and weighted values for
    L layers, H query heads of size Q and sequence length T. N here counts every projection and
    the output head (tied to the embedding, it is still a matmul) but not the embedding lookup.
    As in PaLM, the causal mask is not halved out: a kernel that skips masked blocks does about
    half of the 12·L·H·Q·T, so MFU reads the same as in papers that use this definition."""
    h, L = config.hidden_size, config.num_hidden_layers
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size
    n_matmul = L * per_layer + config.vocab_size * h
    return 6 * n_matmul + 12 * L * q * seq_len


class CompileOrEager:
    """torch.compile(fn, **kwargs), falling back to eager fn with a message to `warn` if
    compilation fails on the first call (no C++ compiler, an unsupported platform or backend)."""

    def __init__(self, fn, warn, **compile_kwargs):
        self.eager, self.compiled, self.warn, self.works = fn, torch.compile(fn, **compile_kwargs), warn, None
        self.graphs = 0   # graphs torch.compile built for fn (each new shape it cannot reuse one for adds one)

    def __call__(self, *args):
        if self.works is False:
            return self.eager(*args)
        from torch._dynamo.utils import counters
        before = counters["stats"]["unique_graphs"]
        try:
            out = self.compiled(*args)
        except Exception as e:
            if self.works:
                raise
            self.warn(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                      f"running eagerly. Pass --compile off to skip the attempt.")
            self.works = False
            return self.eager(*args)
        finally:
            self.graphs += counters["stats"]["unique_graphs"] - before
        self.works = True
        return out


def sample_next(logits, temperature, top_k, top_p, repetition_penalty, seen, generator):
    """Pick the next token from B × V logits, on the logits' device."""
    if seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the tokens before it already cover top_p; the first always stays.
        drop = (cumulative - sorted_logits.softmax(-1)) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
