"""The hand-written model against HuggingFace's LlamaForCausalLM, and KV-cache decoding
against full forwards."""
import sys

import pytest
import torch

from conftest import ROOT

from Config import LLMConfig, model_config
from model import KVCache, XiaoXin, sample_next


def to_hf(model: XiaoXin):
    sys.path.insert(0, str(ROOT / "scripts"))
    from hf_compat import to_hf_model
    return to_hf_model(model)


def randomise_norms(model):
    # Freshly initialised norms are all ones; perturb them so a wrong norm placement shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_logits_match_hf_llama(name):
    torch.manual_seed(0)
    model = XiaoXin(model_config(name)).eval()
    randomise_norms(model)
    hf = to_hf(model)
    x = torch.randint(0, model.config.vocab_size, (2, 67))
    with torch.no_grad():
        diff = (model(x).logits - hf(x).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (8, 4), (8, 2), (8, 1), (6, 3), (6, 2)])
def test_gqa_head_ratios_match_hf(heads, kv_heads):
    torch.manual_seed(1)
    config = LLMConfig(vocab_size=300, hidden_size=12 * heads,
                       intermediate_size=96, num_hidden_layers=2, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, max_seq_len=64, tie_word_embeddings=False)
    model = XiaoXin(config).eval()
    randomise_norms(model)
    hf = to_hf(model)
    x = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max().item() <= 1e-4


def test_invalid_head_ratio_is_rejected():
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        LLMConfig(num_attention_heads=8, num_key_value_heads=3)


def test_parameter_counts():
    counts = {n: XiaoXin(model_config(n)).num_parameters() for n in ("tiny", "default", "large")}
    assert 1e6 <= counts["tiny"] <= 3e6
    assert counts["default"] == 25_829_888          # the ~26M XiaoXin of the design card
    assert 95e6 <= counts["large"] <= 115e6


def trained_like_tiny():
    torch.manual_seed(3)
    config = LLMConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_seq_len=96, tie_word_embeddings=False)
    model = XiaoXin(config).eval()
    with torch.no_grad():  # unit-gain weights make logits depend strongly on the input: a stronger test
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 2 / p.shape[1] ** 0.5)
    return model


def test_greedy_kv_cache_generation_equals_full_forward():
    model = trained_like_tiny()
    prompt = torch.randint(0, 500, (1, 11))
    cached = list(model.generate(prompt, 40, temperature=0))
    seq = prompt
    reference = []
    with torch.no_grad():
        for _ in range(40):
            nxt = int(model(seq).logits[0, -1].argmax())
            reference.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    assert cached == reference
    assert len(set(reference)) > 10  # the test is meaningless if the model repeats one token


@pytest.mark.parametrize("static", [False, True])
def test_decode_step_logits_equal_full_forward(static):
    """The lean one-token decode path (batch 2, grouped heads) gives the logits a full
    forward over the whole sequence gives, at every step, dynamic and fixed-shape alike."""
    model = trained_like_tiny()
    seq = torch.randint(0, 500, (2, 9))
    with torch.inference_mode():
        cache = KVCache(model.config, 2, model.config.max_seq_len, seq.device, torch.float32)
        model(seq, cache=cache, last_only=True)
        for pos in range(9, 30):
            token = torch.randint(0, 500, (2, 1))
            if static:
                logits = model._decode(token, torch.tensor([pos]), cache, model.config.max_seq_len)
            else:
                logits = model._decode(token, pos, cache)
            seq = torch.cat([seq, token], 1)
            assert torch.allclose(logits, model(seq).logits[:, -1], atol=1e-4), pos  # logits ~8: float noise only


def test_generation_stops_at_eos_and_context_end():
    model = trained_like_tiny()
    prompt = torch.randint(0, 500, (1, 5))
    tokens = list(model.generate(prompt, 30, temperature=0))
    eos = tokens[7]
    stopped = list(model.generate(prompt, 30, temperature=0, eos_token_id=eos))
    assert stopped[-1] == eos and len(stopped) == tokens.index(eos) + 1
    # max_seq_len 96: a 90-token prompt can only be continued by 6 tokens.
    assert len(list(model.generate(torch.randint(0, 500, (1, 90)), 50, temperature=0))) == 6


