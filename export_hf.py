"""
Export a lensgpt (or nanoGPT) checkpoint to a Hugging Face transformers directory that
AutoModelForCausalLM.from_pretrained(DIR) loads with no lensgpt installed, and its tokenizer beside it.

- Every mechanism off (the baseline, nanoGPT's checkpoints, --init_from=gpt2 fine-tunes): a standard
  GPT2LMHeadModel (safetensors, Conv1D layouts, zero biases where bias=False).
- Anything GPT-2 has no place for (lens logit terms, route gates, MLP context, GQA/MQA, CLA, placement,
  attention gates, sliding windows): hf_lensgpt.py's classes with this repo's model.py shipped beside them,
  loaded with from_pretrained(DIR, trust_remote_code=True).
The tokenizer: GPT-2's BPE (built from tiktoken's files, no download where tiktoken has them cached) or the
checkpoint's character vocabulary (data/<dataset>/meta.pkl). docs/hub.md says what each route gives.

$ python export_hf.py --out_dir=out-ablation_full --to=hf/ablation_full
$ python export_hf.py --out_dir=out-baseline --to=hf/baseline --force          # replace an earlier export
$ python export_hf.py --out_dir=out-baseline --to=hf/baseline-code --arch=lensgpt  # the custom route even for GPT-2

In Python: export(out_dir_or_ckpt_or_model, to, force=False) writes one; load(DIR) reads one back into lensgpt
(GPT.from_pretrained(DIR) and the scripts' --init_from=DIR read exports through read_export too).
"""
import copy
import dataclasses
import json
import os
import shutil
import sys
import tempfile

import torch

from checkpoint import SHAPE_KEYS, load_checkpoint, model_from_checkpoint
from configurator import configure, die, require
from model import GPT, GPTConfig, mlp_hidden

# -----------------------------------------------------------------------------
out_dir = "out"  # the run to export (its ckpt.pt); or a path to a .pt checkpoint
to = ""  # the export directory (created; it must be empty or absent unless --force)
force = False  # replace what --to holds
arch = "auto"  # auto: plain GPT-2 where GPT-2 can express the config, else lensgpt's code; gpt2 or lensgpt to insist
dtype = "float32"  # the weights' dtype in the export: float32 (exact), bfloat16 or float16
# -----------------------------------------------------------------------------

NEEDS = "export_hf.py needs transformers and safetensors: pip install transformers safetensors"
GELUS = {"tanh": "gelu_new", "exact": "gelu"}  # mlp_activation -> GPT-2's activation_function
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # (in, out) in HF
# the files tiktoken's "gpt2" encoding is built from (tiktoken_ext.openai_public), which the tiktoken cache keeps
GPT2_FILES = {
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}
EOT, GPT2_VOCAB = "<|endoftext|>", 50257


def require_transformers():
    try:
        import safetensors  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        die(NEEDS)


# ----------------------------------------------------------------------------- which route
# GPTConfig's fields that GPT-2's config can take at any value, and the settings of mechanisms that are off
# (what they would be changes nothing while their switch is off); every other field must be GPT-2's own
GPT2_FREE = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "mlp_activation",
             "mlp_expansion_ratio", "tie_embeddings")
IDLE = ("lens_gate_init", "init_route_gate", "route_anneal_start", "route_anneal_end", "route_anneal_target",
        "mlp_ctx_rank", "mlp_ctx_alpha_init", "mlp_ctx_conductor", "attn_free_mlp_iso", "attn_global_every",
        "attn_global_last")


def gpt2_misfit(cfg):
    """The first setting of `cfg` that GPT-2's own classes have no place for, as 'name=value', or None. A field
    this list does not know (a new mechanism) counts as a misfit wherever it is not at its default."""
    plain = GPTConfig(**{k: getattr(cfg, k) for k in GPT2_FREE})
    for f in dataclasses.fields(cfg):
        if f.name in GPT2_FREE + IDLE or (f.name == "attn_layers" and cfg.attention_layers == plain.attention_layers):
            continue
        if getattr(cfg, f.name) != getattr(plain, f.name):
            return f"{f.name}={getattr(cfg, f.name)!r}"
    return None


