"""lm-evaluation-harness (eval_harness.py): the `lensgpt` class scores exactly what the model computes
(log-likelihoods, rolling windows included, equal to a direct computation to 1e-5), acc and acc_norm
are the argmax a reader computes by hand, scoring through a 16-bit cache equals scoring without one
while a 4-bit cache changes the scores, generation is the engine's greedy decoding cut at the stop
string, and lm-eval's own hf backend on the exported model gives the same answers (the peer check).
Bad input is one line. The tasks are the local ones in tests/harness_tasks (no download)."""
import importlib.util
import json
import math
import os
import shutil
import tempfile

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, run, run_many

# datasets (lm-eval's loader) keeps a cache of every dataset it reads: a temporary one, and no network
HF_CACHE = tempfile.mkdtemp(prefix="lensgpt-test-hf-datasets-")
os.environ["HF_DATASETS_CACHE"] = HF_CACHE
os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(not HAS_LM_EVAL, reason='needs lm-eval: pip install "lm_eval[hf]>=0.4.10,<0.5"')
TASKS = os.path.join(ROOT, "tests", "harness_tasks")
SHAPE = dict(block_size=32, n_layer=2, n_head=4, n_embd=32, mlp_ctx_rank=8)
LENS = dict(use_reciprocity=True, use_discoverability=True, use_route_gate=True, mlp_use_ctx_summary=True)
LONG = ("The quick brown fox jumps over the lazy dog, and then the dog, who was not lazy at all, got up and "
        "chased the fox across the field, over the river and into the woods, where they both sat down to rest "
        "beneath an old oak tree until the sun went down. In the morning the farmer found them there, fast asleep "
        "side by side, and he laughed so loudly that the birds flew up from every branch of the tree at once.")


def teardown_module():
    shutil.rmtree(HF_CACHE, ignore_errors=True)


def save_tiny(out, dataset="openwebtext", vocab_size=50304, **kw):
    """A tiny model saved as out/ckpt.pt; weights spread out (0.2 noise on everything) so that its
    distributions are peaked and the choices' log-likelihoods far apart (no near-ties for argmax)."""
    from checkpoint import save_checkpoint
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    args = dict(SHAPE, vocab_size=vocab_size, **kw)
    model = GPT(GPTConfig(**args))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    os.makedirs(out, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "model_args": args, "iter_num": 1, "best_val_loss": 1.0,
                     "config": {"dataset": dataset}}, os.path.join(out, "ckpt.pt"))
    return str(out)


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory, gpt2_bpe):
    return save_tiny(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def lens_ckpt(tmp_path_factory, gpt2_bpe):
    return save_tiny(tmp_path_factory.mktemp("lens"), **LENS)


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory, char_data):
    import pickle
    with open(os.path.join(char_data, "meta.pkl"), "rb") as f:
        vocab = pickle.load(f)["vocab_size"]
    return save_tiny(tmp_path_factory.mktemp("char"), dataset="shakespeare_char", vocab_size=vocab, **LENS)


def harness(out_dir, **model_args):
    import eval_harness
    return eval_harness.LensGPT(out_dir=out_dir, device="cpu", dtype="float32", **model_args)


def ll_requests(pairs):
    from lm_eval.api.instance import Instance
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def rolling_requests(texts):
    from lm_eval.api.instance import Instance
    return [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]


# ----------------------------------------------------------------------------- the direct computation
def model_of(out_dir):
    from checkpoint import load_checkpoint, model_from_checkpoint
    path = os.path.join(out_dir, "ckpt.pt")
    return model_from_checkpoint(load_checkpoint(path), path).eval()


@torch.no_grad()
def log_probs(model, ids):
    """Log-probabilities (len(ids), V) of the next token after each position of ids, one sequence, through the
    training path (targets given: logits at every position)."""
    x = torch.tensor(ids)[None]
    return F.log_softmax(model(x, targets=x)[0][0].float(), dim=-1)


def direct_ll(model, context, continuation):
    """(log-likelihood, greedy) of continuation token ids after context ids, the context cut from the left
    to block_size (the last continuation token is never an input)."""
    seq = (context + continuation)[-(model.config.block_size + 1):]
    lp = log_probs(model, seq[:-1])[-len(continuation):]
    cont = torch.tensor(continuation)
    return lp.gather(1, cont[:, None]).double().sum().item(), bool((lp.argmax(-1) == cont).all())


