"""Data loading and evaluation shared by train.py, kv_cache_bench.py and ablate.py: windows of a
token file (with ignored targets where the dataset has a mask), fixed validation batches, loss and
accuracy with attention pruned from chosen layers, the orders in which to prune layers, and a trained
run read back with its pruning curve."""
import os
import pickle
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from analysis import analyze_attn_gates, attention_contribution, remove_closed_attention
from checkpoint import load_checkpoint, model_from_checkpoint
from engine import KV_BITS, KVCache, cache_forms, kv_bytes_per_token
from records import PruningPoint, QuantPoint

ROOT = os.path.dirname(os.path.abspath(__file__))


def dataset_dir(dataset):
    """Where a dataset's files live: data/<dataset> in this repo, or <$LENSGPT_DATA>/<dataset> where
    that variable names another folder (the tests keep their data in a temporary one)."""
    return os.path.join(os.environ.get("LENSGPT_DATA") or os.path.join(ROOT, "data"), str(dataset))


def dataset_meta(dataset):
    """<dataset dir>/meta.pkl as a dict (vocab_size, dtype, ...), or {} where there is none."""
    path = os.path.join(dataset_dir(dataset), "meta.pkl")
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as f:
        return pickle.load(f)


def load_split(dataset, split, meta=None, block_size=0):
    """The tokens of data/<dataset>/<split>.bin (at least block_size + 1 of them) and, for datasets
    whose meta.pkl says mask=True (the recall set), <split>_mask.bin: 1 where the token is a loss
    target, 0 where it is ignored."""
    meta = dataset_meta(dataset) if meta is None else meta
    path = os.path.join(dataset_dir(dataset), f"{split}.bin")
    if not os.path.isfile(path):
        where = "" if os.path.dirname(os.path.dirname(path)) == os.path.join(ROOT, "data") else \
            f" --out_dir={os.path.dirname(path)}"
        raise SystemExit(f"error: {path} not found; prepare it with: python data/{dataset}/prepare.py{where}")
    data = np.memmap(path, dtype=np.dtype(meta.get("dtype", "uint16")), mode="r")
    if len(data) <= block_size:
        raise SystemExit(f"error: {path} holds {len(data)} tokens, fewer than block_size + 1 = {block_size + 1}")
    if not meta.get("mask"):
        return data, None
    mpath = path[:-len(".bin")] + "_mask.bin"
    if not os.path.isfile(mpath) or os.path.getsize(mpath) != len(data):
        raise SystemExit(f"error: {mpath} is missing or does not match {path}; run python data/{dataset}/prepare.py again")
    return data, np.memmap(mpath, dtype=np.uint8, mode="r")


def window_starts(n_tokens, block_size, batch_size, gen, seq_len=1):
    """Random window offsets; multiples of seq_len where the data is a run of fixed-length sequences
    (meta.pkl's seq_len), so a window never starts inside one."""
    n = (n_tokens - block_size - 1) // seq_len + 1
    return (seq_len * torch.randint(n, (batch_size,), generator=gen)).tolist()


def windows(data, ix, block_size, mask=None):
    """Inputs and next-token targets (int64) for the windows of `data` starting at the offsets ix;
    targets the mask leaves out are -1, which the loss ignores."""
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if mask is not None:
        keep = torch.stack([torch.from_numpy(mask[i + 1:i + 1 + block_size].astype(bool)) for i in ix])
        y = y.masked_fill(~keep, -1)
    return x, y


def val_batches(dataset, block_size, n_batches, batch_size, device, seed=1337, split="val"):
    """n_batches fixed (x, y) windows from data/<dataset>/<split>.bin (val by default)."""
    meta = dataset_meta(dataset)
    data, mask = load_split(dataset, split, meta, block_size)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        ix = window_starts(len(data), block_size, batch_size, g, meta.get("seq_len", 1))
        x, y = windows(data, ix, block_size, mask)
        batches.append((x.to(device), y.to(device)))
    return batches


def hits(logits, targets):
    """(answers predicted exactly, answers): argmax over the targets the loss does not ignore."""
    scored = targets >= 0
    return (logits.argmax(-1) == targets)[scored].sum().item(), scored.sum().item()