def source_model(source):
    """(model in eval mode, meta, description) of an out_dir, a checkpoint file or a GPT. An attn_budget model
    whose gates are fixed becomes its static attn_layers model first (exactly the same logits), as sample.py."""
    from analysis import analyze_attn_gates, remove_closed_attention
    from evaluate import dataset_meta
    if isinstance(source, GPT):
        model, meta, what = source, None, "a model in memory"
    else:
        path = source if str(source).endswith(".pt") else os.path.join(source, "ckpt.pt")
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, path)
        dataset = ckpt["config"].get("dataset") if isinstance(ckpt.get("config"), dict) else None
        meta = dataset_meta(dataset) if dataset else {}
        if not meta and model.config.vocab_size < GPT2_VOCAB:
            die(f"{path} has {model.config.vocab_size} tokens, fewer than GPT-2's {GPT2_VOCAB}, and its dataset's "
                f"vocabulary (data/{dataset}/meta.pkl) is not here: prepare it with python data/{dataset}/prepare.py")
        what = f"{path} (iteration {ckpt['iter_num']})"
    model = model.float().eval()
    if model.config.attn_budget is not None and analyze_attn_gates(model)["fixed"]:
        model = remove_closed_attention(model).eval()
    return model, meta, what


# ----------------------------------------------------------------------------- tokenizers
def gpt2_tokenizer(block_size):
    """GPT-2's byte-level BPE as transformers' GPT2Tokenizer, from the very files tiktoken reads (its cache)."""
    from tiktoken.load import read_file_cached
    from transformers import GPT2Tokenizer
    try:
        vocab = json.loads(read_file_cached(*GPT2_FILES["encoder.json"]))
        bpe = read_file_cached(*GPT2_FILES["vocab.bpe"]).decode()
    except Exception as e:  # offline and not in the cache, or a corrupt cache
        die(f"cannot read GPT-2's BPE files through tiktoken (set TIKTOKEN_CACHE_DIR to a cache that holds them): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    merges = [tuple(line.split(" ")) for line in bpe.split("\n")[1:] if line]  # the first line is "#version"
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=block_size, clean_up_tokenization_spaces=False)


