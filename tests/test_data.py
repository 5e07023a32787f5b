"""Data preparation: the well-known token counts of tiny Shakespeare, and the FineWeb-Edu path on
a small local file."""
import json
import os
import pickle

import numpy as np

from conftest import SHAKESPEARE, run


def test_shakespeare_char_counts(char_data):
    with open(os.path.join(char_data, "meta.pkl"), "rb") as f:
        meta = pickle.load(f)
    assert meta["vocab_size"] == 65
    assert len(np.memmap(os.path.join(char_data, "train.bin"), dtype=np.uint16, mode="r")) == 1_003_854
    assert len(np.memmap(os.path.join(char_data, "val.bin"), dtype=np.uint16, mode="r")) == 111_540


def test_shakespeare_bpe_counts(tmp_path):
    d = str(tmp_path)
    p = run("data/shakespeare/prepare.py", "--input", SHAKESPEARE, f"--out_dir={d}")
    assert "train has 301,966 tokens" in p.stdout and "val has 36,059 tokens" in p.stdout
    assert len(np.memmap(os.path.join(d, "train.bin"), dtype=np.uint16, mode="r")) == 301_966
    assert len(np.memmap(os.path.join(d, "val.bin"), dtype=np.uint16, mode="r")) == 36_059


def test_missing_input_file_is_an_error(tmp_path):
    p = run("data/shakespeare_char/prepare.py", "--input", str(tmp_path / "nope.txt"), check=False)
    assert p.returncode != 0 and p.stderr.strip() == f"error: {tmp_path / 'nope.txt'} not found"


def test_fineweb_edu_on_a_local_file(tmp_path):
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    docs = [f"Document {i}: the quick brown fox jumps over the lazy dog. " * (i % 5 + 1) for i in range(200)]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    expected = np.concatenate([[enc.eot_token] + enc.encode_ordinary(d) for d in docs]).astype(np.uint16)
    p = run("data/fineweb_edu/prepare.py", f"--input={src}", "--max_tokens=5000", "--val_tokens=1000",
            "--num_proc=2", f"--out_dir={tmp_path}")
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    assert len(val) + len(train) == 5000 and len(val) >= 1000
    assert np.array_equal(np.concatenate([val, train]), expected[:5000])  # document order kept
    assert "tokens" in p.stdout and not os.path.exists(tmp_path / "train.bin.tmp")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    p = run("data/fineweb_edu/prepare.py", f"--input={bad}", f"--out_dir={tmp_path}", check=False)
    assert p.returncode != 0 and "line 1 is not a JSON object with a 'text' field" in p.stderr


def test_bpe_without_tokenizer_files_is_one_line(tmp_path):
    """Offline with no cached BPE files: one line that says what to do, not tiktoken's tracebacks."""
    p = run("data/shakespeare/prepare.py", "--input", SHAKESPEARE, f"--out_dir={tmp_path}", check=False,
            env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"), "HTTPS_PROXY": "http://127.0.0.1:9",
                 "https_proxy": "http://127.0.0.1:9"})
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error: tiktoken cannot load the GPT-2 BPE files")
