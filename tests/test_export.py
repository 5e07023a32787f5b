"""export_hf.py: checkpoints of every kind become transformers directories that load with no lensgpt on the path
(plain GPT-2 where GPT-2 can express the config, hf_lensgpt.py with the repo's own model.py elsewhere), whose
logits equal lensgpt's to 1e-5, whose greedy tokens equal sample.py's, and that load back into lensgpt exactly;
bad input is one line; sampling keeps working without transformers."""
import dataclasses
import importlib.util
import json
import os
import pickle
import shutil
import string
import subprocess
import sys

import pytest
import tiktoken
import torch

from conftest import DATA, MANY, ROOT, TINY as TRAIN_TINY, run_many
from model import GPT, GPTConfig

pytest.importorskip("transformers")  # optional (requirements-dev.txt); export_hf.py says so in one line without it
import export_hf  # noqa: E402
from analysis import fix_attn_gates  # noqa: E402
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from engine import generate  # noqa: E402

CHARS = "char_export"  # a character vocabulary of 61 characters, written into the tests' data folder
TINY = dict(block_size=32, n_layer=2, n_head=4, n_embd=32, mlp_ctx_rank=8)
FULL = dict(use_reciprocity=True, use_discoverability=True, use_route_gate=True, mlp_use_ctx_summary=True)
# name: (model_args, dataset, arch, the route it must take)
CASES = {
    # nanoGPT's own ckpt.pt: its model_args name no lens field (exact GELU), bias=False
    "nanogpt": (dict(TINY, vocab_size=61, bias=False, dropout=0.0), CHARS, "auto", "gpt2"),
    # GPT-2's padded BPE vocabulary, untied embeddings, a narrower MLP (n_inner)
    "gpt2_bpe": (dict(TINY, vocab_size=50304, tie_embeddings=False, mlp_expansion_ratio=2.5), "openwebtext", "auto",
                 "gpt2"),
    "baseline_as_code": (dict(TINY, vocab_size=61), CHARS, "lensgpt", "lensgpt"),
    "full": (dict(TINY, vocab_size=61, **FULL), CHARS, "auto", "lensgpt"),
    "full_mqa_untied": (dict(TINY, vocab_size=61, n_kv_head=1, tie_embeddings=False, **FULL), CHARS, "auto", "lensgpt"),
    "gqa": (dict(TINY, vocab_size=61, n_kv_head=2), CHARS, "auto", "lensgpt"),
    "cla_lens": (dict(TINY, vocab_size=61, use_reciprocity=True, use_discoverability=True, n_kv_head=2, kv_share=2),
                 CHARS, "auto", "lensgpt"),
    "placement": (dict(TINY, vocab_size=61, attn_layers=(1,), n_kv_head=1, **FULL), CHARS, "auto", "lensgpt"),
    "budget_removed": (dict(TINY, vocab_size=61, n_layer=3, attn_budget=0.34, **FULL), CHARS, "auto", "lensgpt"),
    "window": (dict(TINY, vocab_size=61, attn_window=4, use_discoverability=True), CHARS, "auto", "lensgpt"),
    # the custom route with GPT-2's BPE (sample.py --init_from=DIR reads it; the character ones need meta.pkl)
    "lens_bpe": (dict(TINY, vocab_size=50304, n_kv_head=2, **FULL), "openwebtext", "auto", "lensgpt"),
}
HUB = ("lensgpt-tests/full", "full")  # a repo id, and the export its Hub cache holds (hub_cache)
PROMPT, NEW = "ROMEO: ", 20  # prompt + new tokens within block_size: transformers' models do not crop the context


def char_meta():
    os.makedirs(os.path.join(DATA, CHARS), exist_ok=True)
    chars = string.ascii_letters + " \n.,:;!?'"
    meta = {"vocab_size": len(chars), "stoi": {c: i for i, c in enumerate(chars)},
            "itos": {i: c for i, c in enumerate(chars)}, "dtype": "uint16"}
    with open(os.path.join(DATA, CHARS, "meta.pkl"), "wb") as f:
        pickle.dump(meta, f)
    return meta


