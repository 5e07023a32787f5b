import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

# One thread in the test process and in every script it starts: the tiny models gain nothing from a
# second, and OpenMP threads that spin-wait for a sibling the scheduler has parked (a busy machine)
# make every small op wait a time slice, which stretched the suite from minutes to hours beside one
# other CPU-bound job
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SHAKESPEARE = os.environ.get("LENSGPT_SHAKESPEARE", os.path.join(SHARED, "data", "tinyshakespeare", "input.txt"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED, "tiktoken_cache"))
# datasets go to a temporary folder, never into the repo (evaluate.dataset_dir reads LENSGPT_DATA)
DATA = tempfile.mkdtemp(prefix="lensgpt-test-data-")
os.environ["LENSGPT_DATA"] = DATA
# settings that make any config train in seconds
TINY = ["config/cpu.py", "--n_layer=2", "--n_embd=32", "--n_head=4", "--block_size=32", "--batch_size=4",
        "--eval_iters=4", "--mlp_ctx_rank=8", "--warmup_iters=5", "--log_interval=1000"]


def run(*args, check=True, env=None, timeout=1800):
    """Run a repo script; returns the completed process (stdout and stderr as text). The timeout only
    guards against a hang: a slow, shared machine must not fail a test."""
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


# Runs many command lines of repo scripts in ONE Python process, each as `python script args` would run
# it (runpy, as __main__, with its own sys.argv, stdout and stderr): importing torch costs ~1.5 s per
# process, more than most error checks themselves. An uncaught exception prints its traceback, as the
# interpreter would; SystemExit("error: ...") prints its line and exits 1
MANY = r"""
import contextlib, io, json, runpy, sys, traceback
results = []
for argv in json.load(sys.stdin):
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = argv
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append((code, out.getvalue(), err.getvalue()))
sys.stdout.write("\n@@results@@" + json.dumps(results))
"""


def run_many(*commands, env=None):
    """[(returncode, stdout, stderr)] of each command (a list of a script and its arguments), all run in
    one process (MANY); a hang or a crash of that process fails the test."""
    import json
    p = subprocess.run([sys.executable, "-c", MANY], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                       input=json.dumps([list(map(str, c)) for c in commands]), env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise AssertionError(f"the commands' process exited {p.returncode}\n{p.stderr[-3000:]}")
    results = json.loads(p.stdout.rsplit("@@results@@", 1)[1])  # after anything written past sys.stdout
    return [subprocess.CompletedProcess(c, code, out, err) for c, (code, out, err) in zip(commands, results)]


@pytest.fixture(scope="session")
def char_data():
    """data/shakespeare_char, prepared from the local copy of tiny Shakespeare into the test data folder."""
    if not os.path.isfile(SHAKESPEARE):
        raise FileNotFoundError(f"tests need tiny Shakespeare at {SHAKESPEARE} (or set LENSGPT_SHAKESPEARE)")
    out = os.path.join(DATA, "shakespeare_char")
    run("data/shakespeare_char/prepare.py", "--input", SHAKESPEARE, f"--out_dir={out}")
    return out


def repo_files():
    """Untracked and ignored files in the repo, less Python's and pytest's own caches."""
    p = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        return None  # not a git checkout: nothing to compare
    return {line[3:] for line in p.stdout.splitlines()
            if line.startswith(("??", "!!")) and "__pycache__" not in line and ".pytest_cache" not in line}


def pytest_sessionstart(session):
    session.config.repo_files_before = repo_files()


def pytest_sessionfinish(session, exitstatus):
    """The suite writes only to temporary folders: a file it left in the repo fails the run."""
    shutil.rmtree(DATA, ignore_errors=True)
    before, after = session.config.repo_files_before, repo_files()
    if before is not None and after is not None and after - before:
        print(f"\nerror: the tests left files in the repo: {sorted(after - before)}")
        session.exitstatus = 1
