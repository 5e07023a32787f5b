"""
Time forward + backward + optimizer steps and measure peak memory for a config, as nanoGPT's
bench.py does. With --compare, the baseline and the named ablations run in one process and each
is reported as a ratio to the baseline measured in the same run.

$ python bench.py                                   # config/ablation_full.py at the ablation shape
$ python bench.py --compare=reciprocity,lens,full   # baseline + these, ratios vs the baseline
$ python bench.py --compare=all --block_size=2048 --batch_size=2
$ python bench.py --kernels=True --block_size=1024 --batch_size=3   # sliding-window kernels: banded vs FlexAttention
Tokens are random: this measures cost, not learning.
"""
import os
import statistics
import sys

import torch
import torch.nn.functional as F

from configurator import ablation_names, configure, missing_config_file, model_settings, print_top_operators, require, setup_device, time_ms
from model import GPT, GPTConfig
from records import check_writable, write_json

# -----------------------------------------------------------------------------
config = "config/ablation_full.py"  # what to time without --compare
compare = ""  # comma-separated ablation names (config/ablation_NAME.py) or 'all'
batch_size = 12
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
vocab_size = 65  # the character-level Shakespeare vocabulary
dropout = 0.0
bias = True
steps = 10  # timed steps per config, after warmup
warmup = 3
rounds = 2  # every config is timed this many times, interleaved; the median is reported
seed = 1337
device = None  # None: cuda, then mps, then cpu
dtype = None  # None: bfloat16 where supported on CUDA (else float16), float32 elsewhere
compile = False
profile = False  # also print, per config, the operators that take the most time in one step (torch.profiler)
kernels = False  # instead: time the attention kernels alone (causal SDPA, banded SDPA, FlexAttention) at --window
window = 32  # the sliding window --kernels times
json_path = ""  # --json_path=PATH (or --json=PATH) writes the rows
# -----------------------------------------------------------------------------
sys.argv = ["--json_path" if a == "--json" else a.replace("--json=", "--json_path=", 1) for a in sys.argv]
configure(globals(), sys.argv[1:])
require((min(batch_size, block_size, n_layer, n_head, n_embd, vocab_size, steps, rounds) >= 1 and warmup >= 0,
         "batch_size, block_size, the model's sizes, steps and rounds must be >= 1, warmup >= 0"))
device, device_type, dtype, ptdtype, ctx = setup_device(device, dtype)
if json_path:  # checked before minutes of measuring
    check_writable(json_path, "json", is_dir=False)


