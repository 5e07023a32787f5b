"""
What the scripts do with a model besides running it: the route gates' annealing schedule and the
attention budget's, the analysis of every gate (lens, route, attention), the surgery that turns a fixed
budget model into the static model it is, and the entry point of the original lens write-up. Each is
importable from model as well.
"""
from dataclasses import replace

import torch

from checkpoint import MECHANISM_KEYS, MECHANISM_SWITCHES, SHAPE_KEYS, load_base_weights
from engine import cache_form, unwrap
from model import GPT, GPTConfig


def patch_gpt2_with_lens_attention(model, **options):
    """The entry point of the original lens write-up: a GPT-2 (a GPT, a Hugging Face name or a local directory) with
    lens mechanisms added on top. Returns (new_model, config)."""
    if isinstance(model, str):
        new = GPT.from_pretrained(model, **options)
    else:
        model = unwrap(model)
        new = GPT(replace(model.config, **options))
        base = {k: v for k, v in model.state_dict().items() if not k.endswith(MECHANISM_KEYS)}
        load_base_weights(new, base)
        new.to(next(model.parameters()).device)
    return new, new.config


def route_bias_at(step, cfg):
    """The route bias at `step`: 0 before route_anneal_start, then linear to
    route_anneal_target - init_route_gate at route_anneal_end, constant after."""
    total = cfg.route_anneal_target - cfg.init_route_gate
    if step < cfg.route_anneal_start:
        return 0.0
    if step >= cfg.route_anneal_end:
        return total
    return total * (step - cfg.route_anneal_start) / (cfg.route_anneal_end - cfg.route_anneal_start)


def apply_route_annealing(model, step, cfg=None):
    """Set every block's route bias for `step` (a no-op without route gates); returns the bias.
    `cfg` is a GPTConfig or a dict of its fields; by default the model's own config."""
    model = unwrap(model)
    if cfg is None:
        cfg = model.config
    elif isinstance(cfg, dict):
        cfg = replace(model.config, **{k: v for k, v in cfg.items() if k.startswith(("route_", "init_route"))})
    bias = route_bias_at(step, cfg)
    for block in model.transformer.h:
        if block.use_route:
            block.route_bias.fill_(bias)
    return bias


def apply_budget_schedule(model, step, warmup):
    """Set the budget's target number of open gates for `step`: every attention layer at 0, then
    linear to round(attn_budget * attention layers) at `warmup`, constant after (a no-op without a
    budget). Returns the target."""
    model = unwrap(model)
    cfg = model.config
    if cfg.attn_budget is None:
        return None
    n, k = len(cfg.attention_layers), cfg.attn_budget_layers
    target = k if step >= warmup else n - (n - k) * step / max(warmup, 1)
    model.budget_target.fill_(target)
    return target


def _route_gates(model):
    model = unwrap(model)
    if not model.config.use_route_gate:
        raise ValueError("this model has no route gates (use_route_gate=False)")
    return [block.route_gate().item() for block in model.transformer.h]


def get_mean_route_gate(model):
    g = _route_gates(model)
    return sum(g) / len(g)


def analyze_route_gates(model):
    g = _route_gates(model)
    return {"mean_route_gate": sum(g) / len(g), "min_route_gate": min(g), "max_route_gate": max(g),
            "per_layer": g}


@torch.no_grad()
def analyze_lens_gates(model):
    """Mean lens weights over heads and layers, and per attention layer and head. A disabled term's
    weight is exactly 0 (and w_std is 1 when no term is enabled)."""
    layers = []
    for block in unwrap(model).transformer.h:
        if not block.has_attn:
            continue
        w = [t.tolist() for t in block.attn.lens_weights()]
        layers.append({"w_std": w[0], "w_rec": w[1], "w_disc": w[2]})
    out = {}
    for name in ("w_std", "w_rec", "w_disc"):
        vals = [v for layer in layers for v in layer[name]]
        out[f"mean_{name}"] = sum(vals) / len(vals)
    out["per_layer"] = layers
    return out


@torch.no_grad()
def analyze_attn_gates(model):
    """The attention gates of an attn_budget model: per attention layer its P(open) and its value z
    in evaluation; E, the expected number of open gates; k, the budget's; whether they are fixed."""
    model = unwrap(model)
    if model.config.attn_budget is None:
        raise ValueError("this model has no attention gates (attn_budget is not set)")
    gated = [(i, b) for i, b in enumerate(model.transformer.h) if b.use_gate]
    was = model.training
    model.eval()
    z = {i: b.attn_gate().item() for i, b in gated}
    model.train(was)
    p = {i: b.attn_open_probability().item() for i, b in gated}
    return {"expected_open": sum(p.values()), "budget_layers": model.config.attn_budget_layers,
            "fixed": all(b.attn_gate_fixed.item() >= 0 for _, b in gated), "p_open": p, "z": z}


@torch.no_grad()
def fix_attn_gates(model):
    """The last phase of budget training: the k gates with the largest log alpha open (z = 1), the
    others closed (z = 0), from now on. Returns the open layers."""
    model = unwrap(model)
    gated = [(i, b) for i, b in enumerate(model.transformer.h) if b.use_gate]
    ranked = sorted(gated, key=lambda ib: (-ib[1].attn_log_alpha.item(), ib[0]))
    open_layers = sorted(i for i, _ in ranked[:model.config.attn_budget_layers])
    for i, b in gated:
        b.attn_gate_fixed.fill_(float(i in open_layers))
    return open_layers