def test_cache_prefill_then_decode_equals_full_forward():
    """A prompt's forward fills the cache and gives the same logits as without one; decoding the
    rest token by token from that cache continues the full forward's logits."""
    model = trained_like_tiny()
    x = torch.randint(0, 500, (2, 30))
    cache = KVCache(model.config, 2, 30, x.device, torch.float32)
    with torch.no_grad():
        first = model(x[:, :17], cache=cache).logits
        assert torch.equal(first, model(x[:, :17]).logits)
        rest = [model._decode(x[:, pos:pos + 1], pos, cache) for pos in range(17, 30)]
        full = model(x).logits
    assert torch.allclose(torch.cat([first, torch.stack(rest, 1)], 1), full, atol=1e-4)


def test_batched_generation_matches_single():
    model = trained_like_tiny()
    prompts = torch.randint(0, 500, (3, 9))
    batched = torch.stack(list(model.generate(prompts, 12, temperature=0)), dim=1)
    for i in range(3):
        assert batched[i].tolist() == list(model.generate(prompts[i:i + 1], 12, temperature=0))


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_left_padded_batch_decodes_each_row_as_alone(mode):
    """Prompts of different lengths in one left-padded batch: every row's greedy tokens, with and
    without a repetition penalty, equal that prompt's decoding on its own, and the prefill
    logits of its real tokens equal an unpadded forward (so padding is really hidden)."""
    model = trained_like_tiny()
    model.set_decode_mode(mode)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(10, 500, (n,), generator=g).tolist() for n in (5, 11, 2, 11, 7)]
    T = max(map(len, prompts))
    x = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        logits = model(x, key_mask=mask.bool()).logits
        for i, p in enumerate(prompts):
            alone = model(torch.tensor([p])).logits[0]
            torch.testing.assert_close(logits[i, T - len(p):], alone, rtol=1e-4, atol=1e-4)
    for penalty in (1.0, 1.3):
        batched = torch.stack(list(model.generate(x, 10, temperature=0, repetition_penalty=penalty,
                                                  attention_mask=mask)), dim=1)
        for i, p in enumerate(prompts):
            single = list(model.generate(torch.tensor([p]), 10, temperature=0, repetition_penalty=penalty))
            assert batched[i].tolist() == single, (mode, penalty, i)


def test_sampling_filters_match_hf_processors():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    torch.manual_seed(5)
    logits = torch.randn(4, 50) * 3
    ids = torch.randint(0, 50, (4, 12))
    seen = torch.zeros(4, 50, dtype=torch.bool).scatter_(1, ids, True)
    hf = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    hf = TemperatureLogitsWarper(0.8)(ids, hf)
    hf = TopKLogitsWarper(20)(ids, hf)
    hf = TopPLogitsWarper(0.7)(ids, hf)
    kept_hf = torch.isfinite(hf)
    # Sample many times: every sampled token must be one HF keeps, and all kept ones appear.
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 0.8, 20, 0.7, 1.3, seen, g) for _ in range(3000)], 1)
    for row in range(4):
        assert set(draws[row].tolist()) == set(kept_hf[row].nonzero().flatten().tolist())
    greedy = sample_next(logits, 0, 0, 1.0, 1.3, seen, None)
    assert torch.equal(greedy, RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone()).argmax(-1))


@pytest.mark.parametrize("span", [256, 8])
def test_static_decode_path_equals_dynamic(span, monkeypatch):
    """The fixed-shape decode step (what --compile uses for chat) yields the same tokens,
    also when the attended span of the cache steps up during the generation."""
    import model as model_module
    monkeypatch.setattr(model_module, "STATIC_SPAN", span)
    model = trained_like_tiny()
    prompt = torch.randint(0, 500, (2, 7))
    dynamic = torch.stack(list(model.generate(prompt, 30, temperature=0)), 1)
    model.set_decode_mode("static")
    static = torch.stack(list(model.generate(prompt, 30, temperature=0)), 1)
    assert torch.equal(dynamic, static)


