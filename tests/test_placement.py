"""Attention the model can give up: static placement (attn_layers), learned placement under a budget
(hard-concrete gates removed exactly at the end), and pruning in an order chosen by measured loss."""
import json
import re

import pytest
import torch

from evaluate import greedy_order, pruning_curve, val_eval
from model import (GPT, GPTConfig, KVCache, analyze_attn_gates, apply_budget_schedule, cache_forms,
                   fix_attn_gates, remove_closed_attention)
from checkpoint import load_base_weights
from test_model import FULL, TINY

DEEP = dict(TINY, n_layer=4)


def deep(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**DEEP, **kw}))


def test_an_attention_free_layer_holds_no_attention():
    model = deep(attn_layers=(0, 2))
    keys = model.state_dict().keys()
    for i in range(4):
        has = any(k.startswith(f"transformer.h.{i}.attn.") or k.startswith(f"transformer.h.{i}.ln_1.") for k in keys)
        assert has == (i in (0, 2)), i
    E = 32
    per_layer_attn = 4 * E * E + 4 * E + 2 * E  # c_attn, c_proj, their biases, ln_1
    assert deep().get_num_params() - model.get_num_params() == 2 * per_layer_attn
    assert GPTConfig(**DEEP, attn_layers="first_half").attn_layers == (0, 1)
    assert GPTConfig(**DEEP, attn_layers=2).attn_layers == (2,)


def test_iso_parameter_placement_keeps_the_parameter_count():
    """Attention-free layers' MLPs take the attention's parameters as hidden units of 2E + 1 each."""
    base, iso = deep().get_num_params(), deep(attn_layers=(0, 1), attn_free_mlp_iso=True)
    hidden = iso.transformer.h[3].mlp.c_fc.out_features
    assert hidden == 4 * 32 + round((4 * 32 * 32 + 4 * 32 + 2 * 32) / 65)
    assert iso.transformer.h[0].mlp.c_fc.out_features == 4 * 32
    assert abs(iso.get_num_params() - base) <= 2 * 65 // 2  # within one hidden unit per layer of rounding


@pytest.mark.parametrize("kw", [dict(attn_layers=(0, 2)), dict(FULL, attn_layers=(1, 3), n_kv_head=1),
                                dict(attn_layers=(0, 1), kv_share=2), dict(attn_layers=(2, 3), kv_share=2, use_reciprocity=True),
                                dict(attn_layers=(0,), use_reciprocity=True, use_discoverability=True)],
                         ids=["mha", "full_mqa", "cla", "cla_rec", "lens"])
def test_placement_decodes_exactly_and_caches_what_it_says(kw):
    """Cached decoding (each form, eager and compiled) equals recomputation; the cache's bytes are the
    analytic ones, which count only the attention layers."""
    model = deep(**kw).eval()
    idx = torch.randint(0, 61, (2, 20))
    full, _ = model(idx, targets=idx)
    layers = model.config.attention_layers
    for form in cache_forms(model.config):
        cache = KVCache(model, 2, form=form)
        steps = [model(idx[:, :8], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(8, 20)]
        for t, logits in zip(range(7, 20), steps):
            assert torch.allclose(logits[:, -1], full[:, t], atol=1e-5, rtol=0), (form, t)
        assert cache.nbytes() == model.kv_cache_bytes_per_token(torch.float32, form=form) * 2 * 32
        assert all(cache.layers[i] is None for i in range(4) if i not in layers)
        dense = deep(**{k: v for k, v in kw.items() if k != "attn_layers"})
        per_layer = dense.kv_cache_bytes_per_token(torch.float32, form=form) / 4
        assert model.kv_cache_bytes_per_token(torch.float32, form=form) == per_layer * len(layers)
    prompt = idx[:1, :4]
    ref = model.generate(prompt, 12, temperature=0, kv_cache=False)
    torch._dynamo.reset()
    assert torch.equal(model.generate(prompt, 12, temperature=0, kv_cache=True, compile=True), ref)


def test_placement_equals_pruning_the_same_layers():
    """GPT-2 weights loaded into an attn_layers model (as from_pretrained does) give the logits of the
    whole model with attention pruned from the other layers."""
    torch.manual_seed(0)
    whole = deep(**FULL).eval()
    placed = deep(**FULL, attn_layers=(0, 3)).eval()
    load_base_weights(placed, {k: v for k, v in whole.state_dict().items()})
    with torch.no_grad():  # the mechanisms' own parameters (u, gates, context) too: same model
        for k, v in whole.state_dict().items():
            if k in placed.state_dict():
                placed.state_dict()[k].copy_(v)
    idx = torch.randint(0, 61, (2, 24))
    assert torch.equal(placed(idx, targets=idx)[0], whole(idx, targets=idx, attn_skip_layers=(1, 2))[0])


def test_pretrained_gpt2_with_attention_removed(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_head=4, n_embd=32, n_positions=24,
                                                               vocab_size=50)).eval()
    hf.save_pretrained(tmp_path)
    whole = GPT.from_pretrained(str(tmp_path)).eval()
    placed = GPT.from_pretrained(str(tmp_path), attn_layers=(0, 1)).eval()
    assert not any(".h.2.attn." in k for k in placed.state_dict())
    prompt = torch.randint(0, 50, (1, 6))
    ref = whole.generate(prompt, 12, temperature=0, kv_cache=False, attn_skip_layers=(2, 3))
    for form in ("kv", "input"):
        assert torch.equal(placed.generate(prompt, 12, temperature=0, kv_cache=form), ref)


