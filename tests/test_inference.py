"""The KV cache keeps exactly what each mechanism needs and decodes exactly; pruning; sample.py;
kv_cache_bench.py."""
import json

import pytest
import torch

from conftest import TINY, run, run_many
from model import GPT, KVCache, cache_forms
from test_model import CONFIGS, tiny


FORMS = ("kv", "input")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("form", FORMS)
def test_cached_decoding_equals_recomputation(name, form):
    """Prefill, then one token at a time, then a chunk after a cached prefix: every logit equals a
    full forward pass to 1e-5 (float32), with and without a pruned layer."""
    model = tiny(**CONFIGS[name]).eval()
    if form not in cache_forms(model.config):
        with pytest.raises(ValueError, match="the input form cannot decode reciprocity with kv_share > 1"):
            KVCache(model, 2, form=form)
        return
    idx = torch.randint(0, 61, (2, 32))
    for skip in ((), (0,), (1,)):  # with CLA, (0,) prunes the layer whose K and V layer 1 still uses
        full, _ = model(idx, targets=idx, attn_skip_layers=skip)  # logits at every position, no cache
        cache = KVCache(model, 2, attn_skip_layers=skip, form=form)
        steps = [model(idx[:, :9], cache=cache)[0]]
        steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(9, 32)]
        for t, logits in zip(range(8, 32), steps):
            assert torch.allclose(logits[:, -1], full[:, t], atol=1e-5, rtol=0), (skip, t)
        cache.reset()
        model(idx[:, :10], cache=cache)
        chunk, _ = model(idx[:, 10:20], cache=cache)
        assert torch.allclose(chunk[:, -1], full[:, 19], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_generation_identical_and_past_block_size(name):
    model = tiny(**CONFIGS[name]).eval()
    prompt = torch.randint(0, 61, (2, 5))
    # 5 + 60 tokens: well past block_size = 32, where the context is cropped and prefilled again
    ref = model.generate(prompt, 60, temperature=0, kv_cache=False)
    assert ref.shape == (2, 65)
    forms = cache_forms(model.config)
    for form in (True,) + forms:
        assert torch.equal(model.generate(prompt, 60, temperature=0, kv_cache=form), ref), form
    skip = (1,)
    ref = model.generate(prompt, 40, temperature=0, kv_cache=False, attn_skip_layers=skip)
    for form in forms:
        assert torch.equal(model.generate(prompt, 40, temperature=0, kv_cache=form, attn_skip_layers=skip), ref)


@pytest.mark.parametrize("name", CONFIGS)
def test_cache_holds_exactly_the_analytic_bytes(name):
    model = tiny(**CONFIGS[name]).eval()
    for form in cache_forms(model.config):
        for skip in ((), (0,), (1,), (0, 1)):
            cache = KVCache(model, 3, attn_skip_layers=skip, form=form)
            model(torch.randint(0, 61, (3, 7)), cache=cache)
            assert cache.nbytes() == model.kv_cache_bytes_per_token(torch.float32, skip, form) * 3 * 32
        assert model.kv_cache_bytes_per_token(torch.float32, (0, 1), form) == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the cache keeps what autocast computes in
        cache = KVCache(model, 1, form="kv")
    assert cache.nbytes() == model.kv_cache_bytes_per_token(torch.bfloat16) * 32


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
    # the input form: n_embd values per layer for every config; "auto" takes the smaller form
    for n, ratio in (("baseline", 1 / 2), ("reciprocity", 1 / 3), ("discoverability", 1 / 2), ("full", 1 / 3)):
        m = tiny(**CONFIGS[n])
        assert m.kv_cache_bytes_per_token(form="input") / m.kv_cache_bytes_per_token() == ratio
        assert KVCache(m, 1).form == "input"
    assert KVCache(tiny(**CONFIGS["gqa"]), 1).form == "kv"  # 2 of 4 K/V heads: a tie, K/V decodes cheaper
    assert KVCache(tiny(**CONFIGS["mqa"]), 1).form == "kv"
    assert KVCache(tiny(**CONFIGS["full_mqa"]), 1).form == "input"  # Q for every head outweighs it
    # CLA: K and V for half the layers; a group's K/V stay while any of its layers attends
    cla = tiny(**CONFIGS["cla"])
    assert cla.kv_cache_bytes_per_token() / per_token["baseline"] == 1 / 2
    assert cla.kv_cache_bytes_per_token(form="input") / per_token["baseline"] == 1 / 4
    assert cla.kv_cache_bytes_per_token(torch.float32, (0,)) == cla.kv_cache_bytes_per_token()
    assert cla.kv_cache_bytes_per_token(torch.float32, (0, 1)) == 0
    assert KVCache(cla, 1).form == "input" and KVCache(tiny(**CONFIGS["cla_lens"]), 1).form == "kv"


def test_cache_form_errors():
    model = tiny()
    with pytest.raises(ValueError, match="unknown KV cache form 'latent'"):
        KVCache(model, 1, form="latent")
    with pytest.raises(ValueError, match="unknown KV cache form"):
        model.kv_cache_bytes_per_token(form="kq")
    with pytest.raises(ValueError, match=r"max_len=33 must be in \[1, block_size=32\]"):
        KVCache(model, 1, max_len=33)
    cache = KVCache(model, 1, max_len=8)
    model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cannot add 1 positions to a KVCache holding 8 of 8; reset"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("name,width", [("baseline", 8), ("discoverability", 8), ("reciprocity", 16),
                                        ("lens", 16), ("full_mqa", 16)])
