"""Shared by the prepare scripts (and the tests): fetch the tiny Shakespeare text, write token files."""
import argparse
import http.client
import os
import pickle
import urllib.request

import numpy as np

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def shakespeare_text(argv, here, description):
    """(the tiny Shakespeare text, the output folder): --input PATH, else here/input.txt, else a
    download to there; --out_dir, else here."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--input", help="a local copy of input.txt (no download)")
    ap.add_argument("--out_dir", default=here, help="where train.bin, val.bin and meta.pkl go (default: beside this script)")
    args = ap.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    path = args.input or os.path.join(here, "input.txt")
    if args.input and not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found")
    if not os.path.isfile(path):
        try:
            download(SHAKESPEARE_URL, path)
        except OSError as e:
            raise SystemExit(f"error: cannot download tiny Shakespeare ({e}); pass a local copy with --input PATH")
    with open(path, encoding="utf-8") as f:
        return f.read(), args.out_dir


def download(url, path, timeout=60):
    """Fetch url into path (used by the prepare scripts and by the tests' data cache). Written to a
    temporary file and renamed when complete, so an interrupted download never leaves a part that a
    later run would take for the file. `timeout` bounds the connection and each read, so an offline
    machine fails in that time instead of hanging. Any failure is an OSError."""
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except http.client.HTTPException as e:  # a connection cut mid-body: not an OSError
        raise OSError(f"{type(e).__name__}: {e}") from e
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_split(here, name, ids, vocab_size):
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    np.asarray(ids, dtype=dtype).tofile(os.path.join(here, f"{name}.bin"))


def write_meta(here, meta):
    with open(os.path.join(here, "meta.pkl"), "wb") as f:
        pickle.dump(meta, f)