def test_placement_and_budget_errors():
    for kw, msg in [(dict(attn_layers=()), "attn_layers must be a non-empty tuple"),
                    (dict(attn_layers=(0, 0)), r"attn_layers=\(0, 0\) must name distinct layers in \[0, 4\)"),
                    (dict(attn_layers=(4,)), r"must name distinct layers in \[0, 4\)"),
                    (dict(attn_layers=(-1,)), "must name distinct layers"),
                    (dict(attn_layers=(0,), kv_share=2), "a layer cannot share K/V with an attention-free one"),
                    (dict(attn_budget=0.0), r"attn_budget must be in \(0, 1\], got 0.0"),
                    (dict(attn_budget=1.5), r"attn_budget must be in \(0, 1\]"),
                    (dict(attn_budget=0.1), "attn_budget=0.1 of 4 attention layers rounds to none"),
                    (dict(attn_budget=0.5, mlp_disabled=True, use_reciprocity=True), "attn_budget needs an MLP"),
                    (dict(attn_budget=0.5, kv_share=2), "attn_budget gates single layers")]:
        with pytest.raises(ValueError, match=msg):
            GPTConfig(**DEEP, **kw)


def test_budget_gates_are_hard_concrete():
    """Training samples z in [0, 1] per token with exact zeros and ones; evaluation uses the
    deterministic value; P(open) is the stated formula."""
    model = deep(attn_budget=0.5)
    block = model.transformer.h[0]
    with torch.no_grad():
        block.attn_log_alpha.fill_(0.0)
    z = block.attn_gate((64, 32, 1))
    assert z.shape == (64, 32, 1) and z.min() == 0.0 and z.max() == 1.0 and ((z > 0) & (z < 1)).any()
    model.eval()
    assert block.attn_gate().item() == pytest.approx(0.5 * 1.2 - 0.1)
    assert block.attn_open_probability().item() == pytest.approx(torch.sigmoid(torch.tensor(2 / 3 * 2.3978953)).item(), abs=1e-5)


def test_the_budget_multipliers_ascend_and_the_target_warms_up():
    """With more gates open than the budget allows, a step raises lambda_1 (gradient ascent) and lowers
    every log alpha; the target falls from every layer to k over the warmup."""
    model = deep(attn_budget=0.25)
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu")
    assert [g.get("maximize", False) for g in opt.param_groups] == [False, False, False, True]
    assert model.config.attn_budget_layers == 1
    assert apply_budget_schedule(model, 0, 100) == 4 and apply_budget_schedule(model, 50, 100) == 2.5
    assert apply_budget_schedule(model, 100, 100) == 1 and model.budget_target.item() == 1
    with torch.no_grad():
        model.budget_lambda.fill_(1.0)
    before = [b.attn_log_alpha.item() for b in model.transformer.h]
    x = torch.randint(0, 61, (4, 16))
    model.train()
    model(x, x)[1].backward()
    assert model.budget_lambda.grad[0].item() == pytest.approx(analyze_attn_gates(model)["expected_open"] - 1, abs=1e-5)
    opt.step()
    assert model.budget_lambda[0].item() > 1.0
    assert all(b.attn_log_alpha.item() < a for a, b in zip(before, model.transformer.h))