@torch.no_grad()
def val_eval(model, batches, attn_skip_layers=()):
    """(mean loss, accuracy) over the batches; accuracy is the share of scored targets predicted
    exactly (on the recall set: recall accuracy, the answers the model gets right)."""
    loss, right, total = 0.0, 0, 0
    for x, y in batches:
        logits, l = model(x, y, attn_skip_layers=attn_skip_layers)
        r, t = hits(logits, y)
        loss, right, total = loss + l.item(), right + r, total + t
    return loss / len(batches), right / max(total, 1)


@torch.no_grad()
def position_eval(model, batches):
    """(loss_by_position, recall_by_distance) over the batches. loss_by_position[t]: the mean loss of the
    prediction made at position t (None where no target is scored there): how much of its context a model
    uses (where each layer reads only its last W tokens, what lies further back comes through the layers
    below). recall_by_distance, on a dataset that scores answers (else None): {d: [right, answers]} by the
    distance d from an answer's query key back to that key's latest earlier occurrence (its pair, or an
    earlier query): recall beyond a window."""
    T = batches[0][0].size(1)
    loss, count, by_dist = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64), {}
    causal = torch.ones(T, T, dtype=torch.bool).tril(-1)  # (t, p): p < t
    for x, y in batches:
        logits, _ = model(x, y)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="none").view_as(y)
        scored = y >= 0
        loss += (ce * scored).sum(0).double().cpu()
        count += scored.sum(0).double().cpu()
        if (~scored).any():  # a masked set: answers at query keys
            seen = (x.unsqueeze(2) == x.unsqueeze(1)) & causal.to(x.device)  # (B, t, p): x[p] == x[t], p < t
            last = torch.where(seen, torch.arange(T, device=x.device), -1).amax(-1)  # latest earlier occurrence
            right = logits.argmax(-1) == y
            for b, t in scored.nonzero().tolist():
                if last[b, t] >= 0:
                    entry = by_dist.setdefault(t - int(last[b, t]), [0, 0])
                    entry[0], entry[1] = entry[0] + int(right[b, t]), entry[1] + 1
    per_pos = [None if c == 0 else float(l / c) for l, c in zip(loss.tolist(), count.tolist())]
    return per_pos, ({str(d): by_dist[d] for d in sorted(by_dist)} if by_dist else None)


@torch.no_grad()
def greedy_order(model, select_batches, ctx=None):
    """Attention layers in the order greedy pruning removes them: at each step the layer whose removal
    raises the loss on `select_batches` least (ties: the lower index). The selection batches must not
    be the ones a curve then reports (ablate.py takes them from the training split)."""
    order, left = [], list(model.config.attention_layers)
    while left:
        with ctx or nullcontext():
            costs = [(val_eval(model, select_batches, tuple(sorted(order + [i])))[0], i) for i in left]
        best = min(costs)[1]
        order.append(best)
        left.remove(best)
    return order


@torch.no_grad()
def pruning_orders(model, batches, select_batches=None, ctx=None):
    """Attention layers in the order to remove their attention: "greedy" (by measured loss on
    select_batches, where given), lowest measured attention contribution first, and, for route-gated
    models, lowest route gate g first. Returns ({ranking: order}, contributions)."""
    per_batch = [attention_contribution(model, x) for x, _ in batches]
    layers = model.config.attention_layers
    contrib = [None if per_batch[0][i] is None else float(np.mean([c[i] for c in per_batch]))
               for i in range(model.config.n_layer)]
    orders = {}
    if select_batches is not None:
        orders["greedy"] = greedy_order(model, select_batches, ctx)
    orders["contribution"] = sorted(layers, key=lambda i: contrib[i])
    if model.config.use_route_gate:
        gates = [b.route_gate().item() for b in model.transformer.h]
        orders["route_gate"] = sorted(layers, key=lambda i: gates[i])
    return orders, contrib


@torch.no_grad()
def pruning_curve(model, batches, ctx=None, select_batches=None):
    """A PruningPoint for 0, 1, 2, ... of the attention layers removed in each pruning order: validation
    loss and accuracy on `batches`, and the 16-bit cache bytes per token in each cache form the config
    can use. Returns (points, attention contributions)."""
    orders, contrib = pruning_orders(model, batches, select_batches, ctx)
    points = []
    for ranking, order in orders.items():
        for k in range(len(order) + 1):
            skip = tuple(sorted(order[:k]))
            with ctx or nullcontext():
                loss, acc = val_eval(model, batches, skip)
            kv = {f: model.kv_cache_bytes_per_token(torch.float16, skip, f) for f in cache_forms(model.config)}
            points.append(PruningPoint(layers=list(skip), val_loss=loss, val_acc=acc, kv_bytes_per_token=kv,
                                       ranking=ranking))
    return points, contrib


