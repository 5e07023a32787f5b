"""
What each config really costs at inference, measured side by side in one run:

1. KV-cache bytes per token: the analytic figure and the bytes the cache actually holds after a
   prefill (they must agree), and the bytes for a full context per sequence.
2. Peak memory while generating at each context length (CUDA: max allocated; CPU: the cache's own
   bytes, and the process's peak resident memory, reset before each measurement on Linux).
3. Decode milliseconds per token at each context, with the cache and with full recomputation.
4. With trained checkpoints (--ckpt): validation loss as attention is removed from 0, 1, 2, ...
   layers, in two orders (lowest route gate first; lowest measured attention contribution first),
   with the KV bytes per token at each step; on the recall set (data/recall) also recall accuracy.

$ python kv_cache_bench.py                                   # every config/ablation_*.py, CPU size
$ python kv_cache_bench.py --configs=baseline,lens,gqa,mqa --contexts=256,1024 --json=kv.json
$ python kv_cache_bench.py --ckpt='out-*/ckpt.pt' --plot=pruning.png
$ python kv_cache_bench.py --configs= --ckpt='out-ablate-recall/*/seed0/ckpt.pt'   # pruning curves only
Weights are random for 1-3 (cost does not depend on training); 4 uses the checkpoints.
"""
import glob
import json
import os
import platform
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import load_checkpoint, model_from_checkpoint
from configurator import configure, model_settings
from evaluate import dataset_meta, pruning_orders, val_batches, val_eval
from model import GPT, GPTConfig, KVCache

# -----------------------------------------------------------------------------
configs = "all"  # comma-separated ablation names (config/ablation_NAME.py), 'all', or '' for none (only --ckpt)
n_layer = 6
n_head = 6
n_embd = 384
vocab_size = 65
contexts = "128,512,1024"  # context lengths to decode at; the largest is the block size
batch_size = 1
decode_tokens = 8  # tokens timed per measurement
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
ckpt = ""  # comma-separated checkpoint paths or globs, for the pruning curves
eval_batches = 20  # validation batches per point of a pruning curve
eval_batch_size = 8
json_path = ""  # --json_path=PATH (or --json=PATH) writes the records
plot = ""  # PNG of validation loss against KV bytes per token (needs --ckpt and matplotlib)
seed = 1337
# -----------------------------------------------------------------------------
sys.argv = [a.replace("--json=", "--json_path=", 1) for a in sys.argv]
configure(globals(), sys.argv[1:])
ctx_lens = [int(c) for c in str(contexts).split(",")]
block = max(ctx_lens)
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
is_cuda = device.startswith("cuda")
def autocast():
    return torch.autocast(device_type="cuda" if is_cuda else "cpu", dtype=ptdtype, enabled=ptdtype != torch.float32)


def sync():
    if is_cuda:
        torch.cuda.synchronize()