@torch.no_grad()
def remove_closed_attention(model):
    """The static attn_layers model that an attn_budget model with fixed gates is: closed layers lose
    their attention (and ln_1), open ones keep it with z = 1, the gates and multipliers go. Its logits
    are those of `model`, exactly. Gates not yet fixed are a ValueError."""
    model = unwrap(model)
    cfg = model.config
    if cfg.attn_budget is None:
        return model
    stats = analyze_attn_gates(model)
    if not stats["fixed"]:
        raise ValueError(f"the attention gates are not yet deterministic (P(open) "
                         f"{', '.join(f'{p:.2f}' for p in stats['p_open'].values())}): training fixes them to 0 "
                         f"or 1 from attn_gate_fix_iter on; resume the run to its end first")
    keep = tuple(i for i, z in stats["z"].items() if z == 1.0)
    # each kept layer keeps its window, written per layer (a pattern may not hold for the layers that are left)
    window = None if cfg.attn_window is None else tuple(w if i in keep else None for i, w in enumerate(cfg.layer_windows))
    new = GPT(replace(cfg, attn_layers=keep, attn_budget=None, attn_window=window, attn_global_every=0,
                      attn_global_last=False)).to(model.lm_head.weight.device)
    target = new.state_dict()
    sd = {k: v for k, v in model.state_dict().items() if k in target}
    new.load_state_dict(sd)
    return new.train(model.training)


@torch.no_grad()
def attention_contribution(model, idx):
    """Per layer: the norm of the attention branch (g a, or a) over the norm of the block's whole
    update (x_next - x), on the batch idx (None for a layer without attention). Low means the block
    leans on its MLP: a pruning candidate."""
    model = unwrap(model)
    tr = model.transformer
    x = tr.drop(tr.wte(idx) + tr.wpe(torch.arange(idx.size(1), device=idx.device)))
    ratios, kv = [], None
    for block in tr.h:
        if not block.has_attn:  # nothing to remove
            x, kv = block(x, kv=kv)
            ratios.append(None)
            continue
        a, _ = block.attn(block.ln_1(x), kv=kv)
        a = block.attn_gate(a.shape[:2] + (1,)) * a if block.use_gate else a
        branch = block.route_gate() * a if block.use_route else a
        x_next, kv = block(x, kv=kv)
        ratios.append((branch.norm() / (x_next - x).norm()).item())
        x = x_next
    return ratios


def mechanism_param_counts(model):
    """Parameters owned by each lens mechanism, from the model's own tensors."""
    groups = {"discoverability u": (".attn.u",), "lens gates": (".attn.lens_gates",),
              "route gate": (".route_raw",),
              "MLP context": (".mlp.ctx_down.weight", ".mlp.ctx_up.weight", ".mlp.alpha_raw")}
    return {name: sum(p.numel() for k, p in unwrap(model).named_parameters() if k.endswith(sfx))
            for name, sfx in groups.items()}


def print_architecture_summary(model):
    """Each mechanism's parameters and overhead against GPT-2 of the same shape, and the KV-cache
    bytes per token this config implies."""
    model = unwrap(model)
    cfg = model.config
    base_cfg = GPTConfig(**{k: getattr(cfg, k) for k in SHAPE_KEYS + ("tie_embeddings",)})
    with torch.device("meta"):
        base = GPT(base_cfg)
    n_base, n = base.get_num_params(non_embedding=False), model.get_num_params(non_embedding=False)
    on = [k for k in MECHANISM_SWITCHES if getattr(cfg, k)]
    print(f"lensgpt: {cfg.n_layer} layers, {cfg.n_head} heads ({cfg.n_kv_head} KV"
          f"{f', shared by {cfg.kv_share} layers' if cfg.kv_share > 1 else ''}), {cfg.n_embd} wide, "
          f"block {cfg.block_size}, MLP x{cfg.mlp_expansion_ratio:g}"
          f"{'' if cfg.tie_embeddings else ', untied embeddings'}; on: {', '.join(on) or 'nothing (GPT-2)'}")
    for name, count in mechanism_param_counts(model).items():
        print(f"  {name:<18} {count:>12,d} params  {100 * count / n_base:7.3f}% of GPT-2")
    print(f"  {'total':<18} {n:>12,d} params  {100 * (n - n_base) / n_base:+7.3f}% vs GPT-2 "
          f"({n_base:,d}, incl. embeddings)")
    wins = cfg.layer_windows
    if any(wins):
        local = [i for i, w in enumerate(wins) if w]
        glob = [i for i in cfg.attention_layers if not wins[i]]
        print(f"  sliding windows: layers {', '.join(f'{i} (W={wins[i]})' for i in local)} attend to their last W tokens "
              f"(a cache ring of W positions); global: {', '.join(map(str, glob)) or 'none'}")
    kv, kv_base = model.kv_cache_bytes_per_token(torch.float16), base.kv_cache_bytes_per_token(torch.float16)
    num = lambda b: f"{b:,.0f}" if b == int(b) else f"{b:,.1f}"  # a windowed layer's share is fractional
    print(f"  KV cache: {num(kv)} B/token at {cfg.block_size} tokens, 16 bits (2 bytes a value) ({kv / kv_base:.2f}x "
          f"GPT-2's {kv_base:,d}), {num(kv * cfg.block_size)} B for the full {cfg.block_size}-token context")
    inp = model.kv_cache_bytes_per_token(torch.float16, form="input")
    print(f"  input-form cache (ln_1 inputs, exact): {num(inp)} B/token at {cfg.block_size} tokens, 16 bits "
          f"({inp / kv_base:.2f}x); kv_cache=True picks the {cache_form(cfg, True)} form")
