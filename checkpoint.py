"""Checkpoints: written atomically, read back with weights_only=True and checked, every failure a
one-line error (SystemExit) rather than a traceback."""
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


def model_from_checkpoint(ckpt, path="checkpoint"):
    """The GPT a checkpoint describes, with its weights; a mismatch is a one-line error."""
    try:
        model = GPT(GPTConfig(**model_args_of(ckpt)))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {path} has model_args this version cannot build: {e}")
    # torch.compile's prefix (nanoGPT saves it), and the causal-mask buffers of nanoGPT without flash attention
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items() if not k.endswith(".attn.bias")}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise SystemExit(f"error: {path} does not match its own model_args: {str(e).splitlines()[1].strip()}")
    return model
