"""
Train a lens-gated GPT-2. Settings are the globals below; config files and --key=value override them:

$ python train.py config/ablation_full.py                      # one ablation, character Shakespeare
$ python train.py config/ablation_full.py config/cpu.py        # the same ablation, laptop scale
$ python train.py config/ablation_lens.py --max_iters=1000 --device=cpu
$ torchrun --standalone --nproc_per_node=8 train.py config/ablation_full.py config/gpt2_124m.py

$ python train.py --out_dir=out-ablation_full --init_from=resume   # go on from its checkpoint, as it was

Every source of randomness (batches, dropout) is a function of (seed, iteration, micro-step), so a
resumed run continues exactly where the interrupted one was, on any number of processes.
"""
import fcntl
import hashlib
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import fields

import torch

from checkpoint import SHAPE_KEYS, load_checkpoint, model_args_of, model_from_checkpoint, nonfinite, save_checkpoint
from records import check_writable
from configurator import configure, die, require, setup_device
from evaluate import dataset_dir, dataset_meta, hits, load_split, window_starts, windows
from analysis import (analyze_attn_gates, analyze_lens_gates, analyze_route_gates, apply_budget_schedule,
                      apply_route_annealing, fix_attn_gates)
from model import GPT, GPTConfig

started = time.time()  # the wall time a checkpoint keeps counts from here, after the imports

# -----------------------------------------------------------------------------
# defaults: nanoGPT's shakespeare_char recipe, with GPT-2's biases
out_dir = "out"
eval_interval = 250
log_interval = 10
eval_iters = 200
eval_only = False
always_save_checkpoint = False  # False: save only when val loss improves (the last save is always kept)
init_from = "scratch"  # 'scratch', 'resume', or a GPT-2 name / local Hugging Face directory
seed = 1337
# wandb
wandb_log = False
wandb_project = "lensgpt"
wandb_run_name = "run"
# data
dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
# model (GPTConfig fields)
n_layer = 6
n_head = 6
n_embd = 384
n_kv_head = None  # None = n_head; fewer = grouped-query, 1 = multi-query
kv_share = 1  # 2: cross-layer attention, each pair of layers shares one K and V (config/ablation_cla.py)
dropout = 0.2
bias = True
use_reciprocity = False
use_discoverability = False
lens_gate_init = (2.2, 0.6, 0.1)
use_route_gate = False
init_route_gate = 0.8
route_anneal_start = 666  # the original recipe's 2000 -> 10000 of 15000 steps, scaled to 5000
route_anneal_end = 3333
route_anneal_target = -1.0
mlp_use_ctx_summary = False
mlp_ctx_rank = 128
mlp_ctx_alpha_init = 0.1
mlp_ctx_conductor = False
mlp_disabled = False
mlp_expansion_ratio = 4.0
mlp_activation = "tanh"  # the MLP's GELU: 'tanh' (GPT-2's gelu_new, Hugging Face) or 'exact' (nanoGPT, nn.GELU())
attn_layers = None  # the layers with attention: None = all, a tuple of indices, or 'first_half'
attn_free_mlp_iso = False  # attention-free layers' MLPs widened to a whole layer's parameters
attn_budget = None  # share of the attention layers whose hard-concrete gate stays open (None = no gates)
attn_gate_lr_scale = 50.0  # the gates' and the budget multipliers' learning rate, in units of learning_rate
attn_budget_warmup_iter = 500  # the budget's target falls from every layer to its share over these iterations (the first 10%)
attn_gate_fix_iter = 1000  # from here on the gates are fixed to 0/1 (the last 80%), so the model trains on with what it keeps
tie_embeddings = True  # False: separate lm_head, unit-scale embeddings (config/recall.py)
attn_window = None  # sliding window W: keys i - W < j <= i; an int for every attention layer, a tuple per layer (0: global)
attn_global_every = 0  # k: one layer in k keeps global attention (the first of each k, or the last), window elsewhere
attn_global_last = False
# AdamW
learning_rate = 1e-3
max_iters = 5000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # 0 disables
# learning rate schedule: linear warmup, cosine decay to min_lr
decay_lr = True
warmup_iters = 100
lr_decay_iters = 5000
min_lr = 1e-4
# system
backend = None  # DDP backend; None: nccl on CUDA, gloo otherwise
device = None  # None: cuda, then mps, then cpu
dtype = None  # None: bfloat16 where supported on CUDA, else float16 on CUDA, float32 elsewhere
compile = None  # None: on for CUDA only
# -----------------------------------------------------------------------------
# a run that changes max_iters keeps its schedule in place: decay and annealing window scale with it
FOLLOW_MAX_ITERS = ("lr_decay_iters", "route_anneal_start", "route_anneal_end", "attn_budget_warmup_iter", "attn_gate_fix_iter")
given = set()  # the settings this command's config files and command line set
config_keys = configure(globals(), sys.argv[1:], follow={"max_iters": FOLLOW_MAX_ITERS}, given=given)
command_line = {a[2:].partition("=")[0] for a in sys.argv[1:] if a.startswith("--")}  # what this command sets
model_keys = [f.name for f in fields(GPTConfig)]
# every GPTConfig field is a setting here (vocab_size comes from the dataset): a new field without one
# would otherwise be dropped from model_args without a word
assert all(k in config_keys for k in model_keys if k != "vocab_size"), \
    f"train.py has no setting for {[k for k in model_keys if k not in config_keys and k != 'vocab_size']}"