def peak_bytes_of_step(step, others):
    """Peak bytes of live tensors while `step()` runs, its model's weights and optimizer state
    included: CUDA's allocator statistics less `others` (what the other configs' runners hold), or
    on a CPU the profiler's memory timeline (every tensor the step touches, created or pre-existing)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - others
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action in (Action.PREEXISTING, Action.CREATE):
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def make_runner(name, settings):
    others = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                    n_embd=n_embd, dropout=dropout, bias=bias, **settings)
    model = GPT(cfg).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cuda" if "cuda" in device else "cpu")
    fwd = torch.compile(model) if compile else model
    x = torch.randint(vocab_size, (batch_size, block_size), device=device)
    y = torch.randint(vocab_size, (batch_size, block_size), device=device)

    def step():
        with ctx:
            _, loss = fwd(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    return dict(name=name, step=step, params=model.get_num_params(), times=[], peak=peak_bytes_of_step(step, others))


def time_kernels():
    """The exact sliding-window kernels against causal attention over the whole sequence, at this shape:
    banded SDPA (model.banded_attention), SDPA under one T x T band mask (a windowed layer uses the first
    where T >= model.BANDED_MIN_RATIO * W, else the second) and FlexAttention (compiled, with a block mask),
    forward and, where the device has it, forward + backward; medians of interleaved rounds, each a ratio to
    causal SDPA in the same round."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from model import banded_attention, window_mask
    require((1 <= window < block_size, f"window={window} must be in [1, block_size={block_size})"))
    D = n_embd // n_head
    torch.manual_seed(seed)
    q, k, v = (torch.randn(batch_size, n_head, block_size, D, device=device, dtype=ptdtype) for _ in range(3))
    mask = create_block_mask(lambda b, h, i, j: (j <= i) & (j > i - window), None, None, block_size, block_size,
                             device=device)
    flex = torch.compile(flex_attention, dynamic=False)
    band = window_mask(block_size, window, device)
    fns = {"causal SDPA": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
           "banded SDPA": lambda q, k, v: banded_attention(q, k, v, window),
           "T x T mask SDPA": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=band),
           "FlexAttention": lambda q, k, v: flex(q, k, v, block_mask=mask)}
    ref = fns["banded SDPA"](q, k, v).float()
    err = (fns["FlexAttention"](q, k, v).float() - ref).abs().max().item()
    print(f"kernels: window {window}, {n_head} heads of {D}, block {block_size}, batch {batch_size}, {dtype} on "
          f"{device}; FlexAttention - banded: max |diff| {err:.1e}")

    def fwd(f):
        with torch.no_grad():
            f(q, k, v)

    def fwd_bwd(f):
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        f(qq, kk, vv).sum().backward()

    rows = []
    for label, run in (("forward", fwd), ("forward + backward", fwd_bwd)):
        usable = {}
        for name, f in fns.items():
            try:
                run(f)  # warmup (FlexAttention compiles here)
                usable[name] = f
            except (NotImplementedError, RuntimeError) as e:
                print(f"  {name}, {label}: not available here ({str(e).splitlines()[0][:120]})")
        times = {name: [] for name in usable}
        for _ in range(rounds):
            for name, f in usable.items():
                times[name].append(time_ms(lambda: run(f), device_type, steps))
        base = statistics.median(times["causal SDPA"])
        rows += [dict(kernel=name, pass_=label, ms=statistics.median(t), x_causal=statistics.median(t) / base)
                 for name, t in times.items()]
    print(f"{'kernel':<18}{'pass':<20}{'ms':>10}{'x causal':>10}")
    for r in rows:
        print(f"{r['kernel']:<18}{r['pass_']:<20}{r['ms']:>10.2f}{r['x_causal']:>10.2f}")
    if json_path:
        write_json(json_path, {"device": device, "torch": torch.__version__, "window": window,
                               "shape": dict(n_head=n_head, head_dim=D, block_size=block_size, batch_size=batch_size),
                               "rows": [{("pass" if k == "pass_" else k): v for k, v in r.items()} for r in rows]})
        print(f"wrote {json_path}")


if kernels:
    time_kernels()
    raise SystemExit(0)
if compare:
    todo = [(n, f"config/ablation_{n}.py") for n in ablation_names(compare)]
else:
    todo = [(os.path.basename(config)[:-3].removeprefix("ablation_"), config)]
for _, path in todo:
    if not os.path.isfile(path):
        missing_config_file(path)

print(f"bench: {n_layer} layers, {n_head} heads, {n_embd} wide, block {block_size}, batch {batch_size}, "
      f"{dtype} on {device}{' (compiled)' if compile else ''}, torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads")
settings = [(name, model_settings(path, n_layer=n_layer, n_head=n_head, n_embd=n_embd)) for name, path in todo]  # all checked first
runs = [make_runner(name, knobs) for name, knobs in settings]
for _ in range(rounds):  # interleaved, so a slow spell of a shared machine hits every config
    for r in runs:
        r["times"].append(time_ms(r["step"], device_type, steps) / 1000)
base = runs[0]
print(f"{'config':<18}{'params':>12}{'ms/step':>10}{'x base':>8}{'peak MiB':>10}{'x base':>8}")
for r in runs:
    ms, base_ms = 1000 * statistics.median(r["times"]), 1000 * statistics.median(base["times"])
    print(f"{r['name']:<18}{r['params']:>12,d}{ms:>10.1f}{ms / base_ms:>8.2f}{r['peak'] / 2**20:>10.1f}"
          f"{r['peak'] / base['peak']:>8.2f}")
if json_path:
    write_json(json_path, {"device": device, "torch": torch.__version__, "compile": compile, "dtype": dtype,
                           "shape": dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                         batch_size=batch_size),
                           "rows": [dict(config=r["name"], params=r["params"], ms_per_step=1000 * statistics.median(r["times"]),
                                         x_base_time=statistics.median(r["times"]) / statistics.median(base["times"]),
                                         peak_bytes=r["peak"], x_base_memory=r["peak"] / base["peak"]) for r in runs]})
    print(f"wrote {json_path}")
if profile:  # where the time goes: self time per operator over one step of each config
    for r in runs:
        print_top_operators(r["step"], device_type, f"{r['name']}: top operators by self time over one step")