def test_compiled_decode_equals_dynamic():
    """`--compile on` for chat: the decode step under torch.compile (C++ wrapper on CPU) must
    write the per-layer caches in place and give the same tokens as eager decoding."""
    model = trained_like_tiny()
    prompt = torch.randint(0, 500, (2, 7))
    dynamic = torch.stack(list(model.generate(prompt, 20, temperature=0)), 1)
    warnings = []
    model.set_decode_mode("compiled", warn=warnings.append)
    compiled = torch.stack(list(model.generate(prompt, 20, temperature=0)), 1)
    assert warnings == [] and model._decode_fn.works
    assert torch.equal(dynamic, compiled)


def test_compiled_decode_falls_back_to_eager_when_compile_fails(monkeypatch):
    import model as model_module

    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler found")
        return fail
    monkeypatch.setattr(model_module.torch, "compile", broken_compile)
    model = trained_like_tiny()
    prompt = torch.randint(0, 500, (1, 7))
    dynamic = list(model.generate(prompt, 12, temperature=0))
    warnings = []
    model.set_decode_mode("compiled", warn=warnings.append)
    assert list(model.generate(prompt, 12, temperature=0)) == dynamic
    assert len(warnings) == 1 and "no C++ compiler found" in warnings[0] and "running eagerly" in warnings[0]


def rotate_half(x):
    """HF's LLaMA rotate_half, (x1, x2) -> (-x2, x1): the independent reference for apply_rope."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def test_rope_equals_rotate_half_form_bitwise():
    """apply_rope is written per half; it must be HF's x*cos + rotate_half(x)*sin exactly."""
    from model import apply_rope, rope_tables
    cos, sin = rope_tables(64, 50, 1e6)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, 50, 64).to(dtype)
        ref = x * cos.to(dtype) + rotate_half(x) * sin.to(dtype)
        assert torch.equal(apply_rope(x, cos, sin), ref)