def write_checkpoint(out, name, args, dataset):
    """A trained-looking checkpoint: every parameter and the route bias moved off its init, so a transposed,
    dropped or zeroed tensor shows; an attn_budget model gets its gates fixed (one layer open)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**args))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for b in model.transformer.h:
            if b.use_route:
                b.route_bias.fill_(0.3)
            if b.use_gate:
                b.attn_log_alpha.fill_(torch.randn(()).item())
    if model.config.attn_budget is not None:
        assert len(fix_attn_gates(model)) == 1
    model_args = args if name == "nanogpt" else dataclasses.asdict(model.config)
    os.makedirs(out, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "optimizer": {}, "model_args": model_args, "iter_num": 7,
                     "best_val_loss": 2.0, "config": {"dataset": dataset}}, os.path.join(out, "ckpt.pt"))


# Runs with cwd in a temporary folder and PYTHONPATH cleared: nothing of lensgpt is importable, so whatever runs the
# model is what the export ships. Writes, per export, its logits and greedy tokens and what its tokenizer makes.
CHECK = r"""
import importlib.util, json, sys, torch, tiktoken
from transformers import AutoModelForCausalLM, AutoTokenizer
assert not any(importlib.util.find_spec(m) for m in ("model", "export_hf", "hf_lensgpt", "engine")), sys.path
cases, idx, prompt, new, text = torch.load(sys.argv[1])
out = {}
for name, (path, custom) in cases.items():
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=custom)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=custom)
    assert not model.training
    r = {"class": type(model).__name__, "module_file": sys.modules[type(model).__module__].__file__,
         "tied": type(model)._tied_weights_keys}
    with torch.no_grad():
        r["logits"] = model(idx % model.config.vocab_size).logits
        ids = torch.tensor([tok(prompt)["input_ids"]])
        r["greedy"] = model.generate(ids, max_new_tokens=new, do_sample=False)
        r["greedy_use_cache"] = model.generate(ids, max_new_tokens=new, do_sample=False, use_cache=True)
    r["text"] = tok.decode(r["greedy"][0])
    r["prompt_ids"] = ids[0].tolist()
    t = text if len(tok) > 1000 else "".join(c for c in text if c in tok.get_vocab())
    r["encodes"] = tok(t)["input_ids"], tok.decode(tok(t)["input_ids"]) == t
    if len(tok) > 1000:
        r["tiktoken"] = tiktoken.get_encoding("gpt2").encode(t, allowed_special={"<|endoftext|>"})
    out[name] = r
