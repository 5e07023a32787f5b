"""
nanoGPT's "poor man's configurator", with errors instead of surprises. A script keeps its settings
as module globals and calls

    configure(globals(), sys.argv[1:])

Each argument without '=' is a Python config file, run in order with the current settings visible
(so an overlay can rescale what an earlier file set); each --key=value overrides one setting.
An unknown key, a value of the wrong type or a config file that fails is a one-line error (exit 1).
"""

import ast
import difflib
import os

PLAIN = (bool, int, float, str, tuple, type(None))


def config_keys(g):
    return [k for k, v in g.items() if not k.startswith("_") and isinstance(v, PLAIN)]


def _die(msg):
    raise SystemExit(f"error: {msg}")


def _unknown(key, keys):
    near = difflib.get_close_matches(key, keys, n=1)
    _die(f"unknown config key '{key}'" + (f" (did you mean '{near[0]}'?)" if near else ""))


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
        _die(f"config key '{key}' wants a {want.__name__}, got {value!r} ({type(value).__name__})")
    return value


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --device=cuda


def configure(g, argv):
    """Apply config files and --key=value overrides from argv to the settings in g; returns the
    names of the settings."""
    keys = config_keys(g)
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                _die(f"config file {arg} not found")
            ns = {k: g[k] for k in keys}
            try:
                with open(arg) as f:
                    exec(compile(f.read(), arg, "exec"), ns)
            except Exception as e:  # a config file is user code: report it in one line
                _die(f"config file {arg} failed: {type(e).__name__}: {e}")
            for k, v in ns.items():
                if k.startswith("_") or k == "__builtins__" or not isinstance(v, PLAIN):
                    continue  # helpers and imports inside a config file
                if k not in keys:
                    _unknown(k, keys)
                g[k] = _checked(k, v, g[k])
        else:
            if "=" not in arg:
                _die(f"expected --key=value, got {arg}")
            k, text = arg[2:].split("=", 1)
            if k not in keys:
                _unknown(k, keys)
            g[k] = text if isinstance(g[k], str) else _checked(k, parse_value(text), g[k])
    return keys


def model_settings(path, **context):
    """The GPTConfig lens knobs that a config file sets, with the shape left out (benchmarks pick
    their own). `context` supplies settings the file reads, such as max_iters or n_head."""
    from model import GPTConfig
    shape = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias"}
    ns = {"max_iters": 5000, **context}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), ns)
    return {k: v for k, v in ns.items() if k in GPTConfig.__dataclass_fields__ and k not in shape}
