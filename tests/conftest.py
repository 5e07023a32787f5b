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


# ---------------------------------------------------------------------- the data some tests need
# Tiny Shakespeare and GPT-2's BPE files, found in this order: the file or folder an environment
# variable names (LENSGPT_SHAKESPEARE, TIKTOKEN_CACHE_DIR: offline CI); else a user cache (tiny
# Shakespeare in $XDG_CACHE_HOME/lensgpt, default ~/.cache/lensgpt; the BPE files in tiktoken's own
# cache); else a download into that cache, once; else, offline, the tests that need them are skipped
# with one line that names the variable. A variable that is set but names no data fails those tests
# instead: a CI that provides its data must not turn green by skipping.
FETCH_TIMEOUT = 10  # seconds to connect or to wait for a read: offline, a download fails in this time


def shakespeare_cache():
    """Where the tests keep the tiny Shakespeare they download."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "lensgpt", "tinyshakespeare", "input.txt")


def fetch_shakespeare(url=None):
    """The path of tiny Shakespeare: LENSGPT_SHAKESPEARE, else the cache, downloaded there from url
    (default: the prepare scripts' URL) if missing. Skips or fails the calling test as said above."""
    path = os.environ.get("LENSGPT_SHAKESPEARE")
    if path:
        if not os.path.isfile(path):
            pytest.fail(f"LENSGPT_SHAKESPEARE={path} is not a file (it should name tiny Shakespeare's input.txt)",
                        pytrace=False)
        return path
    path, failed = shakespeare_cache(), None
    if not os.path.isfile(path):
        common = load_data_common()
        try:
            common.download(url or common.SHAKESPEARE_URL, path, timeout=FETCH_TIMEOUT)
        except OSError as e:
            failed = one_line(e)
    if failed:  # (outside the except: pytest would print the exceptions it chains to)
        pytest.skip(f"needs tiny Shakespeare: not in {path} and the download failed ({failed}); "
                    "set LENSGPT_SHAKESPEARE to a local copy of input.txt")
    return path


def load_gpt2_bpe():
    """Makes tiktoken's GPT-2 encoding loadable by this process and by the scripts it starts: from
    TIKTOKEN_CACHE_DIR or tiktoken's own cache, else downloaded into it by tiktoken. Skips or fails the
    calling test as said above."""
    import tiktoken
    import tiktoken.load
    where = os.environ.get("TIKTOKEN_CACHE_DIR")
    # tiktoken downloads with no timeout, so offline it may hang: look in its cache with downloads
    # disabled first, then check the server answers within FETCH_TIMEOUT before letting it download
    read_file, missing = tiktoken.load.read_file, []

    def no_download(url):
        missing.append(url)
        raise OSError(f"{url} is not cached")
    tiktoken.load.read_file = no_download
    try:
        tiktoken.get_encoding("gpt2")
        return
    except OSError:
        pass
    finally:
        tiktoken.load.read_file = read_file
    try:
        import urllib.request
        if missing:  # (else the cache itself failed: tiktoken's own error says how)
            urllib.request.urlopen(urllib.request.Request(missing[0], method="HEAD"), timeout=FETCH_TIMEOUT).close()
        tiktoken.get_encoding("gpt2")
        return
    except Exception as e:  # urllib's and requests' many errors: one line, as a skip or a failure
        failed = one_line(e)
    cache = (f"TIKTOKEN_CACHE_DIR={where}" if where else "tiktoken's cache " +
             (os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "data-gym-cache")))
    msg = (f"needs GPT-2's BPE files: not in {cache} and the download failed ({failed}); "
           "set TIKTOKEN_CACHE_DIR to a folder that holds them")
    if where:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def one_line(e):
    """An exception as one short line: urllib's URLError says its cause in .reason."""
    e = e.reason if isinstance(getattr(e, "reason", None), BaseException) else e
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def load_data_common():
    """data/common.py, the prepare scripts' helpers, loaded by path (a folder named `data` is too
    common a package name to import by)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("lensgpt_data_common", os.path.join(ROOT, "data", "common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shakespeare():
    """The path of tiny Shakespeare's input.txt (see fetch_shakespeare)."""
    return fetch_shakespeare()


@pytest.fixture(scope="session")
def gpt2_bpe():
    """GPT-2's BPE files, where tiktoken finds them (see load_gpt2_bpe)."""
    load_gpt2_bpe()


@pytest.fixture(scope="session")
def char_data(shakespeare):
    """data/shakespeare_char, prepared from tiny Shakespeare into the test data folder."""
    out = os.path.join(DATA, "shakespeare_char")
    run("data/shakespeare_char/prepare.py", "--input", shakespeare, f"--out_dir={out}")
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
