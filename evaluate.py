"""Evaluation shared by kv_cache_bench.py and ablate.py: fixed validation batches, validation loss
with attention pruned from chosen layers, and the two orders in which to prune layers."""
import os
import pickle

import numpy as np
import torch

from model import attention_contribution

ROOT = os.path.dirname(os.path.abspath(__file__))


def dataset_meta(dataset):
    """data/<dataset>/meta.pkl as a dict (vocab_size, dtype, ...), or {} where there is none."""
    path = os.path.join(ROOT, "data", str(dataset), "meta.pkl")
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as f:
        return pickle.load(f)


def windows(data, ix, block_size):
    """Inputs and next-token targets (int64) for the windows of `data` starting at the offsets ix."""
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


def val_batches(dataset, block_size, n_batches, batch_size, device, seed=1337):
    """n_batches fixed (x, y) windows from data/<dataset>/val.bin."""
    path = os.path.join(ROOT, "data", str(dataset), "val.bin")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found; prepare it with: python data/{dataset}/prepare.py")
    data = np.memmap(path, dtype=np.dtype(dataset_meta(dataset).get("dtype", "uint16")), mode="r")
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        x, y = windows(data, torch.randint(len(data) - block_size, (batch_size,), generator=g).tolist(), block_size)
        batches.append((x.to(device), y.to(device)))
    return batches


@torch.no_grad()
def val_loss(model, batches, attn_skip_layers=()):
    return sum(model(x, y, attn_skip_layers=attn_skip_layers)[1].item() for x, y in batches) / len(batches)


@torch.no_grad()
def pruning_orders(model, batches):
    """Layers in the order to remove their attention: lowest measured attention contribution first,
    and, for route-gated models, lowest route gate g first. Returns ({ranking: order}, contributions)."""
    contrib = np.mean([attention_contribution(model, x) for x, _ in batches], axis=0).tolist()
    n = model.config.n_layer
    orders = {"contribution": sorted(range(n), key=lambda i: contrib[i])}
    if model.config.use_route_gate:
        gates = [b.route_gate().item() for b in model.transformer.h]
        orders["route_gate"] = sorted(range(n), key=lambda i: gates[i])
    return orders, contrib