def test_compiled_bf16_training_gradients_match_eager():
    """The trainer compiles model + loss under bf16 autocast (always on CUDA, on CPU for
    long runs); the compiled gradients must be finite and agree with eager ones."""
    from losses import masked_cross_entropy
    torch.manual_seed(0)
    model = XiaoXin(model_config("tiny")).train()
    x = torch.randint(3, model.config.vocab_size, (2, 33))
    inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    mask = torch.ones_like(tgt, dtype=torch.float32)

    def loss_fn(inp, tgt, mask):
        return masked_cross_entropy(model(inp).logits, tgt, mask).sum() / mask.sum()

    grads = []
    for fn in (loss_fn, torch.compile(loss_fn)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(inp, tgt, mask)
        loss.backward()
        grads.append({n: p.grad.float().clone() for n, p in model.named_parameters()})
    torch._dynamo.reset()
    for name, eager in grads[0].items():
        compiled = grads[1][name]
        assert torch.isfinite(compiled).all(), name
        scale = eager.abs().max().item() + 1e-6
        assert (compiled - eager).abs().max().item() <= 0.1 * scale, name


def test_compiled_rope_gradients_are_finite():
    """Inductor (torch 2.13, CPU) gives NaN gradients for the chunk/neg/cat rotate-half
    form when RoPE output feeds a matmul under bf16 autocast; apply_rope must not."""
    from model import apply_rope, rope_tables
    torch.manual_seed(0)
    cos, sin = rope_tables(64, 64, 1e4)
    q, xk = torch.randn(2, 2, 64, 64), torch.randn(2, 64, 128)

    def scores(q, xk):
        k = apply_rope(xk.view(2, 64, 2, 64).transpose(1, 2), cos, sin)
        return (q @ k.transpose(-2, -1)).float()

    grads = []
    for fn in (scores, torch.compile(scores)):
        inputs = [t.clone().requires_grad_() for t in (q, xk)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn(*inputs).pow(2).sum().backward()
        grads.append([t.grad for t in inputs])
    torch._dynamo.reset()
    for eager, compiled in zip(*grads):
        assert torch.isfinite(compiled).all()
        assert (compiled - eager).abs().max().item() <= 0.05 * eager.abs().max().item()


def test_library_callers_sample_with_config_generation(tmp_path, monkeypatch):
    """model.generate and Chat.stream_ids, called without sampling arguments, sample exactly as
    eval_model.py, the server and the HF export do: with Config.GENERATION."""
    import model as model_module
    from checkpoint import save_atomic
    from Config import GENERATION
    from eval_model import Chat
    used = []
    real = model_module.sample_next

    def recording(logits, temperature, top_k, top_p, repetition_penalty, seen, generator):
        used.append((temperature, top_k, top_p, repetition_penalty))
        return real(logits, temperature, top_k, top_p, repetition_penalty, seen, generator)
    monkeypatch.setattr(model_module, "sample_next", recording)
    expected = {(GENERATION["temperature"], GENERATION["top_k"], GENERATION["top_p"], GENERATION["repetition_penalty"])}

    model = trained_like_tiny()
    tokens = list(model.generate(torch.randint(0, 500, (1, 5))))
    assert len(tokens) == min(GENERATION["max_new_tokens"], model.config.max_seq_len - 5) and set(used) == expected

    used.clear()
    tiny = XiaoXin(model_config("tiny"))
    save_atomic({"model": tiny.state_dict(), "config": tiny.config.to_dict(), "stage": "sft"}, tmp_path / "sft.pt")
    chat = Chat(tmp_path / "sft.pt", ROOT / "XiaoXin_tokenizer", "cpu", "float32")
    list(chat.stream_ids(chat.prompt_ids([{"role": "user", "content": "你好"}], 8), max_new_tokens=8))
    assert used and set(used) == expected


def test_flop_count_matches_the_model_and_peaks_tell_h100_cards_apart(monkeypatch):
    """One FLOP count (model.training_flops_per_token) for trainer, bench and gpu_check: 6 per
    weight of every matmul the model runs, plus PaLM's 12·L·H·Q·T for attention."""
    import checkpoint
    from model import training_flops_per_token
    for name in ("tiny", "default"):
        cfg = model_config(name)
        linear = sum(m.weight.numel() for m in XiaoXin(cfg).modules() if isinstance(m, torch.nn.Linear))
        attention = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * 512
        assert training_flops_per_token(cfg, 512) == 6 * linear + attention
    cuda = torch.device("cuda", 0)
    for card, tflops in [("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 80GB HBM3", 989.4),
                         ("NVIDIA GeForce RTX 4090", 165.2), ("Some Future GPU", None)]:
        monkeypatch.setattr(checkpoint.torch.cuda, "get_device_name", lambda device=None, card=card: card)
        peak, name = checkpoint.peak_flops(cuda)
        assert name == card and peak == (tflops * 1e12 if tflops else None)


def test_attention_with_copied_kv_heads_equals_enable_gqa(monkeypatch):
    """fp32 on CUDA copies K/V per query head (the flash kernel, the one that takes enable_gqa,
    has no fp32); forced here on CPU, that path must give what enable_gqa gives."""
    import model as model_module
    torch.manual_seed(0)
    m = XiaoXin(model_config("tiny")).eval()
    assert m.config.num_key_value_heads < m.config.num_attention_heads
    x = torch.randint(3, m.config.vocab_size, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :7] = False
    with torch.no_grad():
        shared = m(x).logits, m(x, key_mask=mask).logits
        monkeypatch.setattr(model_module, "sdpa_takes_gqa", lambda q: False)
        copied = m(x).logits, m(x, key_mask=mask).logits
    for a, b in zip(shared, copied):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