def timed(fn):
    """Milliseconds that fn() takes."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return 1000 * (time.perf_counter() - t0)


def reset_peak():
    """Reset the peak counter that peak() reads."""
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM)


def peak():
    if is_cuda:
        return torch.cuda.max_memory_allocated()
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return None


@torch.no_grad()
def measure(name, model):
    """Records for one model at every context length."""
    rows = []
    with autocast():  # warm up: first calls pay for kernel selection and allocator growth
        warm = KVCache(model, batch_size, max_len=block)
        model(torch.zeros(batch_size, block // 2, dtype=torch.long, device=device), cache=warm)
        for _ in range(min(4, block - block // 2)):  # stay inside the block however small it is
            model(torch.zeros(batch_size, 1, dtype=torch.long, device=device), cache=warm)
            model(torch.zeros(batch_size, min(64, block), dtype=torch.long, device=device))
    del warm
    for c in ctx_lens:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(vocab_size, (batch_size, c), generator=g).to(device)
        prompt = idx[:, :c - decode_tokens]
        reset_peak()
        cache = KVCache(model, batch_size, max_len=block)
        with autocast():
            model(prompt, cache=cache)  # prefill
            measured = cache.nbytes() / (batch_size * block)
            cached_ms, recompute_ms = [], []
            for i in range(c - decode_tokens, c):  # decode with the cache, one token at a time
                cached_ms.append(timed(lambda: model(idx[:, i:i + 1], cache=cache)))
            peak_bytes = peak()
            for i in range(c - decode_tokens, c):  # recompute the whole context for every token
                recompute_ms.append(timed(lambda: model(idx[:, :i + 1])))
        # medians: a shared machine's hiccups hit single tokens, not the typical one
        cached_ms, recompute_ms = float(np.median(cached_ms)), float(np.median(recompute_ms))
        analytic = model.kv_cache_bytes_per_token(ptdtype)
        rows.append(dict(config=name, context=c, batch_size=batch_size, dtype=dtype,
                         kv_bytes_per_token=analytic, kv_bytes_per_token_measured=measured,
                         kv_bytes_full_context=analytic * block, cache_bytes=cache.nbytes(),
                         decode_ms_per_token_cached=cached_ms, decode_ms_per_token_recompute=recompute_ms,
                         peak_bytes=peak_bytes))
    return rows


@torch.no_grad()
def pruning_curve(path):
    """Validation loss as attention is removed layer by layer, for each ranking of the layers."""
    ck = load_checkpoint(path, map_location=device)
    model = model_from_checkpoint(ck, path).to(device).eval()
    name = os.path.relpath(os.path.dirname(os.path.abspath(path)))
    batches = val_batches(ck["config"]["dataset"], model.config.block_size, eval_batches, eval_batch_size, device, seed)
    recall = bool(dataset_meta(ck["config"]["dataset"]).get("mask"))  # answers only: accuracy is the measure
    orders, contrib = pruning_orders(model, batches)
    rows = []
    for ranking, order in orders.items():
        for k in range(model.config.n_layer + 1):
            skip = tuple(sorted(order[:k]))
            with autocast():
                loss, acc = val_eval(model, batches, skip)
            rows.append(dict(config=name, checkpoint=path, ranking=ranking, layers_pruned=k, pruned=list(skip),
                             val_loss=loss, val_acc=acc if recall else None,
                             kv_bytes_per_token=model.kv_cache_bytes_per_token(ptdtype, skip),
                             attention_contribution=contrib))
    return rows


# ----------------------------------------------------------------------------- main
names = [n for n in str(configs).split(",") if n]
if names == ["all"]:
    names = sorted(os.path.basename(p)[len("ablation_"):-3] for p in glob.glob("config/ablation_*.py"))
    names = ["baseline"] + [n for n in names if n != "baseline"]
if not names and not ckpt:
    raise SystemExit("error: nothing to measure: give --configs or --ckpt")
for n in names:
    if not os.path.isfile(f"config/ablation_{n}.py"):
        raise SystemExit(f"error: no config file config/ablation_{n}.py")
machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads" if not is_cuda \
    else torch.cuda.get_device_name()
print(f"kv_cache_bench: {dtype} on {device} ({machine}), torch {torch.__version__}"
      + (f"; random-weight models: {n_layer} layers, {n_head} heads, {n_embd} wide, block {block}, batch {batch_size}"
         if names else ""))
records = []
for name in tqdm(names, desc="configs", file=sys.stderr, dynamic_ncols=True, disable=not names):
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=block, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                    **model_settings(f"config/ablation_{name}.py", n_head=n_head))
    model = GPT(cfg).to(device).eval()
    records += measure(name, model)
    del model

base = {r["context"]: r for r in records if r["config"] == "baseline"}
if names:  # the random-weight table
    print(f"\n{'config':<16}{'KV B/tok':>9}{'measured':>9}{'x base':>7}{'full ctx MiB':>13}"
          + "".join(f"{'@' + str(c) + ' cached':>14}{'recompute':>10}{'speedup':>8}" for c in ctx_lens)
          + f"{'peak MiB':>10}")
    for name in names:
        rows = [r for r in records if r["config"] == name]
        r0 = rows[-1]
        line = (f"{name:<16}{r0['kv_bytes_per_token']:>9,d}{r0['kv_bytes_per_token_measured']:>9,.0f}"
                f"{r0['kv_bytes_per_token'] / base[r0['context']]['kv_bytes_per_token'] if base else 1:>7.2f}"
                f"{batch_size * r0['kv_bytes_full_context'] / 2**20:>13.2f}")
        for r in rows:
            line += (f"{r['decode_ms_per_token_cached']:>11.2f} ms{r['decode_ms_per_token_recompute']:>8.1f}ms"
                     f"{r['decode_ms_per_token_recompute'] / r['decode_ms_per_token_cached']:>7.1f}x")
        line += f"{(r0['peak_bytes'] or 0) / 2**20:>10.1f}"
        print(line)
    print("KV B/tok: analytic bytes per token (all layers); measured: bytes the cache holds / (batch x block); "
          f"ms per decoded token with the cache and with recomputation; peak: {'CUDA max allocated' if is_cuda else 'process peak RSS'} "
          f"at the largest context")

pruning = []
ckpts = sorted({p for part in ckpt.split(",") if part for p in glob.glob(part)})
if ckpt and not ckpts:
    raise SystemExit(f"error: no checkpoint matches {ckpt}")
for path in tqdm(ckpts, desc="pruning curves", file=sys.stderr, dynamic_ncols=True):
    pruning += pruning_curve(path)
if pruning:
    most = max(r["layers_pruned"] for r in pruning)
    print(f"\n{'checkpoint':<36}{'ranking':<14}" + "".join(f"{'-' + str(k):>8}" for k in range(most + 1)))
    for (cname, ranking) in dict.fromkeys((r["config"], r["ranking"]) for r in pruning):
        rows = [r for r in pruning if r["config"] == cname and r["ranking"] == ranking]
        print(f"{cname:<36}{ranking:<14}" + "".join(f"{r['val_loss']:>8.3f}" for r in rows))
        if rows[0]["val_acc"] is not None:
            print(f"{'':<36}{'  recall acc':<14}" + "".join(f"{r['val_acc']:>8.3f}" for r in rows))
    print("val loss (and recall accuracy on the recall set) with attention removed from 0, 1, 2, ... layers; "
          "KV bytes per token fall as (L - k) / L")

if json_path:
    with open(json_path, "w") as f:
        json.dump({"machine": machine, "device": device, "torch": torch.__version__, "records": records,
                   "pruning": pruning}, f, indent=1)
    print(f"wrote {json_path}")
if plot:
    if not pruning:
        raise SystemExit("error: --plot needs trained checkpoints (--ckpt)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: --plot needs matplotlib (pip install matplotlib)")
    fig, ax = plt.subplots(figsize=(7, 5))
    key = "val_acc" if all(r["val_acc"] is not None for r in pruning) else "val_loss"
    for (cname, ranking) in dict.fromkeys((r["config"], r["ranking"]) for r in pruning):
        rows = [r for r in pruning if r["config"] == cname and r["ranking"] == ranking]
        ax.plot([r["kv_bytes_per_token"] for r in rows], [r[key] for r in rows], marker="o",
                label=f"{cname} ({ranking})")
    what = "Recall accuracy" if key == "val_acc" else "Validation loss"
    ax.set_xlabel(f"KV cache bytes per token ({dtype})")
    ax.set_ylabel(what.lower())
    ax.set_title(f"{what} as attention is pruned layer by layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    print(f"wrote {plot}")