def char_tokenizer(meta, block_size):
    """A character vocabulary (meta.pkl's stoi) as a tokenizers WordLevel model, one token per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel(vocab=dict(meta["stoi"])))  # no unknown token: a new character is an error
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character, newlines too
    tok.decoder = decoders.Fuse()  # characters join with nothing between them
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=block_size,
                                   clean_up_tokenization_spaces=False)


def tokenizer_for(cfg, meta):
    """(tokenizer or None, what it is): the character vocabulary where meta.pkl has one, none where the data
    has no text (meta.pkl's mask: the recall set), else GPT-2's BPE."""
    if meta and "stoi" in meta:
        if len(meta["stoi"]) > cfg.vocab_size:
            die(f"the character vocabulary has {len(meta['stoi'])} tokens, the model {cfg.vocab_size}")
        return char_tokenizer(meta, cfg.block_size), f"{len(meta['stoi'])} characters (meta.pkl)"
    if meta and meta.get("mask"):
        return None, "none (the training data are token ids with no text vocabulary)"
    if cfg.vocab_size < GPT2_VOCAB:
        die(f"vocab_size={cfg.vocab_size} is smaller than GPT-2's {GPT2_VOCAB} tokens and there is no character "
            f"vocabulary: pass meta (meta.pkl's dict) with the model")
    return gpt2_tokenizer(cfg.block_size), "GPT-2 BPE" + (
        f" ({GPT2_VOCAB} tokens; the model's {cfg.vocab_size - GPT2_VOCAB} padding rows kept)"
        if cfg.vocab_size > GPT2_VOCAB else "")


# ----------------------------------------------------------------------------- the two routes
def gpt2_model(model, eos):
    """transformers' GPT2LMHeadModel with `model`'s weights: Conv1D's (in, out) layout, zero biases where
    bias=False, and every vocabulary row (padding included: the logits equal lensgpt's everywhere, and a
    softmax normalizes over the same rows)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = model.config
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, n_inner=mlp_hidden(cfg), activation_function=GELUS[cfg.mlp_activation],
                        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                        layer_norm_epsilon=1e-5, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=eos,
                        eos_token_id=eos, lensgpt=dataclasses.asdict(cfg))
    with torch.device("meta"):  # no weights drawn only to be overwritten (seconds at GPT-2's size)
        hf = GPT2LMHeadModel(hf_cfg)
    sd = {k: v.t().contiguous() if k.endswith(CONV1D) else v for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    for k, v in hf.state_dict().items():  # GPT-2 always has biases: bias=False is bias 0
        if k not in sd and k.endswith(".bias") and not cfg.bias:
            sd[k] = torch.zeros(v.shape)
    hf.load_state_dict(sd, assign=True)  # strict: a weight without a place in GPT-2 is an error, not dropped
    hf.tie_weights()
    return hf


def lensgpt_model(model):
    """hf_lensgpt.LensGPTForCausalLM holding `model`'s weights."""
    from hf_lensgpt import LensGPTConfig, LensGPTForCausalLM
    with torch.device("meta"):
        hf = LensGPTForCausalLM(LensGPTConfig(lensgpt=dataclasses.asdict(model.config)))
    hf.gpt.load_state_dict(model.state_dict(), assign=True)
    hf.tie_weights()
    return hf


@torch.no_grad()
def check_logits(model, hf, tol=1e-4):
    """Refuse an export whose logits are not lensgpt's (float32, random tokens): the net under the field checks,
    for anything the config says that the mapping would miss."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.config.vocab_size, (1, min(32, model.config.block_size)), generator=gen)
    ours, _ = model(idx, targets=idx)
    diff = (hf.float()(idx).logits - ours).abs().max().item()
    if not diff <= tol:
        die(f"the exported model's logits differ from lensgpt's by {diff:.3g} (> {tol:g}); nothing was written")
    return diff


# ----------------------------------------------------------------------------- export
def prepare_dir(to, force, sources=()):
    """A fresh staging directory beside `to` (on the same filesystem, so it can be renamed into place)."""
    if not to:
        die("--to=DIR is required: the directory to export into")
    to = os.path.abspath(to)
    if os.path.exists(to) and not os.path.isdir(to):
        die(f"--to={to} is a file, not a directory")
    if os.path.isdir(to) and os.listdir(to) and not force:
        die(f"--to={to} is not empty; pass --force to replace what it holds")
    for s in sources:
        if os.path.commonpath([to, os.path.abspath(s)]) == to:
            die(f"--to={to} holds the checkpoint being exported ({s}); choose another directory")
    parent = os.path.dirname(to)
    try:
        os.makedirs(parent, exist_ok=True)
        return to, tempfile.mkdtemp(prefix=f".{os.path.basename(to)}.", suffix=".tmp", dir=parent)
    except OSError as e:
        die(f"cannot write the export next to {to}: {e.strerror or e}")


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(stage, to):
    """Rename the finished export into place, its files on disk first: a reader sees the old directory or the
    new one, never half of one (records.atomic_write's rule, for a directory)."""
    for name in os.listdir(stage):
        with open(os.path.join(stage, name), "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(stage)
    old = None
    if os.path.isdir(to):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(to)}.", suffix=".old", dir=os.path.dirname(to))
        os.rmdir(old)
        os.replace(to, old)
    os.replace(stage, to)
    fsync_dir(os.path.dirname(to))
    if old:
        shutil.rmtree(old, ignore_errors=True)


def model_card(route, what, cfg, tokenizer, tok_desc, diff):
    """README.md of the export: how to load it, and what it is."""
    trust = ", trust_remote_code=True" if route == "lensgpt" else ""
    cls = "GPT2LMHeadModel (plain GPT-2)" if route == "gpt2" else \
        "LensGPTForCausalLM: hf_lensgpt.py and lensgpt's own model.py, shipped here (trust_remote_code=True)"
    lines = ["# lensgpt export", "", f"Exported by lensgpt's `export_hf.py` from {what}.", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f"model = AutoModelForCausalLM.from_pretrained(DIR{trust})",
             f"tokenizer = AutoTokenizer.from_pretrained(DIR{trust})" if tokenizer else "# no tokenizer (below)",
             "```", "", f"- class: {cls}", f"- tokenizer: {tok_desc}",
             f"- context: {cfg.block_size} tokens; largest logit difference from lensgpt's at export: {diff:.2g} "
             "(float32)"]
    if route == "lensgpt":
        lines.append("- no transformers KV cache on this route: generation runs the whole sequence at each step "
                     "(exact); lensgpt's engine.py has the caches")
    return "\n".join(lines + ["", "lensgpt config:", "", "```json", json.dumps(dataclasses.asdict(cfg), indent=1),
                              "```", ""])


def export(source, to, force=False, arch="auto", dtype="float32", meta=None, quiet=False):
    """Write a transformers directory at `to` from `source` (an out_dir, a .pt checkpoint, or a GPT with `meta`,
    meta.pkl's dict or None for GPT-2's BPE); returns the route taken, "gpt2" or "lensgpt". Bad input is a
    one-line SystemExit, as the repo's scripts'. The directory appears whole or not at all."""
    require_transformers()
    require((arch in ("auto", "gpt2", "lensgpt"), f"arch must be auto, gpt2 or lensgpt, got {arch!r}"),
            (dtype in ("float32", "bfloat16", "float16"), f"dtype must be float32, bfloat16 or float16, got {dtype!r}"))
    if isinstance(source, GPT):
        source, sources = copy.deepcopy(source), ()  # the caller's model keeps its mode and dtype
    else:
        sources = (str(source) if str(source).endswith(".pt") else os.path.join(source, "ckpt.pt"),)
        if not os.path.isfile(sources[0]):
            die(f"no checkpoint at {sources[0]}")
    to, stage = prepare_dir(to, force, sources)  # before any work: a directory we cannot write is the first error
    try:
        model, ckpt_meta, what = source_model(source)
        meta = ckpt_meta if meta is None else meta
        cfg = model.config
        misfit = gpt2_misfit(cfg)
        if arch == "gpt2" and misfit:
            die(f"{misfit}: GPT-2 has no place for it; export with --arch=lensgpt (or auto), loaded with "
                "trust_remote_code=True")
        route = "lensgpt" if arch == "lensgpt" or misfit else "gpt2"
        tokenizer, tok_desc = tokenizer_for(cfg, meta)
        eos = tokenizer.convert_tokens_to_ids(EOT) if tokenizer is not None and "stoi" not in (meta or {}) else None
        hf = (gpt2_model(model, eos) if route == "gpt2" else lensgpt_model(model)).eval()
        diff = check_logits(model, hf)
        from transformers.utils import logging
        bars = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()  # one file, written in a blink: no bar
        try:
            hf.to(getattr(torch, dtype)).save_pretrained(stage)
        finally:
            if bars:
                logging.enable_progress_bar()
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        with open(os.path.join(stage, "README.md"), "w") as f:
            f.write(model_card(route, what, cfg, tokenizer is not None, tok_desc, diff))
        publish(stage, to)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if not quiet:
        how = "GPT2LMHeadModel (plain GPT-2)" if route == "gpt2" else \
            f"LensGPTForCausalLM (trust_remote_code=True{'; ' + misfit + ' has no place in GPT-2' if misfit else ''})"
        print(f"exported {what} to {to} as {how}; tokenizer: {tok_desc}; largest logit difference from "
              f"lensgpt's: {diff:.2g}")
    return route


# ----------------------------------------------------------------------------- and back
def read_export(path):
    """(GPTConfig, state dict in lensgpt's layout) of an export, either route: the config from config.json's
    `lensgpt`, the weights from its safetensors, every weight the config needs there with its shape (a ValueError
    otherwise). load() and GPT.from_pretrained (checkpoint.hf_gpt2_weights) both read exports through it."""
    try:
        from safetensors.torch import load_file
    except ImportError:  # (the scripts' --init_from=DIR report a ValueError in one line)
        raise ValueError(f"reading {path} needs safetensors: pip install safetensors") from None
    with open(os.path.join(path, "config.json")) as f:
        hf_cfg = json.load(f)
    try:
        cfg = GPTConfig(**hf_cfg["lensgpt"])
    except (TypeError, ValueError) as e:  # a field this model.py does not know (a newer lensgpt's export)
        raise ValueError(f"{path} has a lensgpt config this version cannot build: {e}") from None
    files = ["model.safetensors"]
    if os.path.isfile(os.path.join(path, "model.safetensors.index.json")):  # sharded by save_pretrained
        with open(os.path.join(path, "model.safetensors.index.json")) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    sd = {k: v.float() for name in files for k, v in load_file(os.path.join(path, name)).items()}
    if hf_cfg.get("model_type") == "lensgpt":
        sd = {k.removeprefix("gpt."): v for k, v in sd.items()}
    else:  # GPT-2's layout: Conv1D back to (out, in); bias=False's zero biases go
        sd = {k: v.t() if k.endswith(CONV1D) else v for k, v in sd.items()}
        for k in [k for k in sd if k.endswith(".bias") and not cfg.bias]:
            if sd[k].any():
                raise ValueError(f"{path}: {k} is not zero, but the lensgpt config has bias=False")
            del sd[k]
    if cfg.tie_embeddings:  # one tensor: save_pretrained keeps it once, under either name
        wte = sd.setdefault("transformer.wte.weight", sd.get("lm_head.weight"))
        head = sd.setdefault("lm_head.weight", wte)
        if wte is not None and not torch.equal(head, wte):
            raise ValueError(f"{path}: lm_head and the token embeddings differ, but the lensgpt config ties them")
    with torch.device("meta"):  # the names and shapes the config needs, without drawing weights
        want = {k: v.shape for k, v in GPT(cfg).state_dict().items()}
    wrong = [f"missing {k}" for k in want if k not in sd] + [f"unexpected {k}" for k in sd if k not in want] + \
        [f"{k} is {tuple(sd[k].shape)}, not {tuple(want[k])}" for k in want if k in sd and sd[k].shape != want[k]]
    if wrong:
        raise ValueError(f"{path} does not match its lensgpt config: {wrong[0]}")
    return cfg, sd


# the fields GPT.from_pretrained always takes from GPT-2's weights (checkpoint.hf_gpt2_weights): an override that
# differs is an error
GPT2_FIXED = SHAPE_KEYS + ("n_kv_head", "kv_share", "mlp_activation", "tie_embeddings")


def pretrained_weights(path):
    """checkpoint.hf_gpt2_weights' answer for an export: (GPTConfig fields, state dict of read_export). The fields
    are GPT-2's own and every one the export sets away from a GPT-2 of its shape, so GPT.from_pretrained(path)
    builds the export's model exactly, while the fields left at their defaults stay free for overrides to add
    mechanisms on top, as on GPT-2's weights. dropout is left out: it belongs to the run that trains (train.py
    passes its own), not to the weights."""
    cfg, sd = read_export(path)
    plain = GPTConfig(**{k: getattr(cfg, k) for k in SHAPE_KEYS})
    args = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "dropout" and
            (f.name in GPT2_FIXED or getattr(cfg, f.name) != getattr(plain, f.name))}
    return args, sd


def load(path):
    """The lensgpt GPT an export holds (either route), exactly (read_export); a GPT-2 directory without `lensgpt`
    (Hugging Face's gpt2) goes through GPT.from_pretrained. A weight that has no place in the config is a
    ValueError."""
    with open(os.path.join(path, "config.json")) as f:
        if "lensgpt" not in json.load(f):
            return GPT.from_pretrained(path)
    cfg, sd = read_export(path)
    model = GPT(cfg)
    model.load_state_dict(sd)
    return model


def main():
    configure(globals(), sys.argv[1:])
    require_transformers()
    export(out_dir, to, force, arch, dtype)


if __name__ == "__main__":
    main()
