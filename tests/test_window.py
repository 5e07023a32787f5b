"""Sliding-window attention: the banded kernel equals the written-out formula (the whole layer against the
reference: test_model), a windowed layer sees exactly i - W < j <= i (with reciprocity too), cached decoding
through the rings equals recomputation (both forms, quantized; compiled: test_quant) below, at and past the
window, the rings hold exactly the analytic bytes at every context, and bad settings are one-line errors."""
import itertools

import pytest
import torch

from engine import KVCache, cache_forms, kv_bytes_per_token, kv_cache_nbytes, kv_workspace_nbytes
from model import GPT, GPTConfig, band_mask, banded_attention, window_mask
from test_model import CONFIGS, TINY, tiny
from test_quant import GROUP, cached_logits, reference_logits

W = 8  # a multiple of the quantization tests' group (4); TINY's block_size is 32


def windowed(name):
    """(label, config) pairs: the config with a window in every attention layer ("swa"), and with layer 0
    global, layer 1 local ("local_global") where its CLA groups allow it (a group shares one window) and layer 0
    has attention."""
    cfg = dict(CONFIGS[name], attn_window=W)
    out = [(f"{name}-swa", cfg)]
    if cfg.get("kv_share", 1) == 1 and "attn_layers" not in cfg:  # (layer 0, the global one, has attention)
        out.append((f"{name}-local_global", dict(cfg, attn_global_every=2)))
    return out


WINDOWED = dict(pair for name in CONFIGS for pair in windowed(name))
WINDOWED["lens-swa2"] = dict(CONFIGS["lens"], attn_window=2)  # a full forward at 16+ tokens runs the banded kernel


@pytest.mark.parametrize("T,window", [(23, 5), (23, 8), (32, 8), (9, 8), (8, 8), (40, 1)])
def test_banded_kernel_equals_a_masked_softmax(T, window):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 8, dtype=torch.float64) for _ in range(3))
    i, j = torch.arange(T).view(-1, 1), torch.arange(T)
    mask = (j <= i) & (j > i - window)
    assert torch.equal(window_mask(T, window, "cpu"), mask)
    scores = (q @ k.transpose(-2, -1) / 8 ** 0.5).masked_fill(~mask, float("-inf"))
    ref = torch.softmax(scores, -1) @ v
    assert (banded_attention(q, k, v, window) - ref).abs().max() < 1e-12
    # O(T W): the mask has W visible keys per query row (fewer in the first chunk), not T
    n = -(-T // window)
    assert band_mask(n, window, window, "cpu").sum(-1).max() == window


@pytest.mark.parametrize("rec,window", [(False, 5), (True, 5), (True, 2)])
def test_a_windowed_layer_sees_exactly_its_window(rec, window):
    """One attention layer, no MLP: the logits at i move when token j changes if and only if i - W < j <= i.
    With reciprocity, S^T[i, j] = q_j . k_i is masked after mixing, so it stays causal and within the window
    (W = 5 over 24 tokens: one T x T band mask; W = 2: the banded kernel)."""
    model = tiny(n_layer=1, mlp_disabled=True, use_reciprocity=rec, use_discoverability=True, attn_window=window).eval()
    idx = torch.randint(0, 61, (1, 24))
    base, _ = model(idx, targets=idx)
    for j in (0, 6, 13, 23):
        changed = idx.clone()
        changed[0, j] = (idx[0, j] + 1) % 61
        logits, _ = model(changed, targets=changed)
        moved = (logits - base).abs().amax(-1)[0] > 1e-6
        assert moved.tolist() == [j <= i < j + window for i in range(24)], j


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("form", ("kv", "input"))
def test_windowed_cached_decoding_equals_recomputation(name, form):
    """Prefills shorter and longer than W, then one token at a time well past W (the ring wraps several
    times): every logit equals the full forward pass to 1e-5, with and without a pruned layer."""
    model = tiny(**WINDOWED[name]).eval()
    if form not in cache_forms(model.config):
        return
    idx = torch.randint(0, 61, (2, 32))
    for skip, prompt in (((), 5), ((), 12), ((1,), 5), ((0,), 8)):
        full, _ = model(idx, targets=idx, attn_skip_layers=skip)
        cache = KVCache(model, 2, attn_skip_layers=skip, form=form)
        steps = [model(idx[:, :prompt], cache=cache)[0]]
        steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(prompt, 32)]
        for t, logits in zip(range(prompt - 1, 32), steps):
            assert torch.allclose(logits[:, -1], full[:, t], atol=1e-5, rtol=0), (skip, prompt, t)