def test_lens_attention_widths(name, width, monkeypatch):
    """Discoverability alone is attention at width D (an offset query); reciprocity at exactly 2D:
    no ones column, no padding to a multiple of 8. (D = 8 here.)"""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def record(q, k, v, **kw):
        seen.append((q.size(-1), k.size(-1)))
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record)
    model = tiny(**CONFIGS[name])
    idx = torch.randint(0, 61, (2, 16))
    model(idx, targets=idx)[1].backward()
    assert seen and set(seen) == {(width, width)}


def test_input_form_matches_transformers_generation(tmp_path):
    """OpenAI's GPT-2 layout (random weights, saved locally), decoded from a cache of layer inputs:
    the same greedy tokens as transformers' own generate."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64,
                                                               vocab_size=97)).eval()
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path)).eval()
    prompt = torch.randint(0, 97, (2, 6))
    ours = model.generate(prompt, 40, temperature=0, kv_cache="input")
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
                         pad_token_id=0)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name,form", [("full", "input"), ("lens", "kv"), ("gqa", "kv"), ("cla_lens", "kv")])
def test_compiled_decoding_equals_eager_without_recompiling(name, form):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny(**CONFIGS[name]).eval()
    prompt = torch.randint(0, 61, (1 if form == "input" else 2, 4))  # batch 1 too: its slices have odd strides
    eager = model.generate(prompt, 40, temperature=0, kv_cache=form)  # past block_size: prefilled again
    compiled = model.generate(prompt, 40, temperature=0, kv_cache=form, compile=True)
    assert torch.equal(compiled, eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one graph for ~40 positions
    with pytest.raises(ValueError, match="compile=True compiles the cached decode step"):
        model.generate(prompt, 2, kv_cache=False, compile=True)


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
    assert torch.allclose(block(x, skip_attn=True)[0], expected, atol=1e-6)


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


@pytest.mark.slow
def test_sample_streams_and_reports_speed(trained):
    p = run("sample.py", f"--out_dir={trained}", "--num_samples=2", "--max_new_tokens=20", "--start=ROMEO:",
            "--device=cpu")
    assert p.stdout.count("ROMEO:") == 2 and p.stdout.count("tokens/s") == 2
    p2 = run("sample.py", f"--out_dir={trained}", "--num_samples=1", "--max_new_tokens=20", "--start=ROMEO:",
             "--kv_cache=False", "--temperature=0")
    greedy = p2.stdout.split("---")[0]
    for form in ("kv", "input"):  # greedy: the same text with or without the cache, eager or compiled
        for compiled in ("False", "True"):
            p3 = run("sample.py", f"--out_dir={trained}", "--num_samples=1", "--max_new_tokens=20", "--start=ROMEO:",
                     "--temperature=0", f"--kv_cache={form}", f"--compile={compiled}")
            assert p3.stdout.split("---")[0] == greedy, (form, compiled)


def test_sample_errors_and_prompts(trained, tmp_path):
    long_prompt = tmp_path / "prompt.txt"
    long_prompt.write_text("To be or not to be " * 10)
    errors = [  # (sample.py's arguments, its one error line)
        (["--start=caf\u00e9"], "the prompt has characters this model's vocabulary lacks: '\u00e9'"),
        (["--compile=True", "--kv_cache=False"], "compile=True compiles the cached decode step"),
        (["--kv_bits=3"], "kv_bits=3 must be one of 16, 8, 4"),
        (["--kv_bits=4", "--kv_cache=kv"], "kv_group=32 must divide head_dim=8 (the kv form quantizes values per "
                                           "token in groups of channels)"),
        (["--kv_bits=8", "--kv_residual=-2"], "kv_residual=-2 must be a whole number of tokens >= 0"),
        (["--kv_bits=8", "--kv_cache=False"], "kv_bits=8 quantizes the KV cache: it needs kv_cache (False recomputes)"),
        (["--kv_cache=latent"], "kv_cache must be True, False, auto, kv or input, got 'latent'"),
        ([f"--out_dir={tmp_path}"], f"no checkpoint at {tmp_path}/ckpt.pt"),
    ]
    runs = [["--kv_bits=4", "--kv_residual=3", "--num_samples=1", "--max_new_tokens=40", "--start=ROMEO:"],
            [f"--start=FILE:{long_prompt}", "--num_samples=1", "--max_new_tokens=5"],
            ["--start=", "--num_samples=1", "--max_new_tokens=5"]]
    done = run_many(*[["sample.py", f"--out_dir={trained}", *args] for args, _ in errors],
                    *[["sample.py", f"--out_dir={trained}", *args] for args in runs])
    for (args, line), p in zip(errors, done):
        assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        assert p.stderr.strip().startswith(f"error: {line}") and "\n" not in p.stderr.strip(), (args, p.stderr)
    quantized, long, empty = done[len(errors):]
    assert all(p.returncode == 0 for p in (quantized, long, empty)), [p.stderr for p in (quantized, long, empty)]
    # the input form at 4 bits, past block_size
    assert quantized.stdout.startswith("ROMEO:") and "40 tokens" in quantized.stdout
    assert "4-bit, group 32, residual 3" in quantized.stdout
    assert "warning: the prompt has 190 tokens; keeping the last 32 (block_size)" in long.stderr
    assert empty.stdout.startswith("\n")


# ---------------------------------------------------------------------- kv_cache_bench.py
@pytest.mark.slow
def test_kv_cache_bench(trained, tmp_path):
    out = tmp_path / "kv.json"
    png = tmp_path / "curve.png"
    p = run("kv_cache_bench.py", "--configs=reciprocity,gqa,mqa,full", "--n_layer=2", "--n_embd=32",
            "--n_head=4", "--contexts=16,64", "--decode_tokens=2", "--throughput_context=64", "--mem_budget=0.0004",
            "--throughput_steps=2", "--throughput_modes=eager", "--rounds=2", "--profile", f"--json={out}",
            f"--ckpt={trained}/ckpt.pt", "--eval_batches=2", f"--plot={png}",
            "--peer=hf", "--peer_prompt=4", "--peer_new_tokens=4")
    data = json.loads(out.read_text())
    # transformers' generate on the same weights: the reference row, then each form and mode of ours, all
    # with transformers' tokens (kv_cache_bench exits 1 otherwise)
    peer = [(r["engine"], r["form"], r["mode"]) for r in data["peer"]]
    assert peer == [("transformers", "dynamic", "eager"), ("lensgpt", "kv", "eager"), ("lensgpt", "kv", "compiled"),
                    ("lensgpt", "input", "eager"), ("lensgpt", "input", "compiled")]
    assert data["peer"][0]["x_transformers"] == 1.0 and "against transformers" in p.stdout
    fields = {"config", "form", "context", "kv_bytes_per_token", "kv_bytes_per_token_measured", "prefill_ms", "decode_ms"}
    # the baseline is added (its K/V form is what every ratio is against); 5 configs x 2 forms x 2 contexts
    assert len(data["records"]) == 20 and all(fields <= set(r) for r in data["records"])
    assert all(set(r["decode_ms"]) == {"eager", "compiled"} for r in data["records"])
    for r in data["records"]:
        assert r["kv_bytes_per_token_measured"] == r["kv_bytes_per_token"]
    per = {(r["config"], r["form"]): r["kv_bytes_per_token"] for r in data["records"]}
    assert per["reciprocity", "kv"] == 1.5 * per["baseline", "kv"] and per["mqa", "kv"] == per["baseline", "kv"] / 4
    assert per["reciprocity", "input"] == per["baseline", "input"] == per["baseline", "kv"] / 2
    # throughput: the batch whose cache fits 0.0004 GiB at context 64 (float32, 2 layers of 32)
    largest = {(t["config"], t["form"]): t["batch_size"] for t in data["throughput"] if t["largest"]}
    assert largest["baseline", "kv"] == int(0.0004 * 2**30 // (per["baseline", "kv"] * 64)) == 13
    assert largest["baseline", "input"] == 26 and largest["reciprocity", "kv"] == 8 and largest["reciprocity", "input"] == 26
    assert all(t["tokens_per_s"] > 0 for t in data["throughput"])
    (curve,) = data["pruning"]  # one checkpoint: its points in every order
    points = [p for p in curve["points"] if p["ranking"] == "route_gate"]
    assert [len(p["layers"]) for p in points] == [0, 1, 2]
    full16 = per["full", "kv"] // 2  # pruning curves count KV bytes at 16-bit, the random-weight rows in float32
    assert [p["kv_bytes_per_token"]["kv"] for p in points] == [full16, full16 / 2, 0]
    assert {p["ranking"] for p in curve["points"]} == {"greedy", "route_gate", "contribution"}
    assert png.stat().st_size > 1000 and "with attention removed from 0, 1, 2, ... layers" in p.stdout
    assert "throughput at context 64" in p.stdout
    assert p.stdout.count("top operators by self time, one decode step at 64") == 10  # 5 configs x 2 forms


@pytest.mark.slow
def test_kv_cache_bench_quantized(trained, tmp_path):
    """--kv_bits: each row again through a quantized cache, the bytes it holds equal to the formula, a
    larger batch within the budget (eager and compiled), and with --ckpt the loss through each cache."""
    out = tmp_path / "kv.json"
    p = run("kv_cache_bench.py", "--configs=baseline", "--forms=kv", "--kv_bits=8", "--kv_group=8", "--kv_residual=2",
            "--n_layer=2", "--n_embd=32", "--n_head=4", "--contexts=64", "--decode_tokens=2", "--throughput_context=64",
            "--mem_budget=0.0004", "--throughput_steps=2", "--rounds=1", f"--json={out}", f"--ckpt={trained}/ckpt.pt",
            "--eval_batches=2", "--eval_batch_size=2")
    data = json.loads(out.read_text())
    rows = {(r["form"], r["kv_bits"]): r for r in data["records"]}
    assert set(rows) == {("kv", 16), ("kv", 8)}
    assert all(r["kv_bytes_per_token_measured"] == r["kv_bytes_per_token"] for r in rows.values())
    assert rows["kv", 8]["kv_bytes_per_token"] < rows["kv", 16]["kv_bytes_per_token"]
    largest = {(t["form"], t["kv_bits"], t["mode"]): t["batch_size"] for t in data["throughput"] if t["largest"]}
    assert largest["kv", 16, "eager"] == 13 and largest["kv", 8, "eager"] > 13 and largest["kv", 8, "compiled"] > 13
    assert all(t["cache_bytes"] <= 0.0004 * 2**30 for t in data["throughput"])
    (curve,) = data["pruning"]
    quant = {(q["form"], q["kv_bits"]): q for q in curve["quant"]}
    assert set(quant) == {(f, b) for f in ("kv", "input") for b in (16, 8)}  # every form the checkpoint can use
    whole = next(p for p in curve["points"] if not p["layers"])  # 16 bits through the cache: the forward pass
    assert all(abs(quant[f, 16]["val_loss"] - whole["val_loss"]) < 1e-4 for f in ("kv", "input"))
    assert "x 16-bit" in p.stdout and "loss decoding through the cache" in p.stdout


def test_kv_cache_bench_peer_without_transformers(tmp_path):
    """--peer=hf where transformers is not installed: one line, and the rest of the run goes on."""
    (tmp_path / "transformers.py").write_text("raise ImportError('no transformers here')\n")
    p = run("kv_cache_bench.py", "--configs=", "--peer=hf", env={"PYTHONPATH": str(tmp_path)})
    assert "peer hf: skipped, transformers is not installed (pip install transformers)" in p.stdout
    p = run("kv_cache_bench.py", "--configs=", "--peer=vllm", check=False)
    assert p.returncode == 1 and p.stderr.strip().endswith("error: peer takes 'hf' (Hugging Face transformers) or nothing, got 'vllm'")