@torch.no_grad()
def cached_logits(model, x, **cache_options):
    """The logits of every position of x (B, T), each decoded through a KVCache (KVCache's options: form,
    kv_bits, kv_group, kv_residual, attn_skip_layers), teacher-forced: the first token prefilled, then one
    token per step, as generation would see them."""
    cache = KVCache(model, x.size(0), x.size(1), **cache_options)
    return torch.cat([model(x[:, :1], cache=cache)[0]]
                     + [model(x[:, t:t + 1], cache=cache)[0] for t in range(1, x.size(1))], dim=1)


@torch.no_grad()
def cached_eval(model, batches, ctx=None, **cache_options):
    """(mean loss, accuracy) as `val_eval`, but every position's logits come from decoding through a
    KVCache (cached_logits)."""
    loss, right, total = 0.0, 0, 0
    for x, y in batches:
        with ctx or nullcontext():
            logits = cached_logits(model, x, **cache_options)
        loss += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1).item()
        r, t = hits(logits, y)
        right, total = right + r, total + t
    return loss / len(batches), right / max(total, 1)


def quantized_eval(model, batches, ctx=None, kv_group=32, kv_residual=0, bits=KV_BITS, attn_skip_layers=()):
    """A QuantPoint per cache form the config can use and bit width: the loss through that cache, with the
    attention of attn_skip_layers removed."""
    points, skip = [], list(attn_skip_layers)
    for form in cache_forms(model.config):
        for b in bits:
            loss, acc = cached_eval(model, batches, ctx, form=form, kv_bits=b, kv_group=kv_group,
                                    kv_residual=kv_residual, attn_skip_layers=skip)
            per_token = kv_bytes_per_token(model.config, form, skip, b, kv_group, kv_residual=kv_residual)
            points.append(QuantPoint(form=form, kv_bits=b, kv_group=kv_group, kv_residual=kv_residual, val_loss=loss,
                                     val_acc=acc, kv_bytes_per_token=per_token, layers=skip))
    return points


def trained_model(path, device="cpu"):
    """(checkpoint, model, gates) of a finished run: a budget run's model is the static model it became
    (its closed layers removed, exactly), and `gates` its gates' analysis (None without a budget). Gates
    not yet fixed are a one-line error."""
    ck = load_checkpoint(path, map_location=device)
    model = model_from_checkpoint(ck, path)
    gates = analyze_attn_gates(model) if model.config.attn_budget is not None else None
    try:
        model = remove_closed_attention(model)
    except ValueError as e:
        raise SystemExit(f"error: {path}: {e}")
    return ck, model.to(device).eval(), gates


def checkpoint_curve(model, dataset, n_batches, batch_size, device, ctx=None, seed=1337):
    """(points, contributions, recall) of a trained model: its pruning curve on fixed validation batches,
    the greedy order chosen on as many training batches (never on the batches the curve reports);
    accuracy only where the dataset scores answers (the recall set)."""
    bs = model.config.block_size
    batches = val_batches(dataset, bs, n_batches, batch_size, device, seed)
    select = val_batches(dataset, bs, n_batches, batch_size, device, seed, split="train")
    recall = bool(dataset_meta(dataset).get("mask"))
    points, contrib = pruning_curve(model, batches, ctx, select_batches=select)
    if not recall:
        for p in points:
            p.val_acc = None
    return points, contrib, recall


def checkpoint_positions(model, dataset, n_batches, batch_size, device, seed=1337):
    """position_eval on the batches checkpoint_curve reports."""
    return position_eval(model, val_batches(dataset, model.config.block_size, n_batches, batch_size, device, seed))


def checkpoint_quant(model, dataset, n_batches, batch_size, device, ctx=None, seed=1337, pruned=None, **options):
    """quantized_eval's QuantPoints on the batches checkpoint_curve reports (accuracy: the recall set only), of
    the whole model and, where `pruned` names layers (the greedy half), of the model without their attention."""
    batches = val_batches(dataset, model.config.block_size, n_batches, batch_size, device, seed)
    points = [p for skip in ([()] + ([pruned] if pruned else []))
              for p in quantized_eval(model, batches, ctx, attn_skip_layers=skip, **options)]
    if not dataset_meta(dataset).get("mask"):
        for p in points:
            p.val_acc = None
    return points