@pytest.mark.parametrize("name", ["baseline-swa", "lens-local_global", "full-swa", "gqa-local_global", "cla_lens-swa",
                                  "attn_layer_1_full_mqa-swa"])
def test_windowed_greedy_generation_identical_past_block_size(name):
    model = tiny(**WINDOWED[name]).eval()
    prompt = torch.randint(0, 61, (2, 5))
    ref = model.generate(prompt, 45, temperature=0, kv_cache=False)
    for form in cache_forms(model.config):
        assert torch.equal(model.generate(prompt, 45, temperature=0, kv_cache=form), ref), form
        for bits in (8, 4):
            quant = dict(kv_bits=bits, kv_group=GROUP)
            out = model.generate(prompt, 45, temperature=0, kv_cache=form, **quant)
            assert out.shape == ref.shape


@pytest.mark.parametrize("name", ["baseline-swa", "lens-swa", "full-local_global", "cla_lens-swa",
                                  "attn_layer_1_full_mqa-swa", "mqa-local_global"])
def test_windowed_quantized_decoding_equals_the_fake_quant_reference(name, monkeypatch):
    """The rings quantize the same groups as a flat cache: the fake-quant reference with the window mask,
    to 1e-9 in float64, past the window, both forms, 8 and 4 bits, with and without a residual."""
    model = tiny(**WINDOWED[name]).double().eval()
    idx = torch.randint(0, 61, (2, 30))
    with torch.no_grad():
        for form, bits, residual, prompt in itertools.product(cache_forms(model.config), (8, 4), (0, 3), (6, 13)):
            ref = reference_logits(model, idx, prompt, form, bits, GROUP, residual, monkeypatch)
            got = cached_logits(model, idx, prompt, form=form, kv_bits=bits, kv_group=GROUP, kv_residual=residual)
            err = (got - ref[:, prompt - 1:]).abs().max().item()
            assert err < 1e-9, (form, bits, residual, prompt, err)


def test_quantized_rings_off_the_cpu_path(monkeypatch):
    """Off an eager CPU step (CUDA, or compiled) a buffer stores its key group at every step, masked until the group
    is complete where it is a ring: a flat buffer's plan (stored every step) must not be reused by a ring."""
    import engine
    monkeypatch.setattr(engine, "eager_cpu", lambda input_pos: False)
    for name in ("baseline-local_global", "lens-local_global", "baseline-swa"):
        model = tiny(**WINDOWED[name]).double().eval()
        idx = torch.randint(0, 61, (2, 30))
        with torch.no_grad():
            for form, bits, residual in itertools.product(cache_forms(model.config), (8, 4), (0, 3)):
                ref = reference_logits(model, idx, 6, form, bits, GROUP, residual, monkeypatch)
                got = cached_logits(model, idx, 6, form=form, kv_bits=bits, kv_group=GROUP, kv_residual=residual)
                assert (got - ref[:, 5:]).abs().max() < 1e-9, (name, form, bits, residual)


@pytest.mark.parametrize("name", ["baseline-swa", "lens-local_global", "cla_lens-swa", "full_mqa-local_global",
                                  "attn_layer_1-swa"])
