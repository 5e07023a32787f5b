"""The KV cache keeps exactly what each mechanism needs and decodes exactly; pruning; sample.py;
kv_cache_bench.py."""
import json

import pytest
import torch

from conftest import TINY, run
from model import KVCache
from test_model import CONFIGS, tiny


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decoding_equals_recomputation(name):
    model = tiny(**CONFIGS[name]).eval()
    idx = torch.randint(0, 61, (2, 32))
    full, _ = model(idx, targets=idx)  # logits at every position, no cache
    cache = KVCache(model, 2)
    steps = [model(idx[:, :9], cache=cache)[0]]  # prefill 9, then one token at a time
    steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(9, 32)]
    for t, logits in zip(range(8, 32), steps):
        assert torch.allclose(logits[:, -1], full[:, t], atol=1e-5, rtol=0), t
    # a chunk after a cached prefix (mask aligned to the end) is exact too
    cache = KVCache(model, 2)
    model(idx[:, :10], cache=cache)
    chunk, _ = model(idx[:, 10:20], cache=cache)
    assert torch.allclose(chunk[:, -1], full[:, 19], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["baseline", "full", "gqa", "attn_only"])
def test_greedy_generation_identical_and_past_block_size(name):
    model = tiny(**CONFIGS[name]).eval()
    prompt = torch.randint(0, 61, (2, 5))
    # 5 + 60 tokens: well past block_size = 32, where the context is cropped
    a = model.generate(prompt, 60, temperature=0, kv_cache=True)
    b = model.generate(prompt, 60, temperature=0, kv_cache=False)
    assert a.shape == (2, 65) and torch.equal(a, b)
    skip = (1,)
    assert torch.equal(model.generate(prompt, 40, temperature=0, attn_skip_layers=skip),
                       model.generate(prompt, 40, temperature=0, kv_cache=False, attn_skip_layers=skip))


@pytest.mark.parametrize("name", CONFIGS)
def test_cache_holds_exactly_the_analytic_bytes(name):
    model = tiny(**CONFIGS[name]).eval()
    for skip in ((), (0,), (0, 1)):
        cache = KVCache(model, 3, attn_skip_layers=skip)
        model(torch.randint(0, 61, (3, 7)), cache=cache)
        assert cache.nbytes() == model.kv_cache_bytes_per_token(torch.float32, skip) * 3 * 32
    assert model.kv_cache_bytes_per_token(torch.float32, (0, 1)) == 0


def test_cache_size_ratios():
    per_token = {n: tiny(**CONFIGS[n]).kv_cache_bytes_per_token() for n in ("baseline", "reciprocity", "discoverability",
                                                                          "gqa", "mqa")}
    assert per_token["reciprocity"] / per_token["baseline"] == 1.5
    assert per_token["discoverability"] == per_token["baseline"]
    assert per_token["gqa"] / per_token["baseline"] == 2 / 4
    assert per_token["mqa"] / per_token["baseline"] == 1 / 4  # 1 / n_head
    base = tiny()
    assert base.kv_cache_bytes_per_token(torch.float32, (1,)) / per_token["baseline"] == 1 / 2  # (L - k) / L
    assert base.kv_cache_bytes_per_token(torch.bfloat16) == per_token["baseline"] // 2


def test_pruned_attention_is_gone():
    model = tiny(**CONFIGS["full"]).eval()
    idx = torch.randint(0, 61, (1, 16))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % 61
    every = (0, 1)
    a, _ = model(idx, targets=idx, attn_skip_layers=every)
    b, _ = model(changed, targets=changed, attn_skip_layers=every)
    assert torch.equal(a[0, 1:], b[0, 1:])  # with no attention, no position sees another
    # a pruned block computes x + (1 - g) m, where the MLP's context (from attention) is zero
    block, x = model.transformer.h[0], torch.randn(1, 4, 32)
    g, alpha, mlp = block.route_gate(), block.mlp.alpha_raw.clamp(0, 1), block.mlp
    h = torch.nn.functional.gelu(mlp.c_fc(block.ln_2(x)), approximate="tanh")
    expected = x + (1 - g) * mlp.c_proj((1 - alpha) * h)
    assert torch.allclose(block(x, skip_attn=True), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["route_gate", "full", "conductor"])
