"""
Sample from a trained model, streaming tokens as they are made, with the KV cache by default.

$ python sample.py --out_dir=out-ablation_full
$ python sample.py --out_dir=out-ablation_full --start="ROMEO:" --attn_skip_layers="(2,3)"
$ python sample.py --out_dir=out-ablation_full --kv_cache=kv --compile=True
$ python sample.py --out_dir=out-ablation_full --kv_bits=4 --kv_group=32 --kv_residual=16   # a quantized cache
$ python sample.py --out_dir=out-ablation_full --top_k=0 --top_p=0.9   # nucleus sampling over the whole vocabulary
$ python sample.py --init_from=gpt2 --start=FILE:prompt.txt     # needs `pip install transformers`
"""
import codecs
import os
import sys
import time

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from configurator import configure, die, require, setup_device
from evaluate import dataset_meta
from analysis import analyze_attn_gates, remove_closed_attention
from engine import cache_form, check_quant, compiled_decode_step, generate_stream
from model import GPT

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (from out_dir) or a GPT-2 name / local Hugging Face directory
out_dir = "out"
start = "\n"  # or "<|endoftext|>" or "FILE:prompt.txt"; empty: a newline (characters) or end-of-text (BPE)
num_samples = 3
max_new_tokens = 500
temperature = 0.8  # 1.0 = the model's distribution, < 1 more conservative, 0 = greedy
top_k = 200  # keep only the top_k most likely tokens; 0 keeps all
top_p = 1.0  # then keep the most likely tokens whose probability reaches top_p (nucleus sampling); 1.0 keeps all
seed = 1337
device = None  # None: cuda, then mps, then cpu
dtype = None  # None: bfloat16 where supported on CUDA (else float16), float32 elsewhere
compile = False  # torch.compile the decode step (CUDA graphs on CUDA); needs the KV cache
kv_cache = "auto"  # auto (True): the smaller form; kv: K, V (+ Q); input: ln_1(x); False: recompute every step
attn_skip_layers = ()  # run these layers with attention removed (they keep no cache)
kv_bits = 16  # 8 or 4: keep the cache quantized (keys per channel, values and x^ per token); 16: as computed
kv_group = 32  # values per quantization group (channels; tokens for keys); must divide head_dim (kv) or n_embd (input)
kv_residual = 0  # the newest tokens kept unquantized (KIVI keeps 128)
# -----------------------------------------------------------------------------
configure(globals(), sys.argv[1:])
require((num_samples >= 1 and max_new_tokens >= 0, "num_samples must be >= 1 and max_new_tokens >= 0"),
        (temperature >= 0 and top_k >= 0, f"temperature and top_k must be >= 0, got {temperature} and {top_k}"),
        (0 < top_p <= 1, f"top_p must be in (0, 1] (1 keeps every token), got {top_p}"))


device, device_type, dtype, ptdtype, ctx = setup_device(device, dtype)
torch.manual_seed(seed)

meta = None
if init_from == "resume":
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    checkpoint = load_checkpoint(ckpt_path, map_location=device)
    model = model_from_checkpoint(checkpoint, ckpt_path)
    if model.config.attn_budget is not None and analyze_attn_gates(model)["fixed"]:
        model = remove_closed_attention(model)  # the same logits, and nothing cached for the closed layers
        print(f"attention gates fixed: attention in layers {list(model.config.attn_layers)} only")
    dataset = checkpoint["config"].get("dataset")
    meta = dataset_meta(dataset) or None
else:
    try:
        model = GPT.from_pretrained(init_from)
    except (OSError, ValueError) as e:
        die(f"cannot load {init_from}: {e}")
    if model.config.vocab_size < 50257:  # (a character-level export: GPT-2's BPE below would index past it)
        die(f"{init_from} has {model.config.vocab_size} tokens, fewer than GPT-2's 50257: sample a character-level "
            f"model from its checkpoint (--out_dir)")
bad = [i for i in attn_skip_layers if not (isinstance(i, int) and 0 <= i < model.config.n_layer)]
if bad:
    die(f"attn_skip_layers {bad} are not layers of this {model.config.n_layer}-layer model")
