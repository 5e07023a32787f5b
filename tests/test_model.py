"""The model's promises: GPT-2 when everything is off, the fused attention equals the plain
formula, causality, parameter counts, annealing, and a conductor mode with no host sync."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from model import (GPT, GPTConfig, analyze_lens_gates, analyze_route_gates, apply_route_annealing,
                   get_mean_route_gate, mechanism_param_counts, patch_gpt2_with_lens_attention,
                   print_architecture_summary)

TINY = dict(block_size=32, vocab_size=61, n_layer=2, n_head=4, n_embd=32, mlp_ctx_rank=8)
FULL = dict(use_reciprocity=True, use_discoverability=True, use_route_gate=True, mlp_use_ctx_summary=True)
CONFIGS = {
    "baseline": {},
    "reciprocity": dict(use_reciprocity=True),
    "discoverability": dict(use_discoverability=True),
    "lens": dict(use_reciprocity=True, use_discoverability=True),
    "attn_only": dict(use_reciprocity=True, use_discoverability=True, mlp_disabled=True),
    "route_gate": dict(use_reciprocity=True, use_discoverability=True, use_route_gate=True),
    "full": FULL,
    "conductor": dict(FULL, mlp_ctx_conductor=True, init_route_gate=-1.0),
    "mlp_ratio_2p5": dict(FULL, mlp_expansion_ratio=2.5),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "full_mqa": dict(FULL, n_kv_head=1),
    "cla": dict(kv_share=2),
    "cla_lens": dict(use_reciprocity=True, use_discoverability=True, n_kv_head=2, kv_share=2),
    # placement: attention only in layer 1 (layer 0 an MLP-only block), alone and with every mechanism and MQA
    "attn_layer_1": dict(attn_layers=(1,)),
    "attn_layer_1_full_mqa": dict(FULL, attn_layers=(1,), n_kv_head=1),
    # learned placement: hard-concrete gates on attention (in evaluation: their deterministic value)
    "attn_budget": dict(attn_budget=0.5),
    "route_budget": dict(FULL, attn_budget=0.5),
}


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **kw}))


# 1. everything off is GPT-2 -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_baseline_equals_huggingface_gpt2(tmp_path, fmt):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=40, vocab_size=97,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a transposed or dropped tensor shows
        for name, p in hf.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    if fmt == "safetensors":
        hf.save_pretrained(tmp_path)
    else:  # the older layout: a pickled state dict in Conv1D orientation
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")).exists()
    model = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 97, (3, 40))
    ours, _ = model(idx, targets=idx)
    with torch.no_grad():
        theirs = hf(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_pretrained_with_mechanisms_on_top(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32,
                                                               n_positions=16, vocab_size=50))
    hf.save_pretrained(tmp_path)
    model, cfg = patch_gpt2_with_lens_attention(str(tmp_path), **FULL)
    assert cfg.use_reciprocity and cfg.mlp_use_ctx_summary
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, hf.transformer.h[1].mlp.c_fc.weight.t())
    with pytest.raises(ValueError, match="n_embd=64 does not match"):
        GPT.from_pretrained(str(tmp_path), n_embd=64)
    with pytest.raises(ValueError, match="tie_embeddings=False does not match"):
        GPT.from_pretrained(str(tmp_path), tie_embeddings=False)
    # patching an existing GPT keeps its GPT-2 weights and adds fresh mechanisms
    base = tiny()
    patched, _ = patch_gpt2_with_lens_attention(base, use_discoverability=True, mlp_disabled=True)
    assert torch.equal(patched.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)
    assert not any(".mlp." in k for k in patched.state_dict())


# 2. the fused kernel call equals the written-out formula ------------------------------------------
def reference_attention(attn, x):
    """S, S^T, d, mask, softmax, exactly as docs/design.md writes them, with a T x T matrix (the mask applied
    after mixing: causal, and within the layer's sliding window where it has one)."""
    B, T, C = x.shape
    H, Hkv = attn.n_head, attn.n_kv_head
    D = C // H
    q, k, v = attn.c_attn(x).split([C, Hkv * D, Hkv * D], dim=2)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    v = v.view(B, T, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    S = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    if not (attn.use_rec or attn.use_disc):
        logits = S
    else:
        w = F.softmax(attn.lens_gates, dim=-1)  # columns: std, then rec if on, then disc if on
        logits = w[:, 0].view(1, H, 1, 1) * S
        if attn.use_rec:
            logits = logits + w[:, 1].view(1, H, 1, 1) * S.transpose(-2, -1)
        if attn.use_disc:
            d = torch.einsum("bhjd,hd->bhj", k, attn.u)
            logits = logits + w[:, -1].view(1, H, 1, 1) * d[:, :, None, :]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    if attn.window is not None:
        mask = mask.triu(1 - attn.window)  # j > i - W
    p = F.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    y = (p @ v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


@pytest.mark.parametrize("rec,disc,n_kv_head,window",
                         [(*c, None) for c in itertools.product([False, True], [False, True], [4, 2, 1])]
                         + [(*c, w) for c in itertools.product([False, True], [False, True], [4, 1]) for w in (2, 8)])
def test_fused_attention_equals_reference(rec, disc, n_kv_head, window):
    """The fused layer equals the written-out formula, values and gradients; with a sliding window of 2 over 23
    tokens it runs banded attention, with 8 one T x T band mask (model.BANDED_MIN_RATIO)."""
    torch.manual_seed(1)
    cfg = GPTConfig(**{**TINY, "n_embd": 48}, use_reciprocity=rec, use_discoverability=disc, n_kv_head=n_kv_head,
                    lens_gate_init=(0.3, 0.9, 1.2), attn_window=window)  # large rec/disc weights: errors would show
    attn = GPT(cfg).transformer.h[0].attn
    assert attn.window == window
    with torch.no_grad():
        if disc:
            attn.u.normal_(0, 0.5)
        if rec or disc:
            attn.lens_gates.add_(0.3 * torch.randn_like(attn.lens_gates))
    x = torch.randn(2, 23, 48)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fused, out_ref = attn(x1)[0], reference_attention(attn, x2)
    assert torch.allclose(out_fused, out_ref, atol=1e-5, rtol=0)
    params = [p for p in attn.parameters()]
    g = torch.randn_like(out_ref)
    grads_fused = torch.autograd.grad(out_fused, [x1] + params, g)
    grads_ref = torch.autograd.grad(out_ref, [x2] + params, g)
    for a, b in zip(grads_fused, grads_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_default_lens_gates():
    w = analyze_lens_gates(tiny(use_reciprocity=True, use_discoverability=True))
    assert (round(w["mean_w_std"], 2), round(w["mean_w_rec"], 2), round(w["mean_w_disc"], 2)) == (0.76, 0.15, 0.09)
    base = analyze_lens_gates(tiny())
    assert (base["mean_w_std"], base["mean_w_rec"], base["mean_w_disc"]) == (1.0, 0.0, 0.0)
    assert not any("lens_gates" in k for k in tiny().state_dict())  # no gates at all: plain GPT-2


# 3. causality for every config -------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_causal(name):
    model = tiny(**CONFIGS[name]).eval()
    idx = torch.randint(0, 61, (2, 32))
    base, _ = model(idx, targets=idx)
    for t in (0, 7, 30):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 61, changed[:, t + 1:].shape)
        logits, _ = model(changed, targets=changed)
        assert torch.allclose(logits[:, :t + 1], base[:, :t + 1], atol=1e-6), f"t={t}"
        if t < 31:
            assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:])


# 4. parameter counts --------------------------------------------------------------------------------
def test_parameter_counts_follow_the_formulas():
    E, H, L, R = 48, 4, 2, 8
    kw = dict(TINY, n_embd=E, n_head=H, n_layer=L, mlp_ctx_rank=R)
    n = lambda **m: GPT(GPTConfig(**kw, **m)).get_num_params(non_embedding=False)
    base = n()
    assert n(use_discoverability=True) - base == L * (E + H * 2)  # u, gates over (std, disc)
    assert n(use_reciprocity=True) - base == L * (H * 2)  # reciprocity itself has no parameters
    assert n(use_reciprocity=True, use_discoverability=True) - base == L * (E + H * 3)
    assert n(use_route_gate=True) - base == L
    hidden = 4 * E
    assert n(mlp_use_ctx_summary=True) - base == L * (E * R + R * hidden + 1)
    assert base - n(kv_share=2) == (L // 2) * (2 * E * E + 2 * E)  # a CLA layer has no K/V projection
    assert base - n(kv_share=2, n_kv_head=2) == n() - n(n_kv_head=2) + (L // 2) * (E * E + E)
    hidden = round(2.5 * E)
    assert n(mlp_use_ctx_summary=True, mlp_expansion_ratio=2.5) - n(mlp_expansion_ratio=2.5) == L * (E * R + R * hidden + 1)
    # GPT-2 124M: docs/design.md's table, counted from real (meta) tensors
    with torch.device("meta"):
        big = GPT(GPTConfig(**FULL))
    counts = mechanism_param_counts(big)
    assert counts == {"discoverability u": 9216, "lens gates": 432, "route gate": 12, "MLP context": 5898252}
    assert counts["discoverability u"] + counts["lens gates"] + counts["route gate"] == 9660


def test_mlp_disabled_removes_mlp_and_ln_2():
    E, L = 32, 2
    full, noml = tiny(), tiny(mlp_disabled=True)
    mlp_params = L * ((E * 4 * E + 4 * E) + (4 * E * E + E) + 2 * E)  # c_fc, c_proj, ln_2
    assert full.get_num_params() - noml.get_num_params() == mlp_params
    assert not any(".mlp." in k or ".ln_2." in k for k in noml.state_dict())
    assert hasattr(noml.transformer.h[0], "mlp") is False


def test_untied_embeddings():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.get_num_params() - tied.get_num_params() == 61 * 32  # one more vocab x n_embd matrix
    # unit-scale embeddings (nn.Embedding's default); the output layer keeps GPT-2's 0.02
    assert abs(untied.transformer.wte.weight.std().item() - 1) < 0.05
    assert abs(untied.transformer.wpe.weight.std().item() - 1) < 0.1
    assert abs(untied.lm_head.weight.std().item() - 0.02) < 0.002
    assert abs(tied.transformer.wpe.weight.std().item() - 0.02) < 0.002
    # the head trains on its own, and a state dict round trip keeps it separate
    opt = untied.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    before = untied.transformer.wte.weight.detach().clone()
    idx = torch.randint(61, (2, 16))
    untied(idx, idx)[1].backward()
    opt.step()
    assert not torch.equal(untied.lm_head.weight, untied.transformer.wte.weight)
    assert not torch.equal(untied.transformer.wte.weight, before)
    fresh = tiny(tie_embeddings=False)
    fresh.load_state_dict(untied.state_dict())
    assert torch.equal(fresh(idx)[0], untied(idx)[0])
    # patching keeps the untied head
    patched, cfg = patch_gpt2_with_lens_attention(untied, use_discoverability=True)
    assert not cfg.tie_embeddings and torch.equal(patched.lm_head.weight, untied.lm_head.weight)


def test_weight_decay_reaches_weight_matrices_only():
    model = tiny(**FULL)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    plain = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
              "transformer.h.0.attn.c_proj.weight", "transformer.h.1.mlp.c_fc.weight",
              "transformer.h.1.mlp.c_proj.weight", "transformer.h.0.mlp.ctx_down.weight",
              "transformer.h.0.mlp.ctx_up.weight"):
        assert n in decayed
    for n in ("transformer.h.0.attn.u", "transformer.h.0.attn.lens_gates", "transformer.h.0.route_raw",
              "transformer.h.0.mlp.alpha_raw", "transformer.h.0.attn.c_attn.bias", "transformer.h.0.ln_1.weight",
              "transformer.ln_f.bias"):
        assert n in plain
    assert len(decayed) + len(plain) == len(list(model.parameters()))


# 5. route annealing ----------------------------------------------------------------------------------
def test_annealing_schedule():
    model = tiny(use_route_gate=True, init_route_gate=0.8, route_anneal_start=10, route_anneal_end=20,
                 route_anneal_target=-1.0)
    expected = {0: 0.0, 9: 0.0, 10: 0.0, 15: -0.9, 20: -1.8, 1000: -1.8}
    for step, bias in expected.items():
        assert apply_route_annealing(model, step) == pytest.approx(bias)
        assert all(b.route_bias.item() == pytest.approx(bias) for b in model.transformer.h)
    assert get_mean_route_gate(model) == pytest.approx(1 / (1 + math.exp(1.0)))  # sigmoid(target)
    stats = analyze_route_gates(model)
    assert stats["min_route_gate"] <= stats["mean_route_gate"] <= stats["max_route_gate"]
    assert len(stats["per_layer"]) == 2
    # a dict config (as the original write-up passes it) works too
    assert apply_route_annealing(model, 15, {"route_anneal_start": 0, "route_anneal_end": 30}) == pytest.approx(-0.9)


def test_free_learning_and_gradients_reach_route_raw():
    model = tiny(use_route_gate=True, init_route_gate=0.0, route_anneal_start=999999, route_anneal_end=999999)
    for step in (0, 5000, 999998):
        assert apply_route_annealing(model, step) == 0.0
    assert get_mean_route_gate(model) == pytest.approx(0.5)
    idx = torch.randint(0, 61, (2, 16))
    _, loss = model(idx, targets=idx)
    loss.backward()
    for b in model.transformer.h:
        assert b.route_raw.grad is not None and b.route_raw.grad.abs().item() > 0
    assert "transformer.h.0.route_bias" not in dict(model.named_parameters())  # not learned
    with pytest.raises(ValueError, match="no route gates"):
        get_mean_route_gate(tiny())


# 6. conductor mode: a tensor mask, no host sync --------------------------------------------------------
def test_conductor_compiles_fullgraph_and_switches():
    torch._dynamo.reset()
    model = tiny(**CONFIGS["conductor"]).eval()
    idx = torch.randint(0, 61, (2, 16))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # a graph break would raise
    out, _ = compiled(idx, targets=idx)
    ref, _ = model(idx, targets=idx)
    assert torch.allclose(out, ref, atol=1e-5)
    # g = sigmoid(-1) < 0.5: the context is on; with g > 0.5 it is off (same as alpha = 0)
    no_ctx = tiny(**CONFIGS["conductor"]).eval()
    for b in no_ctx.transformer.h:
        b.mlp.alpha_raw.data.zero_()
    assert not torch.allclose(model(idx, targets=idx)[0], no_ctx(idx, targets=idx)[0])
    apply_route_annealing(model, 10**9, {"route_anneal_start": 0, "route_anneal_end": 1, "route_anneal_target": 2.0})
    apply_route_annealing(no_ctx, 10**9, {"route_anneal_start": 0, "route_anneal_end": 1, "route_anneal_target": 2.0})
    assert torch.allclose(model(idx, targets=idx)[0], no_ctx(idx, targets=idx)[0], atol=1e-6)


def test_cla_layer_attends_with_the_k_and_v_of_the_layer_below():
    """kv_share=2: layer 1 computes only queries; its attention is softmax(q1 k0^T / sqrt(D)) v0 with
    layer 0's K and V, from layer 0's own input, written out here by hand."""
    model = tiny(kv_share=2, n_layer=4).eval()
    h = model.transformer.h
    assert [b.attn.owns_kv for b in h] == [True, False, True, False]
    assert h[1].attn.c_attn.weight.shape == (32, 32)
    idx = torch.randint(0, 61, (2, 16))
    x0 = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(16))
    B, T, H, D = 2, 16, 4, 8
    heads = lambda t: t.view(B, T, H, D).transpose(1, 2)
    q0, k0, v0 = (heads(t) for t in h[0].attn.c_attn(h[0].ln_1(x0)).split(32, dim=2))
    x1, _ = h[0](x0)
    q1 = heads(h[1].attn.c_attn(h[1].ln_1(x1)))
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    att = (q1 @ k0.transpose(-2, -1) / math.sqrt(D)).masked_fill(~mask, float("-inf")).softmax(-1)
    y = h[1].attn.c_proj((att @ v0).transpose(1, 2).reshape(B, T, 32))
    a1, (k, v) = h[1].attn(h[1].ln_1(x1), kv=(k0, v0))
    assert torch.allclose(a1, y, atol=1e-6) and k is k0 and v is v0
    with torch.no_grad():
        h[0].attn.c_attn.weight[32:] += 0.1 * torch.randn(64, 32)  # layer 0's K/V projection moves layer 1's output
    assert not torch.allclose(h[1].attn(h[1].ln_1(x1), kv=h[0].attn(h[0].ln_1(x0))[1])[0], y, rtol=1e-2, atol=0)


def test_config_errors():
    with pytest.raises(ValueError, match="kv_share must be >= 1"):
        GPTConfig(**TINY, kv_share=0)
    with pytest.raises(ValueError, match="n_kv_head=3 must divide n_head=4"):
        GPTConfig(**{**TINY, "n_kv_head": 3})
    with pytest.raises(ValueError, match="mlp_ctx_conductor needs"):
        GPTConfig(**TINY, mlp_ctx_conductor=True)
    with pytest.raises(ValueError, match="needs an MLP"):
        GPTConfig(**TINY, mlp_disabled=True, use_route_gate=True)


def test_architecture_summary(capsys):
    print_architecture_summary(tiny(use_reciprocity=True))
    out = capsys.readouterr().out
    assert "1.50x GPT-2" in out and "lens gates" in out
    print_architecture_summary(tiny(kv_share=2))
    out = capsys.readouterr().out
    assert "shared by 2 layers" in out and "0.50x GPT-2" in out


def test_flops_count_the_attention_widths():
    """QK^T at D, or 2D with reciprocity; discoverability adds no width (only its u parameters)."""
    cfg = dict(TINY, n_embd=48)
    base, rec, disc = (GPT(GPTConfig(**cfg, **m)) for m in ({}, dict(use_reciprocity=True), dict(use_discoverability=True)))
    L, T, H, D = 2, 32, 4, 12
    assert base.flops_per_token() == 6 * base.get_num_params() + 6 * L * T * H * (D + D)
    assert rec.flops_per_token() - base.flops_per_token() == 6 * L * H * 2 + 6 * L * T * H * D  # gates, 2D QK
    assert disc.flops_per_token() - base.flops_per_token() == 6 * (disc.get_num_params() - base.get_num_params())


@pytest.mark.parametrize("name", ["lens", "full_mqa"])
def test_lens_attention_trains_the_same_under_compile(name):
    """The selective checkpointing that keeps the widened operands out of backward works in a compiled
    graph too: same loss and gradients as eager."""
    torch._dynamo.reset()
    model = tiny(**CONFIGS[name])
    idx = torch.randint(0, 61, (2, 24))
    loss = model(idx, targets=idx)[1]
    grads = torch.autograd.grad(loss, list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss_c = compiled(idx, targets=idx)[1]
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()))
    assert torch.allclose(loss, loss_c, atol=1e-6)
    for a, b in zip(grads, grads_c):
        assert torch.allclose(a, b, atol=1e-6)


