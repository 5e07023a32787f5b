"""
The ablation study in one command: train every config at one scale for several seeds (same iterations,
batch and tokens for all), evaluate each final model, and keep one small result record per run in
results/<study>/<config>/seed<N>.json, with the exact train.py command. The records are the study: a run
whose record exists is skipped, so a study may stop and go on later, on another machine, from a git
checkout. Checkpoints go to out_root (out of git); a killed run resumes from its checkpoint. At the end
report.py writes the study's results.json, report.md and plot from all its records.

$ python ablate.py --seeds=3                        # every config/ablation_*.py at config/cpu.py scale -> results/cpu
$ python ablate.py --seeds=5 --configs=baseline,reciprocity,lens   # two more seeds for some: the same study
$ python ablate.py --dry_run=True
$ python ablate.py --overlay=config/recall.py --seeds=5            # the recall probe -> results/recall
$ python report.py                                  # the reports (and the README's tables) from results/
"""
import dataclasses
import os
import platform
import shlex
import subprocess
import sys
import time

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from records import check_writable, load_record, write_json
from configurator import ablation_names, configure, require
from evaluate import dataset_meta, pruning_curve, val_batches
from analysis import analyze_attn_gates, analyze_lens_gates, analyze_route_gates, remove_closed_attention
from engine import cache_forms
from report import write_study

# -----------------------------------------------------------------------------
configs = "all"  # comma-separated ablation names (config/ablation_NAME.py), or 'all'
overlay = "config/cpu.py"  # the scale every run shares ('' for none)
seeds = 1  # seeds 0 .. seeds-1
train_args = ""  # more train.py arguments for every run, e.g. "--max_iters=500"
results = ""  # the study's folder of run records; '' = results/<overlay's name>
out_root = ""  # checkpoints (out of git); '' = out-ablate/<overlay's name>
eval_batches = 20  # validation batches for the pruning evaluation
eval_batch_size = 16
dry_run = False
reevaluate = ""  # comma-separated configs whose existing records are made again (the run retrained where its checkpoint is gone)
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
require((seeds >= 1 and eval_batches >= 1 and eval_batch_size >= 1, "seeds, eval_batches and eval_batch_size must be >= 1"))
names = ablation_names(configs)
if not names:
    raise SystemExit("error: configs names no ablation")
if overlay and not os.path.isfile(overlay):
    raise SystemExit(f"error: no overlay {overlay}")
stem = os.path.splitext(os.path.basename(overlay))[0] if overlay else "default"
results = results or os.path.join("results", stem)
out_root = out_root or os.path.join("out-ablate", stem)
runs = [(n, s) for s in range(seeds) for n in names]  # seed by seed: a study stopped early is balanced
if not dry_run:  # both folders are written: checked before the first run
    check_writable(results, "results")
    check_writable(out_root, "out_root")
record_path = lambda n, s: os.path.join(results, n, f"seed{s}.json")
run_dir = lambda n, s: os.path.join(out_root, n, f"seed{s}")

# the study: one overlay and one set of train.py arguments for all its runs
study_file = os.path.join(results, "study.json")
study = {"title": f"Overlay `{overlay or 'none'}`" + (f" with `{train_args}`" if train_args else ""),
         "overlay": overlay, "train_args": train_args, "commands": []}
if os.path.isfile(study_file):
    known = load_record(study_file)
    for key in ("overlay", "train_args"):
        if known[key] != study[key]:
            raise SystemExit(f"error: {results} is a study with {key}={known[key]!r}, not {study[key]!r}; "
                             "give this one its own --results folder")
    study = known
ablate_command = shlex.join(["python", "ablate.py"] + sys.argv[1:])


