"""
What each config really costs at inference, in each cache form, measured side by side in one run
(random weights: cost does not depend on training). Every ratio is against the baseline in its K/V
form, measured in the same run (added when --configs leaves it out).

1. KV-cache bytes per token, analytic and measured from the tensors the cache holds (they must agree),
   in form "kv" (K, V, plus Q with reciprocity) and form "input" (the layer input ln_1(x)).
2. Prefill milliseconds, and decode milliseconds per token at each context, eager and compiled
   (torch.compile of the static-shape decode step; CUDA graphs on CUDA).
3. Throughput: tokens/s at --throughput_context for batch sizes doubling up to the largest whose cache
   fits --mem_budget, and at that largest batch: where a smaller cache shows up as speed.
4. With trained checkpoints (--ckpt): validation loss as attention is removed from 0, 1, 2, ...
   layers, in each order (greedy: the cheapest layer on training batches first; lowest route gate first;
   lowest measured attention contribution first),
   with the KV bytes per token at each step; on the recall set (data/recall) also recall accuracy.
5. With --kv_bits=8,4: every row again through quantized caches (engine.QuantizedBuffer), against the
   same config and form unquantized; with --ckpt, the loss decoding through each bit width's cache.

$ python kv_cache_bench.py --configs=baseline,reciprocity,lens,gqa,mqa      # CPU size, both forms
$ python kv_cache_bench.py --configs=baseline,lens --contexts=256,1024 --json=kv.json
$ python kv_cache_bench.py --configs=baseline,full --n_layer=12 --n_head=12 --n_embd=768 --vocab_size=50304
$ python kv_cache_bench.py --configs= --ckpt='out-ablate-recall/*/seed0/ckpt.pt'   # pruning curves only
$ python kv_cache_bench.py --configs=baseline --kv_bits=16,8,4 --contexts=1024 --mem_budget=0.5   # quantized caches
$ python kv_cache_bench.py --configs= --peer=hf --n_layer=12 --n_head=12 --n_embd=768 --vocab_size=50257  # vs transformers
$ python kv_cache_bench.py --configs= --peer=hf --peer_top_k=200 --vocab_size=50257 --batch_size=16  # sampled decoding
"""
import dataclasses
import glob
import os
import platform
import sys

import numpy as np
import torch
from tqdm import tqdm

from configurator import ablation_names, configure, model_settings, print_top_operators, require, setup_device, time_ms
from engine import (KV_BITS, KVCache, check_quant, compiled_decode_step, decode_step, kv_cache_nbytes,
                    kv_workspace_nbytes)
from evaluate import checkpoint_curve, checkpoint_quant, trained_model
from model import GPT, GPTConfig
from records import CheckpointCurve, DecodeRow, PeerRow, ThroughputRow, atomic_write, check_writable, write_json