def direct_rolling(model, tokens, first):
    """A text's log-likelihood, each token scored once: token i in the window of block_size tokens that ends
    with the last token of its chunk (chunks of block_size), the text preceded by `first` (end-of-text)."""
    bs, seq, total = model.config.block_size, [first] + tokens, 0.0
    for start in range(0, len(tokens), bs):
        end = min(start + bs, len(tokens))
        lo = max(0, end - bs)  # seq[j] is followed by tokens[j]
        lp = log_probs(model, seq[lo:end])
        total += sum(lp[i - lo, tokens[i]].item() for i in range(start, end))
    return total


def bpe_pairs(enc):
    """(context, continuation) text and the token ids lm-eval makes of them (the continuation's tokens are
    the whole text's tokens after the context's)."""
    texts = [("The king rose from his throne and", " spoke to the court."),
             ("To be, or not to be", ":"),
             (LONG, " Then the moon came up."),  # longer than block_size: cut from the left
             ("Good morrow", ", my lord! How fares your grace this fine and sunny day, my lord?"),
             ("A", " b")]
    out = []
    for c, x in texts:
        ctx = enc.encode(c)
        out.append(((c, x), ctx, enc.encode(c + x)[len(ctx):]))
    return out


# ----------------------------------------------------------------------------- exactness
@needs_lm_eval
def test_loglikelihoods_equal_a_direct_computation(bpe_ckpt, lens_ckpt):
    """Batched (3 per batch, padded, longest first), the class's log-likelihoods and greedy flags equal a
    direct computation one sequence at a time to 1e-5: contexts longer than block_size, an empty context
    (end-of-text stands in), and rolling log-likelihoods over several windows."""
    import tiktoken
    from engine import generate
    enc = tiktoken.get_encoding("gpt2")
    for out_dir in (bpe_ckpt, lens_ckpt):
        lm, model = harness(out_dir, batch_size=3), model_of(out_dir)
        pairs = bpe_pairs(enc)
        got = lm.loglikelihood(ll_requests([p for p, _, _ in pairs] + [("", "Hello there")]), disable_tqdm=True)
        want = [direct_ll(model, ctx, cont) for _, ctx, cont in pairs]
        want.append(direct_ll(model, [enc.eot_token], enc.encode("Hello there")))
        for (g, gg), (w, wg) in zip(got, want):
            assert abs(g - w) <= 1e-5 and gg == wg, (g, w, gg, wg)
        ctx = enc.encode("The king rose from his throne and")  # a continuation that is the greedy one
        greedy = generate(model, torch.tensor([ctx]), 3, temperature=0, kv_cache=False)[0, len(ctx):].tolist()
        assert lm._loglikelihood_tokens([(None, ctx, greedy)], disable_tqdm=True)[0][1] is True
        n, bs = len(enc.encode(LONG)), model.config.block_size
        assert n > 2 * bs and n % bs  # three windows or more, the last one partial
        texts = [LONG, "Short text.", LONG[:100]]
        got = lm.loglikelihood_rolling(rolling_requests(texts), disable_tqdm=True)
        want = [direct_rolling(model, enc.encode(t), enc.eot_token) for t in texts]
        assert max(abs(g - w) for g, w in zip(got, want)) <= 1e-5, (got, want)


@needs_lm_eval
def test_character_vocabulary(char_ckpt):
    """A character-level model (meta.pkl's vocabulary; a newline stands in for end-of-text): the same
    exactness, and a character the vocabulary lacks is a one-line error."""
    import pickle
    with open(os.path.join(os.environ["LENSGPT_DATA"], "shakespeare_char", "meta.pkl"), "rb") as f:
        stoi = pickle.load(f)["stoi"]
    lm, model = harness(char_ckpt, batch_size=2), model_of(char_ckpt)
    encode = lambda s: [stoi[c] for c in s]
    pairs = [("ROMEO: But soft, what light", " breaks?"), ("KING", ": Speak!"), ("", "First Citizen")]
    got = lm.loglikelihood(ll_requests(pairs), disable_tqdm=True)
    want = [direct_ll(model, encode(c) or [stoi["\n"]], encode(x)) for c, x in pairs]
    assert max(abs(g[0] - w[0]) for g, w in zip(got, want)) <= 1e-5 and [g[1] for g in got] == [w[1] for w in want]
    text = "Now is the winter of our discontent made glorious summer by this sun of York."
    got = lm.loglikelihood_rolling(rolling_requests([text]), disable_tqdm=True)[0]
    assert abs(got - direct_rolling(model, encode(text), stoi["\n"])) <= 1e-5
    with pytest.raises(SystemExit, match="error: the task's text has characters this model's vocabulary lacks: '7'"):
        lm.loglikelihood(ll_requests([("Chapter 7", " begins")]), disable_tqdm=True)


