"""
The inference engine: the caches a model decodes with, and generation.

A cache holds, per layer, what later tokens need of the past, in static buffers for max_len positions
(allocated once), so that every decode step has one shape and compiles once. One small class per
cache form, each with one `write` (a chunk's values at its positions) and one `attend` (a chunk's
queries against everything written up to them, under a position mask):
    KVLayerCache     K and V for n_kv_head heads, and the layer's own Q with reciprocity (S^T[t, j] = q_j . k_t)
    InputLayerCache  the layer input x^ = ln_1(x), E values per token, decoded with the projections
                     absorbed into the query (K~_j = W x^_j + b): exact, half the baseline's bytes
    SharedLayerCache a CLA layer that reads its group's first layer's buffers (and keeps its own Q with
                     reciprocity)
A pruned or attention-free layer has no cache at all. KVCache holds one per layer and is the one owner
of the position: `advance` is the only place it moves.
"""
import math

import torch
import torch.nn.functional as F

from model import attends, feeds_group, repeat_kv, unwrap


def kv_layer_values(cfg, form, attn_skip_layers=()):
    """Values one token costs in each layer's cache. Form "kv": K and V for n_kv_head heads in the
    layer that owns them (every layer, or a CLA group's first), and the layer's own Q with
    reciprocity (S^T needs q_j of past tokens). Form "input": ln_1(x), n_embd values, in the layer
    that owns K and V. A pruned or attention-free layer keeps nothing of its own; a group's K/V (or
    input) stay while any layer of the group attends."""
    D = cfg.n_embd // cfg.n_head
    values = []
    for i in range(cfg.n_layer):
        shared = feeds_group(cfg, i, attn_skip_layers) * (cfg.n_embd if form == "input" else 2 * cfg.n_kv_head * D)
        own_q = form == "kv" and cfg.use_reciprocity and attends(cfg, i, attn_skip_layers)
        values.append(shared + own_q * cfg.n_head * D)
    return values


def cache_forms(cfg):
    """The cache forms this config can decode with: the input form needs every layer's past queries
    (reciprocity) to come from the one cached input, which a CLA layer with reciprocity does not have."""
    return ("kv",) if cfg.use_reciprocity and cfg.kv_share > 1 else ("kv", "input")


def cache_form(cfg, form):
    """The cache form "kv" or "input" that `form` names for this config: True and "auto" pick the
    smaller (K/V on a tie, where decoding it costs fewer FLOPs): the input form for every multi-head
    config, K/V for grouped- and multi-query attention."""
    if form is True or form == "auto":
        return min(cache_forms(cfg), key=lambda f: (sum(kv_layer_values(cfg, f)), f != "kv"))
    if form not in ("kv", "input"):
        raise ValueError(f"unknown KV cache form {form!r}: use True (= 'auto'), 'auto', 'kv' or 'input'")
    if form not in cache_forms(cfg):
        raise ValueError("the input form cannot decode reciprocity with kv_share > 1 (a CLA layer's past "
                         "queries are not in its group's cached input): use 'kv'")
    return form


def _zeros(*shape, like):
    return torch.zeros(*shape, device=like["device"], dtype=like["dtype"])


def _put(buf, dim, input_pos, t):
    """Write t into buf along dim at input_pos; None: a prefill, whose chunk starts at position 0."""
    if input_pos is None:
        buf.narrow(dim, 0, t.size(dim)).copy_(t)
    else:
        buf.index_copy_(dim, input_pos, t.to(buf.dtype))


def _probs(scores, input_pos, max_len):
    """Attention probabilities of (B, H, T, L) raw scores (already scaled) for a chunk at input_pos: a
    position sees the buffer up to itself; what is not written yet is masked."""
    visible = torch.arange(max_len, device=scores.device) <= input_pos.view(-1, 1)  # (T, L)
    return F.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)


def _gates(attn, dtype):
    """The lens gates do not change while decoding: computed once per cache, not per step."""
    if not attn.lens:
        return None
    with torch.no_grad():
        return tuple(None if g is None else g.to(dtype) for g in attn.query_gates())


