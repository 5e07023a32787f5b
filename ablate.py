"""
The ablation study in one command: train every config at one scale for one or more seeds (same
iterations, batch and tokens for all), evaluate, and write results.json, report.md and a plot of
validation loss against KV-cache bytes per token.

$ python ablate.py                                  # every config/ablation_*.py at config/cpu.py scale, 1 seed
$ python ablate.py --seeds=3 --configs=baseline,reciprocity,lens,full
$ python ablate.py --dry_run=True
$ python ablate.py --train_args="--max_iters=500"   # extra train.py arguments for every run
$ python ablate.py --overlay=config/recall.py --out_root=out-ablate-recall --seeds=2   # the recall probe

Finished runs (those with a result.json) are skipped; a run that was killed resumes from its checkpoint.
"""
import json
import math
import os
import shlex
import subprocess
import sys
import time

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from configurator import ablation_names, configure
from evaluate import dataset_meta, pruning_orders, val_batches, val_eval
from model import analyze_lens_gates, analyze_route_gates

# -----------------------------------------------------------------------------
configs = "all"  # comma-separated ablation names (config/ablation_NAME.py), or 'all'
overlay = "config/cpu.py"  # the scale every run shares ('' for none)
seeds = 1  # seeds 0 .. seeds-1
train_args = ""  # more train.py arguments for every run, e.g. "--max_iters=500"
out_root = "out-ablate"
eval_batches = 20  # validation batches for the pruning evaluation
eval_batch_size = 16
dry_run = False
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
names = ablation_names(configs)
if not names:
    raise SystemExit("error: configs names no ablation")
if overlay and not os.path.isfile(overlay):
    raise SystemExit(f"error: no overlay {overlay}")
runs = [(n, s) for n in names for s in range(seeds)]
run_dir = lambda n, s: os.path.join(out_root, n, f"seed{s}")


@torch.no_grad()
def evaluate(name, seed, out_dir, wall):
    """The record of one finished run, from its final checkpoint."""
    path = os.path.join(out_dir, "ckpt.pt")
    ck = load_checkpoint(path)
    model = model_from_checkpoint(ck, path).eval()
    cfg, tc = model.config, ck["config"]
    batches = val_batches(tc["dataset"], cfg.block_size, eval_batches, eval_batch_size, "cpu")
    meta = dataset_meta(tc["dataset"])
    recall = bool(meta.get("mask"))  # a dataset of answers (the recall set): accuracy is the measure
    orders, contrib = pruning_orders(model, batches)
    half = cfg.n_layer // 2

    def pruned(layers):
        loss, acc = val_eval(model, batches, tuple(layers))
        return {"layers": sorted(layers), "val_loss": loss, "val_acc": acc if recall else None,
                "kv_bytes_per_token": model.kv_cache_bytes_per_token(torch.float16, layers)}

    full = pruned(())
    lens = analyze_lens_gates(model)
    tokens_per_iter = tc["batch_size"] * tc["block_size"] * tc["gradient_accumulation_steps"]
    return {
        "config": name, "seed": seed, "out_dir": out_dir,
        "best_val_loss": ck["best_val_loss"], "final_val_loss": ck["val_loss"], "final_train_loss": ck["train_loss"],
        "params": model.get_num_params(), "iters": ck["iter_num"], "tokens_seen": ck["iter_num"] * tokens_per_iter,
        "ms_per_iter": ck["ms_per_iter"], "wall_s": wall,
        "kv_bytes_per_token": model.kv_cache_bytes_per_token(torch.float16),  # at 16-bit inference precision
        "lens_gates": {k: v for k, v in lens.items() if k.startswith("mean_")},
        "route_gates": analyze_route_gates(model)["per_layer"] if cfg.use_route_gate else None,
        "attention_contribution": contrib,
        "half_pruned": {r: pruned(o[:half]) for r, o in orders.items()},
        "all_pruned": pruned(range(cfg.n_layer)),  # no attention anywhere: on the recall set, chance
        "eval_val_loss": full["val_loss"], "eval_val_acc": full["val_acc"],  # on the same batches as the pruned
        "dataset": tc["dataset"], "chance_accuracy": meta.get("chance_accuracy") if recall else None,
    }


# ----------------------------------------------------------------------------- train
print(f"ablate: {len(names)} configs x {seeds} seeds = {len(runs)} runs at {overlay or 'the default scale'}"
      + (f", train.py {train_args}" if train_args else ""))
