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
$ python report.py                                  # the reports (and docs/results.md's tables) from results/
"""
import dataclasses
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

import torch

from analysis import analyze_lens_gates, analyze_route_gates
from configurator import ablation_names, configure, require
from evaluate import checkpoint_curve, checkpoint_positions, checkpoint_quant, dataset_meta, trained_model
from records import RunRecord, Study, check_writable, load_run, same_run, write_record
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
kv_group = 32  # quantization group of the quantized-cache evaluation (16, 8 and 4 bits); must divide head_dim
dry_run = False
reevaluate = ""  # comma-separated configs whose existing records are made again (the run retrained where its checkpoint is gone)
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
require((seeds >= 1 and eval_batches >= 1 and eval_batch_size >= 1, "seeds, eval_batches and eval_batch_size must be >= 1"),
        (isinstance(kv_group, int) and kv_group >= 1, f"kv_group must be a whole number >= 1, got {kv_group!r}"))
stem = os.path.splitext(os.path.basename(overlay))[0] if overlay else "default"
results = results or os.path.join("results", stem)
out_root = out_root or os.path.join("out-ablate", stem)
record_path = lambda n, s: os.path.join(results, n, f"seed{s}.json")
run_dir = lambda n, s: os.path.join(out_root, n, f"seed{s}")
study_file = os.path.join(results, "study.json")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # those train.py saves and stops on


def plan():
    """(runs, study): every (config, seed), seed by seed so that a study stopped early is balanced, and the
    study this command adds to (one overlay and one set of train.py arguments for all its runs)."""
    names = ablation_names(configs)
    if not names:
        raise SystemExit("error: configs names no ablation")
    ablation_names(reevaluate)  # each must name a config
    if overlay and not os.path.isfile(overlay):
        raise SystemExit(f"error: no overlay {overlay}")
    if not dry_run:  # both folders are written: checked before the first run
        check_writable(results, "results")
        check_writable(out_root, "out_root")
    study = Study(title=f"Overlay `{overlay or 'none'}`" + (f" with `{train_args}`" if train_args else ""),
                  overlay=overlay, train_args=train_args)
    if os.path.isfile(study_file):
        known = Study.load(study_file)
        for key in ("overlay", "train_args"):
            if getattr(known, key) != getattr(study, key):
                raise SystemExit(f"error: {results} is a study with {key}={getattr(known, key)!r}, not "
                                 f"{getattr(study, key)!r}; give this one its own --results folder")
        study = known
    print(f"ablate: {len(names)} configs x {seeds} seeds = {len(names) * seeds} runs at {overlay or 'the default scale'}"
          + (f", train.py {train_args}" if train_args else "") + f"; records in {results}")
    return [(n, s) for s in range(seeds) for n in names], study


def to_replace(name, seed):
    """The record that --reevaluate makes again for this run, or None. A record this evaluation made (it has
    quantized-cache points, and those of its greedy half-pruned model where it has two attention layers or
    more, and the loss by position) is not: the same command resumes a study instead of retraining it."""
    if name not in str(reevaluate).split(",") or not os.path.isfile(record_path(name, seed)):
        return None
    old = load_run(record_path(name, seed))
    halves = len(old.attn_layers or range(old.model["n_layer"])) >= 2
    current = old.quant and (any(q.layers for q in old.quant) or not halves) and old.loss_by_position is not None
    return None if current else old


def train(name, seed, resume):
    """Run train.py for one config and seed (resuming from its checkpoint where there is one); returns
    its command and wall time."""
    cmd = ["train.py", f"config/ablation_{name}.py"] + ([overlay] if overlay else []) + shlex.split(train_args) \
        + [f"--seed={1337 + seed}", f"--out_dir={run_dir(name, seed)}", "--always_save_checkpoint=True",
           f"--wandb_run_name=ablate-{name}-seed{seed}"]
    t0 = time.time()
    # train.py runs in a session of its own, so each stop signal reaches it once, passed on from here: Ctrl-C
    # (which the terminal sends to this process alone now), a `kill` of this process's pid, a scheduler's SIGTERM
    # or SLURM's --signal. It answers, saves and stops (a second Ctrl-C stops it at once); this process waits for
    # it rather than dying first and leaving it to run on, then says how the study goes on
    child = subprocess.Popen([sys.executable] + cmd + (["--init_from=resume"] if resume else []), start_new_session=True)
    handlers = {s: signal.signal(s, lambda signum, _: child.send_signal(signum)) for s in STOP_SIGNALS}
    try:
        code = child.wait()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    if code in [-s for s in STOP_SIGNALS] + [128 + s for s in STOP_SIGNALS]:  # train.py's stops
        print(f"ablate: interrupted in {name} seed {seed}; the same command goes on from its checkpoint",
              file=sys.stderr)
        raise SystemExit(code if code > 0 else 128 - code)
    if code != 0:
        raise SystemExit(f"error: run {name} seed {seed} failed: {shlex.join(cmd)}")  # train.py printed why
    return shlex.join(["python"] + cmd), time.time() - t0


@torch.no_grad()
def evaluate(name, seed, out_dir, command, wall):
    """The RunRecord of one finished run, from its final checkpoint; `command` is its train.py command."""
    path = os.path.join(out_dir, "ckpt.pt")
    ck, model, gates = trained_model(path)  # a budget run: what is measured is the static model it became
    cfg, tc = model.config, ck["config"]
    points, contrib, recall = checkpoint_curve(model, tc["dataset"], eval_batches, eval_batch_size, "cpu")
    L = len(cfg.attention_layers)
    half_pruned = {p.ranking: p for p in points if len(p.layers) == L // 2}
    lens = analyze_lens_gates(model)
    by_position, by_distance = checkpoint_positions(model, tc["dataset"], eval_batches, eval_batch_size, "cpu")
    tokens_per_iter = tc["batch_size"] * tc["block_size"] * tc["gradient_accumulation_steps"]
    return RunRecord(
        config=name, seed=seed, command=command, model=dataclasses.asdict(cfg),
        machine={"device": tc["device"], "torch": torch.__version__, "cpus": os.cpu_count(), "arch": platform.machine()},
        best_val_loss=ck["best_val_loss"], final_val_loss=ck["val_loss"], final_train_loss=ck["train_loss"],
        params=model.get_num_params(), iters=ck["iter_num"], tokens_seen=ck["iter_num"] * tokens_per_iter,
        ms_per_iter=ck["ms_per_iter"], wall_s=ck.get("wall_s", wall),  # (the command's own where the checkpoint lacks it)
        kv_bytes_per_token=points[0].kv_bytes_per_token,
        lens_gates={k: v for k, v in lens.items() if k.startswith("mean_")},
        route_gates=analyze_route_gates(model)["per_layer"] if cfg.use_route_gate else None,
        attention_contribution=contrib,
        half_pruned=half_pruned,
        all_pruned=next(p for p in points if len(p.layers) == L),  # no attention: on recall, chance
        pruning=points,  # the whole curve, each order
        eval_val_loss=points[0].val_loss, eval_val_acc=points[0].val_acc,  # on the same batches as the pruned
        dataset=tc["dataset"], chance_accuracy=dataset_meta(tc["dataset"]).get("chance_accuracy") if recall else None,
        history=ck.get("history", []),  # every evaluation during training: when a run learned what it learned
        attn_layers=list(cfg.attention_layers),  # where attention is (placed, or learned under a budget)
        attn_gates=gates and {"p_open": list(gates["p_open"].values()), "z": list(gates["z"].values())},
        quant=quant_points(model, tc["dataset"], half_pruned["greedy"].layers if L >= 2 else None),
        loss_by_position=by_position, recall_by_distance=by_distance)


def quant_points(model, dataset, pruned):
    """The quantized-cache evaluation (evaluate.checkpoint_quant) of the whole model and without the `pruned`
    layers' attention (the greedy half); a group that does not divide the model's axes is a one-line error
    that keeps the checkpoint (the same command with --kv_group evaluates it)."""
    try:
        return checkpoint_quant(model, dataset, eval_batches, eval_batch_size, "cpu", pruned=pruned,
                                kv_group=kv_group)
    except ValueError as e:
        raise SystemExit(f"error: {e}: give ablate.py a --kv_group that does")


def keep(record, old, study):
    """Write a run's record and add this command to the study. A record made again must be the run it
    replaces (same_run); its record keeps the replaced best loss."""
    if old is not None:
        if not same_run(record, old):
            raise SystemExit(f"error: {record.config} seed {record.seed} retrained to best val loss "
                             f"{record.best_val_loss:.6f}, not the record's {old.best_val_loss:.6f}; the record is kept")
        record.wall_s, record.ms_per_iter = old.wall_s, old.ms_per_iter
        # what the first record said (a record made again twice keeps it)
        record.recorded_best_val_loss = old.best_val_loss if old.recorded_best_val_loss is None \
            else old.recorded_best_val_loss
    if os.path.isfile(study_file):  # another ablate.py on this study may have added its command since
        study.commands = Study.load(study_file).commands
    command = shlex.join(["python", "ablate.py"] + sys.argv[1:])
    if command not in study.commands:
        study.commands.append(command)
    os.makedirs(os.path.dirname(record_path(record.config, record.seed)), exist_ok=True)
    write_record(study_file, study)
    write_record(record_path(record.config, record.seed), record)  # whole or absent: a half-written one would be skipped


def main():
    runs, study = plan()
    for i, (name, seed) in enumerate(runs, 1):
        old = to_replace(name, seed)
        done = os.path.isfile(record_path(name, seed)) and old is None
        resume = not done and os.path.isfile(os.path.join(run_dir(name, seed), "ckpt.pt"))
        state = (f"done, skipped (its record {record_path(name, seed)} exists)" if done else
                 f"resuming ({run_dir(name, seed)})" if resume else f"to train ({run_dir(name, seed)})")
        print(f"[run {i}/{len(runs)}] {name} seed {seed}: {state}", flush=True)
        if dry_run or done:
            continue
        command, wall = train(name, seed, resume)
        keep(evaluate(name, seed, run_dir(name, seed), command, wall), old, study)
    if not dry_run:
        print("\n".join(write_study(results)))
        print(f"wrote {results}/results.json, report.md, loss_vs_kv.png")


if __name__ == "__main__":
    main()