class KVLayerCache:
    """K and V (B, H_kv, L, D), and with reciprocity the layer's own past queries (B, H, L, D). For
    multi-head reciprocity K~ = [k | q] is one buffer that attend reads as it is (k and q are views)."""
    query_only = False  # attend needs the chunk's K and V (attention's forward computes them)

    def __init__(self, attn, batch_size, max_len, like, attends=True):
        B, L, H, Hkv, D = batch_size, max_len, attn.n_head, attn.n_kv_head, attn.head_dim
        self.max_len, self.gates, self.kq, self.q = L, _gates(attn, like["dtype"]), None, None
        if attn.use_rec and attends and Hkv == H:
            self.kq = _zeros(B, H, L, 2 * D, like=like)
            self.k, self.q = self.kq[..., :D], self.kq[..., D:]
        else:
            self.k = _zeros(B, Hkv, L, D, like=like)
            if attn.use_rec and attends:
                self.q = _zeros(B, H, L, D, like=like)
        self.v = _zeros(B, Hkv, L, D, like=like)

    def buffers(self):
        own = [self.kq] if self.kq is not None else [self.k] + ([] if self.q is None else [self.q])
        return own + [self.v]

    def write(self, input_pos, x, q, k, v):
        if self.kq is not None:
            _put(self.kq, 2, input_pos, torch.cat([k, q], -1))
        else:
            _put(self.k, 2, input_pos, k)
            if self.q is not None:
                _put(self.q, 2, input_pos, q)
        _put(self.v, 2, input_pos, v)

    def attend(self, attn, q, k, input_pos, gates=None, past_q=None):
        """(B, H, T, D) outputs. Query heads that share a K/V head are stacked into one matrix product,
        so each buffer is read once per step, never copied per head. `gates` and `past_q`: those of a
        CLA layer reading this one's K and V (SharedLayerCache; lens gates are on in every layer or none,
        so gates=None means this layer's own)."""
        B, H, T, D = q.shape
        Hkv = self.k.size(1)
        own = gates is None
        qs, kr = attn.query_side(q, repeat_kv(k, H), self.gates if own else gates)
        if own and self.kq is not None:  # multi-head reciprocity: [qs | kr] . [k | q] in one product
            scores = torch.cat([qs, kr], -1) @ self.kq.transpose(-2, -1)
        else:
            scores = (qs.reshape(B, Hkv, -1, D) @ self.k.transpose(-2, -1)).view(B, H, T, -1)
            if kr is not None:  # S^T against each head's own past queries
                scores = scores + kr @ (self.q if own else past_q).transpose(-2, -1)
        p = _probs(scores * (1.0 / math.sqrt(D)), input_pos, self.max_len)
        return (p.reshape(B, Hkv, -1, p.size(-1)) @ self.v).view(B, H, T, D)


def _per_head(t, w):
    """(B, H, T, X) @ (H, X, Y) as one product per head with the sequences stacked in its rows: a
    broadcast matmul would copy w once per sequence (measured: 1.4x transformers' decode time at
    batch 16, from those copies alone)."""
    B, H, T, X = t.shape
    return (t.transpose(0, 1).reshape(H, B * T, X) @ w).view(H, B, T, -1).transpose(0, 1)