@torch.no_grad()
def evaluate(name, seed, out_dir, command, wall):
    """The record of one finished run, from its final checkpoint; `command` is its train.py command."""
    path = os.path.join(out_dir, "ckpt.pt")
    ck = load_checkpoint(path)
    model = model_from_checkpoint(ck, path).eval()
    gates = analyze_attn_gates(model) if model.config.attn_budget is not None else None
    try:  # a budget run ends with its gates fixed: what is measured is the static model it became
        model = remove_closed_attention(model)
    except ValueError as e:
        raise SystemExit(f"error: {path}: {e}")
    cfg, tc = model.config, ck["config"]
    batches = val_batches(tc["dataset"], cfg.block_size, eval_batches, eval_batch_size, "cpu")
    # greedy pruning chooses its order on training batches, never on the batches the curve reports
    select = val_batches(tc["dataset"], cfg.block_size, eval_batches, eval_batch_size, "cpu", split="train")
    meta = dataset_meta(tc["dataset"])
    recall = bool(meta.get("mask"))  # a dataset of answers (the recall set): accuracy is the measure
    curve, contrib = pruning_curve(model, batches, select_batches=select)
    L = len(cfg.attention_layers)
    half = L // 2

    def point(row):
        return {"layers": row["pruned"], "val_loss": row["val_loss"], "val_acc": row["val_acc"] if recall else None,
                "kv_bytes_per_token": row["kv_bytes_per_token"]}

    for row in curve:  # 16-bit bytes per token in each cache form the config can use
        row["kv_bytes_per_token"] = {f: model.kv_cache_bytes_per_token(torch.float16, row["pruned"], f)
                                     for f in cache_forms(cfg)}
    full = point(curve[0])  # nothing pruned
    lens = analyze_lens_gates(model)
    tokens_per_iter = tc["batch_size"] * tc["block_size"] * tc["gradient_accumulation_steps"]
    return {
        "config": name, "seed": seed, "command": command, "model": dataclasses.asdict(cfg),
        "machine": {"device": tc["device"], "torch": torch.__version__, "cpus": os.cpu_count(), "arch": platform.machine()},
        "best_val_loss": ck["best_val_loss"], "final_val_loss": ck["val_loss"], "final_train_loss": ck["train_loss"],
        "params": model.get_num_params(), "iters": ck["iter_num"], "tokens_seen": ck["iter_num"] * tokens_per_iter,
        "ms_per_iter": ck["ms_per_iter"], "wall_s": wall,
        "kv_bytes_per_token": full["kv_bytes_per_token"],
        "lens_gates": {k: v for k, v in lens.items() if k.startswith("mean_")},
        "route_gates": analyze_route_gates(model)["per_layer"] if cfg.use_route_gate else None,
        "attn_layers": list(cfg.attention_layers),  # where attention is (placed, or learned under a budget)
        "attn_gates": gates and {"p_open": list(gates["p_open"].values()), "z": list(gates["z"].values())},
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
      + (f", train.py {train_args}" if train_args else "") + f"; records in {results}")
ablation_names(reevaluate)  # each must name a config
again = {n for n in str(reevaluate).split(",") if n}
for i, (name, seed) in enumerate(runs, 1):
    out_dir = run_dir(name, seed)
    old_record = None
    if name in again and os.path.isfile(record_path(name, seed)):
        old_record = load_record(record_path(name, seed))
        if "recorded_best_val_loss" in old_record:  # made again already: the same command resumes, not repeats
            old_record = None
    done = os.path.isfile(record_path(name, seed)) and old_record is None
    resume = not done and os.path.isfile(os.path.join(out_dir, "ckpt.pt"))
    state = "done, skipped" if done else "resuming" if resume else "to train"
    print(f"[run {i}/{len(runs)}] {name} seed {seed}: {state} ({out_dir})", flush=True)
    if dry_run or done:
        continue
    cmd = ["train.py", f"config/ablation_{name}.py"] + ([overlay] if overlay else []) + shlex.split(train_args) \
        + [f"--seed={1337 + seed}", f"--out_dir={out_dir}", "--always_save_checkpoint=True",
           f"--wandb_run_name=ablate-{name}-seed{seed}"]
    t0 = time.time()
    if subprocess.run([sys.executable] + cmd + (["--init_from=resume"] if resume else [])).returncode != 0:
        raise SystemExit(f"error: run {name} seed {seed} failed: {shlex.join(cmd)}")  # train.py printed why
    record = evaluate(name, seed, out_dir, shlex.join(["python"] + cmd), time.time() - t0)
    if old_record is not None:  # training is deterministic: a retrained run must be the run it replaces (to
        # float noise: thread counts reorder sums, which a recall run's near-zero loss shows as ~1e-4)
        if abs(record["best_val_loss"] - old_record["best_val_loss"]) > 1e-3:
            raise SystemExit(f"error: {name} seed {seed} retrained to best val loss {record['best_val_loss']:.6f}, "
                             f"not the record's {old_record['best_val_loss']:.6f}; the record is kept")
        record["wall_s"], record["ms_per_iter"] = old_record["wall_s"], old_record["ms_per_iter"]
        record["recorded_best_val_loss"] = old_record["best_val_loss"]  # what the replaced record said
    if os.path.isfile(study_file):  # another ablate.py on this study may have added its command since
        study["commands"] = load_record(study_file)["commands"]
    if ablate_command not in study["commands"]:
        study["commands"].append(ablate_command)
    os.makedirs(os.path.dirname(record_path(name, seed)), exist_ok=True)
    for path, obj in ((study_file, study), (record_path(name, seed), record)):
        write_json(path, obj)  # a record is whole or absent: a half-written one would be skipped
if not dry_run:
    print("\n".join(write_study(results)))
    print(f"wrote {results}/results.json, report.md, loss_vs_kv.png")
