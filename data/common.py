"""Shared by the prepare scripts: fetch the tiny Shakespeare text, write token files."""
import argparse
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
        print(f"downloading {SHAKESPEARE_URL}")
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=60) as r:
                data = r.read()
        except OSError as e:
            raise SystemExit(f"error: cannot download tiny Shakespeare ({e}); pass a local copy with --input PATH")
        with open(path, "wb") as f:
            f.write(data)
    with open(path, encoding="utf-8") as f:
        return f.read(), args.out_dir


def write_split(here, name, ids, vocab_size):
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    np.asarray(ids, dtype=dtype).tofile(os.path.join(here, f"{name}.bin"))


def write_meta(here, meta):
    with open(os.path.join(here, "meta.pkl"), "wb") as f:
        pickle.dump(meta, f)