torch.save(out, sys.argv[2])
"""
TEXT = ("Hello world!  It's 3.14 \u2014 na\u00efve caf\u00e9 \u65e5\u672c \U0001F916\n\n  tabs\tand <|endoftext|> "
        "ROMEO: 've\r\n")


def hub_cache(home, repo, src):
    """The Hugging Face Hub cache (HF_HOME) as a download of `repo` leaves it, holding the export `src`: offline,
    from_pretrained(repo) reads it as it would a Hub repository (with the Hub's checks of remote code)."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(src, root / "snapshots" / commit)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported in this process; then, in ONE process without lensgpt, every export loaded by
    transformers. Returns (tmp, references from lensgpt, results from transformers)."""
    tmp = tmp_path_factory.mktemp("export")
    meta = char_meta()
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 50304, (2, 32), generator=gen)
    refs, cases = {}, {}
    for name, (args, dataset, arch, route) in CASES.items():
        write_checkpoint(tmp / name, name, args, dataset)
        assert export_hf.export(str(tmp / name), str(tmp / "hf" / name), arch=arch, quiet=True) == route, name
        ck_path = str(tmp / name / "ckpt.pt")
        model = model_from_checkpoint(load_checkpoint(ck_path), ck_path).eval()  # gates fixed, nothing removed
        V = model.config.vocab_size
        prompt = torch.tensor([[meta["stoi"][c] for c in PROMPT] if dataset == CHARS else
                               tiktoken.get_encoding("gpt2").encode(PROMPT)])  # sample.py's encodings
        with torch.no_grad():
            refs[name] = {"logits": model(idx % V, targets=idx % V)[0],
                          "greedy": generate(model, prompt, NEW, temperature=0),  # sample.py's decoding (KV cache)
                          "model": model}
        cases[name] = (str(tmp / "hf" / name), route == "lensgpt")
    hub_cache(tmp / "hf_home", HUB[0], tmp / "hf" / HUB[1])
    cases["hub"] = (HUB[0], True)
    torch.save((cases, idx, PROMPT, NEW, TEXT), tmp / "cases.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp / "hf_home"), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", CHECK, str(tmp / "cases.pt"), str(tmp / "out.pt")], cwd=tmp, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp, refs, torch.load(tmp / "out.pt", weights_only=False)


def test_exported_logits_equal_lensgpt(exported):
    """Logits at every position (padding rows of the vocabulary too) to 1e-5 in float32, by transformers'
    classes: GPT2LMHeadModel for plain GPT-2, the shipped code (in transformers' module cache) elsewhere."""
    tmp, refs, outs = exported
    diffs = {}
    for name, (_, _, _, route) in CASES.items():
        ref, out = refs[name], outs[name]
        assert out["class"] == ("GPT2LMHeadModel" if route == "gpt2" else "LensGPTForCausalLM"), name
        if route == "lensgpt":  # the code that ran is the export's copy, loaded by transformers
            assert out["module_file"].startswith(str(tmp / "hf_home")), out["module_file"]
            assert out["tied"] == {"gpt.lm_head.weight": "gpt.transformer.wte.weight"}  # transformers 5's dict form
        assert out["logits"].shape == ref["logits"].shape, name
        diffs[name] = (out["logits"] - ref["logits"]).abs().max().item()
    print("max |logit difference| per export:", {k: f"{v:.2g}" for k, v in diffs.items()})
    assert all(d <= 1e-5 for d in diffs.values()), diffs


def test_generate_equals_sample_greedy(exported):
    """model.generate(do_sample=False) gives engine.generate's greedy tokens (sample.py, KV cache); with
    use_cache=True too, which the custom route recomputes rather than caching."""
    _, refs, outs = exported
    for name in CASES:
        assert torch.equal(outs[name]["greedy"], refs[name]["greedy"]), name
        assert torch.equal(outs[name]["greedy_use_cache"], refs[name]["greedy"]), name


def test_round_trip_is_exact(exported):
    """export_hf.load and GPT.from_pretrained (what sample.py and eval_harness.py --init_from=DIR, and train.py's
    fine-tuning, call) give back the checkpoint's model: the same config and bit-identical tensors, either route,
    tied or untied (the budget model as its static attn_layers model, which sample.py decodes too)."""
    from analysis import remove_closed_attention
    tmp, refs, _ = exported
    for name in CASES:
        model = refs[name]["model"]
        if model.config.attn_budget is not None:
            model = remove_closed_attention(model)
        for back in (export_hf.load(str(tmp / "hf" / name)), GPT.from_pretrained(str(tmp / "hf" / name))):
            assert back.config == model.config, name
            a, b = model.state_dict(), back.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_from_pretrained_reads_gpt2_directories_tied_or_untied(exported, tmp_path):
    """A GPT-2 directory that is not an export (no `lensgpt` in config.json) is read as GPT-2: tied (nanoGPT's
    export with that key removed: its zero biases and exact GELU give the same logits) or untied
    (tie_word_embeddings=false: its own lm_head, not the embeddings), logits equal to 1e-5."""
    from transformers import GPT2Config, GPT2LMHeadModel
    tmp, refs, _ = exported
    shutil.copytree(tmp / "hf" / "nanogpt", tmp_path / "tied")
    cfg = json.loads((tmp_path / "tied" / "config.json").read_text())
    del cfg["lensgpt"]
    (tmp_path / "tied" / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=32, vocab_size=61,
                                    tie_word_embeddings=False)).eval()
    hf.save_pretrained(tmp_path / "untied")
    idx = torch.randint(0, 61, (2, 32))
    with torch.no_grad():
        for d, want in (("tied", refs["nanogpt"]["model"](idx, targets=idx)[0]), ("untied", hf(idx).logits)):
            model = GPT.from_pretrained(str(tmp_path / d)).eval()
            assert model.config.tie_embeddings == (d == "tied")
            assert torch.allclose(model(idx, targets=idx)[0], want, atol=1e-5, rtol=0), d


def test_from_pretrained_overrides_on_an_export(exported):
    """Overrides on an export act as on GPT-2's weights: a setting the export fixes must match (one ValueError
    line), dropout is free, and mechanisms an export leaves off can be added on top from their init."""
    tmp, refs, _ = exported
    with pytest.raises(ValueError, match=r"^use_reciprocity=False does not match the pretrained weights "
                                         r"\(use_reciprocity=True\)$"):
        GPT.from_pretrained(str(tmp / "hf" / "full"), use_reciprocity=False)
    with pytest.raises(ValueError, match=r"^tie_embeddings=True does not match"):
        GPT.from_pretrained(str(tmp / "hf" / "full_mqa_untied"), tie_embeddings=True)
    model = GPT.from_pretrained(str(tmp / "hf" / "gpt2_bpe"), dropout=0.1, use_discoverability=True)
    assert model.config.dropout == 0.1 and model.config.use_discoverability and not model.config.tie_embeddings
    assert torch.equal(model.lm_head.weight, refs["gpt2_bpe"]["model"].lm_head.weight)


def test_shipped_code_passes_the_hub_check(exported):
    """Loading by repo id, transformers first checks that every module each shipped file imports is installed
    (dynamic_module_utils.check_imports, on hf_lensgpt.py and then model.py); a local directory is checked on
    hf_lensgpt.py alone. The shipped files import only the standard library, torch, transformers and each other,
    and a custom export loads by repo id from an offline Hub cache, with lensgpt's logits."""
    from transformers.dynamic_module_utils import get_imports
    tmp, refs, outs = exported
    for name, (_, _, _, route) in CASES.items():
        if route == "lensgpt":
            shipped = {f.removesuffix(".py") for f in os.listdir(tmp / "hf" / name) if f.endswith(".py")}
            assert shipped == {"hf_lensgpt", "model"}, name
            for f in shipped:
                outside = set(get_imports(tmp / "hf" / name / f"{f}.py")) - set(sys.stdlib_module_names) - shipped
                assert outside <= {"torch", "transformers"}, (name, f, outside)
    out = outs["hub"]
    assert out["class"] == "LensGPTForCausalLM" and out["module_file"].startswith(str(tmp / "hf_home"))
    assert (out["logits"] - refs[HUB[1]]["logits"]).abs().max().item() <= 1e-5
    assert torch.equal(out["greedy"], refs[HUB[1]]["greedy"]) and out["text"] == outs[HUB[1]]["text"]


def test_export_directories(exported):
    """Plain exports are GPT-2's files only; custom ones carry auto_map and ship model.py byte for byte (one
    source of truth) beside hf_lensgpt.py; GPT-2's activation, context and padding come from the checkpoint."""
    tmp, _, _ = exported
    with open(os.path.join(ROOT, "model.py"), "rb") as f:
        model_py = f.read()
    for name, (args, dataset, _, route) in CASES.items():
        d = tmp / "hf" / name
        cfg = json.loads((d / "config.json").read_text())
        files = set(os.listdir(d))
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files, name
        if route == "gpt2":
            assert cfg["model_type"] == "gpt2" and "auto_map" not in cfg and not any(f.endswith(".py") for f in files)
            assert cfg["n_positions"] == 32 and cfg["vocab_size"] == args["vocab_size"]
            assert cfg["activation_function"] == {"nanogpt": "gelu", "gpt2_bpe": "gelu_new"}[name]
            assert cfg["tie_word_embeddings"] == args.get("tie_embeddings", True)
        else:
            assert cfg["model_type"] == "lensgpt" and cfg["use_cache"] is False
            assert cfg["auto_map"] == {"AutoConfig": "hf_lensgpt.LensGPTConfig",
                                       "AutoModelForCausalLM": "hf_lensgpt.LensGPTForCausalLM"}
            assert (d / "model.py").read_bytes() == model_py, name


def test_tokenizers_match_lensgpt(exported):
    """GPT-2's BPE encodes as tiktoken does (special token, unicode, whitespace runs) and the character
    vocabulary as meta.pkl's stoi; both decode back to the text."""
    _, _, outs = exported
    ids, roundtrip = outs["gpt2_bpe"]["encodes"]
    assert ids == outs["gpt2_bpe"]["tiktoken"] and roundtrip
    meta = char_meta()
    ids, roundtrip = outs["full"]["encodes"]
    assert ids == [meta["stoi"][c] for c in TEXT if c in meta["stoi"]] and roundtrip
    assert outs["full"]["prompt_ids"] == [meta["stoi"][c] for c in PROMPT]


@pytest.fixture(scope="module")
def scripts(exported):
    """sample.py's greedy text from four checkpoints and from two exports (--init_from=DIR), and export_hf.py's
    command lines, good and bad: all in one process (run_many). Returns (folder, [(name, sample.py's result)],
    {name: sample.py --init_from=DIR's result}, [(args, expected last stderr line or None for success, result)])."""
    tmp, _, _ = exported
    cli = tmp / "cli"
    (cli / "full").mkdir(parents=True)
    (cli / "full" / "stray.txt").write_text("x")
    (cli / "a_file").write_text("x")
    greedy = [f"--start={PROMPT}", "--temperature=0", f"--max_new_tokens={NEW}", "--num_samples=1", "--device=cpu"]
    samples = [(["sample.py", f"--out_dir={tmp / n}", *greedy], n) for n in ("nanogpt", "full", "gpt2_bpe", "lens_bpe")]
    samples += [(["sample.py", f"--init_from={tmp / 'hf' / n}", *greedy], n) for n in ("gpt2_bpe", "lens_bpe")]
    full, bad = tmp / "full", cli / "a_file" / "sub" / "x"
    cases = [
        ([f"--out_dir={cli / 'none'}", f"--to={cli / 'x'}"], f"error: no checkpoint at {cli / 'none' / 'ckpt.pt'}"),
        ([f"--out_dir={full}"], "error: --to=DIR is required: the directory to export into"),
        ([f"--out_dir={full}", f"--to={cli / 'full'}"],
         f"error: --to={cli / 'full'} is not empty; pass --force to replace what it holds"),
        ([f"--out_dir={full}", f"--to={bad}"], f"error: cannot write the export next to {bad}: Not a directory"),
        ([f"--out_dir={full}", f"--to={full}", "--force"],
         f"error: --to={full} holds the checkpoint being exported ({full / 'ckpt.pt'}); choose another directory"),
        ([f"--out_dir={full}", f"--to={cli / 'y'}", "--arch=gpt2"],
         "error: use_reciprocity=True: GPT-2 has no place for it; export with --arch=lensgpt (or auto), loaded with "
         "trust_remote_code=True"),
        ([f"--out_dir={full}", f"--to={cli / 'y'}", "--arch=gpt3"],
         "error: arch must be auto, gpt2 or lensgpt, got 'gpt3'"),
        ([f"--out_dir={full}", f"--to={cli / 'full'}", "--force"], None),  # replaces what is there
        (["--help"], None),
        # --init_from=DIR reads GPT-2's BPE: a character-level export is refused in one line, not indexed past
        (["sample.py", f"--init_from={tmp / 'hf' / 'full'}", "--device=cpu"], f"error: {tmp / 'hf' / 'full'} has 61 "
         "tokens, fewer than GPT-2's 50257: sample a character-level model from its checkpoint (--out_dir)"),
    ]
    if importlib.util.find_spec("lm_eval"):
        cases.append((["eval_harness.py", f"--init_from={tmp / 'hf' / 'full'}", "--tasks=lensgpt_mc", "--device=cpu",
                       "--include_path=tests/harness_tasks", f"--json_out={cli / 'x.json'}"], f"error: {tmp / 'hf' / 'full'} has 61 tokens, fewer than "
                      "GPT-2's 50257: score a character-level model from its checkpoint (--out_dir)"))
    runs = run_many(*[c for c, _ in samples], *[a if a[0].endswith(".py") else ["export_hf.py", *a] for a, _ in cases])
    k = len(samples) - 2
    return (cli, list(zip([n for _, n in samples[:k]], runs)), dict(zip([n for _, n in samples[k:]], runs[k:])),
            [(a, want, p) for (a, want), p in zip(cases, runs[len(samples):])])


def test_sample_py_text_equals_transformers_text(exported, scripts):
    """sample.py's greedy text, from the checkpoint, equals the exported model's generate() decoded by the
    exported tokenizer, plain and custom exports, characters and BPE; and sample.py --init_from=DIR on an export
    gives the text it gives from the checkpoint (GPT.from_pretrained reads the export exactly)."""
    _, _, outs = exported
    text = lambda p: p.stdout.split("\n---------------")[0]
    for name, p in scripts[1]:
        assert p.returncode == 0, p.stderr
        assert text(p) == outs[name]["text"], name
    for name, p in scripts[2].items():
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert text(p) == outs[name]["text"], name


def test_bad_input_is_one_line(scripts):
    cli, _, _, cases = scripts
    for args, want, p in cases:
        assert "Traceback" not in p.stderr, (args, p.stderr)
        if want is None:
            assert p.returncode == 0, (args, p.stderr)
        else:
            assert p.returncode == 1 and p.stderr.strip().splitlines()[-1] == want, (args, p.stderr)
    assert not (cli / "full" / "stray.txt").exists() and (cli / "full" / "config.json").exists()
    assert sorted(os.listdir(cli)) == ["a_file", "full"]  # nothing half-written, no staging folder left behind


def test_export_of_a_model_object_and_bfloat16(exported):
    """export() takes a GPT in memory (with meta.pkl's dict) and leaves it as it was; dtype=bfloat16 writes
    bfloat16 weights, which load back as the model's weights rounded to bfloat16."""
    tmp, refs, _ = exported
    model = refs["full"]["model"].train()
    assert export_hf.export(model, str(tmp / "api"), meta=char_meta(), dtype="bfloat16", quiet=True) == "lensgpt"
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert json.loads((tmp / "api" / "config.json").read_text())["dtype"] == "bfloat16"
    back = export_hf.load(str(tmp / "api")).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v.to(torch.bfloat16).float()), k
    model.eval()