# -----------------------------------------------------------------------------
configs = "all"  # comma-separated ablation names (config/ablation_NAME.py), 'all', or '' for none (only --ckpt)
forms = "kv,input"  # cache forms to measure: kv (K, V, + Q with reciprocity), input (ln_1(x))
n_layer = 6
n_head = 6
n_embd = 384
vocab_size = 65
contexts = "128,512,1024"  # context lengths to decode at; the largest is the block size
batch_size = 1  # for the prefill and decode columns
decode_tokens = 8  # tokens timed per measurement (the median is reported)
rounds = 3  # prefill and decode timings: medians over this many interleaved rounds of every config and form
modes = "eager,compiled"  # decode timings to take: eager, compiled, or both
kv_bits = "16"  # comma-separated cache bit widths to measure: 16 (as computed), 8, 4 (quantized); --ckpt: the losses
kv_group = 32  # quantization group (channels of a token; tokens of a key channel)
kv_residual = 0  # newest tokens kept unquantized
throughput_context = 1024  # context of the throughput table (<= the largest context); 0 skips the table
throughput_steps = 4  # decode steps timed per batch size
throughput_modes = "auto"  # eager and/or compiled; auto: compiled on CUDA (launches bound eager), else --modes
mem_budget = 0.0  # GiB the throughput table's caches may take; 0: 2 on a CPU, 80% of free memory on a GPU
device = None  # None: cuda, then mps, then cpu
dtype = None  # None: bfloat16 where supported on CUDA (else float16), float32 elsewhere
ckpt = ""  # comma-separated checkpoint paths or globs, for the pruning curves
eval_batches = 20  # validation batches per point of a pruning curve
eval_batch_size = 8
json_path = ""  # --json_path=PATH (or --json=PATH) writes the records
plot = ""  # PNG of validation loss against KV bytes per token (needs --ckpt and matplotlib)
seed = 1337
profile = False  # also print, per config and form, the operators that take the most time in one eager decode step
# (batch_size, the largest context) and in one throughput step at the largest batch (each throughput mode)
peer = ""  # 'hf': also time Hugging Face transformers' cached generate against ours on the same GPT-2 weights
peer_prompt = 64  # the peer comparison: prompt tokens, then peer_new_tokens new tokens, the whole call timed
peer_new_tokens = 64
peer_top_k = None  # None: greedy (the same tokens as transformers); K: both sample at temperature 1 within the top K
# (transformers: do_sample=True, top_k=K); 0: both sample from the whole vocabulary
# -----------------------------------------------------------------------------
sys.argv = ["--json_path" if a == "--json" else a.replace("--json=", "--json_path=", 1) for a in sys.argv]
configure(globals(), sys.argv[1:])
try:
    ctx_lens = [int(c) for c in str(contexts).split(",")]
except ValueError:
    raise SystemExit(f"error: contexts takes comma-separated token counts, got {contexts!r}")
require((min(ctx_lens) >= 2 and min(n_layer, n_head, n_embd, vocab_size, batch_size, decode_tokens) >= 1,
         "contexts must be >= 2, and the model's sizes, batch_size and decode_tokens >= 1"),
        (throughput_steps >= 1 and throughput_context >= 0 and mem_budget >= 0,
         "throughput_steps must be >= 1, throughput_context and mem_budget >= 0"),
        (eval_batches >= 1 and eval_batch_size >= 1 and rounds >= 1, "eval_batches, eval_batch_size and rounds must be >= 1"))
for path, what in ((json_path, "json"), (plot, "plot")):  # outputs checked before minutes of measuring
    if path:
        check_writable(path, what, is_dir=False)
block = max(ctx_lens)
form_list = [f for f in str(forms).split(",") if f]
mode_list = [m for m in str(modes).split(",") if m]
try:
    bits_list = [16] + [int(b) for b in str(kv_bits).split(",") if int(b) != 16]  # 16: what the others are against
except ValueError:
    raise SystemExit(f"error: kv_bits takes comma-separated bit widths (16, 8, 4), got {kv_bits!r}")
for b in bits_list:
    if b not in KV_BITS:
        raise SystemExit(f"error: kv_bits={b} must be one of {', '.join(map(str, KV_BITS))}")
quant = dict(kv_group=kv_group, kv_residual=kv_residual)
device, device_type, dtype, ptdtype, ctx = setup_device(device, dtype)
is_cuda = device_type == "cuda"
for f in form_list:
    if f not in ("kv", "input"):
        raise SystemExit(f"error: forms takes kv and/or input, got {f!r}")
through_modes = (["compiled"] if is_cuda else mode_list) if throughput_modes == "auto" \
    else [m for m in str(throughput_modes).split(",") if m]
for m in mode_list + through_modes:
    if m not in ("eager", "compiled"):
        raise SystemExit(f"error: modes and throughput_modes take eager and/or compiled, got {m!r}")
if throughput_context > block or min(ctx_lens) <= decode_tokens:
    raise SystemExit(f"error: need decode_tokens < every context and throughput_context <= {block}")


def step_fn(mode):
    """The decode step to time, eager or through torch.compile (one graph per model and shape)."""
    return decode_step if mode == "eager" else compiled_decode_step(device_type)


