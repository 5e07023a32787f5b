"""Quantized caches: they hold exactly the bytes they claim, and cached decoding through them gives
exactly the logits of a fake-quant reference: a full forward pass (no cache) in which attention sees
each past token's cached tensors quantized and dequantized wherever the cache holds them quantized."""
import math

import pytest
import torch
import torch.nn.functional as F

import model as model_module
from engine import (KVCache, cache_forms, dequantize, fake_quant, kv_bytes_per_token, kv_cache_nbytes,
                    kv_workspace_nbytes, quantize)
from model import repeat_kv
from test_model import CONFIGS, tiny

GROUP = 4  # TINY: head_dim 8, n_embd 32


def visible_quantized(T, prompt, residual, tok):
    """(T, T) bool: query t sees key j through its quantized copy. A prompt position attends in the
    prefill, at full precision; a later position t, to what the cache holds after writing t: whole
    groups of tok tokens older than the newest `residual`."""
    t = torch.arange(T).view(-1, 1)
    done = (t + 1 - residual).clamp(min=0) // tok * tok
    return (torch.arange(T).view(1, -1) < done) & (t >= prompt)


def reference_forward(form, bits, group, residual, prompt):
    """A CausalSelfAttention.forward for the fake-quant reference, written from the definitions: the
    chunk's own query side at full precision, every past key, query and value (K/V form: keys and
    queries per channel in groups of `group` tokens, values per token) or past input x^ (input form, per
    token) through fake_quant where visible_quantized says the cache holds it quantized."""

    def per_channel(t):  # groups of `group` tokens from position 0; the padding's group is never visible
        T = t.size(-2)
        pad = -T % group
        return fake_quant(F.pad(t, (0, 0, 0, pad)), bits, group, True)[..., :T, :]

    def forward(self, x, cache=None, input_pos=None, kv=None, skip=False):
        B, T, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        heads = lambda t, n: t.view(B, T, n, D).transpose(1, 2)
        split = lambda y: (heads(y[..., :C], H), heads(y[..., C:C + Hkv * D], Hkv), heads(y[..., C + Hkv * D:], Hkv))
        if self.owns_kv:
            q, k, v = split(self.c_attn(x))
            if form == "input":  # everything the past gives comes from the cached x^
                q_hat, k_hat, v_hat = split(self.c_attn(fake_quant(x, bits, group, False)))
            else:
                q_hat, k_hat, v_hat = per_channel(q), per_channel(k), fake_quant(v, bits, group, False)
            kv = (k, v, k_hat, v_hat)
        else:
            q = heads(self.c_attn(x), H)
            q_hat = per_channel(q)  # a CLA layer keeps its own past queries (K/V form only)
        k, v, k_hat, v_hat = kv
        if skip:
            return None, kv
        tok_k = 1 if form == "input" else group
        mask_k = visible_quantized(T, prompt, residual, tok_k)
        mask_v = visible_quantized(T, prompt, residual, 1)
        qs, kr = self.query_side(q, repeat_kv(k, H))
        pick = lambda mask, a, b: torch.where(mask, a, b)
        scores = pick(mask_k, qs @ repeat_kv(k_hat, H).transpose(-2, -1), qs @ repeat_kv(k, H).transpose(-2, -1))
        if kr is not None:
            scores = scores + pick(mask_k, kr @ q_hat.transpose(-2, -1), kr @ q.transpose(-2, -1))
        scores = scores / math.sqrt(D)
        band = torch.ones(T, T, dtype=torch.bool).tril()
        band = band if self.window is None else band.triu(1 - self.window)  # a sliding window: j > i - W
        scores = scores.masked_fill(~band, float("-inf"))
        p = F.softmax(scores, dim=-1)
        y = (p * mask_v) @ repeat_kv(v_hat, H) + (p * ~mask_v) @ repeat_kv(v, H)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C)), kv

    return forward