def test_rings_hold_exactly_the_analytic_bytes_at_every_context(name):
    """At context T a windowed layer holds min(T, W) tokens: the tensors' bytes equal kv_cache_nbytes at
    several T, quantized too, and at 16 bits kv_bytes_per_token(context=T) x T."""
    model = tiny(**WINDOWED[name]).eval()
    cfg = model.config
    for form, T, skip in itertools.product(cache_forms(cfg), (3, W, 20, 32), ((), (1,))):
        for bits in (16, 8, 4):
            cache = KVCache(model, 3, T, attn_skip_layers=skip, form=form, kv_bits=bits, kv_group=GROUP, kv_residual=2)
            model(torch.randint(0, 61, (3, min(T, 5))), cache=cache)
            assert cache.nbytes() == kv_cache_nbytes(cfg, form, 3, T, torch.float32, skip, bits, GROUP, 2)
            assert cache.workspace_nbytes() == kv_workspace_nbytes(cfg, form, 3, T, torch.float32, skip, bits, GROUP)
            if T > W and name.endswith("swa"):  # every layer a ring: the per-token figure is its whole cache / T
                per_token = kv_bytes_per_token(cfg, form, skip, bits, GROUP, torch.float32, context=T, kv_residual=2)
                assert cache.nbytes() == pytest.approx(per_token * T * 3, rel=1e-12)
        cache = KVCache(model, 3, T, attn_skip_layers=skip, form=form)
        assert cache.nbytes() == pytest.approx(kv_bytes_per_token(cfg, form, skip, dtype=torch.float32, context=T) * T * 3,
                                               rel=1e-12)
    # a window bounds the cache: past W, the windowed layers' share of a token falls as W / T
    flat = GPTConfig(**{**TINY, **CONFIGS[name.rsplit("-", 1)[0]]})
    for T in (W, 32):
        assert kv_bytes_per_token(cfg, "kv", context=T) <= kv_bytes_per_token(flat, "kv", context=T)
    assert kv_bytes_per_token(cfg, "kv", context=32) < kv_bytes_per_token(flat, "kv", context=32)
    assert model.kv_cache_bytes_per_token(torch.float16, form="kv", context=16) == kv_bytes_per_token(cfg, "kv", context=16)


def test_swa_bytes_follow_min_t_w():
    cfg = GPTConfig(**TINY, attn_window=W)
    base = GPTConfig(**TINY)
    for T in (1, 4, W, 16, 32):
        assert kv_bytes_per_token(cfg, "kv", context=T) == kv_bytes_per_token(base, "kv") * min(T, W) / T
    lg = GPTConfig(**TINY, attn_window=W, attn_global_every=2, attn_global_last=True)
    assert lg.layer_windows == (W, None)
    assert kv_bytes_per_token(lg, "kv", context=32) == kv_bytes_per_token(base, "kv") * (1 + W / 32) / 2


def test_window_errors():
    """Each bad window setting is one ValueError line naming what is wrong."""
    cases = {
        "must be a whole number of tokens >= 1": dict(attn_window=0),
        "whole number of tokens >= 1, a per-layer": dict(attn_window=2.5),
        "has 3 entries for n_layer=2": dict(attn_window=(4, 4, 4)),
        "entries must be whole numbers": dict(attn_window=(4, -1)),
        "gives layer 0 a window, but it has no attention": dict(attn_window=(4, 4), attn_layers=(1,)),
        "is not below block_size=32": dict(attn_window=32),
        "groups layers 0.. with different windows": dict(attn_window=(4, 0), kv_share=2),
        "need attn_window": dict(attn_global_every=2),
        "attn_global_every must be a whole number": dict(attn_window=4, attn_global_every=-1),
        "not a per-layer tuple": dict(attn_window=(4, 4), attn_global_every=2),
        "attn_global_every=1 makes every layer global": dict(attn_window=4, attn_global_every=1),
        "attn_global_last needs attn_global_every": dict(attn_window=4, attn_global_last=True),
        "leaves no attention layer global": dict(attn_window=4, attn_global_every=4, attn_global_last=True),
    }
    for msg, kw in cases.items():
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
            GPTConfig(**TINY, **kw)
    assert GPTConfig(**TINY, attn_window=[4, None]).layer_windows == (4, None)  # a list from a config file
    model = tiny(attn_window=6)
    with pytest.raises(ValueError, match=r"attn_window=6 cannot hold .* multiple of kv_group=4 and kv_residual \+ 4 <= W"):
        KVCache(model, 1, form="kv", kv_bits=4, kv_group=4)
    KVCache(model, 1, form="input", kv_bits=4, kv_group=4)  # x^ is quantized per token: any window
    with pytest.raises(ValueError, match=r"kv_residual \+ 4 <= W \(kv_residual=5\)"):
        KVCache(tiny(attn_window=8), 1, form="kv", kv_bits=8, kv_group=4, kv_residual=5)
    cache = KVCache(tiny(attn_window=W), 1)
    model = tiny(attn_window=W).eval()
    model(torch.randint(0, 61, (1, 6)), cache=cache)
    with pytest.raises(ValueError, match="takes a prefill, then one token per step once it wraps"):
        model(torch.randint(0, 61, (1, 4)), cache=cache)