def decode_ms(model, cache, idx, start, step):
    """Median ms per token decoding idx[:, start:] one token at a time after the cache's first `start`
    positions (the first call, which may compile, is left out)."""
    ms = []
    for i in range(start - 1, idx.size(1)):
        pos = torch.tensor([i], device=device)
        ms.append(time_ms(lambda: step(model, idx[:, i:i + 1], cache, pos), device_type))
    return float(np.median(ms[1:]))


def precision(bits):
    """What a cache at `bits` holds its values in, by name: 16 is unquantized, in the dtype it is computed
    in (float32 on a CPU: 4 bytes a value), 8 and 4 are quantized codes."""
    return dtype if bits == 16 else f"{bits}-bit"


def gib(nbytes):
    """Bytes in GiB, with the digits a small budget needs (0.25, not 0.2)."""
    return f"{nbytes / 2**30:.4g} GiB"


# ----------------------------------------------------------------------------- phases
def build(names):
    """(name, model, form, bits) for every config, cache form and bit width to measure: random-weight
    models at the benchmark's shape, the baseline's unquantized K/V form first (every ratio is against it)."""
    models = []
    for name in names:
        torch.manual_seed(seed)
        cfg = GPTConfig(block_size=block, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                        **model_settings(f"config/ablation_{name}.py", n_layer=n_layer, n_head=n_head, n_embd=n_embd))
        model = GPT(cfg).to(device).eval()
        for form in (form_list if name != "baseline" else ["kv"] + [f for f in form_list if f != "kv"]):
            for bits in bits_list:
                try:
                    check_quant(cfg, form, bits, **quant)
                except ValueError as e:
                    raise SystemExit(f"error: {e}")
                models.append((name, model, form, bits))
    return models


@torch.no_grad()
def measure(models):
    """A DecodeRow for every (config, model, form) at every context length: prefill and decode timings
    are medians over `rounds` rounds, each of which times every slot once, so a slow spell of a shared
    machine hits every config alike."""
    slots = []
    for name, model, form, bits in models:
        for c in ctx_lens:
            g = torch.Generator().manual_seed(seed)
            idx = torch.randint(vocab_size, (batch_size, c), generator=g).to(device)
            with ctx:
                cache = KVCache(model, batch_size, max_len=c, form=form, kv_bits=bits, **quant)
                model(idx[:, :c - decode_tokens], cache=cache)  # warm-up: kernel selection, allocator growth
            slots.append(dict(name=name, model=model, form=form, bits=bits, c=c, idx=idx, cache=cache, prefill=[],
                              decode={m: [] for m in mode_list}))
    # every slot keeps its compiled graph across the rounds
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(slots) + 8)
    for _ in tqdm(range(rounds), desc="rounds", file=sys.stderr, dynamic_ncols=True, disable=None):
        for s in slots:
            start = s["c"] - decode_tokens
            with ctx:
                s["cache"].reset()
                s["prefill"].append(time_ms(lambda: s["model"](s["idx"][:, :start], cache=s["cache"]), device_type))
                for m in mode_list:
                    s["decode"][m].append(decode_ms(s["model"], s["cache"], s["idx"], start, step_fn(m)))
    if profile:  # where the time goes: one eager decode step at the largest context, per config and form
        for s in (s for s in slots if s["c"] == max(ctx_lens)):
            pos = torch.tensor([s["c"] - 1], device=device)
            with ctx:
                print_top_operators(lambda: decode_step(s["model"], s["idx"][:, -1:], s["cache"], pos), device_type,
                                    f"{s['name']} ({s['form']} form, {s['bits']}-bit): top operators by self time, "
                                    "one decode step at "
                                    f"{s['c']}", rows=6)
    return [DecodeRow(config=s["name"], form=s["form"], context=s["c"], batch_size=batch_size, dtype=dtype, kv_bits=s["bits"],
                      kv_bytes_per_token=kv_cache_nbytes(s["model"].config, s["form"], 1, s["c"], ptdtype, (), s["bits"],
                                                         **quant) / s["c"],
                      kv_bytes_per_token_measured=s["cache"].nbytes() / (batch_size * s["c"]),
                      prefill_ms=float(np.median(s["prefill"])),
                      decode_ms={k: float(np.median(v)) for k, v in s["decode"].items()}) for s in slots]