model.eval().to(device)
kv_cache = {"True": True, "False": False}.get(kv_cache, kv_cache)
if kv_cache is not False:  # the cache forms are the model's to name: one check, in model.cache_form
    try:
        cache_form(model.config, kv_cache)
    except ValueError:
        die(f"kv_cache must be True, False, auto, kv or input, got {kv_cache!r}")
if compile and kv_cache is False:
    die("compile=True compiles the cached decode step: it needs the KV cache (kv_cache=False recomputes)")
if kv_bits != 16 and kv_cache is False:
    die(f"kv_bits={kv_bits} quantizes the KV cache: it needs kv_cache (False recomputes)")
try:  # the form that will be used, so that the group is checked against its axis
    check_quant(model.config, cache_form(model.config, kv_cache or "auto"), kv_bits, kv_group, kv_residual)
except ValueError as e:
    die(str(e))

if meta is not None and meta.get("mask"):
    die(f"this model was trained on data/{dataset}, token ids with no text vocabulary: there is nothing to "
        f"prompt it with; measure it with kv_cache_bench.py --ckpt={out_dir}/ckpt.pt or ablate.py")
if meta is not None and "stoi" in meta:  # a character-level vocabulary
    stoi, itos, empty = meta["stoi"], meta["itos"], "\n"

    def encode(s):
        missing = sorted({c for c in s if c not in stoi})
        if missing:
            die(f"the prompt has characters this model's vocabulary lacks: {''.join(missing)!r}")
        return [stoi[c] for c in s]

    def make_decoder():
        return lambda ids: "".join(itos[i] for i in ids)
else:
    import tiktoken
    enc, empty = tiktoken.get_encoding("gpt2"), "<|endoftext|>"

    def encode(s):
        return enc.encode(s, allowed_special={"<|endoftext|>"})

    def make_decoder():  # a BPE token can end inside a UTF-8 character: decode the bytes incrementally
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: utf8.decode(enc.decode_bytes(ids))

if start.startswith("FILE:"):
    path = start[5:]
    if not os.path.isfile(path):
        die(f"prompt file {path} not found")
    with open(path, encoding="utf-8") as f:
        start = f.read()
ids = encode(start or empty)
if len(ids) > model.config.block_size:
    print(f"warning: the prompt has {len(ids)} tokens; keeping the last {model.config.block_size} (block_size)",
          file=sys.stderr)
    ids = ids[-model.config.block_size:]
x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]


def graphs():
    """Graphs torch.compile has built so far: a step during which this grows compiled (and is not timed)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"] if compile else 0


if compile:  # torch.compile's wrapper, and the seconds of imports it takes, before any timing
    compiled_decode_step(device_type)


top_k = top_k or None
for k in range(num_samples):
    dec = make_decoder()
    sys.stdout.write(dec(ids))
    n, seen, compiled, compiling = 0, graphs(), 0, 0.0
    t0 = last = time.perf_counter()
    with ctx:
        for tok in generate_stream(model, x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                   kv_cache=kv_cache, attn_skip_layers=attn_skip_layers, compile=compile,
                                   kv_bits=kv_bits, kv_group=kv_group, kv_residual=kv_residual):
            sys.stdout.write(dec(tok[0].tolist()))
            sys.stdout.flush()
            now = time.perf_counter()
            if graphs() == seen:
                n += 1
            else:  # this step compiled the decode step (the first compiled step of a run): not decoding speed
                seen, compiled, compiling = graphs(), compiled + 1, compiling + now - last
            last = now
    dt = time.perf_counter() - t0 - compiling
    speed = f"{n} tokens in {dt:.2f}s" + (f", {n / dt:.1f} tokens/s" if n else "")
    if compiled:
        speed += f"; left out: {compiled} step{'s' * (compiled > 1)} compiling the decode step, {compiling:.1f}s"
    print(f"\n---------------  [{speed}; kv_cache={kv_cache}"
          + (f", {kv_bits}-bit, group {kv_group}, residual {kv_residual}" if kv_bits != 16 else "") + "]", flush=True)
