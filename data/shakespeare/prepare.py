"""Tiny Shakespeare in GPT-2 BPE tokens (tiktoken): train.bin / val.bin (uint16) and meta.pkl.
$ python data/shakespeare/prepare.py [--input PATH] [--out_dir DIR]
Offline, tiktoken reads the BPE files from TIKTOKEN_CACHE_DIR (README: Working offline)."""
import os
import sys

import tiktoken

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import shakespeare_text, write_meta, write_split  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
data, out = shakespeare_text(sys.argv[1:], here, __doc__.splitlines()[0])
n = len(data)
try:
    enc = tiktoken.get_encoding("gpt2")
except Exception as e:  # no network and no cached BPE files: say so in one line
    raise SystemExit(f"error: tiktoken cannot load the GPT-2 BPE files ({type(e).__name__}); without network, "
                     "set TIKTOKEN_CACHE_DIR to a folder that holds them (README: Working offline)")
train_ids = enc.encode_ordinary(data[:int(n * 0.9)])
val_ids = enc.encode_ordinary(data[int(n * 0.9):])
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
write_split(out, "train", train_ids, enc.n_vocab)
write_split(out, "val", val_ids, enc.n_vocab)
# vocab_size 50304 (GPT-2's 50257 padded for speed); the tokenizer is named so sample.py can decode
write_meta(out, {"vocab_size": 50304, "tokenizer": "gpt2", "dtype": "uint16"})
