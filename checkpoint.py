"""Checkpoints: written atomically, read back with weights_only=True and checked, every failure a
one-line error (SystemExit) rather than a traceback."""
import json
import math
import os

import torch

from model import GPT, GPTConfig
from records import atomic_write

REQUIRED = ("model", "model_args", "iter_num", "best_val_loss", "config")


def save_checkpoint(obj, path):
    """torch.save, atomically (atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def nonfinite(obj, prefix=""):
    """The name of the first non-finite float (tensor or number) in a checkpoint-like object, or None."""
    if isinstance(obj, dict):
        return next((n for k, v in obj.items() if (n := nonfinite(v, f"{prefix}{k}.")) is not None), None)
    if isinstance(obj, (list, tuple)):
        return next((n for i, v in enumerate(obj) if (n := nonfinite(v, f"{prefix}{i}.")) is not None), None)
    if torch.is_tensor(obj) and obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
        return prefix.rstrip(".")
    if isinstance(obj, float) and not math.isfinite(obj):
        return prefix.rstrip(".")
    return None


def load_checkpoint(path, map_location="cpu"):
    if not os.path.isfile(path):
        raise SystemExit(f"error: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise SystemExit(f"error: {path} is not a readable checkpoint (truncated or corrupt?): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise SystemExit(f"error: {path} is not a lensgpt checkpoint (missing {', '.join(missing)})")
    return ckpt


def model_args_of(ckpt):
    """The GPTConfig fields a checkpoint was trained with. A checkpoint of karpathy/nanoGPT's train.py
    (its model_args name no lens field) was trained with the exact erf GELU; a lensgpt checkpoint from
    before mlp_activation existed, with GPT-2's tanh GELU (the default)."""
    args = dict(ckpt["model_args"])
    if "mlp_activation" not in args and "use_reciprocity" not in args:
        args["mlp_activation"] = "exact"  # nanoGPT's nn.GELU()
    return args


def model_from_checkpoint(ckpt, path="checkpoint", **overrides):
    """The GPT a checkpoint describes, with its weights; a mismatch is a one-line error. `overrides` are
    GPTConfig fields that do not change the weights (train.py: the dropout a resumed run trains with)."""
    try:
        model = GPT(GPTConfig(**{**model_args_of(ckpt), **overrides}))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {path} has model_args this version cannot build: {e}")
    # torch.compile's prefix (nanoGPT saves it), and the causal-mask buffers of nanoGPT without flash attention
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items() if not k.endswith(".attn.bias")}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise SystemExit(f"error: {path} does not match its own model_args: {str(e).splitlines()[1].strip()}")
    return model


# ----------------------------------------------------------------------------- GPT-2 in the Hugging Face layout
def hf_gpt2_weights(name_or_dir):
    """(GPTConfig fields, state dict in this repo's layout) of OpenAI GPT-2 weights in the Hugging Face
    layout: a local directory (config.json and model.safetensors or pytorch_model.bin), or a name that
    `transformers` downloads; tied or untied (tie_word_embeddings). A directory export_hf.py wrote (either
    route) gives its own config and weights (export_hf.pretrained_weights). GPT.from_pretrained builds the model."""
    if os.path.isdir(name_or_dir):
        with open(os.path.join(name_or_dir, "config.json")) as f:
            hf = json.load(f)
        if "lensgpt" in hf:  # lensgpt's config, which GPT-2's fields cannot hold all of
            from export_hf import pretrained_weights
            return pretrained_weights(name_or_dir)
        st = os.path.join(name_or_dir, "model.safetensors")
        if os.path.exists(st):
            from safetensors.torch import load_file
            sd = load_file(st)
        else:
            sd = torch.load(os.path.join(name_or_dir, "pytorch_model.bin"), map_location="cpu",
                            weights_only=True)
    else:
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ValueError(f"{name_or_dir!r} is not a directory, and loading GPT-2 by name "
                             "needs `pip install transformers`") from None
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir)
        hf, sd = hf_model.config.to_dict(), hf_model.state_dict()
    args = dict(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                block_size=hf["n_positions"], vocab_size=hf["vocab_size"], bias=True,
                tie_embeddings=hf.get("tie_word_embeddings", True))  # (PretrainedConfig's default: tied)
    act = hf.get("activation_function", "gelu_new")
    gelus = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
    if act not in gelus or abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ValueError(f"only GPT-2's GELUs ({', '.join(gelus)}) and layer_norm_epsilon=1e-5 are supported, "
                         f"got {act}")
    args["mlp_activation"] = gelus[act]
    args.update(n_kv_head=args["n_head"], kv_share=1)  # GPT-2 has a K and V for every head and layer
    # HF's Conv1D stores weights as (in, out); nn.Linear wants (out, in)
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    ours = {}
    for k, v in sd.items():
        k = k.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")) or (k == "lm_head.weight" and args["tie_embeddings"]):
            continue  # causal-mask buffers; a tied lm_head is wte
        ours[k if k == "lm_head.weight" else "transformer." + k] = v.t() if k.endswith(conv1d) else v
    return args, ours


# GPTConfig's fields that give GPT-2 its shape, and the switches that turn a mechanism on: the one
# list of each that the scripts share (benchmarks choose their own shape; the summary prints the switches)
SHAPE_KEYS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias")
MECHANISM_SWITCHES = ("use_reciprocity", "use_discoverability", "use_route_gate", "mlp_use_ctx_summary",
                      "mlp_ctx_conductor", "mlp_disabled")

# The parameters that exist only because a lens mechanism is on; everything else is GPT-2.
MECHANISM_KEYS = (".attn.u", ".attn.lens_gates", ".route_raw", ".route_bias",
                  ".mlp.ctx_down.weight", ".mlp.ctx_up.weight", ".mlp.alpha_raw")


def load_base_weights(model, sd):
    """Copy GPT-2 weights `sd` (our layout) into `model`, whose lens mechanisms keep their init.
    Any GPT-2 weight the model needs but `sd` lacks, or a shape mismatch, is an error; an MLP that
    `model` does not have (mlp_disabled), or attention it does not have (attn_layers), is dropped."""
    target = model.state_dict()
    dropped = {f"transformer.h.{i}.{part}." for i in range(model.config.n_layer)
               if i not in model.config.attention_layers for part in ("attn", "ln_1")}
    for k, v in sd.items():
        if k not in target:
            if model.config.mlp_disabled and (".mlp." in k or ".ln_2." in k):
                continue
            if k.startswith(tuple(dropped)):  # attention removed from this layer (attn_layers)
                continue
            raise ValueError(f"unexpected weight {k} in the source state dict")
        if target[k].shape != v.shape:
            raise ValueError(f"shape mismatch for {k}: source {tuple(v.shape)}, model {tuple(target[k].shape)}")
        with torch.no_grad():
            target[k].copy_(v)
    missing = [k for k in target if k not in sd and not k.endswith(MECHANISM_KEYS)
               and not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if missing:
        raise ValueError(f"source state dict lacks {len(missing)} GPT-2 weights, e.g. {missing[0]}")
