"""The KV cache keeps exactly what each mechanism needs and decodes exactly; pruning; sample.py;
kv_cache_bench.py."""
import json
import re

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


WINDOWS = dict(attn_window=8, attn_global_every=2)  # layer 0 global, layer 1 a ring of 8 that wraps


@pytest.mark.parametrize("name,form,window", [("full", "input", {}), ("lens", "kv", {}), ("gqa", "kv", {}),
                                              ("cla_lens", "kv", {}),
                                              pytest.param("gqa", "kv", WINDOWS, marks=pytest.mark.slow),
                                              pytest.param("full", "input", WINDOWS, marks=pytest.mark.slow)])
def test_compiled_decoding_equals_eager_without_recompiling(name, form, window):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny(**CONFIGS[name], **window).eval()
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


# ---------------------------------------------------------------------- sampling
# Three distributions over 12 tokens, in different orders (so that each row's top k are other tokens)
SAMPLING_LOGITS = 1.5 * torch.randn(3, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
DRAWS = 100_000  # per distribution: a frequency's standard deviation is at most 0.5 / sqrt(DRAWS) = 0.0016


def target(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution sample_next claims, computed apart from it, in float64: softmax(logits / T) over
    the k most likely tokens, then the fewest most likely tokens whose probability reaches top_p."""
    p = torch.softmax(logits / temperature, dim=-1)
    order = p.argsort(dim=-1, descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    for r in range(p.size(0)):
        q = p[r, order[r, :top_k or p.size(1)]]
        q = q / q.sum()
        n = len(q)
        if top_p is not None and top_p < 1:  # the fewest tokens that hold top_p
            n = int((q.cumsum(0) < top_p).sum()) + 1
            # not near a boundary, where float rounding could keep one token more or less
            assert (q.cumsum(0)[max(n - 2, 0):n] - top_p).abs().min() > 1e-3
        keep[r, order[r, :n]] = True
    p = p * keep
    return p / p.sum(dim=-1, keepdim=True)


def draw_counts(logits, seed=0, **kwargs):
    """How often sample_next draws each token, DRAWS times from each row of logits (float32), on a fixed
    seed: one call on DRAWS copies of the rows (rows r, r + R, r + 2R, ... share distribution r)."""
    from engine import sample_next
    torch.manual_seed(seed)
    tokens = sample_next(logits.float().repeat(DRAWS, 1), **kwargs).view(DRAWS, -1)
    return torch.stack([torch.bincount(t, minlength=logits.size(1)) for t in tokens.T]).double()


def chi_square_p(counts, p):
    """Pearson's chi-square p-value of counts against p on p's support (counts outside it: asserted 0)."""
    from scipy.stats import chisquare
    assert counts[p == 0].sum() == 0, "a token outside the distribution's support was drawn"
    return chisquare(counts[p > 0], DRAWS * p[p > 0]).pvalue


@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=4),
                                    dict(top_k=1), dict(top_k=12), dict(top_p=0.62), dict(top_k=5, top_p=0.7),
                                    dict(temperature=0.7, top_k=6, top_p=0.8), dict(top_p=1.0)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "full")
def test_sampling_draws_from_the_distribution_it_claims(kwargs):
    """Each draw (the whole vocabulary, temperature, top-k, top-p and their combinations) against the
    distribution it claims, computed apart (target), for three distributions at once: no token outside
    it, every frequency within 0.01 of its probability (6 standard deviations) and Pearson's chi-square
    at p > 0.001. The seed is fixed: the test is deterministic, not flaky."""
    counts = draw_counts(SAMPLING_LOGITS, **kwargs)
    for r, p in enumerate(target(SAMPLING_LOGITS, **kwargs)):
        assert (counts[r] / DRAWS - p).abs().max() < 0.01, (r, counts[r] / DRAWS, p)
        if (p > 0).sum() > 1:
            assert chi_square_p(counts[r], p) > 1e-3, (r, counts[r] / DRAWS, p)


def test_sampling_tests_tell_distributions_apart():
    """The tests above can fail: draws at temperature 0.8 or within the top 11 are refused against
    the plain distribution."""
    p = target(SAMPLING_LOGITS)
    for kwargs in (dict(temperature=0.8), dict(top_k=11)):
        counts = draw_counts(SAMPLING_LOGITS, **kwargs)
        assert min(chi_square_p(c, q) if (c[q == 0].sum() == 0) else 0 for c, q in zip(counts, p)) < 1e-6


def test_sampling_is_reproducible_greedy_at_the_limits_and_checked():
    """The same seed (or generator) gives the same draws; temperature 0, top_k=1 and a tiny top_p are the
    argmax; through generate too, in every cache path; out-of-range settings are a ValueError."""
    from engine import sample_next
    logits = torch.randn(64, 1000)
    torch.manual_seed(3)
    a = sample_next(logits, top_k=50)
    torch.manual_seed(3)
    assert torch.equal(sample_next(logits, top_k=50), a)
    g = torch.Generator().manual_seed(5)
    b = sample_next(logits, top_p=0.9, generator=g)
    assert torch.equal(sample_next(logits, top_p=0.9, generator=torch.Generator().manual_seed(5)), b)
    argmax = logits.argmax(dim=-1, keepdim=True)
    for kwargs in (dict(temperature=0), dict(top_k=1), dict(top_p=1e-9), dict(temperature=0.01, top_k=1, top_p=0.5)):
        assert torch.equal(sample_next(logits, **kwargs), argmax), kwargs
    assert sample_next(logits.bfloat16(), top_k=5).dtype == torch.long
    model = tiny().eval()
    prompt = torch.randint(0, 61, (2, 5))
    greedy = model.generate(prompt, 40, temperature=0, kv_cache=False)  # past block_size
    for kv_cache in (False, "kv", "input"):
        assert torch.equal(model.generate(prompt, 40, top_k=1, kv_cache=kv_cache), greedy)
        assert torch.equal(model.generate(prompt, 40, top_p=1e-9, kv_cache=kv_cache), greedy)
    torch.manual_seed(7)
    sampled = model.generate(prompt, 20, top_k=10, top_p=0.9)
    assert torch.equal(model.generate(prompt, 20, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(7)),
                       sampled)  # the global generator at seed 7 and a generator at seed 7 draw alike
    for kwargs in (dict(top_p=0), dict(top_p=1.5), dict(top_k=-1), dict(temperature=-1)):
        with pytest.raises(ValueError, match="sampling needs temperature >= 0, top_k >= 0 and top_p in"):
            sample_next(logits, **kwargs)


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
            # tokens/s leave out the step that compiled, and say so
            assert ("left out: 1 step compiling the decode step" in p3.stdout) == (compiled == "True"), p3.stdout


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
        (["--top_p=0"], "top_p must be in (0, 1] (1 keeps every token), got 0.0"),
        (["--top_p=1.5"], "top_p must be in (0, 1] (1 keeps every token), got 1.5"),
        ([f"--out_dir={tmp_path}"], f"no checkpoint at {tmp_path}/ckpt.pt"),
    ]
    runs = [["--kv_bits=4", "--kv_residual=3", "--num_samples=1", "--max_new_tokens=40", "--start=ROMEO:"],
            [f"--start=FILE:{long_prompt}", "--num_samples=1", "--max_new_tokens=5"],
            ["--start=", "--num_samples=1", "--max_new_tokens=5"],
            ["--top_k=0", "--top_p=0.9", "--num_samples=2", "--max_new_tokens=5", "--seed=3"],
            ["--top_k=0", "--top_p=0.9", "--num_samples=2", "--max_new_tokens=5", "--seed=3"]]
    done = run_many(*[["sample.py", f"--out_dir={trained}", *args] for args, _ in errors],
                    *[["sample.py", f"--out_dir={trained}", *args] for args in runs])
    for (args, line), p in zip(errors, done):
        assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        assert p.stderr.strip().startswith(f"error: {line}") and "\n" not in p.stderr.strip(), (args, p.stderr)
    quantized, long, empty, nucleus, again = done[len(errors):]
    assert all(p.returncode == 0 for p in done[len(errors):]), [p.stderr for p in done[len(errors):]]
    # nucleus sampling over the whole vocabulary, twice on one seed: the same text (timings aside)
    text = lambda p: re.sub(r"\[\d+ tokens in [^\]]*\]", "", p.stdout)
    assert nucleus.stdout.count("[5 tokens in") == 2 and text(nucleus) == text(again)
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
    assert "throughput at context 64, caches within 0.0004 GiB" in p.stdout  # not "0.0 GiB"
    # bytes at the precision they are named by: this CPU run's caches are float32, 4 bytes a value
    assert "B/tok@64: analytic bytes per token of a cache holding 64 tokens" in p.stdout
    assert "(float32: 4 bytes a value, unquantized" in p.stdout and " 16 " not in p.stdout.split("B/tok@64")[1]
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
    assert "loss decoding through the cache" in p.stdout
    # the 8-bit cache against the float32 cache it was measured against, never against "16-bit"
    assert "x float32 eager" in p.stdout and "x 16-bit" not in p.stdout
    # its rows: the decode table and the eager and compiled throughput tables
    assert len(re.findall(r"baseline +kv +8-bit ", p.stdout)) == 3 and re.search(r"baseline +kv +float32 ", p.stdout)


@pytest.mark.slow
def test_kv_cache_bench_peer_sampling(tmp_path):
    """--peer_top_k: transformers' generate(do_sample=True, top_k=K) against ours at the same top_k (and
    both over the whole vocabulary at 0), every drawn token checked within the top K."""
    pytest.importorskip("transformers")
    tiny_peer = ["kv_cache_bench.py", "--configs=", "--peer=hf", "--n_layer=2", "--n_head=2", "--n_embd=32",
                 "--vocab_size=97", "--batch_size=3", "--peer_prompt=4", "--peer_new_tokens=6", "--rounds=1",
                 "--forms=kv", "--modes=eager"]
    top_k, full = run_many(tiny_peer + ["--peer_top_k=5", f"--json={tmp_path / 'k.json'}"],
                           tiny_peer + ["--peer_top_k=0", f"--json={tmp_path / 'full.json'}"])
    assert top_k.returncode == 0 and full.returncode == 0, (top_k.stderr, full.stderr)
    assert "(sampled, top_k=5 at temperature 1, transformers' generate(do_sample=True, top_k=5), same weights, " \
           "every drawn token within the top 5)" in top_k.stdout
    assert "(sampled, full vocabulary at temperature 1, transformers' generate(do_sample=True, top_k=0)" in full.stdout
    for name, decoding in (("k.json", "sampled, top_k=5"), ("full.json", "sampled, full vocabulary")):
        rows = json.loads((tmp_path / name).read_text())["peer"]
        assert [(r["engine"], r["decoding"]) for r in rows] == [("transformers", decoding), ("lensgpt", decoding)]


def test_kv_cache_bench_peer_without_transformers(tmp_path):
    """--peer=hf where transformers is not installed: one line, and the rest of the run goes on."""
    (tmp_path / "transformers.py").write_text("raise ImportError('no transformers here')\n")
    p = run("kv_cache_bench.py", "--configs=", "--peer=hf", env={"PYTHONPATH": str(tmp_path)})
    assert "peer hf: skipped, transformers is not installed (pip install transformers)" in p.stdout
    vllm, bad_k = run_many(["kv_cache_bench.py", "--configs=", "--peer=vllm"],
                           ["kv_cache_bench.py", "--configs=", "--peer=hf", "--peer_top_k=-1"])
    assert vllm.returncode == 1 and vllm.stderr.strip().endswith("error: peer takes 'hf' (Hugging Face transformers) or nothing, got 'vllm'")
    assert bad_k.returncode == 1 and bad_k.stderr.strip() == ("error: peer_top_k takes a whole number of tokens >= 0 "
                                                              "(0: the whole vocabulary), got -1")