def reference_logits(model, idx, prompt, form, bits, group, residual, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(model_module.CausalSelfAttention, "forward", reference_forward(form, bits, group, residual, prompt))
        return model(idx, targets=idx)[0]


def cached_logits(model, idx, prompt, **quant):
    """Prefill idx[:, :prompt], then one token per step: the logits of every position from prompt - 1 on."""
    cache = KVCache(model, idx.size(0), **quant)
    out = [model(idx[:, :prompt], cache=cache)[0]]
    out += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(prompt, idx.size(1))]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name", CONFIGS)
def test_quantized_decoding_equals_the_fake_quant_reference(name, monkeypatch):
    """Both forms, 8 and 4 bits, with and without a residual window: float64, so that a code never
    rounds differently between the two computations; max error 1e-9."""
    model = tiny(**CONFIGS[name]).double().eval()
    idx = torch.randint(0, 61, (2, 27))
    prompt = 6
    with torch.no_grad():
        for form in cache_forms(model.config):
            for bits in (8, 4):
                for residual in (0, 5):
                    ref = reference_logits(model, idx, prompt, form, bits, GROUP, residual, monkeypatch)
                    got = cached_logits(model, idx, prompt, form=form, kv_bits=bits, kv_group=GROUP,
                                        kv_residual=residual)
                    err = (got - ref[:, prompt - 1:]).abs().max().item()
                    assert err < 1e-9, (form, bits, residual, err)
            # the reference at 16 bits is the model itself, and 4 bits really changes the logits
            full = model(idx, targets=idx)[0]
            assert torch.allclose(reference_logits(model, idx, prompt, form, 16, GROUP, 0, monkeypatch), full,
                                  atol=1e-12, rtol=0)
            low = cached_logits(model, idx, prompt, form=form, kv_bits=4, kv_group=GROUP)
            assert (low - full[:, prompt - 1:]).abs().max() > 1e-4