# -------------------------------------------------------------------- resume: the run as it was
# As in nanoGPT, `python train.py --out_dir=DIR --init_from=resume` is the whole command: every setting that
# this command leaves unset is the checkpoint's (the architecture, the data, the schedule, the batch), so the
# run goes on exactly. A setting it does set wins (a larger max_iters extends the run), except where it
# contradicts what the weights are, the model and the dataset: all such settings are refused in one line.
# What a config derives from max_iters (the decay, the annealing window) stays the checkpoint's unless the
# command line itself sets it, so an extended run's schedule goes on where it was.
NOT_RESUMED = ("out_dir", "init_from", "eval_only")  # this command's own, whatever the checkpoint's run did
ckpt_path = os.path.join(out_dir, "ckpt.pt")
checkpoint = None
if init_from == "resume":
    checkpoint = load_checkpoint(ckpt_path)  # on the CPU: the model and the optimizer state move to the device below
    try:
        have = GPTConfig(**model_args_of(checkpoint))
    except (TypeError, ValueError) as e:
        die(f"{ckpt_path} has model_args this version cannot build: {e}")
    # model_args are what the weights are (the shape of a run that started from GPT-2, not its config's)
    trained = {**checkpoint["config"], **{k: v for k, v in model_args_of(checkpoint).items() if k != "vocab_size"}}
    chosen = {k for k in given if k not in FOLLOW_MAX_ITERS or k in command_line}

    def was(k):
        return trained.get(k) if k == "dataset" else getattr(have, k)

    def same(k, v):
        """Whether setting k = v describes the checkpoint's model (n_kv_head=None is n_head, ...)."""
        if k == "dataset":
            return v == was(k)
        try:
            return getattr(GPTConfig(**{**{f: getattr(have, f) for f in model_keys}, k: v}), k) == was(k)
        except (TypeError, ValueError):
            return False

    pinned = [k for k in model_keys if k not in ("dropout", "vocab_size")] + ["dataset"]
    bad = [k for k in pinned if k in chosen and not same(k, globals()[k])]
    if bad:
        them = "it" if len(bad) == 1 else "them"
        die(f"{ckpt_path} was trained with {', '.join(f'{k}={was(k)!r}' for k in bad)} but the config says "
            f"{', '.join(f'{k}={globals()[k]!r}' for k in bad)}; resuming takes {them} from the checkpoint: "
            f"leave {them} out")
    for k in config_keys:
        if k not in chosen and k not in NOT_RESUMED and k in trained:
            globals()[k] = trained[k]
config = {k: globals()[k] for k in config_keys}  # saved in checkpoints and sent to wandb