def test_fixed_gates_are_removed_exactly():
    """Gates fixed to 0/1 (the k largest log alpha open) make a deterministic model; removing the closed
    layers' attention gives a static attn_layers model with the same logits, to 0.0."""
    for kw in (dict(attn_budget=0.5), dict(FULL, attn_budget=0.5)):
        model = deep(**kw)
        with torch.no_grad():
            for b, v in zip(model.transformer.h, (0.5, -1.0, 2.0, 0.1)):
                b.attn_log_alpha.fill_(v)
        model.eval()
        with pytest.raises(ValueError, match="the attention gates are not yet deterministic"):
            remove_closed_attention(model)
        assert fix_attn_gates(model) == [0, 2]
        static = remove_closed_attention(model).eval()
        assert static.config.attn_layers == (0, 2) and static.config.attn_budget is None
        assert not any("attn_log_alpha" in k or "budget" in k for k in static.state_dict())
        idx = torch.randint(0, 61, (2, 24))
        assert (model(idx, targets=idx)[0] - static(idx, targets=idx)[0]).abs().max().item() == 0.0
        dense = deep(**{k: v for k, v in kw.items() if k != "attn_budget"})
        assert static.kv_cache_bytes_per_token(torch.float16) == dense.kv_cache_bytes_per_token(torch.float16) / 2


def test_greedy_pruning_removes_the_cheapest_layer_first():
    """Each step removes the layer whose removal costs least on the selection batches (checked by brute
    force), and the curve reports the other batches."""
    model = deep().eval()
    gen = torch.Generator().manual_seed(0)
    select = [(x, x) for x in torch.randint(0, 61, (3, 4, 16), generator=gen)]
    report = [(x, x) for x in torch.randint(0, 61, (3, 4, 16), generator=gen)]
    order = greedy_order(model, select)
    assert sorted(order) == [0, 1, 2, 3]
    for k in range(3):
        costs = {i: val_eval(model, select, tuple(sorted(order[:k] + [i])))[0] for i in range(4) if i not in order[:k]}
        assert order[k] == min(costs, key=lambda i: (costs[i], i))
    points, _ = pruning_curve(model, report, select_batches=select)
    greedy = [p for p in points if p.ranking == "greedy"]
    assert [p.layers for p in greedy] == [sorted(order[:k]) for k in range(5)]
    assert greedy[2].val_loss == val_eval(model, report, tuple(sorted(order[:2])))[0]
    placed = deep(attn_layers=(1, 3)).eval()
    assert sorted(greedy_order(placed, select)) == [1, 3]  # only layers that have attention


@pytest.mark.slow
def test_budget_training_end_to_end(char_data, tmp_path):
    """train.py logs the gates, fixes them at attn_gate_fix_iter and saves a deterministic model, which
    sample.py and kv_cache_bench.py decode as its static attn_layers model; a checkpoint whose gates are
    not yet fixed is refused in one line where pruning is asked for."""
    from checkpoint import load_checkpoint, model_from_checkpoint
    from conftest import TINY as ARGS, run
    common = ["config/ablation_attn_budget_half.py", *ARGS, "--n_layer=4", "--eval_interval=10", "--max_iters=20"]
    p = run("train.py", *common, "--attn_budget_warmup_iter=5", "--attn_gate_fix_iter=8", f"--out_dir={tmp_path / 'fixed'}")
    assert "attention P(open) " in p.stdout and "step 8: attention gates fixed, open in layers [" in p.stdout
    assert re.search(r"step 20: .*attn_gates_open [\d.]+, attention gates ([01]\.00 ?){4}$", p.stdout, re.M), p.stdout
    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "fixed" / "ckpt.pt")))
    kept = [i for i, z in analyze_attn_gates(model)["z"].items() if z == 1.0]
    assert len(kept) == 2
    p = run("sample.py", f"--out_dir={tmp_path / 'fixed'}", "--max_new_tokens=5", "--num_samples=1")
    assert f"attention gates fixed: attention in layers {kept} only" in p.stdout
    js = tmp_path / "kv.json"
    run("kv_cache_bench.py", "--configs=", f"--ckpt={tmp_path / 'fixed' / 'ckpt.pt'}", "--eval_batches=2", f"--json={js}")
    (curve,) = json.loads(js.read_text())["pruning"]
    assert curve["config"] == str(tmp_path / "fixed")  # the run directory as given, not relative to the working one
    greedy = [p for p in curve["points"] if p["ranking"] == "greedy"]
    assert [len(p["layers"]) for p in greedy] == [0, 1, 2] and all(set(p["layers"]) <= set(kept) for p in greedy)
    run("train.py", *common, "--attn_gate_fix_iter=100", f"--out_dir={tmp_path / 'soft2'}")  # never fixed
    p = run("kv_cache_bench.py", "--configs=", f"--ckpt={tmp_path / 'soft2' / 'ckpt.pt'}", "--eval_batches=2", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'soft2' / 'ckpt.pt'}: the attention gates are "
                                                        "not yet deterministic (P(open) ")
