"""
Multi-query associative recall (MQAR, from the Zoology study of efficient language models): each
sequence lists key-value pairs, then asks for the values of its keys. Only a model that looks the
pairs up in its context can answer; without attention a model is at chance, 1 / (number of values),
and one that only knows which values are in the sequence gets 1 / num_pairs.

    k1 v1 k2 v2 ... kP vP   k3 v3 k1 v1 0 k3 v3 0 0 k2 v2 ...   (queries at random places, 0 is filler)
                                ^^    ^^      ^^      ^^         the answers: the only loss targets

Keys are 1 .. (vocab_size - 1) // 2, values the rest (disjoint ranges); within a sequence keys and
values are distinct; queried keys are drawn with replacement (--distinct_queries=1: each at most
once, as Zoology; then the last queries can be answered by elimination). Writes train.bin /
val.bin (the tokens, sequences back to back), train_mask.bin / val_mask.bin (uint8, 1 at an answer
token: every other target is ignored by the loss), and meta.pkl with seq_len, so the loader starts
every window at a sequence boundary.

$ python data/recall/prepare.py                      # the set config/recall.py trains on
$ python data/recall/prepare.py --vocab_size=8193 --num_pairs=16 --num_queries=16 --seq_len=128 --out_dir=data/recall16
"""
import argparse
import os
import pickle

import numpy as np

ap = argparse.ArgumentParser(description="prepare a multi-query associative recall (MQAR) dataset")
ap.add_argument("--vocab_size", type=int, default=65, help="filler token 0, then keys, then values")
ap.add_argument("--num_pairs", type=int, default=4, help="key-value pairs per sequence")
ap.add_argument("--num_queries", type=int, default=12, help="keys asked for per sequence")
ap.add_argument("--distinct_queries", type=int, default=0, help="1: each key asked at most once (num_queries <= num_pairs); 0: keys drawn with replacement")
ap.add_argument("--seq_len", type=int, default=32, help="tokens per sequence (use it as block_size)")
ap.add_argument("--train_seqs", type=int, default=100_000)
ap.add_argument("--val_seqs", type=int, default=2_000)
ap.add_argument("--seed", type=int, default=1337)
ap.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
args = ap.parse_args()
n_keys = (args.vocab_size - 1) // 2
n_values = args.vocab_size - 1 - n_keys
P, Q, T = args.num_pairs, args.num_queries, args.seq_len
slots = (T - 2 * P) // 2  # two-token places for the queries after the pairs
problems = [
    (args.vocab_size > 2**16, f"--vocab_size={args.vocab_size} exceeds the uint16 tokens (65536)"),
    (P < 1 or P > min(n_keys, n_values), f"--num_pairs={P} must be 1 .. {min(n_keys, n_values)} "
                                         f"(distinct keys and values from a vocabulary of {args.vocab_size})"),
    (Q < 1 or (args.distinct_queries and Q > P), f"--num_queries={Q} must be 1 .. num_pairs={P} with --distinct_queries=1"),
    (Q > slots, f"--seq_len={T} is too short for {P} pairs and {Q} queries (needs {2 * P + 2 * Q})"),
    (min(args.train_seqs, args.val_seqs) < 1, "--train_seqs and --val_seqs must be >= 1"),
]
for bad, msg in problems:
    if bad:
        raise SystemExit(f"error: {msg}")


def sequences(n, rng):
    """n MQAR sequences (n, T) and their answer masks."""
    keys = 1 + np.argsort(rng.random((n, n_keys)), axis=1)[:, :P]  # distinct within a sequence
    values = 1 + n_keys + np.argsort(rng.random((n, n_values)), axis=1)[:, :P]
    tokens = np.zeros((n, T), dtype=np.int64)
    tokens[:, 0:2 * P:2], tokens[:, 1:2 * P:2] = keys, values
    if args.distinct_queries:
        asked = np.argsort(rng.random((n, P)), axis=1)[:, :Q]  # which pairs, in random order
    else:
        asked = rng.integers(P, size=(n, Q))
    place = np.sort(np.argsort(rng.random((n, slots)), axis=1)[:, :Q], axis=1)  # where, in order
    pos = 2 * P + 2 * place
    rows = np.arange(n)[:, None]
    tokens[rows, pos] = np.take_along_axis(keys, asked, axis=1)
    tokens[rows, pos + 1] = np.take_along_axis(values, asked, axis=1)
    mask = np.zeros((n, T), dtype=np.uint8)
    mask[rows, pos + 1] = 1
    return tokens, mask


os.makedirs(args.out_dir, exist_ok=True)
rng = np.random.default_rng(args.seed)
for split, n in (("train", args.train_seqs), ("val", args.val_seqs)):
    tokens, mask = sequences(n, rng)
    # one filler token at the end, so a window of seq_len + 1 tokens fits the last sequence too
    np.append(tokens.ravel(), 0).astype(np.uint16).tofile(os.path.join(args.out_dir, f"{split}.bin"))
    np.append(mask.ravel(), 0).astype(np.uint8).tofile(os.path.join(args.out_dir, f"{split}_mask.bin"))
    print(f"{split}: {n:,} sequences of {T} tokens, {n * Q:,} answers")
meta = {"vocab_size": args.vocab_size, "dtype": "uint16", "seq_len": T, "mask": True,
        "num_pairs": P, "num_queries": Q, "num_keys": n_keys, "num_values": n_values,
        "chance_accuracy": 1 / n_values, "bag_accuracy": 1 / P, "seed": args.seed}
with open(os.path.join(args.out_dir, "meta.pkl"), "wb") as f:
    pickle.dump(meta, f)
print(f"{n_keys} keys, {n_values} values: chance accuracy {1 / n_values:.4f}, knowing only which values are in the "
      f"sequence {1 / P:.4f}; wrote {args.out_dir}")