for i, (name, seed) in enumerate(runs, 1):
    out_dir = run_dir(name, seed)
    done = os.path.isfile(os.path.join(out_dir, "result.json"))
    resume = not done and os.path.isfile(os.path.join(out_dir, "ckpt.pt"))
    state = "done, skipped" if done else "resuming" if resume else "to train"
    print(f"[run {i}/{len(runs)}] {name} seed {seed}: {state} ({out_dir})", flush=True)
    if dry_run or done:
        continue
    cmd = [sys.executable, "train.py", f"config/ablation_{name}.py"] + ([overlay] if overlay else []) \
        + shlex.split(train_args) + [f"--seed={1337 + seed}", f"--out_dir={out_dir}", "--always_save_checkpoint=True",
                                     f"--wandb_run_name=ablate-{name}-seed{seed}"] + (["--init_from=resume"] if resume else [])
    t0 = time.time()
    if subprocess.run(cmd).returncode != 0:  # train.py streams its own progress bar and log
        raise SystemExit(f"error: run {name} seed {seed} failed: {shlex.join(cmd)}")
    record = evaluate(name, seed, out_dir, time.time() - t0)
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(record, f, indent=1)
if dry_run:
    sys.exit(0)

# ----------------------------------------------------------------------------- report
records = []
for name, seed in runs:
    with open(os.path.join(run_dir(name, seed), "result.json")) as f:
        records.append(json.load(f))
with open(os.path.join(out_root, "results.json"), "w") as f:
    json.dump(records, f, indent=1)


def stats(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
    return mean, std


def summary(name):
    rs = [r for r in records if r["config"] == name]
    out = {"n": len(rs), "kv": rs[0]["kv_bytes_per_token"], "params": rs[0]["params"],
           "ms": stats([r["ms_per_iter"] for r in rs])[0], "tokens": rs[0]["tokens_seen"]}
    out["loss"], out["std"] = stats([r["best_val_loss"] for r in rs])
    out["final"] = stats([r["final_val_loss"] for r in rs])[0]
    for ranking in ("route_gate", "contribution"):
        vals = [r["half_pruned"][ranking]["val_loss"] for r in rs if ranking in r["half_pruned"]]
        out[f"half_{ranking}"] = stats(vals)[0] if vals else None
        if recall:
            vals = [r["half_pruned"][ranking]["val_acc"] for r in rs if ranking in r["half_pruned"]]
            out[f"half_acc_{ranking}"] = stats(vals)[0] if vals else None
    if recall:
        out["acc"], out["acc_std"] = stats([r["eval_val_acc"] for r in rs])
        out["acc_none"] = stats([r["all_pruned"]["val_acc"] for r in rs])[0]
    return out


# a recall set (answers only): recall accuracy is reported next to the loss, and plotted
recall = all(r.get("eval_val_acc") is not None for r in records)
S = {n: summary(n) for n in names}
base = S["baseline"]


def compare(a, b="baseline", key="loss", std="std"):
    """(difference in the mean of `key`, whether it exceeds twice its standard error over seeds)."""
    d = S[a][key] - S[b][key]
    se = math.sqrt(S[a][std] ** 2 / S[a]["n"] + S[b][std] ** 2 / S[b]["n"])
    return d, (abs(d) > 2 * se) if not math.isnan(se) else None


def verdict(a, b="baseline"):
    d, real = compare(a, b)
    if real is None:
        return f"{a} {S[a]['loss']:.4f} vs {b} {S[b]['loss']:.4f} ({d:+.4f}); one seed, so the spread is unknown"
    if not real:
        return f"no measurable difference: {a} {S[a]['loss']:.4f} vs {b} {S[b]['loss']:.4f} ({d:+.4f}, within the seed spread)"
    return (f"{'yes' if d < 0 else 'no, it hurts'}: {a} {S[a]['loss']:.4f} vs {b} {S[b]['loss']:.4f} ({d:+.4f}, "
            f"larger than the seed spread)")


fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
bag = dataset_meta(records[0].get("dataset")).get("bag_accuracy") if recall else None
acc_note = (" Recall acc: the share of answers predicted exactly on the validation set, final model (mean +- std), "
            f"chance {records[0]['chance_accuracy']:.4f}"
            + (f", knowing only which values are in the sequence {bag:.4f}" if bag else "")
            + "; half pruned acc likewise with half the layers' attention removed; no attention: every layer's "
            "attention removed.") if recall else ""
lines = ["# Ablation report", "",
         f"{len(names)} configs x {seeds} seeds, overlay `{overlay}`" + (f", `{train_args}`" if train_args else "")
         + f"; {base['tokens']:,} training tokens per run. Loss: best validation loss (mean +- std over seeds). "
         "Delta: against the baseline; 'real' when larger than twice its standard error over seeds. "
         "KV: cache bytes per token at 16-bit precision. Half pruned: validation loss with attention removed from "
         "half the layers, chosen by lowest route gate or lowest measured attention contribution." + acc_note, "",
         "| config | params | loss | delta | real | KV B/token | KV x base | ms/iter x base | half pruned (gate) | half pruned (contribution) |"
         + (" recall acc | real | half pruned acc (gate) | half pruned acc (contribution) | no attention acc |" if recall else ""),
         "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|---|" if recall else "")]