class InputLayerCache:
    """x^ = ln_1(x) (B, L, E), and head h's rows of c_attn, (H, D, E) (a K/V group's rows repeated), so
    that attention reads x^ once: scores = (q W_k) . x^_j, output = W_v (sum_j p_j x^_j) + b_v."""

    def __init__(self, attn, batch_size, max_len, like):
        H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
        E = H * D
        self.max_len, self.gates = max_len, _gates(attn, like["dtype"])
        self.query_only = not attn.use_rec  # the chunk's K enters only through S^T; V never does
        self.x = _zeros(batch_size, max_len, E, like=like)
        w = attn.c_attn.weight.detach().to(like["dtype"])
        wq, wk, wv = w.split([E, Hkv * D, Hkv * D])
        per_head = lambda t: t.view(Hkv, D, E).repeat_interleave(H // Hkv, dim=0)
        self.wk, self.wv, self.bv = per_head(wk), per_head(wv), 0.0
        self.wq = wq.view(H, D, E) if attn.use_rec else None
        if attn.c_attn.bias is not None:
            bv = attn.c_attn.bias.detach().to(like["dtype"])[E + Hkv * D:]
            self.bv = bv.view(Hkv, 1, D).repeat_interleave(H // Hkv, dim=0)  # (H, 1, D)

    def buffers(self):
        return [self.x]

    def write(self, input_pos, x, q, k, v):
        _put(self.x, 1, input_pos, x)

    def attend(self, attn, q, k, input_pos, gates=None, past_q=None):
        B, H, T, D = q.shape
        qs, kr = attn.query_side(q, None if k is None else repeat_kv(k, H), self.gates if gates is None else gates)
        qa = _per_head(qs, self.wk) + (0 if kr is None else _per_head(kr, self.wq))  # (B, H, T, E)
        scores = (qa.reshape(B, H * T, -1) @ self.x.transpose(1, 2)).view(B, H, T, -1)
        p = _probs(scores * (1.0 / math.sqrt(D)), input_pos, self.max_len)
        z = (p.view(B, H * T, -1) @ self.x).view(B, H, T, -1)  # sum_j p_j x^_j
        return _per_head(z, self.wv.transpose(-2, -1)) + self.bv


class SharedLayerCache:
    """A CLA layer that does not own K and V: it reads its group's first layer's cache (K/V or input),
    with its own lens gates, and keeps only its own past queries (reciprocity, K/V form only)."""

    def __init__(self, attn, batch_size, max_len, like, owner, attends=True):
        self.owner, self.gates, self.q = owner, _gates(attn, like["dtype"]), None
        self.query_only = owner.query_only
        if attn.use_rec and attends:
            self.q = _zeros(batch_size, attn.n_head, max_len, attn.head_dim, like=like)

    def buffers(self):
        return [] if self.q is None else [self.q]

    def write(self, input_pos, x, q, k, v):  # the group's first layer wrote the rest
        if self.q is not None:
            _put(self.q, 2, input_pos, q)

    def attend(self, attn, q, k, input_pos):
        return self.owner.attend(attn, q, k, input_pos, gates=self.gates, past_q=self.q)


class KVCache:
    """Every layer's cache for batch_size sequences of up to max_len positions (block_size by
    default), zeroed (masked positions must hold finite values), in the autocast dtype when autocast
    is on, else the model's. form: "kv", "input", or True / "auto" for the smaller (model.cache_form)."""

    def __init__(self, model, batch_size, max_len=None, attn_skip_layers=(), form="auto", dtype=None):
        model = unwrap(model)
        cfg = model.config
        self.form = cache_form(cfg, form)
        self.batch_size, self.max_len = batch_size, max_len or cfg.block_size
        if not 1 <= self.max_len <= cfg.block_size:
            raise ValueError(f"max_len={self.max_len} must be in [1, block_size={cfg.block_size}]")
        self.attn_skip_layers = set(attn_skip_layers)
        self.length = 0  # positions filled: advance() moves it, reset() empties the cache
        device = model.lm_head.weight.device
        if dtype is None:
            dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                     else model.lm_head.weight.dtype)
        like = dict(device=device, dtype=dtype)
        layer_cache = KVLayerCache if self.form == "kv" else InputLayerCache
        self.layers, owner = [], None
        for i, block in enumerate(model.transformer.h):
            on = attends(cfg, i, self.attn_skip_layers)
            if not (on or feeds_group(cfg, i, self.attn_skip_layers)):
                self.layers.append(None)  # pruned, attention-free, or a group nobody reads
            elif block.attn.owns_kv:
                owner = (KVLayerCache(block.attn, batch_size, self.max_len, like, on) if self.form == "kv"
                         else layer_cache(block.attn, batch_size, self.max_len, like))
                self.layers.append(owner)
            else:
                self.layers.append(SharedLayerCache(block.attn, batch_size, self.max_len, like, owner, on))
        if device.type == "cuda":  # CUDA graphs may then write into them in place
            for t in self.buffers():
                torch._dynamo.mark_static_address(t)

    def advance(self, t):
        """Claim the next t positions; returns the first. The one place the position moves."""
        if self.length + t > self.max_len:
            raise ValueError(f"cannot add {t} positions to a KVCache holding {self.length} of {self.max_len}; reset() it")
        start, self.length = self.length, self.length + t
        return start

    def reset(self):
        """Empty the cache; the buffers stay (what they hold is masked until overwritten)."""
        self.length = 0

    def buffers(self):
        """The per-token tensors the cache holds, each once (a CLA group's are its first layer's)."""
        return list({id(t): t for layer in self.layers if layer for t in layer.buffers()}.values())

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.buffers())


