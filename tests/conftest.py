import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SHAKESPEARE = os.environ.get("LENSGPT_SHAKESPEARE", os.path.join(SHARED, "data", "tinyshakespeare", "input.txt"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED, "tiktoken_cache"))
# settings that make any config train in seconds
TINY = ["config/cpu.py", "--n_layer=2", "--n_embd=32", "--n_head=4", "--block_size=32", "--batch_size=4",
        "--eval_iters=4", "--mlp_ctx_rank=8", "--warmup_iters=5", "--log_interval=1000"]


def run(*args, check=True, env=None, timeout=600):
    """Run a repo script; returns the completed process (stdout and stderr as text)."""
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="session")
def char_data():
    """data/shakespeare_char prepared from the local copy of tiny Shakespeare."""
    if not os.path.isfile(SHAKESPEARE):
        raise FileNotFoundError(f"tests need tiny Shakespeare at {SHAKESPEARE} (or set LENSGPT_SHAKESPEARE)")
    if not os.path.isfile(os.path.join(ROOT, "data", "shakespeare_char", "val.bin")):
        run("data/shakespeare_char/prepare.py", "--input", SHAKESPEARE)
    return os.path.join(ROOT, "data", "shakespeare_char")