@needs_lm_eval
def test_cached_scoring_16_bit_equals_no_cache_and_4_bit_changes_it(lens_ckpt):
    """Scoring through a KV cache decodes every token through it (evaluate.cached_logits). At 16 bits,
    in both cache forms and with a layer's attention pruned, it gives the no-cache log-likelihoods (to
    1e-5, float32's rounding of another order of operations) and the same greedy flags; a 4-bit cache
    gives other numbers, and pruning a layer other numbers again."""
    import tiktoken
    requests = ll_requests([p for p, _, _ in bpe_pairs(tiktoken.get_encoding("gpt2"))])
    scores = lambda **kw: harness(lens_ckpt, batch_size=2, **kw).loglikelihood(requests, disable_tqdm=True)
    plain, pruned = scores(), scores(attn_skip_layers=(1,))
    for form in ("kv", "input"):
        for skip, ref in (((), plain), ((1,), pruned)):
            cached = scores(kv_cache=form, attn_skip_layers=skip)
            assert max(abs(a[0] - b[0]) for a, b in zip(cached, ref)) <= 1e-5, (form, skip)
            assert [a[1] for a in cached] == [b[1] for b in ref]
        low = scores(kv_cache=form, kv_bits=4, kv_group=8)
        assert max(abs(a[0] - b[0]) for a, b in zip(low, plain)) > 1e-3, form
    assert max(abs(a[0] - b[0]) for a, b in zip(pruned, plain)) > 1e-3


