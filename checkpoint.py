"""Checkpoints: written atomically, read back with weights_only=True and checked, every failure a
one-line error (SystemExit) rather than a traceback."""
import os

import torch

from model import GPT, GPTConfig

REQUIRED = ("model", "model_args", "iter_num", "best_val_loss", "config")


def save_checkpoint(obj, path):
    """Write to a temporary file, flush and fsync it, then rename over `path`: a run killed at any
    moment leaves either the old checkpoint or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


def model_from_checkpoint(ckpt, path="checkpoint"):
    """The GPT a checkpoint describes, with its weights; a mismatch is a one-line error."""
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {path} has model_args this version cannot build: {e}")
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise SystemExit(f"error: {path} does not match its own model_args: {str(e).splitlines()[1].strip()}")
    return model
