"""
FineWeb-Edu in GPT-2 BPE tokens, for GPU-scale runs (config/gpt2_124m.py). Documents are streamed,
tokenized in parallel (each prefixed with <|endoftext|>), and written to val.bin (the first
--val_tokens tokens) and train.bin, stopping at --max_tokens.

$ python data/fineweb_edu/prepare.py --max_tokens=1000000000        # streams HuggingFaceFW/fineweb-edu (pip install datasets)
$ python data/fineweb_edu/prepare.py --input=docs.jsonl             # a local JSON-lines file with a "text" field
"""
import argparse
import json
import os
import pickle
import sys
from multiprocessing import Pool

import numpy as np
import tiktoken
from tqdm import tqdm

_enc = None


def tokenize(text):
    global _enc
    if _enc is None:  # one tokenizer per worker process
        _enc = tiktoken.get_encoding("gpt2")
    return np.array([_enc.eot_token] + _enc.encode_ordinary(text), dtype=np.uint16)


def hf_documents(name):
    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit("error: streaming FineWeb-Edu needs `pip install datasets` (or pass --input FILE.jsonl)")
    for doc in load_dataset("HuggingFaceFW/fineweb-edu", name=name, split="train", streaming=True):
        yield doc["text"]


def local_documents(path):
    """The texts of a JSON-lines file, read and checked up front (a local file is small)."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found")
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (ValueError, KeyError, TypeError):
                    raise SystemExit(f"error: {path} line {n} is not a JSON object with a 'text' field")
    return texts


def write_tokens(docs, out_dir, max_tokens, val_tokens, num_proc):
    """Tokenize docs in parallel; the first val_tokens go to val.bin, the rest to train.bin, up to
    max_tokens in all. Returns (val, train) token counts."""
    counts = {"val": 0, "train": 0}
    files = {s: open(os.path.join(out_dir, f"{s}.bin.tmp"), "wb") for s in counts}
    with Pool(num_proc) as pool, tqdm(total=max_tokens, unit="tok", unit_scale=True, desc="tokenizing", disable=None) as bar:
        for toks in pool.imap(tokenize, docs, chunksize=16):
            room = max_tokens - counts["val"] - counts["train"]
            toks = toks[:room]
            split = "val" if counts["val"] < val_tokens else "train"
            files[split].write(toks.tobytes())
            counts[split] += len(toks)
            bar.update(len(toks))
            if len(toks) == room:
                break
    for s, f in files.items():  # renamed only when complete: an interrupted run leaves no half file
        f.close()
        os.replace(os.path.join(out_dir, f"{s}.bin.tmp"), os.path.join(out_dir, f"{s}.bin"))
    with open(os.path.join(out_dir, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": 50304, "tokenizer": "gpt2", "dtype": "uint16"}, f)
    return counts["val"], counts["train"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--name", default="sample-10BT", help="the Hugging Face dataset configuration")
    ap.add_argument("--input", help="a local JSON-lines file instead of the Hugging Face stream")
    ap.add_argument("--max_tokens", type=int, default=10**9)
    ap.add_argument("--val_tokens", type=int, default=10**7)
    ap.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    if args.val_tokens >= args.max_tokens:
        sys.exit("error: --val_tokens must be smaller than --max_tokens")
    docs = local_documents(args.input) if args.input else hf_documents(args.name)
    try:
        val, train = write_tokens(docs, args.out_dir, args.max_tokens, args.val_tokens, args.num_proc)
    except Exception as e:  # the stream fails in many ways without a network; say it in one line
        if args.input:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        sys.exit(f"error: cannot stream HuggingFaceFW/fineweb-edu ({type(e).__name__}: {first}); without network, "
                 "pass a local JSON-lines file with --input")
    print(f"val has {val:,} tokens, train has {train:,} tokens, in {args.out_dir}")
    if train == 0:
        sys.exit("error: no training tokens were written: the input is smaller than --val_tokens")