def test_position_eval_reports_loss_by_position_and_recall_by_distance():
    """The loss at each position is the mean cross-entropy of the predictions made there; on a masked set, each
    answer counts at the distance back to its query key's latest earlier occurrence."""
    import torch.nn.functional as F
    from evaluate import position_eval
    model = tiny().eval()
    torch.manual_seed(3)
    x = torch.randint(1, 61, (2, 12))
    y = torch.randint(0, 61, (2, 12))
    per_pos, by_dist = position_eval(model, [(x, y)])
    logits, _ = model(x, y)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(2, 12).mean(0)
    assert torch.allclose(torch.tensor(per_pos), ce, atol=1e-6) and by_dist is None
    # a recall-like batch: key 5 at 0 and 7, key 9 at 2; answers scored at 7 (5 last seen at 0) and 10 (9 at 2)
    x = torch.tensor([[5, 50, 9, 51, 0, 0, 0, 5, 50, 0, 9, 0]])
    y = torch.full_like(x, -1)
    y[0, 7], y[0, 10] = 50, 51
    per_pos, by_dist = position_eval(model, [(x, y)])
    assert [t for t, v in enumerate(per_pos) if v is not None] == [7, 10]
    right = (model(x, y)[0].argmax(-1) == y)[0]
    assert by_dist == {"7": [int(right[7]), 1], "8": [int(right[10]), 1]}


@pytest.mark.slow
def test_bench_times_windowed_steps_and_kernels(tmp_path):
    """bench.py times a windowed config's training step against the baseline's, and --kernels the banded
    kernel and FlexAttention against causal attention (FlexAttention has no backward on a CPU: said, not
    timed)."""
    import json
    from conftest import run
    shape = ["--n_layer=4", "--n_head=2", "--n_embd=32", "--block_size=64", "--batch_size=2", "--steps=1",
             "--warmup=1", "--rounds=1"]
    run("bench.py", "--compare=swa,local_global_last", *shape, f"--json={tmp_path / 'steps.json'}")
    rows = json.loads((tmp_path / "steps.json").read_text())["rows"]
    assert [r["config"] for r in rows] == ["baseline", "swa", "local_global_last"] and rows[0]["x_base_time"] == 1
    p = run("bench.py", "--kernels=True", "--window=16", *shape, f"--json={tmp_path / 'kernels.json'}")
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    timed = {(r["kernel"], r["pass"]) for r in rows}
    assert {("causal SDPA", "forward"), ("banded SDPA", "forward"), ("FlexAttention", "forward"),
            ("causal SDPA", "forward + backward"), ("banded SDPA", "forward + backward"),
            ("T x T mask SDPA", "forward + backward")} <= timed
    assert all(r["x_causal"] == 1 for r in rows if r["kernel"] == "causal SDPA")
    assert "FlexAttention, forward + backward: not available here" in p.stdout


def test_budget_gates_removed_keep_each_layers_window():
    """A budget model with windows becomes the static model of the layers it keeps, each with its window (a
    per-layer tuple, which the pattern need not fit once the global layer is gone), exactly."""
    from analysis import remove_closed_attention
    for window in ((0, W), W):  # layer 0 global, layer 1 local; layer 0 closes
        model = tiny(attn_budget=0.5, attn_window=window, **({"attn_global_every": 2} if window == W else {})).eval()
        for b, z in zip(model.transformer.h, (0.0, 1.0)):
            b.attn_gate_fixed.fill_(z)
        static = remove_closed_attention(model)
        assert static.config.attention_layers == (1,) and static.config.layer_windows == (None, W)
        idx = torch.randint(0, 61, (2, 32))
        assert torch.allclose(static(idx, targets=idx)[0], model(idx, targets=idx)[0], atol=1e-6)