@needs_lm_eval
def test_generate_until_is_greedy_decoding_cut_at_the_stop_string(bpe_ckpt):
    """generate_until (through the KV cache) gives the engine's greedy tokens without a cache, decoded and
    cut before the first stop string; max_gen_toks bounds the length; requests keep their order."""
    import tiktoken
    from lm_eval.api.instance import Instance
    from engine import generate
    enc, model, lm = tiktoken.get_encoding("gpt2"), model_of(bpe_ckpt), harness(bpe_ckpt, batch_size=4)
    text = lambda ids: enc.decode([i for i in ids if i < enc.n_vocab])  # padded vocabulary ids have no text

    def greedy(context, n):
        ids = enc.encode(context)
        return text(generate(model, torch.tensor([ids]), n, temperature=0, kv_cache=False)[0, len(ids):].tolist())
    contexts = ["The king rose from his throne and", "To be, or not", "The queen", "The night"]
    full = [greedy(c, 12) for c in contexts]
    stop = full[0][len(full[0]) // 2:len(full[0]) // 2 + 2]  # a stop string inside the first continuation
    assert stop.strip() and stop in full[0]
    requests = [Instance("generate_until", {}, (c, {"until": [stop], "max_gen_toks": 12, "do_sample": False}), i)
                for i, c in enumerate(contexts)]
    requests.append(Instance("generate_until", {}, (contexts[1], {"until": [], "max_gen_toks": 5}), 9))
    got = lm.generate_until(requests, disable_tqdm=True)
    assert got[:4] == [f.split(stop)[0].split("<|endoftext|>")[0] for f in full]
    assert got[0] != full[0] and got[4] == greedy(contexts[1], 5).split("<|endoftext|>")[0]


# ----------------------------------------------------------------------------- lm-eval end to end
@needs_lm_eval
def test_harness_command_metrics_are_the_hand_computed_argmax(bpe_ckpt, tmp_path):
    """One run of `python eval_harness.py` over both local tasks writes lm-eval's results JSON next to the
    checkpoint; its acc and acc_norm are the argmax over each question's directly computed log-likelihoods
    (acc_norm: divided by the ending's length in characters), lambada's acc the share of greedy answers
    and its perplexity exp(-mean log-likelihood)."""
    import tiktoken
    enc, model = tiktoken.get_encoding("gpt2"), model_of(bpe_ckpt)
    out = tmp_path / "ckpt"
    shutil.copytree(bpe_ckpt, out)
    p = run("eval_harness.py", f"--out_dir={out}", "--tasks=lensgpt_mc,lensgpt_lambada", f"--include_path={TASKS}",
            "--batch_size=5", "--device=cpu")
    path = out / "lm_eval_lensgpt_mc+lensgpt_lambada.json"
    assert f"results: {path}" in p.stdout and sorted(os.listdir(out)) == ["ckpt.pt", path.name]
    results = json.loads(path.read_text())["results"]

    def ll(context, continuation):
        ctx = enc.encode(context)
        return direct_ll(model, ctx, enc.encode(context + continuation)[len(ctx):])
    acc, acc_norm = [], []
    with open(os.path.join(TASKS, "lensgpt_mc.jsonl")) as f:
        docs = [json.loads(line) for line in f]
    for doc in docs:
        lls = [ll(doc["ctx"], " " + e)[0] for e in doc["endings"]]
        norm = [v / len(e) for v, e in zip(lls, doc["endings"])]
        for scores in (lls, norm):  # no near-tie that rounding could flip
            top = sorted(scores)
            assert top[-1] - top[-2] > 1e-3
        acc.append(float(max(range(4), key=lambda i: lls[i]) == doc["label"]))
        acc_norm.append(float(max(range(4), key=lambda i: norm[i]) == doc["label"]))
    mc = results["lensgpt_mc"]
    assert (mc["acc,none"], mc["acc_norm,none"]) == (sum(acc) / len(acc), sum(acc_norm) / len(acc_norm))
    assert len(set(acc_norm)) > 1 or len(set(acc)) > 1  # the numbers can tell a wrong argmax from a right one
    with open(os.path.join(TASKS, "lensgpt_lambada.jsonl")) as f:
        passages = [json.loads(line)["text"].rsplit(" ", 1) for line in f]  # (all but the last word, the last)
    answers = [ll(context, " " + word) for context, word in passages]
    lam = results["lensgpt_lambada"]
    assert lam["acc,none"] == sum(g for _, g in answers) / len(answers)
    ppl = math.exp(-sum(v for v, _ in answers) / len(answers))
    assert abs(lam["perplexity,none"] - ppl) <= 1e-5 * ppl


@pytest.mark.slow
@needs_lm_eval
def test_peer_check_against_lm_eval_hf_backend(bpe_ckpt, lens_ckpt, tmp_path):
    """Two independent harness paths, one answer: the same requests of both local tasks (and rolling
    log-likelihoods, and continuations that are the greedy ones) through this class and through lm-eval's
    own hf backend on the model exported with export_hf.py (plain GPT-2, and the custom-code route for the
    lens mechanisms): log-likelihoods within 1e-4, the same greedy flags, the same answer (argmax, and
    per-character argmax) to every question."""
    pytest.importorskip("transformers")
    import tiktoken
    from lm_eval.models.huggingface import HFLM
    import eval_harness
    from engine import generate
    from export_hf import export
    enc = tiktoken.get_encoding("gpt2")
    names = ["lensgpt_mc", "lensgpt_lambada"]
    requests = eval_harness.task_requests(names, eval_harness.task_manager(names, TASKS))["loglikelihood"]
    rolling = rolling_requests([LONG, "Short text."])
    for name, out_dir in (("plain", bpe_ckpt), ("custom", lens_ckpt)):
        ours = harness(out_dir, batch_size=4)
        export(out_dir, str(tmp_path / name), quiet=True)
        theirs = HFLM(pretrained=str(tmp_path / name), device="cpu", batch_size=4, dtype="float32",
                      max_length=ours.max_length, trust_remote_code=True)
        a, b = ours.loglikelihood(requests, disable_tqdm=True), theirs.loglikelihood(requests, disable_tqdm=True)
        assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) <= 1e-4, name
        assert [x[1] for x in a] == [y[1] for y in b], name
        greedy = []  # token requests whose continuation is the model's greedy one, and the same one token off
        for text in ("The king rose from his throne and", "To be, or not to be"):
            ctx = enc.encode(text)
            cont = generate(ours.model, torch.tensor([ctx]), 3, temperature=0, kv_cache=False)[0, len(ctx):].tolist()
            greedy += [((text, ""), ctx, cont), ((text, "."), ctx, cont[:2] + [(cont[2] + 1) % 50257])]
        a, b = (lm._loglikelihood_tokens(greedy, disable_tqdm=True) for lm in (ours, theirs))
        assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) <= 1e-4, name
        assert [x[1] for x in a] == [y[1] for y in b] == [True, False, True, False], name
        by_doc = {}
        for r, x, y in zip(requests, a, b):
            if r.task_name == "lensgpt_mc":
                n = len(r.args[1])
                by_doc.setdefault(r.doc_id, []).append((x[0], y[0], x[0] / n, y[0] / n))
        for choices in by_doc.values():
            for k in (0, 2):  # argmax of log-likelihood, and of log-likelihood per character
                pick = lambda j: max(range(len(choices)), key=lambda i: choices[i][k + j])
                assert pick(0) == pick(1), name
        a, b = ours.loglikelihood_rolling(rolling, disable_tqdm=True), theirs.loglikelihood_rolling(rolling, disable_tqdm=True)
        # plus float32's rounding of the hf backend's sum over each window (ours adds in float64)
        assert all(abs(x - y) <= 1e-4 + 1e-6 * abs(y) for x, y in zip(a, b)), (name, a, b)
    # the export is also a GPT-2 directory that init_from reads back (as --init_from=gpt2 reads GPT-2's own)
    a = harness(bpe_ckpt).loglikelihood(requests, disable_tqdm=True)
    b = harness("unused", init_from=str(tmp_path / "plain")).loglikelihood(requests, disable_tqdm=True)
    assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) <= 1e-5