yes_no = lambda n, real: "-" if n == "baseline" else "n/a" if real is None else "yes" if real else "no"
for n in names:
    s, (d, real) = S[n], compare(n)
    row = (f"| {n} | {s['params']:,} | {s['loss']:.4f} +- {fmt(s['std'])} | {d:+.4f} | {yes_no(n, real)} | {s['kv']:,} | "
           f"{s['kv'] / base['kv']:.2f} | {s['ms'] / base['ms']:.2f} | {fmt(s['half_route_gate'])} | "
           f"{fmt(s['half_contribution'])} |")
    if recall:
        row += (f" {s['acc']:.4f} +- {fmt(s['acc_std'])} | {yes_no(n, compare(n, key='acc', std='acc_std')[1])} | "
                f"{fmt(s['half_acc_route_gate'])} | {fmt(s['half_acc_contribution'])} | {s['acc_none']:.4f} |")
    lines.append(row)
questions = []
if "reciprocity" in S:
    questions.append(f"- Does reciprocity help? {verdict('reciprocity')}. It costs {S['reciprocity']['kv'] / base['kv']:.2f}x the KV cache.")
if "discoverability" in S:
    questions.append(f"- Does discoverability help? {verdict('discoverability')}.")
if "attn_only" in S:
    questions.append(f"- Can attention-only work? {verdict('attn_only')}.")
if "route_annealed" in S and "route_free" in S:
    questions.append(f"- Does annealing beat free learning? {verdict('route_annealed', 'route_free')}.")
ratios = ", ".join(f"{n} {S[n]['kv'] / base['kv']:.2f}x" for n in names if n != "baseline")
smallest = min(S, key=lambda n: (S[n]["kv"], S[n]["loss"]))
questions.append(f"- Does the cache shrink without pruning? KV bytes per token against the baseline: {ratios}. "
                 f"Smallest: {smallest}. A route gate alone changes nothing; reciprocity adds 50%.")
routed = [n for n in names if S[n]["half_route_gate"] is not None]
if routed:
    best = min(routed, key=lambda n: S[n]["half_route_gate"])
    questions.append(f"- With attention removed from half the layers (half the cache), the best route-gated model is "
                     f"{best} at {S[best]['half_route_gate']:.4f} (lowest gates pruned); the baseline, pruned by "
                     f"measured contribution, is at {fmt(base['half_contribution'])}.")
if recall:
    accs = ", ".join(f"{n} {S[n]['acc']:.3f}" for n in names)
    none = [S[n]["acc_none"] for n in names]
    questions.append(f"- Recall accuracy (chance {records[0]['chance_accuracy']:.4f}"
                     + (f"; knowing only which values are in the sequence: {bag:.4f}" if bag else "")
                     + f"): {accs}. With attention removed "
                     f"from every layer, every model is at {min(none):.4f} .. {max(none):.4f}.")
    half = {n: max(v for v in (S[n]["half_acc_route_gate"], S[n]["half_acc_contribution"]) if v is not None)
            for n in names}
    keeps = max(names, key=lambda n: half[n])
    questions.append(f"- With attention removed from half the layers (the better of the two orders), recall falls from "
                     f"{base['acc']:.3f} to {half['baseline']:.3f} for the baseline; the config that keeps most is "
                     f"{keeps} ({S[keeps]['acc']:.3f} -> {half[keeps]:.3f}).")
lines += ["", "## Answers", ""] + questions
with open(os.path.join(out_root, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no plot (pip install matplotlib)")
else:
    fig, ax = plt.subplots(figsize=(7, 5))
    key, std, sign = ("acc", "acc_std", -1) if recall else ("loss", "std", 1)  # lower loss, higher accuracy
    pts = sorted(((S[n]["kv"], S[n][key], n) for n in names), key=lambda p: (p[0], sign * p[1]))  # best first
    front, best = [], float("inf")
    for kv, y, n in pts:  # Pareto front: no other config has both a smaller cache and a better score
        if sign * y < best:
            front.append((kv, y))
            best = sign * y
    for kv, y, n in pts:
        ax.errorbar(kv, y, yerr=0 if math.isnan(S[n][std]) else S[n][std], fmt="o", capsize=3)
        ax.annotate(n, (kv, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("KV cache bytes per token (16-bit)")
    ax.set_ylabel("recall accuracy (final model)" if recall else "best validation loss")
    ax.set_title(f"{len(names)} configs, {seeds} seed(s), {overlay}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_root, "loss_vs_kv.png"), dpi=120)
    print(f"wrote {out_root}/results.json, report.md, loss_vs_kv.png")