def test_open_gates_export_as_gpt2_and_token_ids_without_tokenizer(tmp_path):
    """An attn_budget model whose fixed gates closed no layer is plain GPT-2 once they are removed; a model of
    token ids with no text (meta.pkl's mask: the recall set) exports without a tokenizer."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, vocab_size=61, attn_budget=1.0)).eval()
    assert fix_attn_gates(model) == [0, 1]
    assert export_hf.export(model, str(tmp_path / "open"), meta=char_meta(), quiet=True) == "gpt2"
    assert export_hf.load(str(tmp_path / "open")).config.attn_budget is None
    assert export_hf.export(GPT(GPTConfig(**TINY, vocab_size=61)), str(tmp_path / "ids"), meta={"mask": True},
                            quiet=True) == "gpt2"
    assert not any(f.startswith("tokenizer") for f in os.listdir(tmp_path / "ids"))


def test_without_transformers(exported, char_data):
    """With transformers, safetensors, tokenizers and lm-eval not importable, training and sampling work,
    export_hf.py and eval_harness.py list their settings (--help), and each says in one line what to install."""
    tmp, _, _ = exported
    block = "import sys; sys.modules.update(dict.fromkeys(['transformers', 'safetensors', 'tokenizers', 'lm_eval']))\n"
    cmds = [["train.py", *TRAIN_TINY, "--max_iters=2", "--eval_interval=2", f"--out_dir={tmp / 'trained'}"],
            ["sample.py", f"--out_dir={tmp / 'full'}", "--max_new_tokens=3", "--num_samples=1", "--device=cpu"],
            ["export_hf.py", f"--out_dir={tmp / 'full'}", f"--to={tmp / 'nope'}"],
            ["eval_harness.py", f"--out_dir={tmp / 'full'}", "--tasks=lensgpt_mc"],
            ["export_hf.py", "--help"], ["eval_harness.py", "--help"]]
    p = subprocess.run([sys.executable, "-c", block + MANY], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                       input=json.dumps(cmds))
    assert p.returncode == 0, p.stderr[-3000:]
    (rc0, _, err0), (rc1, _, err1), (rc2, _, err2), (rc3, _, err3), *helps = \
        json.loads(p.stdout.rsplit("@@results@@", 1)[1])
    assert rc0 == 0 and (tmp / "trained" / "ckpt.pt").exists(), err0
    assert rc1 == 0, err1
    assert rc2 == 1 and err2.strip() == "error: export_hf.py needs transformers and safetensors: pip install " \
                                       "transformers safetensors", err2
    assert rc3 == 1 and err3.strip() == \
        'error: eval_harness.py needs lm-evaluation-harness: pip install "lm_eval[hf]>=0.4.10,<0.5"', err3
    for rc, out, err in helps:
        assert rc == 0 and "\n  --out_dir=" in out, err
    assert not (tmp / "nope").exists()