# ----------------------------------------------------------------------------- bad input
@needs_lm_eval
def test_bad_input_is_one_line(bpe_ckpt, tmp_path):
    """A missing checkpoint, no tasks, a quantized cache without a cache, an unknown cache form, a layer the
    model lacks, a bad model_args key: one line each, exit status 1."""
    local = [f"--out_dir={bpe_ckpt}", f"--include_path={TASKS}", "--tasks=lensgpt_mc", "--device=cpu"]
    tasks = tmp_path / "tasks"  # a task whose data file is not where its YAML says
    tasks.mkdir()
    (tasks / "gone.yaml").write_text("task: gone\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: gone.jsonl\n"
                                     "output_type: loglikelihood\ntest_split: test\ndoc_to_text: a\ndoc_to_target: b\n")
    cases = [
        ([f"--out_dir={tmp_path}/none", "--tasks=lensgpt_mc"], f"error: no checkpoint at {tmp_path}/none/ckpt.pt"),
        ([f"--out_dir={bpe_ckpt}"], "error: tasks is empty"),
        (local + ["--kv_bits=4"], "error: kv_bits=4 quantizes the KV cache: it needs kv_cache"),
        (local + ["--kv_cache=fast"], "error: kv_cache must be False, True, auto, kv or input, got 'fast'"),
        (local + ["--attn_skip_layers=(5,)"], "error: attn_skip_layers [5] are not layers of this 2-layer model"),
        (local + ["--kv_cache=kv", "--kv_bits=4", "--kv_group=5"], "error: kv_group=5 must divide head_dim=8"),
        (local[:1] + [f"--include_path={tasks}", "--tasks=gone", "--device=cpu", f"--json_out={tmp_path}/x.json"],
         "error: lm-eval could not load a task's data: Unable to find"),
    ]
    results = run_many(*[["eval_harness.py", *c] for c, _ in cases])
    for (args, msg), p in zip(cases, results):
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and lines and lines[-1].startswith(msg), (args, p.stderr[-2000:])
        assert "Traceback" not in p.stderr, args
    import eval_harness  # lm-eval's model_args (its command line's form)
    with pytest.raises(SystemExit, match=r"^error: lensgpt does not take model_args kv_bit \(did you mean kv_bits\?\)$"):
        eval_harness.LensGPT.create_from_arg_string(f"out_dir={bpe_ckpt},kv_bit=4", {"device": "cpu"})
    lm = eval_harness.LensGPT.create_from_arg_string(f"out_dir={bpe_ckpt},attn_skip_layers=(0,1),kv_cache=kv",
                                                     {"device": "cpu", "batch_size": "2"})
    assert (lm.skip, lm.cache["form"], lm.batch_size) == ((0, 1), "kv", 2)
    # without lm-eval: a module that fails to import in its place
    (tmp_path / "lm_eval.py").write_text("raise ImportError('lm_eval is not installed here')\n")
    p, = run_many(["eval_harness.py", f"--out_dir={bpe_ckpt}", "--tasks=lensgpt_mc"], env={"PYTHONPATH": str(tmp_path)})
    assert p.returncode == 1 and p.stderr.strip() == \
        'error: eval_harness.py needs lm-evaluation-harness: pip install "lm_eval[hf]>=0.4.10,<0.5"'


