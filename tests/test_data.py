"""Data preparation: the well-known token counts of tiny Shakespeare, the FineWeb-Edu path on a small
local file, and how the tests find their data (conftest: an environment variable, a cache, a download,
else a skip)."""
import json
import os
import pickle
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import fetch_shakespeare, load_gpt2_bpe, run, shakespeare_cache


def test_shakespeare_char_counts(char_data):
    with open(os.path.join(char_data, "meta.pkl"), "rb") as f:
        meta = pickle.load(f)
    assert meta["vocab_size"] == 65
    assert len(np.memmap(os.path.join(char_data, "train.bin"), dtype=np.uint16, mode="r")) == 1_003_854
    assert len(np.memmap(os.path.join(char_data, "val.bin"), dtype=np.uint16, mode="r")) == 111_540


def test_shakespeare_bpe_counts(shakespeare, gpt2_bpe, tmp_path):
    d = str(tmp_path)
    p = run("data/shakespeare/prepare.py", "--input", shakespeare, f"--out_dir={d}")
    assert "train has 301,966 tokens" in p.stdout and "val has 36,059 tokens" in p.stdout
    assert len(np.memmap(os.path.join(d, "train.bin"), dtype=np.uint16, mode="r")) == 301_966
    assert len(np.memmap(os.path.join(d, "val.bin"), dtype=np.uint16, mode="r")) == 36_059


def test_missing_input_file_is_an_error(tmp_path):
    p = run("data/shakespeare_char/prepare.py", "--input", str(tmp_path / "nope.txt"), check=False)
    assert p.returncode != 0 and p.stderr.strip() == f"error: {tmp_path / 'nope.txt'} not found"


def test_fineweb_edu_on_a_local_file(gpt2_bpe, tmp_path):
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
    text = tmp_path / "input.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50)
    p = run("data/shakespeare/prepare.py", "--input", str(text), f"--out_dir={tmp_path}", check=False,
            env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"), "HTTPS_PROXY": "http://127.0.0.1:9",
                 "https_proxy": "http://127.0.0.1:9"})
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error: tiktoken cannot load the GPT-2 BPE files")


# ---------------------------------------------------------------------- how the tests find their data
def offline(monkeypatch):
    """No name resolves, as on a machine without network (a proxy's name neither)."""
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)


def test_tiny_shakespeare_is_downloaded_once_into_the_user_cache(tmp_path, monkeypatch):
    """Without LENSGPT_SHAKESPEARE the tests download tiny Shakespeare with the prepare scripts' code
    into $XDG_CACHE_HOME/lensgpt (here from a local server), whole, and read it from there next time."""
    (tmp_path / "www").mkdir()
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 1000
    (tmp_path / "www" / "input.txt").write_text(text)
    served = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            served.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(tmp_path / "www")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    monkeypatch.delenv("LENSGPT_SHAKESPEARE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "*")  # a user's proxy must not stand between the test and its local server
    monkeypatch.setenv("NO_PROXY", "*")
    cached = tmp_path / "cache" / "lensgpt" / "tinyshakespeare" / "input.txt"
    try:
        path = fetch_shakespeare(url)
    except pytest.skip.Exception as e:  # the download from the local server failed: no reason to skip
        path = f"not downloaded: {e}"
    finally:
        server.shutdown()
        server.server_close()
    assert path == str(cached)
    assert cached.read_text() == text and os.listdir(cached.parent) == ["input.txt"]  # no part file left
    assert fetch_shakespeare(url) == str(cached) and served == ["/input.txt"]  # the server is gone: from the cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert shakespeare_cache() == str(tmp_path / "home" / ".cache" / "lensgpt" / "tinyshakespeare" / "input.txt")


def test_offline_without_data_skips_with_one_line(tmp_path, monkeypatch):
    """Offline, with neither variable set and empty caches, a test that needs data is skipped with one
    line that names the variable to set; a variable that names nothing fails it (CI must not go green)."""
    offline(monkeypatch)
    monkeypatch.delenv("LENSGPT_SHAKESPEARE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(pytest.skip.Exception) as skip:
        fetch_shakespeare()
    assert "\n" not in str(skip.value) and str(skip.value).startswith("needs tiny Shakespeare: not in ")
    assert str(skip.value).endswith("; set LENSGPT_SHAKESPEARE to a local copy of input.txt")
    assert not (tmp_path / "cache" / "lensgpt" / "tinyshakespeare" / "input.txt").exists()

    import tempfile

    import tiktoken.registry
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tiktoken's own cache: $TMPDIR/data-gym-cache
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # not the encoding this process may have loaded
    with pytest.raises(pytest.skip.Exception) as skip:
        load_gpt2_bpe()
    assert "\n" not in str(skip.value)
    cache = tmp_path / "data-gym-cache"
    assert str(skip.value).startswith(f"needs GPT-2's BPE files: not in tiktoken's cache {cache} ")
    assert str(skip.value).endswith("; set TIKTOKEN_CACHE_DIR to a folder that holds them")

    monkeypatch.setenv("LENSGPT_SHAKESPEARE", str(tmp_path / "nope.txt"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(pytest.fail.Exception) as fail:
        fetch_shakespeare()
    assert str(fail.value) == (f"LENSGPT_SHAKESPEARE={tmp_path / 'nope.txt'} is not a file "
                               "(it should name tiny Shakespeare's input.txt)")
    with pytest.raises(pytest.fail.Exception) as fail:
        load_gpt2_bpe()
    assert str(fail.value).startswith(f"needs GPT-2's BPE files: not in TIKTOKEN_CACHE_DIR={tmp_path / 'empty'} ")


def test_cached_bpe_files_need_no_network(gpt2_bpe, monkeypatch):
    """Once the BPE files are in the cache, the tests load them offline."""
    import tiktoken.registry
    offline(monkeypatch)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    load_gpt2_bpe()
    assert tiktoken.registry.ENCODINGS["gpt2"].n_vocab == 50257