@torch.no_grad()
def throughput(name, model, form, bits, budget, mode):
    """ThroughputRows: tokens/s decoding at throughput_context for batch sizes doubling up to the largest
    whose cache (and, quantized, the workspace it dequantizes into) fits the budget, and that largest
    one; compiled on a CPU, the largest alone (each batch size is a compile). The caches are filled with
    random values, not prefilled: a decode step's time does not depend on what the cache holds."""
    per_seq = (kv_cache_nbytes(model.config, form, 1, throughput_context, ptdtype, (), bits, **quant)
               + kv_workspace_nbytes(model.config, form, 1, throughput_context, ptdtype, (), bits, quant["kv_group"]))
    largest = int(budget // per_seq)
    sizes = sorted({b for b in (2 ** i for i in range(largest.bit_length())) if b <= largest} | {largest} - {0})
    if mode == "compiled" and not is_cuda:
        sizes = sizes[-1:]
    if mode == "compiled":  # a graph per batch size, beside those of the decode table
        torch._dynamo.config.recompile_limit += len(sizes)
    out = []
    for b in sizes:
        step = step_fn(mode)
        with ctx:
            cache = KVCache(model, b, max_len=throughput_context, form=form, kv_bits=bits, **quant)
            for t in cache.buffers():
                t.normal_() if t.is_floating_point() else t.random_(0, 256)
            idx = torch.randint(vocab_size, (b, throughput_context), device=device)
            ms = decode_ms(model, cache, idx, throughput_context - throughput_steps - 1, step)
            if profile and b == largest:  # where the time goes where memory binds
                pos = torch.tensor([throughput_context - 1], device=device)
                print_top_operators(lambda: step(model, idx[:, -1:], cache, pos), device_type,
                                    f"{name} ({form} form, {bits}-bit, {mode}): top operators by self time, one "
                                    f"decode step at batch {b}, context {throughput_context}", rows=6)
        out.append(ThroughputRow(config=name, form=form, context=throughput_context, batch_size=b, mode=mode,
                                 cache_bytes=cache.nbytes() + cache.workspace_nbytes(), tokens_per_s=1000 * b / ms,
                                 largest=b == largest,
                                 kv_bits=bits))
        del cache
        if is_cuda:
            torch.cuda.empty_cache()
    return out


def peer_decoding():
    """How the peer rows decode, in words: greedy, or sampled within the top k or from the whole vocabulary."""
    return "greedy" if peer_top_k is None else f"sampled, top_k={peer_top_k}" if peer_top_k else "sampled, full vocabulary"


@torch.no_grad()
def peer_rows():
    """PeerRows: Hugging Face transformers' generate (its default dynamic cache) against lensgpt's
    generate in each cache form and mode, on the same random GPT-2 weights (GPT.from_pretrained of the
    transformers model), batch_size prompts of peer_prompt tokens and peer_new_tokens new ones: the
    whole call timed, medians of `rounds` interleaved rounds after one warm-up call each. Greedy, every
    contender's tokens must equal transformers'; sampled (--peer_top_k, temperature 1, the global
    generator seeded once), every token each engine drew must be among the peer_top_k most likely at its
    position under the same weights (teacher-forced logits; ties with the k-th to 1e-4 count)."""
    try:
        import transformers
    except ImportError:
        print("peer hf: skipped, transformers is not installed (pip install transformers)")
        return []
    import tempfile
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=peer_prompt + peer_new_tokens, vocab_size=vocab_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = GPT.from_pretrained(d).to(device).eval()
    hf = hf.to(device)
    sampled = peer_top_k is not None
    gen = transformers.GenerationConfig(max_new_tokens=peer_new_tokens, do_sample=sampled, eos_token_id=None,
                                        pad_token_id=0, **(dict(temperature=1.0, top_k=peer_top_k, top_p=1.0)
                                                           if sampled else {}))
    idx = torch.randint(vocab_size, (batch_size, peer_prompt), generator=torch.Generator().manual_seed(seed)).to(device)
    mask = torch.ones_like(idx)
    calls = {("transformers", "dynamic", "eager"): lambda: hf.generate(idx, attention_mask=mask, generation_config=gen)}
    for form in form_list:
        for mode in mode_list:
            calls[("lensgpt", form, mode)] = lambda form=form, mode=mode: ours.generate(
                idx, peer_new_tokens, temperature=1.0 if sampled else 0, top_k=peer_top_k or None, kv_cache=form,
                compile=mode == "compiled")
    ms, out = {k: [] for k in calls}, {}
    torch.manual_seed(seed)
    with ctx:
        for k, call in calls.items():  # warm-up: compilation, kernel selection
            out[k] = call()
        for k, tokens in out.items():
            if not sampled and not torch.equal(tokens, out[("transformers", "dynamic", "eager")]):
                raise SystemExit(f"error: peer hf: lensgpt's {k[1]} form ({k[2]}) generated other tokens than "
                                 "transformers on the same weights")
            if sampled and peer_top_k and not within_top_k(ours, tokens, peer_top_k):
                raise SystemExit(f"error: peer hf: {k[0]}" + (f"'s {k[1]} form ({k[2]})" if k[0] == "lensgpt" else "")
                                 + f" drew a token outside the top {peer_top_k} of the same weights")
        for _ in tqdm(range(rounds), desc="peer rounds", file=sys.stderr, dynamic_ncols=True, disable=None):
            for k, call in calls.items():
                ms[k].append(time_ms(call, device_type))
    rows = [PeerRow(engine=e, form=f, mode=m, shape=f"{n_layer}x{n_embd}", vocab_size=vocab_size, batch_size=batch_size,
                    prompt=peer_prompt, new_tokens=peer_new_tokens, ms_per_token=float(np.median(v)) / peer_new_tokens,
                    decoding=peer_decoding())
            for (e, f, m), v in ms.items()]
    for r in rows:
        r.x_transformers = r.ms_per_token / rows[0].ms_per_token
    return rows


def within_top_k(model, tokens, k):
    """Whether each new token of `tokens` (after peer_prompt) is among the k most likely at its position
    under model's teacher-forced logits (a forward pass per sequence; a logit within 1e-4 of the k-th
    counts, so that another engine's float rounding does not flip the order of near ties)."""
    for seq in tokens.split(1):
        logits = model(seq[:, :-1], targets=seq[:, 1:])[0][:, peer_prompt - 1:].float()
        kth = torch.topk(logits, k).values[..., -1]
        if not (logits.gather(-1, seq[:, peer_prompt:, None]).squeeze(-1) >= kth - 1e-4).all():
            return False
    return True


def prune(paths):
    """A CheckpointCurve per trained checkpoint: its pruning curve (evaluate.checkpoint_curve), named by
    its run directory."""
    curves = []
    for path in tqdm(paths, desc="pruning curves", file=sys.stderr, dynamic_ncols=True, disable=None):
        ck, model, _ = trained_model(path, device)
        dataset = ck["config"]["dataset"]
        points, contrib, _ = checkpoint_curve(model, dataset, eval_batches, eval_batch_size, device, ctx, seed)
        try:  # the loss decoding through each bit width's cache, where more than 16 bits are asked for
            q = checkpoint_quant(model, dataset, eval_batches, eval_batch_size, device, ctx, seed, bits=bits_list,
                                 **quant) if len(bits_list) > 1 else []
        except ValueError as e:
            raise SystemExit(f"error: {path}: {e}")
        curves.append(CheckpointCurve(checkpoint=path, config=os.path.dirname(path) or ".",  # the run directory as given
                                      attention_contribution=contrib, points=points, quant=q))
    return curves


# ----------------------------------------------------------------------------- tables
def print_decode(records, names):
    W = max([len(n) for n in names] + [14]) + 2  # the config column, wide enough for every name
    base = {r.context: r for r in records if r.config == "baseline" and r.form == "kv" and r.kv_bits == 16}
    big = max(ctx_lens)
    quantized = len(bits_list) > 1
    head = f"{'config':<{W}}{'form':<7}{'cache':>9}{'B/tok@' + str(big):>12}{'measured':>10}{'x base':>7}"
    head += "".join(f"{'prefill@' + str(c):>13}" for c in ctx_lens)
    head += "".join(f"{m + '@' + str(c):>16}" for m in mode_list for c in ctx_lens)
    head += "".join(f"{'x base ' + m[:5]:>13}" for m in mode_list)
    head += "".join(f"{'x ' + dtype + ' ' + m[:5]:>18}" for m in mode_list if quantized)
    print("\n" + head)
    for name, form, bits in dict.fromkeys((r.config, r.form, r.kv_bits) for r in records):
        rows = {r.context: r for r in records if (r.config, r.form, r.kv_bits) == (name, form, bits)}
        r0 = rows[big]
        full = next(r for r in records if (r.config, r.form, r.kv_bits, r.context) == (name, form, 16, big))
        line = (f"{name:<{W}}{form:<7}{precision(bits):>9}{r0.kv_bytes_per_token:>12,.0f}"
                f"{r0.kv_bytes_per_token_measured:>10,.0f}"
                f"{r0.kv_bytes_per_token / base[big].kv_bytes_per_token:>7.2f}")
        line += "".join(f"{rows[c].prefill_ms:>10.1f} ms" for c in ctx_lens)
        line += "".join(f"{rows[c].decode_ms[m]:>13.2f} ms" for m in mode_list for c in ctx_lens)
        line += "".join(f"{r0.decode_ms[m] / base[big].decode_ms[m]:>12.2f}x" for m in mode_list)
        line += "".join(f"{r0.decode_ms[m] / full.decode_ms[m]:>17.2f}x" for m in mode_list if quantized)
        print(line)
    print(f"B/tok@{big}: analytic bytes per token of a cache holding {big} tokens, all layers, at the precision of "
          f"the cache column ({dtype}: {torch.empty((), dtype=ptdtype).element_size()} bytes a value, unquantized; "
          f"8-bit and 4-bit: codes, float16 scale and zero per group of {kv_group}, and {kv_residual} + a group of "
          f"newest tokens in {dtype}), measured: bytes the cache holds / (batch x context); ms per decoded token at "
          f"each context, batch {batch_size}; x base: decode at {big} against the baseline's unquantized K/V form"
          + (f"; x {dtype}: against the same config and form unquantized" if quantized else ""))


def print_throughput(all_rows, names, budget):
    for mode in dict.fromkeys(t.mode for t in all_rows):
        print_throughput_mode([t for t in all_rows if t.mode == mode], names, budget)


def print_throughput_mode(through, names, budget):
    W = max([len(n) for n in names] + [14]) + 2
    top_of = lambda name, form, bits: max((t for t in through if (t.config, t.form, t.kv_bits) == (name, form, bits)),
                                          key=lambda t: t.batch_size)
    ref = top_of("baseline", "kv", 16)
    sizes = sorted({t.batch_size for t in through if not t.largest or t.batch_size & (t.batch_size - 1) == 0})
    print(f"\nthroughput at context {throughput_context}, caches within {gib(budget)} "
          f"({through[0].mode} decoding), tokens/s:")
    print(f"{'config':<{W}}{'form':<7}{'cache':>9}{'max batch':>10}{'x base':>7}{'tok/s at max':>13}{'x base':>7}"
          f"{'x ' + dtype:>11}" + "".join(f"{'b=' + str(b):>10}" for b in sizes))
    for name, form, bits in dict.fromkeys((t.config, t.form, t.kv_bits) for t in through):
        rows = [t for t in through if (t.config, t.form, t.kv_bits) == (name, form, bits)]
        top, full = rows[-1], top_of(name, form, 16)
        per_b = {t.batch_size: t.tokens_per_s for t in rows}
        print(f"{name:<{W}}{form:<7}{precision(bits):>9}{top.batch_size:>10d}{top.batch_size / ref.batch_size:>7.2f}"
              f"{top.tokens_per_s:>13.1f}{top.tokens_per_s / ref.tokens_per_s:>7.2f}"
              f"{top.tokens_per_s / full.tokens_per_s:>11.2f}"
              + "".join(f"{per_b[b]:>10.1f}" if b in per_b else f"{'':>10}" for b in sizes))
    print(f"max batch: the most sequences whose cache at {throughput_context} tokens (and a quantized cache's "
          f"workspace) fits the budget, {dtype} where unquantized; x base: against the baseline's unquantized K/V "
          f"form; x {dtype}: tokens/s at max batch against the same config and form unquantized")


def print_peer(rows):
    import transformers
    how = "greedy generate, same weights, same tokens" if peer_top_k is None else (
        f"{peer_decoding()} at temperature 1, transformers' generate(do_sample=True, top_k={peer_top_k}), same weights"
        + (f", every drawn token within the top {peer_top_k}" if peer_top_k else ""))
    print(f"\nagainst transformers {transformers.__version__} ({how}): "
          f"{n_layer}x{n_embd}, vocab {vocab_size}, batch {batch_size}, {peer_prompt}-token prompt + "
          f"{peer_new_tokens} new, whole call, median of {rounds} interleaved rounds")
    print(f"{'engine':<14}{'form':<9}{'mode':<10}{'ms/token':>10}{'x transformers':>16}")
    for r in rows:
        print(f"{r.engine:<14}{r.form:<9}{r.mode:<10}{r.ms_per_token:>10.2f}{r.x_transformers:>15.2f}x")


def print_pruning(curves):
    most = max(len(p.layers) for c in curves for p in c.points)
    print(f"\n{'checkpoint':<36}{'ranking':<14}" + "".join(f"{'-' + str(k):>8}" for k in range(most + 1)))
    for c in curves:
        for ranking in dict.fromkeys(p.ranking for p in c.points):
            rows = [p for p in c.points if p.ranking == ranking]
            print(f"{c.config:<36}{ranking:<14}" + "".join(f"{p.val_loss:>8.3f}" for p in rows))
            if rows[0].val_acc is not None:
                print(f"{'':<36}{'  recall acc':<14}" + "".join(f"{p.val_acc:>8.3f}" for p in rows))
    print("val loss (and recall accuracy on the recall set) with attention removed from 0, 1, 2, ... layers; "
          "KV bytes per token (16 bits: 2 bytes a value, K/V form) fall as (L - k) / L")


def print_quant(curves):
    W = max(len(c.config) for c in curves) + 2
    print(f"\n{'checkpoint':<{W}}{'form':<7}{'bits':>5}{'B/token':>9}{'val loss':>10}{'vs 16-bit':>11}"
          + (f"{'recall acc':>12}{'x 16-bit':>9}" if curves[0].quant[0].val_acc is not None else ""))
    for c in curves:
        full = {q.form: q for q in c.quant if q.kv_bits == 16}
        for q in c.quant:
            f = full[q.form]
            print(f"{c.config:<{W}}{q.form:<7}{q.kv_bits:>5}{q.kv_bytes_per_token:>9,.0f}{q.val_loss:>10.4f}"
                  f"{q.val_loss - f.val_loss:>+11.4f}"
                  + (f"{q.val_acc:>12.3f}{q.val_acc / f.val_acc if f.val_acc else float('nan'):>9.3f}"
                     if q.val_acc is not None else ""))
    print(f"loss decoding through the cache, teacher-forced, one token per step (group {kv_group}, residual "
          f"{kv_residual}); B/token: the bytes one more token adds to a long context's cache (the per-sequence "
          f"window of unquantized tokens and padding left out), 16 bits: 2 bytes a value (float16; its loss decodes "
          f"through the unquantized cache, here in {dtype}), 8 and 4 bits: codes, float16 scale and zero per group")


def plot_pruning(curves, path):
    """Validation loss (or, on the recall set, accuracy) against 16-bit K/V bytes per token, one line per
    checkpoint and pruning order."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: --plot needs matplotlib (pip install matplotlib)")
    fig, ax = plt.subplots(figsize=(7, 5))
    acc = all(p.val_acc is not None for c in curves for p in c.points)
    for c in curves:
        for ranking in dict.fromkeys(p.ranking for p in c.points):
            rows = [p for p in c.points if p.ranking == ranking]
            ax.plot([p.kv_bytes_per_token["kv"] for p in rows], [p.val_acc if acc else p.val_loss for p in rows],
                    marker="o", label=f"{c.config} ({ranking})")
    what = "Recall accuracy" if acc else "Validation loss"
    ax.set_xlabel("KV cache bytes per token (16 bits: 2 bytes a value, K/V form)")
    ax.set_ylabel(what.lower())
    ax.set_title(f"{what} as attention is pruned layer by layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- main
def main():
    names = ablation_names(configs)  # ratios need the baseline of this run: it comes first
    if peer not in ("", "hf"):
        raise SystemExit(f"error: peer takes 'hf' (Hugging Face transformers) or nothing, got {peer!r}")
    require((peer_prompt >= 1 and peer_new_tokens >= 1, "peer_prompt and peer_new_tokens must be >= 1"),
            (peer_top_k is None or type(peer_top_k) is int and peer_top_k >= 0,
             f"peer_top_k takes a whole number of tokens >= 0 (0: the whole vocabulary), got {peer_top_k!r}"))
    if not names and not ckpt and not peer:
        raise SystemExit("error: nothing to measure: give --configs, --ckpt or --peer")
    paths = sorted({p for part in ckpt.split(",") if part for p in glob.glob(part)})
    if ckpt and not paths:
        raise SystemExit(f"error: no checkpoint matches {ckpt}")
    if plot and not paths:
        raise SystemExit("error: --plot needs trained checkpoints (--ckpt)")
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads" if not is_cuda \
        else torch.cuda.get_device_name()
    budget = mem_budget * 2**30 if mem_budget else (0.8 * torch.cuda.mem_get_info()[0] if is_cuda else 2 * 2**30)
    print(f"kv_cache_bench: {dtype} on {device} ({machine}), torch {torch.__version__}"
          + (f"; random-weight models: {n_layer} layers, {n_head} heads, {n_embd} wide, block {block}, batch {batch_size}"
             if names else ""))
    models = build(names)
    records = measure(models) if models else []
    through = []
    for name, model, form, bits in tqdm(models if throughput_context else [], desc="throughput", file=sys.stderr,
                                        dynamic_ncols=True, disable=None):
        for mode in through_modes:
            through += throughput(name, model, form, bits, budget, mode)
    if records:
        print_decode(records, names)
    if through:
        print_throughput(through, names, budget)
    peers = peer_rows() if peer else []
    if peers:
        print_peer(peers)
    curves = prune(paths)
    if curves:
        print_pruning(curves)
    if curves and curves[0].quant:
        print_quant(curves)
    if json_path:
        write_json(json_path, {"machine": machine, "device": device, "torch": torch.__version__,
                               **{k: [dataclasses.asdict(r) for r in v] for k, v in (
                                   ("records", records), ("throughput", through), ("peer", peers), ("pruning", curves))}})
        print(f"wrote {json_path}")
    if plot:
        plot_pruning(curves, plot)


if __name__ == "__main__":
    main()