@pytest.mark.slow
@needs_lm_eval
def test_unknown_task_and_lm_eval_own_command_line(bpe_ckpt, tmp_path):
    """A task name lm-eval does not know lists the close names (lm-eval's whole task index: slow); lm-eval's
    own command line runs the `lensgpt` model (this module imported) and gives the numbers
    eval_harness.py gives."""
    unknown, own, ours = run_many(
        ["eval_harness.py", f"--out_dir={bpe_ckpt}", "--tasks=hellaswagg", "--device=cpu"],
        ["eval_harness.py", "lm_eval", "--model", "lensgpt", "--model_args", f"out_dir={bpe_ckpt},kv_cache=input",
         "--tasks", "lensgpt_mc", "--include_path", TASKS, "--device", "cpu", "--batch_size", "4",
         "--output_path", str(tmp_path / "lm_eval")],
        ["eval_harness.py", f"--out_dir={bpe_ckpt}", "--tasks=lensgpt_mc", f"--include_path={TASKS}", "--device=cpu",
         f"--json_out={tmp_path / 'ours.json'}"])
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines()[-1].startswith("error: lm-eval does not know the task 'hellaswagg'; "
                                                              "close names: hellaswag")
    assert own.returncode == 0 and ours.returncode == 0, own.stderr[-2000:] + ours.stderr[-2000:]
    [path] = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "lm_eval") for f in fs if f.endswith(".json")]
    with open(path) as f:
        theirs = json.load(f)["results"]["lensgpt_mc"]
    mine = json.loads((tmp_path / "ours.json").read_text())["results"]["lensgpt_mc"]
    assert (theirs["acc,none"], theirs["acc_norm,none"]) == (mine["acc,none"], mine["acc_norm,none"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_lm_eval
def test_cuda_scores_equal_the_cpu_and_bfloat16_stays_close(lens_ckpt):
    """On a GPU: float32 log-likelihoods equal the CPU's to 1e-4, with and without a 16-bit cache; bfloat16
    autocast (the default on CUDA) within 2% of them; greedy generation through the cache gives the CPU's text."""
    import tiktoken
    from lm_eval.api.instance import Instance
    import eval_harness
    requests = ll_requests([p for p, _, _ in bpe_pairs(tiktoken.get_encoding("gpt2"))])
    cpu = harness(lens_ckpt, batch_size=2).loglikelihood(requests, disable_tqdm=True)
    for kw in ({}, {"kv_cache": "kv"}, {"kv_cache": "input"}):
        gpu = eval_harness.LensGPT(out_dir=lens_ckpt, device="cuda", dtype="float32", batch_size=2, **kw)
        got = gpu.loglikelihood(requests, disable_tqdm=True)
        assert max(abs(a[0] - b[0]) for a, b in zip(got, cpu)) <= 1e-4, kw
    half = eval_harness.LensGPT(out_dir=lens_ckpt, device="cuda", batch_size=2).loglikelihood(requests, disable_tqdm=True)
    assert all(abs(a[0] - b[0]) <= 0.02 * abs(b[0]) for a, b in zip(half, cpu))
    gen = [Instance("generate_until", {}, ("The king rose", {"until": ["\n"], "max_gen_toks": 8}), 0)]
    assert eval_harness.LensGPT(out_dir=lens_ckpt, device="cuda", dtype="float32").generate_until(gen) == \
        harness(lens_ckpt).generate_until(gen)
