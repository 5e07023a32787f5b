"""
nanoGPT's "poor man's configurator", with errors instead of surprises. A script keeps its settings
as module globals and calls

    configure(globals(), sys.argv[1:])

Each argument not starting with '--' is a Python config file, run in order with the current settings
visible (so an overlay can rescale what an earlier file set); each --key=value (or --key value, or a
bare --flag for True) overrides one setting; --help lists every setting with its default and comment.
An unknown key, a value of the wrong type or a config file that is missing or fails is a one-line error
(exit 1), with the close names where there are some. Ctrl-C stops a configured script with one line and
exit status 130, not a traceback (train.py replaces this with its own handler, which saves first).
"""

import ast
import difflib
import glob
import os
import re
import signal
import threading

PLAIN = (bool, int, float, str, tuple, type(None))
ROOT = os.path.dirname(os.path.abspath(__file__))


def config_keys(g):
    """The settings: a script's plain lower-case globals (upper case names are its constants)."""
    return [k for k, v in g.items() if not k.startswith("_") and not k.isupper() and isinstance(v, PLAIN)]


def die(msg):
    """The one way a script stops on bad input: one line, `error: ...`, exit status 1, no traceback."""
    raise SystemExit(f"error: {msg}")


def _unknown(key, keys):
    near = difflib.get_close_matches(key, keys, n=1)
    die(f"unknown config key '{key}'" + (f" (did you mean '{near[0]}'?)" if near else ""))


def did_you_mean(name, candidates, near=None):
    """' (did you mean a, b or c?)' with `near`, by default the candidates closest to name (difflib), or ''
    if none is close."""
    near = difflib.get_close_matches(name, candidates, n=3) if near is None else near
    if not near:
        return ""
    return f" (did you mean {near[0] if len(near) == 1 else ', '.join(near[:-1]) + ' or ' + near[-1]}?)"


def missing_config_file(path):
    """A config file that is not there: one line naming the files it may have meant (those beside where it
    points, and this repo's config/*.py, as written from the current directory)."""
    folders = {os.path.dirname(path), os.path.relpath(os.path.join(ROOT, "config"))}
    names = sorted({os.path.join(d, f) for d in folders if os.path.isdir(d or ".") for f in os.listdir(d or ".")
                    if f.endswith(".py")})
    same = [n for n in names if os.path.basename(n) == os.path.basename(path)]  # the right file, the wrong folder
    die(f"config file {path} not found" + did_you_mean(path, names, same or None))


def _interrupted(signum, frame):
    """Ctrl-C in a script (not train.py, which saves first): one line and exit status 130, not a traceback.
    os.write, not print: a print here could land inside a print the script was making."""
    os.write(2, b"\ninterrupted (SIGINT)\n")
    raise SystemExit(128 + signum)


def _checked(key, value, default):
    """value, if it fits the type of the setting's default (an int fits a float, None fits nothing
    but a None default, which takes any plain value)."""
    if default is None:
        return value
    want = type(default)
    if want is float and type(value) is int:
        return float(value)
    if want is tuple and type(value) is list:
        return tuple(value)
    if type(value) is not want:
        article = "an" if want.__name__[0] in "aeiou" else "a"
        die(f"config key '{key}' wants {article} {want.__name__}, got {value!r} ({type(value).__name__})")
    return value


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --device=cuda


def _help(g, keys):
    """The script's docstring, then every setting with its default and the comment beside it."""
    comments = {}
    path = g.get("__file__")
    if path and os.path.isfile(path):
        with open(path) as f:
            for line in f:
                m = re.match(r"^(\w+) = (.+?)(?:\s+#\s*(.*))?$", line.rstrip())
                if m and m.group(1) not in comments:
                    comments[m.group(1)] = m.group(3) or ""
    print((g.get("__doc__") or "").strip())
    print("\nsettings: config files (run in order), then --key=value, --key value, or a bare --flag for True")
    width = max(len(f"--{k}={g[k]!r}") for k in keys) + 2
    for k in keys:
        print(f"  {f'--{k}={g[k]!r}':<{width}}{comments.get(k, '')}")
    raise SystemExit(0)


def configure(g, argv, follow=None, given=None):
    """Apply config files and --key=value overrides from argv to the settings in g; returns the
    names of the settings. --help prints them all and exits. `follow` maps a setting to integer
    settings that scale with it (train.py: max_iters -> lr_decay_iters and the annealing window):
    when a config file or the command line changes the leader, each follower that neither that file
    nor the command line sets is rescaled by new / old, so it keeps its place in the run. `given`, a
    set, receives the name of every setting a config file or the command line sets (train.py's resume
    takes the others from the checkpoint): a file's top-level assignments, and what its code changed."""
    if threading.current_thread() is threading.main_thread():  # (signal handlers live in the main thread)
        signal.signal(signal.SIGINT, _interrupted)
    keys = config_keys(g)
    given = set() if given is None else given
    argv = list(argv)
    explicit = {a[2:].partition("=")[0] for a in argv if a.startswith("--")}

    def assign(updates):
        for leader, followers in (follow or {}).items():
            new, old = updates.get(leader, g[leader]), g[leader]
            if new != old and old:
                for f in followers:
                    if f not in updates and f not in explicit:
                        g[f] = int(g[f] * new / old)
        g.update(updates)

    while argv:
        arg = argv.pop(0)
        if arg in ("-h", "--help"):
            _help(g, keys)
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                missing_config_file(arg)
            ns = {k: g[k] for k in keys}
            with open(arg) as f:
                src = f.read()
            try:
                exec(compile(src, arg, "exec"), ns)
            except Exception as e:  # a config file is user code: report it in one line
                die(f"config file {arg} failed: {type(e).__name__}: {e}")
            # what the file assigns, even to the value it already had (it parsed, so this does too)
            tree = ast.parse(src)
            assigned = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                        for t in node.targets if isinstance(t, ast.Name)}
            top = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                   if isinstance(t, ast.Name)}  # assigned whatever the file's branches do
            updates = {}
            for k, v in ns.items():
                if k.startswith("_") or k == "__builtins__" or not isinstance(v, PLAIN):
                    continue  # helpers and imports inside a config file
                if k not in keys:
                    _unknown(k, keys)
                if k in assigned or v != g[k]:
                    updates[k] = _checked(k, v, g[k])
            given.update(k for k, v in updates.items() if k in top or v != g[k])
            assign(updates)
        else:
            k, eq, text = arg[2:].partition("=")
            if k not in keys:
                _unknown(k, keys)
            given.add(k)
            if not eq:  # --key value, or a bare --flag for a True/False (or None) setting
                flag = isinstance(g[k], bool) or g[k] is None
                if flag and (not argv or argv[0].startswith("--") or argv[0] not in ("True", "False")):
                    text = "True"
                elif argv and not argv[0].startswith("--"):
                    text = argv.pop(0)
                else:
                    die(f"--{k} needs a value (--{k}=VALUE)")
            assign({k: text if isinstance(g[k], str) else _checked(k, parse_value(text), g[k])})
    return keys


