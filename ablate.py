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
from configurator import ablation_names, configure, require
from evaluate import dataset_meta, pruning_curve, val_batches
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
require((seeds >= 1 and eval_batches >= 1 and eval_batch_size >= 1, "seeds, eval_batches and eval_batch_size must be >= 1"))
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
    curve, contrib = pruning_curve(model, batches)
    half, L = cfg.n_layer // 2, cfg.n_layer

    def point(row):
        return {"layers": row["pruned"], "val_loss": row["val_loss"], "val_acc": row["val_acc"] if recall else None,
                "kv_bytes_per_token": row["kv_bytes_per_token"]}

    full = point(curve[0])  # nothing pruned
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
        "half_pruned": {r["ranking"]: point(r) for r in curve if r["layers_pruned"] == half},
        "all_pruned": point(next(r for r in curve if r["layers_pruned"] == L)),  # no attention: on recall, chance
        "pruning": [dict(point(r), ranking=r["ranking"]) for r in curve],  # the whole curve, each order
        "eval_val_loss": full["val_loss"], "eval_val_acc": full["val_acc"],  # on the same batches as the pruned
        "dataset": tc["dataset"], "chance_accuracy": meta.get("chance_accuracy") if recall else None,
        "history": ck.get("history", []),  # every evaluation during training: when a run learned what it learned
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
def mean_std(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
    return mean, std


def welch(a, b):
    """Welch's t test of mean(a) - mean(b): the difference, its 95% confidence interval and the
    two-sided p-value; None with fewer than two values on either side (no spread to test against)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats as st
    t = st.ttest_ind(a, b, equal_var=False)
    ci = t.confidence_interval(0.95)
    return {"diff": mean_std(a)[0] - mean_std(b)[0], "lo": float(ci.low), "hi": float(ci.high),
            "p": float(t.pvalue), "n": (len(a), len(b))}


def holm(tests):
    """Holm's step-down correction of the p-values in {name: test} (tests that are None are left out):
    adjusted p-values, so that 'p < 0.05' holds for the whole family of comparisons in a study."""
    ranked = sorted((t["p"], n) for n, t in tests.items() if t is not None)
    adjusted, running = {}, 0.0
    for i, (p, n) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * p))
        adjusted[n] = running
    return adjusted


def verdict(t, p, lower_is_better=True, unit=".4f", p_name="Holm p"):
    """better, worse, or no difference detected, from the 95% interval; the test and n named."""
    if t is None:
        return "one seed: not tested"
    test = f"Welch t, n={t['n'][0]} vs {t['n'][1]}, {p_name}={p:.2g}"
    ci = f"95% CI [{t['lo']:+{unit}}, {t['hi']:+{unit}}]"
    if t["lo"] > 0 or t["hi"] < 0:
        good = (t["hi"] < 0) == lower_is_better
        return f"{'better' if good else 'worse'} by {abs(t['diff']):{unit}} ({ci}; {test})"
    return f"no difference detected ({ci}; {test})"


def summarize(records, names, recall):
    """Per config: means and spreads over its seeds, and the tests against the baseline."""
    S = {}
    for name in names:
        rs = [r for r in records if r["config"] == name]
        s = {"n": len(rs), "kv": rs[0]["kv_bytes_per_token"], "params": rs[0]["params"],
             "ms": mean_std([r["ms_per_iter"] for r in rs])[0], "tokens": rs[0]["tokens_seen"],
             "losses": [r["best_val_loss"] for r in rs]}
        s["loss"], s["std"] = mean_std(s["losses"])
        for ranking in ("route_gate", "contribution"):
            vals = [r["half_pruned"][ranking]["val_loss"] for r in rs if ranking in r["half_pruned"]]
            s[f"half_{ranking}"] = mean_std(vals)[0] if vals else None
            if recall:
                vals = [r["half_pruned"][ranking]["val_acc"] for r in rs if ranking in r["half_pruned"]]
                s[f"half_acc_{ranking}"] = mean_std(vals)[0] if vals else None
        if recall:
            s["accs"] = [r["eval_val_acc"] for r in rs]
            s["acc"], s["acc_std"] = mean_std(s["accs"])
            s["acc_none"] = mean_std([r["all_pruned"]["val_acc"] for r in rs])[0]
        S[name] = s
    others = [n for n in names if n != "baseline"]
    tests = {n: welch(S[n]["losses"], S["baseline"]["losses"]) for n in others}
    p_holm = holm(tests)
    for n in others:
        S[n]["test"], S[n]["p_holm"] = tests[n], p_holm.get(n)
    if recall:
        acc_tests = {n: welch(S[n]["accs"], S["baseline"]["accs"]) for n in others}
        acc_holm = holm(acc_tests)
        for n in others:
            S[n]["acc_test"], S[n]["acc_p_holm"] = acc_tests[n], acc_holm.get(n)
    return S


def report(S, names, records, recall, bag, header):
    """The report's lines. Every sentence in it follows from the numbers in its table."""
    base = S["baseline"]
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
    acc_note = (" Recall acc: the share of answers predicted exactly on the validation set, final model (mean +- std), "
                f"chance {records[0]['chance_accuracy']:.4f}"
                + (f", knowing only which values are in the sequence {bag:.4f}" if bag else "")
                + "; half pruned acc likewise with half the layers' attention removed; no attention: every layer's "
                "attention removed.") if recall else ""
    lines = ["# Ablation report", "",
             header + f"; {base['tokens']:,} training tokens per run. Loss: best validation loss (mean +- std over "
             "seeds). Against the baseline: the difference of means with its 95% confidence interval (Welch's t), "
             "and the p-value with Holm's correction across this study's configs; the verdict follows from the "
             "interval. KV: cache bytes per token at 16-bit precision (K/V form). Half pruned: validation loss with "
             "attention removed from half the layers, chosen by lowest route gate or lowest measured attention "
             "contribution." + acc_note, "",
             "| config | params | loss | delta [95% CI] | p (Holm) | KV B/token | KV x base | ms/iter x base | "
             "half pruned (gate) | half pruned (contribution) |"
             + (" recall acc | delta acc [95% CI] | half pruned acc (gate) | half pruned acc (contribution) | "
                "no attention acc |" if recall else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|---|" if recall else "")]

    def delta(t, p):
        return "-" if t is None else f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}] | {p:.2g}"

    for n in names:
        s = S[n]
        d = "- | -" if n == "baseline" else ("one seed | -" if s["test"] is None else delta(s["test"], s["p_holm"]))
        row = (f"| {n} | {s['params']:,} | {s['loss']:.4f} +- {fmt(s['std'])} | {d} | {s['kv']:,} | "
               f"{s['kv'] / base['kv']:.2f} | {s['ms'] / base['ms']:.2f} | {fmt(s['half_route_gate'])} | "
               f"{fmt(s['half_contribution'])} |")
        if recall:
            t = None if n == "baseline" else s["acc_test"]
            da = "-" if t is None else f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}]"
            row += (f" {s['acc']:.4f} +- {fmt(s['acc_std'])} | {da} | {fmt(s['half_acc_route_gate'])} | "
                    f"{fmt(s['half_acc_contribution'])} | {s['acc_none']:.4f} |")
        lines.append(row)
    answers = []
    questions = {"reciprocity": "Does reciprocity help?", "discoverability": "Does discoverability help?",
                 "lens": "Do reciprocity and discoverability together help?", "attn_only": "Can attention-only work?",
                 "route_annealed": "Does an annealed route gate change the loss?",
                 "route_free": "Does a freely learned route gate change the loss?"}
    for n in names[1:]:  # every config against the baseline, in the table's order
        answers.append(f"- {questions.get(n, 'Against the baseline:')} {n}: {verdict(S[n]['test'], S[n]['p_holm'])}.")
        if recall:
            answers.append(f"  Recall accuracy: {verdict(S[n]['acc_test'], S[n]['acc_p_holm'], lower_is_better=False)}.")
    if "route_annealed" in S and "route_free" in S:  # one comparison outside the family against the baseline
        t = welch(S["route_annealed"]["losses"], S["route_free"]["losses"])
        answers.append(f"- Annealed against freely learned route gates: route_annealed "
                       f"{verdict(t, t and t['p'], p_name='p, uncorrected')}.")
    ratios = ", ".join(f"{n} {S[n]['kv'] / base['kv']:.2f}x" for n in names if n != "baseline")
    if ratios:
        smallest = min(S, key=lambda n: (S[n]["kv"], S[n]["loss"]))
        answers.append(f"- KV bytes per token in the K/V form, against the baseline: {ratios}. Smallest: {smallest}.")
    routed = [n for n in names if S[n]["half_route_gate"] is not None]
    if routed:
        best = min(routed, key=lambda n: S[n]["half_route_gate"])
        answers.append(f"- With attention removed from half the layers (half the cache), the best route-gated model is "
                       f"{best} at {S[best]['half_route_gate']:.4f} (lowest gates pruned); the baseline, pruned by "
                       f"measured contribution, is at {fmt(base['half_contribution'])}.")
    if recall:
        none = [S[n]["acc_none"] for n in names]
        answers.append(f"- With attention removed from every layer, every model's recall accuracy is at "
                       f"{min(none):.4f} .. {max(none):.4f} (chance {records[0]['chance_accuracy']:.4f}).")
        half = {n: max(v for v in (S[n]["half_acc_route_gate"], S[n]["half_acc_contribution"]) if v is not None)
                for n in names}
        keeps = max(names, key=lambda n: half[n])
        answers.append(f"- With attention removed from half the layers (the better of the two orders), recall falls "
                       f"from {base['acc']:.3f} to {half['baseline']:.3f} for the baseline; the config that keeps most "
                       f"is {keeps} ({S[keeps]['acc']:.3f} -> {half[keeps]:.3f}).")
    return lines + ["", "## Answers", ""] + answers


records = []
for name, seed in runs:
    with open(os.path.join(run_dir(name, seed), "result.json")) as f:
        records.append(json.load(f))
with open(os.path.join(out_root, "results.json"), "w") as f:
    json.dump(records, f, indent=1)
# a recall set (answers only): recall accuracy is reported next to the loss, and plotted
recall = all(r.get("eval_val_acc") is not None for r in records)
S = summarize(records, names, recall)
bag = dataset_meta(records[0].get("dataset")).get("bag_accuracy") if recall else None
header = (f"{len(names)} configs x {seeds} seeds, overlay `{overlay}`" + (f", `{train_args}`" if train_args else ""))
lines = report(S, names, records, recall, bag, header)
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