def test_quantize_round_trip_and_packing():
    """Codes in [0, 2^b - 1], 4-bit codes two to a byte, scale and zero in float16, error at most half
    a step (plus float16's rounding of scale and zero), a constant group exact."""
    torch.manual_seed(0)
    x = torch.randn(3, 16, 8, dtype=torch.float64) * 3
    for bits in (8, 4):
        for per_channel in (False, True):
            codes, scale, zero = quantize(x, bits, 4, per_channel)
            assert codes.dtype == torch.uint8 and scale.dtype == zero.dtype == torch.float16
            assert codes.shape == (3, 16, 8 * bits // 8)
            assert scale.shape == ((3, 4, 1, 8) if per_channel else (3, 16, 2, 1))
            back = dequantize(codes, scale, zero, bits, 4, per_channel, torch.float64)
            step = scale.double().max()
            assert (back - x).abs().max() <= step * 0.5 + 1e-2 * x.abs().max() * 2 ** -10 * 16
    c = torch.full((1, 4, 8), 2.5)
    assert torch.equal(fake_quant(c, 4, 4, True), c)
    huge = torch.tensor([[1e6, -1e6, 3.0, 4.0]])  # beyond float16's range: saturates, never inf or nan
    assert torch.isfinite(fake_quant(huge, 8, 4, False)).all()


def test_cache_holds_exactly_the_analytic_quantized_bytes():
    """Bytes a quantized cache holds (codes, scales, zero points, the full-precision ring) == the
    formula, for every config and form, and so does its workspace; and per token at long context, 8 bits is about a quarter of
    float32 and 4 bits an eighth, plus 4 / G bytes per value of scale and zero."""
    for name in CONFIGS:
        model = tiny(**CONFIGS[name]).eval()
        for form in cache_forms(model.config):
            for bits in (16, 8, 4):
                for residual, max_len in ((0, 32), (3, 30), (40, 10)):
                    for skip in ((), (1,)):
                        cache = KVCache(model, 3, max_len, skip, form, kv_bits=bits, kv_group=GROUP,
                                        kv_residual=residual)
                        expect = kv_cache_nbytes(model.config, form, 3, max_len, torch.float32, skip, bits, GROUP,
                                                 residual)
                        assert cache.nbytes() == expect, (name, form, bits, residual, skip)
                        # and the workspace it dequantizes into: its largest tensor, in float32
                        assert cache.workspace_nbytes() == kv_workspace_nbytes(
                            model.config, form, 3, max_len, torch.float32, skip, bits, GROUP)
    cfg = tiny().config
    values = 2 * 2 * 32
    assert kv_bytes_per_token(cfg, "kv", kv_bits=16) == values * 2
    assert kv_bytes_per_token(cfg, "kv", kv_bits=8, kv_group=32) == values * (1 + 4 / 32)
    assert kv_bytes_per_token(cfg, "input", kv_bits=4, kv_group=32) == values / 2 * (0.5 + 4 / 32)


def test_greedy_generation_through_a_quantized_cache():
    """generate takes the cache options, compiles nothing new at 16 bits, and 16 bits is token-identical
    to recomputation."""
    model = tiny().eval()
    prompt = torch.randint(0, 61, (2, 5))
    ref = model.generate(prompt, 40, temperature=0, kv_cache=False)
    assert torch.equal(model.generate(prompt, 40, temperature=0, kv_bits=16), ref)
    out = model.generate(prompt, 40, temperature=0, kv_bits=8, kv_group=GROUP, kv_residual=4)
    assert out.shape == ref.shape and torch.equal(out[:, :5], prompt)


def test_quantization_errors():
    model = tiny()
    with pytest.raises(ValueError, match="kv_bits=3 must be one of 16, 8, 4"):
        KVCache(model, 1, kv_bits=3)
    with pytest.raises(ValueError, match=r"kv_group=3 must divide head_dim=8 \(the kv form quantizes values"):
        KVCache(model, 1, form="kv", kv_bits=8, kv_group=3)
    with pytest.raises(ValueError, match="kv_group=64 must divide n_embd=32"):
        KVCache(model, 1, form="input", kv_bits=4, kv_group=64)
    with pytest.raises(ValueError, match="kv_residual=-1 must be a whole number of tokens >= 0"):
        KVCache(model, 1, kv_bits=8, kv_group=4, kv_residual=-1)
    cache = KVCache(model, 1, kv_bits=8, kv_group=4)
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="a quantized cache takes a prefill and then one token per step"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="kv_bits=8 quantizes the KV cache: it needs kv_cache"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3, kv_cache=False, kv_bits=8)


@pytest.mark.slow
@pytest.mark.parametrize("name,form,window", [("full", "input", {}), ("cla_lens", "kv", {}), ("lens", "kv", {}),
                                              ("lens", "kv", dict(attn_window=8, attn_global_every=2)),
                                              ("full", "input", dict(attn_window=8)),
                                              ("cla_lens", "kv", dict(attn_window=8))])
def test_compiled_quantized_decoding_equals_eager_without_recompiling(name, form, window):
    """A quantized cache's step has static shapes: one graph for every position, the eager logits; with sliding
    windows too (rings that wrap several times, the group stored under a mask until it is complete)."""
    from engine import compiled_decode_step, decode_step
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny(**CONFIGS[name], **window).double().eval()
    idx = torch.randint(0, 61, (2, 30))
    quant = dict(form=form, kv_bits=4, kv_group=GROUP, kv_residual=3)
    eager, compiled = KVCache(model, 2, **quant), KVCache(model, 2, **quant)
    step = compiled_decode_step("cpu")
    with torch.no_grad():
        model(idx[:, :5], cache=eager), model(idx[:, :5], cache=compiled)
        for t in range(5, 30):
            a = decode_step(model, idx[:, t:t + 1], eager, torch.tensor([eager.advance(1)]))
            b = step(model, idx[:, t:t + 1], compiled, torch.tensor([compiled.advance(1)]))
            assert (a - b).abs().max() < 1e-9, t
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