# 7. nanoGPT's checkpoints load exactly: its MLP uses the exact erf GELU ------------------------------------
def nanogpt_reference_logits(sd, n_head, idx):
    """karpathy/nanoGPT's model.py forward, written out from its state dict: LayerNorm (eps 1e-5), causal
    attention, nn.GELU() (the exact erf form), tied lm_head."""
    get = lambda k: sd.get(f"_orig_mod.{k}")
    wte = get("transformer.wte.weight")
    B, T = idx.shape
    E = wte.size(1)
    x = wte[idx] + get("transformer.wpe.weight")[:T]
    ln = lambda x, p: F.layer_norm(x, (E,), get(f"{p}.weight"), get(f"{p}.bias"), 1e-5)
    lin = lambda x, p: F.linear(x, get(f"{p}.weight"), get(f"{p}.bias"))
    i = 0
    while get(f"transformer.h.{i}.ln_1.weight") is not None:
        p = f"transformer.h.{i}"
        q, k, v = lin(ln(x, f"{p}.ln_1"), f"{p}.attn.c_attn").split(E, dim=2)
        q, k, v = (t.view(B, T, n_head, E // n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, E)
        x = x + lin(y, f"{p}.attn.c_proj")
        x = x + lin(torch.nn.GELU()(lin(ln(x, f"{p}.ln_2"), f"{p}.mlp.c_fc")), f"{p}.mlp.c_proj")
        i += 1
    return F.linear(ln(x, "transformer.ln_f"), get("lm_head.weight"))


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_checkpoint_matches_nanogpt(tmp_path, bias):
    """A ckpt.pt as nanoGPT's train.py writes it (compiled: `_orig_mod.` keys; its causal-mask buffers; its
    model_args) loads with the exact GELU, and its logits equal nanoGPT's own forward to 1e-5."""
    from checkpoint import load_checkpoint, model_args_of, model_from_checkpoint, save_checkpoint
    torch.manual_seed(0)
    L, H, E, V, T = 2, 4, 32, 65, 24
    shapes = {"ln_1.weight": (E,), "attn.c_attn.weight": (3 * E, E), "attn.c_proj.weight": (E, E),
              "ln_2.weight": (E,), "mlp.c_fc.weight": (4 * E, E), "mlp.c_proj.weight": (E, 4 * E)}
    if bias:
        shapes.update({"ln_1.bias": (E,), "attn.c_attn.bias": (3 * E,), "attn.c_proj.bias": (E,), "ln_2.bias": (E,),
                       "mlp.c_fc.bias": (4 * E,), "mlp.c_proj.bias": (E,)})
    wte = 0.3 * torch.randn(V, E)
    sd = {"transformer.wte.weight": wte, "transformer.wpe.weight": 0.3 * torch.randn(T, E), "lm_head.weight": wte,
          "transformer.ln_f.weight": 1 + 0.1 * torch.randn(E)}
    if bias:
        sd["transformer.ln_f.bias"] = 0.1 * torch.randn(E)
    for i in range(L):
        for k, shape in shapes.items():
            sd[f"transformer.h.{i}.{k}"] = (1 if k.startswith("ln") and k.endswith("weight") else 0) + 0.3 * torch.randn(shape)
        sd[f"transformer.h.{i}.attn.bias"] = torch.ones(T, T).tril().view(1, 1, T, T)  # nanoGPT without flash
    sd = {f"_orig_mod.{k}": v for k, v in sd.items()}
    model_args = dict(n_layer=L, n_head=H, n_embd=E, block_size=T, bias=bias, vocab_size=V, dropout=0.0)
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint({"model": sd, "optimizer": {}, "model_args": model_args, "iter_num": 100, "best_val_loss": 1.5,
                     "config": {"dataset": "shakespeare_char"}}, path)
    ck = load_checkpoint(path)
    assert model_args_of(ck)["mlp_activation"] == "exact"
    model = model_from_checkpoint(ck, path).eval()
    idx = torch.randint(0, V, (3, T))
    with torch.no_grad():
        ours, _ = model(idx, targets=idx)
        theirs = nanogpt_reference_logits(sd, H, idx)
        assert (ours - theirs).abs().max().item() <= 1e-5
        model.config.mlp_activation = "tanh"  # GPT-2's GELU is measurably another model: the setting matters
        for block in model.transformer.h:
            block.mlp.approximate = "tanh"
        assert (model(idx, targets=idx)[0] - theirs).abs().max().item() > 1e-4


def test_old_lensgpt_checkpoints_keep_the_tanh_gelu():
    from checkpoint import model_args_of
    old = {"model_args": {**TINY, "use_reciprocity": False}}  # a lensgpt checkpoint from before mlp_activation
    assert GPTConfig(**model_args_of(old)).mlp_activation == "tanh" == GPTConfig(**TINY).mlp_activation
    assert GPTConfig(**TINY, mlp_activation="exact").mlp_activation == "exact"
    with pytest.raises(ValueError, match="mlp_activation must be 'tanh' or 'exact'"):
        GPTConfig(**TINY, mlp_activation="relu")


def test_block_weights_stay_in_out_in_memory():
    """The blocks' weights lie in memory as (in, out) behind nn.Linear's (out, in) shape (the layout a one-row
    product reads straight): after init, a training step (grads and AdamW's state in the same layout), a
    state dict round trip and a move, with the same values as a row-major copy."""
    model = tiny(**CONFIGS["full"])
    linears = lambda m: [l for l in m.transformer.h.modules() if isinstance(l, torch.nn.Linear)]
    in_out = lambda w: w.stride() == (1, w.size(0))
    assert linears(model) and all(in_out(l.weight) for l in linears(model))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    x = torch.randint(0, 61, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    for l in linears(model):
        assert in_out(l.weight.grad) and in_out(opt.state[l.weight]["exp_avg"])
    copy = tiny(**CONFIGS["full"])
    copy.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})  # as a row-major checkpoint
    assert all(in_out(l.weight) for l in linears(copy.to(torch.float64)))
    assert all(torch.equal(a.weight, b.weight.float()) for a, b in zip(linears(model), linears(copy)))
