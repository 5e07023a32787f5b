"""Character-level tiny Shakespeare: train.bin / val.bin (uint16) and meta.pkl (the vocabulary).
$ python data/shakespeare_char/prepare.py [--input PATH] [--out_dir DIR]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import shakespeare_text, write_meta, write_split  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
data, out = shakespeare_text(sys.argv[1:], here, __doc__.splitlines()[0])
print(f"length of dataset in characters: {len(data):,}")
chars = sorted(set(data))
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}
print(f"vocab size: {len(chars)}")
n = len(data)
train_ids = [stoi[c] for c in data[:int(n * 0.9)]]
val_ids = [stoi[c] for c in data[int(n * 0.9):]]
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
write_split(out, "train", train_ids, len(chars))
write_split(out, "val", val_ids, len(chars))
write_meta(out, {"vocab_size": len(chars), "itos": itos, "stoi": stoi, "dtype": "uint16"})