# ----------------------------------------------------------------------------- generation
def sample_next(logits, temperature=1.0, top_k=None):
    """One token per row from the last-position logits; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


def decode_step(model, idx, cache, input_pos):
    """Logits for one token per sequence at position input_pos (a 1-element tensor). Every call has
    the same shapes, whatever the position: the cache's buffers are static and masked."""
    return model(idx, cache=cache, input_pos=input_pos)[0]


_compiled = {}


def compiled_decode_step(device_type):
    """decode_step under torch.compile, built once per device type: CUDA graphs on CUDA (launch
    overhead, not bytes, bounds a small model's decoding there), inductor's C++ code on a CPU."""
    if device_type not in _compiled:
        mode = "reduce-overhead" if device_type == "cuda" else None
        _compiled[device_type] = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _compiled[device_type]


@torch.no_grad()
def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, kv_cache=True, attn_skip_layers=(),
                    compile=False):
    """Yield max_new_tokens sampled tokens (b, 1), one at a time. kv_cache: False recomputes the
    context every step, as nanoGPT does; True (= "auto": the smaller form for this config), "kv" or
    "input" prefill the prompt in one pass, then feed one token per step. compile=True runs that step
    through torch.compile (CUDA graphs on CUDA); it compiles once, not per position. Every path
    conditions on the last block_size tokens: once the cache is full, the last block_size tokens are
    prefilled again, so all paths give the same logits."""
    bs = unwrap(model).config.block_size
    max_len = min(bs, idx.size(1) + max_new_tokens)  # decoding attends over the whole buffer: no longer than needed
    cache = KVCache(model, idx.size(0), max_len, attn_skip_layers, form=kv_cache) if kv_cache else None
    if compile and cache is None:
        raise ValueError("compile=True compiles the cached decode step: it needs kv_cache")
    step = compiled_decode_step(idx.device.type) if compile else decode_step
    for _ in range(max_new_tokens):
        if cache is None:
            logits, _ = model(idx[:, -bs:], attn_skip_layers=attn_skip_layers)
        elif cache.length in (0, cache.max_len):
            cache.reset()
            logits, _ = model(idx[:, -bs:], cache=cache)  # prefill, eager: one call per prompt
        else:
            last = idx[:, -1:].clone(memory_format=torch.contiguous_format)  # strides (1, 1): no recompiles
            logits = step(model, last, cache, torch.tensor([cache.advance(1)], device=idx.device))
        nxt = sample_next(logits[:, -1, :], temperature, top_k)
        idx = torch.cat((idx, nxt), dim=1)
        yield nxt


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, kv_cache=True, attn_skip_layers=(),
             compile=False):
    """idx (b, t) followed by max_new_tokens sampled tokens; see generate_stream."""
    new = list(generate_stream(model, idx, max_new_tokens, temperature, top_k, kv_cache, attn_skip_layers, compile))
    return torch.cat([idx] + new, dim=1)