def model_settings(path, **context):
    """The GPTConfig lens knobs that a config file sets, with the shape left out (benchmarks pick
    their own). `context` supplies settings the file reads, such as max_iters, and the benchmark's
    shape (n_layer, n_head, n_embd). A config other than the baseline whose knobs build the baseline at
    that shape (GQA with n_kv_head = n_head) would be measured as a peer it is not: a one-line error."""
    from checkpoint import SHAPE_KEYS
    from model import GPTConfig
    shape = set(SHAPE_KEYS) | {"dropout"}
    ns = {"max_iters": 5000, **context}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), ns)
    knobs = {k: v for k, v in ns.items() if k in GPTConfig.__dataclass_fields__ and k not in shape}
    dims = {k: v for k, v in context.items() if k in ("n_layer", "n_head", "n_embd")}
    try:
        same = knobs and GPTConfig(**dims, **knobs) == GPTConfig(**dims)
    except ValueError as e:
        die(f"{path} at {', '.join(f'{k}={v}' for k, v in dims.items())}: {e}")
    if same and not path.endswith("ablation_baseline.py"):
        die(f"{path} at {', '.join(f'{k}={v}' for k, v in dims.items())} is the baseline "
             f"({', '.join(f'{k}={v!r}' for k, v in knobs.items())} changes nothing at this shape); choose a shape "
             "where it differs, e.g. more heads")
    return knobs


def require(*checks):
    """Each check is (condition, message): the first that fails is a one-line error, before any work."""
    for ok, msg in checks:
        if not ok:
            die(msg)


def ablation_names(spec):
    """The ablations a comma-separated spec names ('all': every config/ablation_*.py), the baseline
    first (every comparison is against it); a name without a config file is a one-line error."""
    known = sorted(os.path.basename(p)[len("ablation_"):-3]
                   for p in glob.glob(os.path.join(ROOT, "config", "ablation_*.py")))
    names = [n for n in str(spec).split(",") if n]
    if names == ["all"]:
        names = known
    for n in names:
        if not os.path.isfile(os.path.join(ROOT, "config", f"ablation_{n}.py")):
            # a name is asked for; a path to the config file is a common way to mean one
            die(f"no config file config/ablation_{n}.py"
                + did_you_mean(os.path.basename(n).removeprefix("ablation_").removesuffix(".py"), known))
    if names:
        names = ["baseline"] + [n for n in names if n != "baseline"]
    return names


DTYPES = ("float32", "bfloat16", "float16")


def setup_device(device=None, dtype=None):
    """The one device and precision setup every script uses: (device, device_type, dtype, torch dtype,
    autocast context). None picks cuda, then mps, then cpu; bfloat16 on CUDA where supported (else
    float16), float32 elsewhere. A device this machine lacks or an unknown dtype is a one-line error;
    float16 on a CPU, which is emulated there and several times slower, is a warning."""
    import sys
    from contextlib import nullcontext

    import torch
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device_type = str(device).split(":")[0]
    if device_type not in ("cpu", "cuda", "mps"):
        die(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        die(f"device={device}, but this machine has no CUDA device (torch {torch.__version__}); use --device=cpu")
    if device_type == "cuda" and ":" in str(device) and int(str(device).split(":")[1]) >= torch.cuda.device_count():
        die(f"device={device}, but this machine has {torch.cuda.device_count()} CUDA devices")
    if device_type == "mps" and not torch.backends.mps.is_available():
        die(f"device={device}, but MPS is not available on this machine; use --device=cpu")
    if dtype is None:
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    if dtype not in DTYPES:
        die(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if dtype == "float16" and device_type == "cpu":
        print("warning: float16 on a CPU is emulated and several times slower than bfloat16 or float32",
              file=sys.stderr)
    if device_type == "cuda":  # TF32 matmuls: free speed on Ampere and later
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = getattr(torch, dtype)
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)
    return device, device_type, dtype, ptdtype, ctx


def time_ms(fn, device_type, repeat=1):
    """Milliseconds per call of fn(), over `repeat` calls, the device synchronized before and after: the
    one timer of bench.py and kv_cache_bench.py."""
    import time

    import torch
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return 1000 * (time.perf_counter() - t0) / repeat


def print_top_operators(fn, device_type, title, rows=8):
    """Where the time goes: torch.profiler's operators by self time over one call of fn()."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device_type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
    print(f"\n{title}")
    print(prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=rows))