# every setting with a range is checked before any work starts (the model's own are GPTConfig's)
require(
    (batch_size >= 1 and block_size >= 1 and gradient_accumulation_steps >= 1,
     "batch_size, block_size and gradient_accumulation_steps must be >= 1"),
    (max_iters >= 0 and warmup_iters >= 0, "max_iters and warmup_iters must be >= 0"),
    (eval_interval >= 1 and log_interval >= 1 and eval_iters >= 1, "eval_interval, log_interval and eval_iters must be >= 1"),
    (learning_rate > 0 and 0 <= min_lr <= learning_rate, f"need learning_rate > 0 and 0 <= min_lr <= learning_rate, "
                                                         f"got {learning_rate} and {min_lr}"),
    (weight_decay >= 0 and grad_clip >= 0, "weight_decay and grad_clip must be >= 0"),
    (0 <= beta1 < 1 and 0 <= beta2 < 1, f"beta1 and beta2 must be in [0, 1), got {beta1} and {beta2}"),
    (route_anneal_start <= route_anneal_end, "route_anneal_start must not exceed route_anneal_end"),
    (attn_gate_lr_scale > 0 and min(attn_gate_fix_iter, attn_budget_warmup_iter) >= 0,
     "attn_gate_lr_scale must be > 0, attn_gate_fix_iter and attn_budget_warmup_iter >= 0"),
    (compile in (None, True, False), f"compile must be True or False, got {compile!r}"),
)


# -------------------------------------------------------------------- system
ddp = int(os.environ.get("RANK", -1)) != -1
device, device_type, dtype, ptdtype, ctx = setup_device(device, dtype)
if compile is None:
    compile = device_type == "cuda"
if ddp:
    from torch.distributed import destroy_process_group, init_process_group
    from torch.nn.parallel import DistributedDataParallel as DDP
    init_process_group(backend=backend or ("nccl" if device_type == "cuda" else "gloo"))
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device_type == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if gradient_accumulation_steps % world_size:
        die(f"gradient_accumulation_steps={gradient_accumulation_steps} must be divisible by the {world_size} processes")
    gradient_accumulation_steps //= world_size
else:
    rank, world_size = 0, 1