def test_inference_path_equals_training_path(name):
    """Without autograd the MLP scales activations instead of folding into weights: same function."""
    model = tiny(**CONFIGS[name]).eval()
    idx = torch.randint(0, 61, (2, 32))
    train_path, _ = model(idx, targets=idx)
    with torch.no_grad():
        infer_path, _ = model(idx, targets=idx)
    assert torch.allclose(train_path, infer_path, atol=1e-5, rtol=0)


def test_forward_past_block_size_is_an_error():
    model = tiny()
    with pytest.raises(ValueError, match="cannot forward 33 positions"):
        model(torch.zeros(1, 33, dtype=torch.long))


# ---------------------------------------------------------------------- sample.py
@pytest.fixture(scope="module")
def trained(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    run("train.py", "config/ablation_full.py", *TINY, "--max_iters=10", "--eval_interval=10", f"--out_dir={out}")
    return out


def test_sample_streams_and_reports_speed(trained):
    p = run("sample.py", f"--out_dir={trained}", "--num_samples=2", "--max_new_tokens=20", "--start=ROMEO:",
            "--device=cpu")
    assert p.stdout.count("ROMEO:") == 2 and p.stdout.count("tokens/s") == 2
    p2 = run("sample.py", f"--out_dir={trained}", "--num_samples=1", "--max_new_tokens=20", "--start=ROMEO:",
             "--kv_cache=False", "--temperature=0")
    p3 = run("sample.py", f"--out_dir={trained}", "--num_samples=1", "--max_new_tokens=20", "--start=ROMEO:",
             "--temperature=0")
    assert p2.stdout.split("---")[0] == p3.stdout.split("---")[0]  # greedy: same text with or without cache


def test_sample_errors_and_prompts(trained, tmp_path):
    p = run("sample.py", f"--out_dir={trained}", "--start=caf\u00e9", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "error: the prompt has characters this model's vocabulary lacks: '\u00e9'"
    p = run("sample.py", f"--out_dir={trained}", "--compile=True", check=False)
    assert p.returncode == 1 and p.stderr.strip().startswith("error: compile=True works for plain attention only")
    p = run("sample.py", f"--out_dir={tmp_path}", check=False)
    assert p.returncode == 1 and p.stderr.strip() == f"error: no checkpoint at {tmp_path}/ckpt.pt"
    long_prompt = tmp_path / "prompt.txt"
    long_prompt.write_text("To be or not to be " * 10)
    p = run("sample.py", f"--out_dir={trained}", f"--start=FILE:{long_prompt}", "--num_samples=1", "--max_new_tokens=5")
    assert "warning: the prompt has 190 tokens; keeping the last 32 (block_size)" in p.stderr
    p = run("sample.py", f"--out_dir={trained}", "--start=", "--num_samples=1", "--max_new_tokens=5")
    assert p.stdout.startswith("\n")


# ---------------------------------------------------------------------- kv_cache_bench.py
def test_kv_cache_bench(trained, tmp_path):
    out = tmp_path / "kv.json"
    png = tmp_path / "curve.png"
    p = run("kv_cache_bench.py", "--configs=baseline,reciprocity,gqa,mqa,full", "--n_layer=2", "--n_embd=32",
            "--n_head=4", "--contexts=16,64", "--decode_tokens=2", f"--json={out}", f"--ckpt={trained}/ckpt.pt",
            "--eval_batches=2", f"--plot={png}")
    data = json.loads(out.read_text())
    fields = {"config", "context", "kv_bytes_per_token", "kv_bytes_per_token_measured", "decode_ms_per_token_cached",
              "decode_ms_per_token_recompute", "peak_bytes"}
    assert len(data["records"]) == 10 and all(fields <= set(r) for r in data["records"])
    for r in data["records"]:
        assert r["kv_bytes_per_token_measured"] == r["kv_bytes_per_token"]
    per = {r["config"]: r["kv_bytes_per_token"] for r in data["records"]}
    assert per["reciprocity"] == 1.5 * per["baseline"] and per["mqa"] == per["baseline"] / 4
    curve = [r for r in data["pruning"] if r["ranking"] == "route_gate"]
    assert [r["layers_pruned"] for r in curve] == [0, 1, 2]
    assert [r["kv_bytes_per_token"] for r in curve] == [per["full"], per["full"] / 2, 0]
    assert {r["ranking"] for r in data["pruning"]} == {"route_gate", "contribution"}
    assert png.stat().st_size > 1000 and "with attention removed from 0, 1, 2, ... layers" in p.stdout