master = rank == 0
tokens_per_iter = gradient_accumulation_steps * world_size * batch_size * block_size
if master:
    check_writable(out_dir)  # before any data is read or any model built
    # one run per out_dir: an OS lock that the kernel drops when this process dies, however it dies
    lock_file = open(os.path.join(out_dir, "train.lock"), "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        die(f"{out_dir} is in use by a live run (pid {holder}); wait for it, stop it, or choose another --out_dir")
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    print(f"tokens per iteration: {tokens_per_iter:,}")

# -------------------------------------------------------------------- signals
# Ctrl-C (SIGINT), and what schedulers send before SIGKILL (SIGTERM: SLURM, Kubernetes, timeout; SIGUSR1:
# SLURM's --signal), answer at once and set a flag; the loop, and an evaluation under way, stop at the next
# batch, where the state is whole, save it and exit 128 + the signal's number. A second Ctrl-C stops at
# once, and so does any of them before the first iteration: what was saved stays as it was (saves are
# atomic), nothing is written, one line says so. The messages go through os.write: a print inside a
# handler could land inside a print the loop was making.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
stop_signal = 0  # the number of the signal that asked to stop, 0 for none
training = False  # True from the first iteration on: before it there is nothing to save
last_saved = None  # the iteration of the last checkpoint this run wrote (or resumed from)
newline = "\n" if sys.stderr.isatty() else ""  # past the ^C that a terminal echoes


def on_signal(signum, frame):
    global stop_signal
    name = signal.Signals(signum).name
    if not training or (stop_signal and signum == signal.SIGINT):
        where = f"at iteration {iter_num}" if training else "before training"
        kept = "nothing was saved" if last_saved is None else f"{ckpt_path} (iteration {last_saved}) is as it was"
        os.write(2, f"{newline}stopped ({name}) {where}: {kept}\n".encode())
        raise SystemExit(128 + signum)
    if not stop_signal:
        stop_signal = signum
        if master:
            what = ("stopping after this iteration; Ctrl-C again to stop now" if signum == signal.SIGINT
                    else f"{name}: stopping after this iteration")
            os.write(2, f"{newline}{what}\n".encode())


for signum in STOP_SIGNALS:
    signal.signal(signum, on_signal)

# -------------------------------------------------------------------- data
data_dir = dataset_dir(dataset)
meta = dataset_meta(dataset)
meta_vocab_size, seq_len = meta.get("vocab_size"), meta.get("seq_len", 1)
scored = bool(meta.get("mask"))  # only some targets count (the recall set's answers): report accuracy
for split in ("train", "val"):
    load_split(dataset, split, meta, block_size)  # missing or too short data is an error now, not mid-run
if scored and block_size < seq_len:
    die(f"block_size={block_size} is shorter than the sequences of data/{dataset} (seq_len={seq_len}): the answers "
        f"past the window would never be seen; use --block_size={seq_len} or a multiple")
if master and meta_vocab_size:
    print(f"vocab_size = {meta_vocab_size} (from {data_dir}/meta.pkl)")
if master and scored:
    print(f"loss and accuracy on the answer tokens only; chance accuracy {meta.get('chance_accuracy', 0):.4f}")


def stable_seed(*key):
    """A seed from (seed, *key), the same in every process and every run (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr((seed,) + key).encode()).digest()[:8], "little") % 2**63


def generator(*key):
    """A torch RNG for this (iteration, micro-step, ...): randomness that a resume reproduces."""
    return torch.Generator().manual_seed(stable_seed(*key))


def get_batch(split, gen):
    # a fresh memmap per batch, as in nanoGPT: a long-lived one leaks memory
    data, mask = load_split(dataset, split, meta)
    x, y = windows(data, window_starts(len(data), block_size, batch_size, gen, seq_len), block_size, mask)
    if device_type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# -------------------------------------------------------------------- model
iter_num, best_val_loss = 0, 1e9
timing, wall_before = [0.0, 0], 0.0  # (seconds, iterations) timed, and seconds run, before this part of the run
history = []  # every evaluation of this run (resumed runs included): iteration, losses, accuracy
model_args = {k: globals()[k] for k in model_keys if k in globals()}
model_args["vocab_size"] = meta_vocab_size or 50304
torch.manual_seed(seed)  # the initial weights
if init_from == "scratch":
    try:
        model = GPT(GPTConfig(**model_args))
    except (TypeError, ValueError) as e:
        die(f"bad model settings: {e}")
elif init_from == "resume":
    model = model_from_checkpoint(checkpoint, ckpt_path, dropout=dropout)  # (dropout: this run's)
    model_args = {**model_args_of(checkpoint), "dropout": dropout}
    iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    history = checkpoint.get("history", [])
    # the time per iteration and the wall time are kept over every part of a resumed run; a checkpoint from
    # before they were kept counts its mean time per iteration once for each iteration it timed alone
    timed = iter_num - -(-iter_num // eval_interval)  # (an evaluation's iteration is not timed)
    timing = checkpoint.get("timing", [checkpoint.get("ms_per_iter", 0.0) / 1000 * timed, timed])
    wall_before = checkpoint.get("wall_s", 0.0)
    last_saved = iter_num
    if master:
        print(f"resuming {out_dir} from iteration {iter_num}")
else:
    lens = {k: model_args[k] for k in model_keys if k not in SHAPE_KEYS and model_args[k] is not None}
    try:
        model = GPT.from_pretrained(init_from, **lens)
    except (OSError, ValueError) as e:
        die(f"cannot load {init_from}: {e}")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
    model_args = {f.name: getattr(model.config, f.name) for f in fields(GPTConfig)}
if block_size > model.config.block_size:
    die(f"block_size={block_size} exceeds the model's {model.config.block_size}")
model.to(device)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, attn_gate_lr_scale)
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint["optimizer"])
    if "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
checkpoint = None  # free memory
raw_model = model
if compile:
    if master:
        print("compiling the model... (takes a ~minute)")
    model = torch.compile(model)
if ddp:
    # route_bias is the one buffer, and every rank sets it from the iteration: nothing to broadcast
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None, broadcast_buffers=False)
eval_model = model.module if ddp else model  # only the master evaluates: no collectives there


def seconds_here():
    """About how long what is left of this run takes on this device: one forward pass of a few sequences
    timed (a training step costs about three, forward and backward), scaled to the batch, the iterations
    and the evaluations. No weight, gradient or random stream is touched."""
    b = min(batch_size, 4)  # a few sequences: a GPU-sized batch would itself take a while on a CPU
    x = torch.randint(raw_model.config.vocab_size, (b, block_size), generator=torch.Generator().manual_seed(0))
    raw_model.eval()
    with torch.no_grad(), ctx:
        raw_model(x[:1], x[:1])  # the first call's one-time costs
        t = time.perf_counter()
        raw_model(x, x)
        per_sequence = (time.perf_counter() - t) / b
    raw_model.train()
    left = 0 if eval_only else max(max_iters - iter_num, 0)
    forwards = 3 * left * gradient_accumulation_steps + 2 * eval_iters * (left // eval_interval + 1)
    return per_sequence * batch_size * forwards


# a GPU-sized config on a CPU (the Quickstart's without config/cpu.py) would run for a day: say so first
if master and device_type == "cpu" and (eta := seconds_here()) > 3600:
    cpu_overlay = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "cpu.py"))
    args = sys.argv[1:]
    files = [i for i, a in enumerate(args) if a.endswith(".py") and os.path.isfile(a)]
    at = files[-1] + 1 if files else 0  # the overlay goes after the config files, before the --settings
    scaled = init_from == "resume" or any(os.path.samefile(args[i], cpu_overlay) for i in files)
    print(f"warning: on this CPU this run takes about "
          + (f"{eta / 3600:.0f} hours" if eta < 3 * 86400 else f"{eta / 86400:.0f} days")
          + f" ({max_iters - iter_num:,} iterations of {batch_size} x {block_size} tokens at {n_layer} layers x "
          f"{n_embd}, evaluations included)"
          + ("" if scaled else f"; it is GPU-sized: {cpu_overlay} is the CPU scale (minutes): python train.py "
                               f"{shlex.join(args[:at] + [cpu_overlay] + args[at:])}"), file=sys.stderr, flush=True)


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters batches of each split, the same batches at every evaluation; with
    scored targets also the accuracy on them (the share of answers predicted exactly). None where a
    stop signal cut it short: a long evaluation must not hold a Ctrl-C."""
    out = {}
    model.eval()
    for split in ("train", "val"):
        losses, right, total = torch.zeros(eval_iters), 0, 0
        for k in range(eval_iters):
            if stop_signal:
                model.train()
                return None
            X, Y = get_batch(split, generator("eval", split, k))
            with ctx:
                logits, loss = eval_model(X, Y)
            losses[k] = loss.item()
            if scored:
                r, t = hits(logits, Y)
                right, total = right + r, total + t
        out[split] = losses.mean().item()
        out[f"{split}_acc"] = right / max(total, 1) if scored else None
    model.train()
    return out


def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:  # (at lr_decay_iters the cosine is at min_lr too)
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def gate_stats():
    """Lens weights and route gates, flat, for logs."""
    stats = {}
    if raw_model.config.use_reciprocity or raw_model.config.use_discoverability:
        lens = analyze_lens_gates(raw_model)
        stats.update({k: v for k, v in lens.items() if k.startswith("mean_")})
    if raw_model.config.attn_budget is not None:
        gates = analyze_attn_gates(raw_model)
        stats["attn_gates_open"] = gates["expected_open"]  # E, held to the budget's k
        # P(open) while the gates learn; once fixed, the 0/1 they are fixed to
        stats.update({f"attn_gate/{i}": p for i, p in (gates["z"] if gates["fixed"] else gates["p_open"]).items()})
    if raw_model.config.use_route_gate:
        route = analyze_route_gates(raw_model)
        stats.update({k: v for k, v in route.items() if k != "per_layer"})
        stats.update({f"route_gate/{i}": g for i, g in enumerate(route["per_layer"])})
    return stats


def netrc_hosts():
    """Hosts with a login in ~/.netrc (where `wandb login` keeps its key)."""
    import netrc
    try:
        return set(netrc.netrc().hosts)
    except (OSError, netrc.NetrcParseError):
        return set()


if wandb_log and master:
    try:
        import wandb
        online = os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun")
        if online and not os.environ.get("WANDB_API_KEY") and "api.wandb.ai" not in netrc_hosts():
            raise RuntimeError("no API key (run `wandb login`, or set WANDB_MODE=offline); wandb would wait at "
                               "its login prompt")
        wandb.init(project=wandb_project, name=wandb_run_name, config=config, dir=out_dir)
    except Exception as e:  # logging must never stop training
        print(f"warning: wandb could not start ({type(e).__name__}: {e}); training goes on without it")
        wandb_log = False


resume_command = ("the same command and --init_from=resume" if ddp else
                  f"python train.py --out_dir={shlex.quote(out_dir)} --init_from=resume")


def save(losses):
    """The training state after iter_num updates, atomically (resuming from it is exact). Nothing
    non-finite is ever written: such a state stops the run and the checkpoint there stays as it was."""
    global last_saved
    state = {
        "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(), "model_args": model_args, "iter_num": iter_num,
        "best_val_loss": best_val_loss, "val_loss": losses.get("val"), "train_loss": losses.get("train"),
        "val_acc": losses.get("val_acc"), "ms_per_iter": 1000 * step_time / max(timed_iters, 1), "config": config,
        "history": history, "timing": [step_time, timed_iters], "wall_s": wall_before + time.time() - started,
    }
    bad = nonfinite({k: state[k] for k in ("model", "optimizer", "val_loss", "train_loss", "best_val_loss")})
    if bad is not None:
        diverged(iter_num, f"{bad} is not finite")
    save_checkpoint(state, ckpt_path)
    last_saved = iter_num


def diverged(step, what):
    """Stop a run whose loss or weights are no longer finite, saving nothing."""
    if bar is not None:
        bar.close()
    if last_saved is None:
        die(f"training diverged at iteration {step} ({what}); nothing was saved. Lower learning_rate or raise "
            f"warmup_iters and start again")
    die(f"training diverged at iteration {step} ({what}); the last good checkpoint, {ckpt_path} (iteration "
        f"{last_saved}), is unchanged. Lower learning_rate or raise warmup_iters and resume with --init_from=resume")


def agree(flag, first_bad):
    """(the stop signal, the first non-finite iteration) that any process has seen: every process of a
    DDP run then stops at the same iteration. first_bad is a device tensor (inf: none); reading it is a
    host sync, which happens only here."""
    t = torch.stack([torch.tensor(float(flag), device=first_bad.device), -first_bad])
    if ddp:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    sig, bad = int(t[0].item()), -t[1].item()
    return sig, (None if math.isinf(bad) else int(bad))


# -------------------------------------------------------------------- training loop
bar = None
if master and sys.stdout.isatty() and sys.stderr.isatty() and not eval_only:  # a bar in a terminal, never in a log
    from tqdm import tqdm
    bar = tqdm(total=max_iters, initial=iter_num, dynamic_ncols=True)
log = bar.write if bar is not None else print
t0 = time.time()
local_iter_num, running_mfu = 0, -1.0
step_time, timed_iters = timing  # for the mean time per training iteration kept in the checkpoint
losses = {}
# the first iteration whose loss (or clipped gradient norm) was not finite, kept on the device so that
# checking it costs no host sync per step; inf while there is none
first_bad = torch.tensor(float("inf"), device=device)
# float16's GradScaler meets inf gradients by design (it skips the step and lowers the scale)
check_grad_norm = grad_clip != 0.0 and dtype != "float16"
# whether budget gates are still learned (not yet fixed, as a resumed run may find them): read once, no sync per step
gates_learned = raw_model.config.attn_budget is not None and not analyze_attn_gates(raw_model)["fixed"]
training = True
while True:
    # every process checks at the same iterations (logged, evaluated, last), and a single process at every
    # iteration for a signal; the loss check syncs with the device only there
    checkpoint_due = iter_num % log_interval == 0 or iter_num % eval_interval == 0 or iter_num >= max_iters
    sig, bad = agree(stop_signal, first_bad) if checkpoint_due or (not ddp and stop_signal) else (0, None)
    if bad is not None:
        diverged(bad, "the training loss or gradient norm is not finite")
    if sig:
        if bar is not None:
            bar.close()
        if master:
            name = signal.Signals(sig).name
            if iter_num == (0 if last_saved is None else last_saved):  # nothing trained since the last save
                print(f"interrupted ({name}) at iteration {iter_num}: "
                      + ("nothing trained, nothing saved" if last_saved is None else f"{ckpt_path} holds it already"))
            else:
                save(losses)
                print(f"interrupted ({name}): saved iteration {iter_num} to {ckpt_path}; resume with: {resume_command}",
                      flush=True)
        if wandb_log and master:
            wandb.finish()
        if ddp:
            destroy_process_group()
        sys.exit(128 + sig)
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # (checkpoints from before lr_scale: 1)
    apply_route_annealing(raw_model, iter_num)
    apply_budget_schedule(raw_model, iter_num, attn_budget_warmup_iter)
    if gates_learned and iter_num >= attn_gate_fix_iter:  # the last phase: deterministic gates, open or shut
        log(f"step {iter_num}: attention gates fixed, open in layers {fix_attn_gates(raw_model)}")
        gates_learned = False

    if iter_num % eval_interval == 0 or iter_num >= max_iters:
        evaluated = estimate_loss() if master else None
        if evaluated is not None:  # (None: a signal cut it short; it is made again where the run resumes)
            losses = evaluated
            history = [h for h in history if h["iter"] < iter_num] + [
                {"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "val_acc": losses["val_acc"]}]
            stats = gate_stats()
            log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                + (f", val acc {losses['val_acc']:.4f}" if scored else "") + "".join(f", {k} {v:.3f}" for k, v in stats.items() if "/" not in k)
                + (f", attention {'P(open)' if gates_learned else 'gates'} "
                   + " ".join(f"{v:.2f}" for k, v in stats.items() if k.startswith("attn_gate/"))
                   if raw_model.config.attn_budget is not None else ""))
            if wandb_log:
                wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr,
                           **({"mfu": running_mfu * 100} if running_mfu >= 0 else {}), **stats,
                           **({"train/acc": losses["train_acc"], "val/acc": losses["val_acc"]} if scored else {})})
            if losses["val"] < best_val_loss or always_save_checkpoint or iter_num >= max_iters:
                best_val_loss = min(best_val_loss, losses["val"])
                if iter_num > 0 or init_from == "resume":
                    save(losses)
                    log(f"saved checkpoint to {ckpt_path}")
        # everyone waits for the master's eval and save, and learns whether a signal came meanwhile: then
        # the run stops here, before the next update (the check at the top of the loop)
        if (agree(stop_signal, first_bad)[0] if ddp else stop_signal):
            continue
    if eval_only or iter_num >= max_iters:
        break

    # forward/backward over the micro-steps; rank r takes global micro-steps r, r + world_size, ...
    torch.manual_seed(stable_seed("dropout", iter_num, rank))
    finite = torch.tensor(True, device=device)
    for micro_step in range(gradient_accumulation_steps):
        X, Y = get_batch("train", generator("train", iter_num, micro_step * world_size + rank))
        if ddp:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with ctx:
            logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps
        finite = finite & torch.isfinite(loss.detach())
        scaler.scale(loss).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if check_grad_norm:
            finite = finite & torch.isfinite(norm)
    first_bad = torch.where(finite | torch.isfinite(first_bad), first_bad, float(iter_num))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if iter_num % eval_interval != 0 and local_iter_num >= 1:  # training alone: no eval, no compile warmup
        step_time, timed_iters = step_time + dt, timed_iters + 1
    if iter_num % log_interval == 0 and master:
        lossf = loss.item() * gradient_accumulation_steps  # a host sync: only at log_interval
        # MFU against an A100's bf16 peak, as nanoGPT: a CPU has no such peak, so none is printed there
        if local_iter_num >= 5 and device_type == "cuda":  # (the first iterations settle first)
            mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps * world_size, dt)
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
        stats = gate_stats()
        if bar is not None:
            bar.set_postfix_str(f"loss {lossf:.4f}, lr {lr:.2e}, {dt * 1000:.0f}ms"
                                + (f", g {stats['mean_route_gate']:.3f}" if "mean_route_gate" in stats else ""))
        else:
            log(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, time {dt * 1000:.2f}ms"
                + (f", mfu {running_mfu * 100:.2f}%" if running_mfu >= 0 else "")
                + "".join(f", {k} {v:.3f}" for k, v in stats.items() if "/" not in k))
    if bar is not None:
        bar.update(1)
    iter_num += 1
    local_iter_num += 1

if bar is not None:
    bar.close()
if master and not eval_only:  # what the run made, and what to do with it
    print(f"\ndone: {iter_num} iterations; best val loss {best_val_loss:.4f}, final val loss {losses['val']:.4f}"
          + (f" (val acc {losses['val_acc']:.4f})" if scored else ""))
    if last_saved is None:
        print("nothing was saved (max_iters=0)")
    else:
        q = shlex.quote
        print(f"checkpoint: {ckpt_path} (iteration {last_saved})")
        print(f"sample it:  python sample.py --out_dir={q(out_dir)}")
        print(f"measure it: python kv_cache_bench.py --configs= --ckpt={q(ckpt_path)}   "
              "# loss as attention is removed, and cache bytes per token")
if wandb_log and master:
    wandb.finish()
if ddp:
    destroy_process_group()
