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

from model import attends, feeds_group, repeat_kv


def unwrap(model):
    """The GPT inside a DDP and/or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def kv_layer_tensors(cfg, form, attn_skip_layers=()):
    """The tensors one layer's cache keeps, per layer: (values per token, key-like) for each. Form "kv":
    K and V for n_kv_head heads in the layer that owns them (every layer, or a CLA group's first), and
    the layer's own Q with reciprocity (S^T needs q_j of past tokens). Form "input": ln_1(x), n_embd
    values, in the layer that owns K and V. A pruned or attention-free layer keeps nothing of its own; a
    group's K/V (or input) stay while any layer of the group attends. Key-like tensors (K, and Q, which
    S^T dots with the new key) are quantized per channel, the others per token (QuantizedBuffer)."""
    D, kv = cfg.n_embd // cfg.n_head, cfg.n_kv_head * (cfg.n_embd // cfg.n_head)
    layers = []
    for i in range(cfg.n_layer):
        shared = feeds_group(cfg, i, attn_skip_layers)
        own_q = form == "kv" and cfg.use_reciprocity and attends(cfg, i, attn_skip_layers)
        if form == "input":
            tensors = [(cfg.n_embd, False)] if shared else []
        elif shared and own_q and cfg.n_kv_head == cfg.n_head:  # K~ = [k | q]: one tensor (KVLayerCache)
            tensors = [(2 * kv, True), (kv, False)]
        else:
            tensors = ([(kv, True), (kv, False)] if shared else []) + ([(cfg.n_head * D, True)] if own_q else [])
        layers.append(tensors)
    return layers


def kv_layer_values(cfg, form, attn_skip_layers=()):
    """Values one token costs in each layer's cache (kv_layer_tensors)."""
    return [sum(width for width, _ in layer) for layer in kv_layer_tensors(cfg, form, attn_skip_layers)]


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


def check_quant(cfg, form, kv_bits, kv_group, kv_residual):
    """ValueError (one line) for cache quantization this config's cache cannot take."""
    if kv_bits not in KV_BITS:
        raise ValueError(f"kv_bits={kv_bits!r} must be one of {', '.join(map(str, KV_BITS))}")
    if not (isinstance(kv_residual, int) and kv_residual >= 0):
        raise ValueError(f"kv_residual={kv_residual!r} must be a whole number of tokens >= 0")
    if kv_bits == 16:
        return
    width, axis = (cfg.n_embd, "n_embd") if form == "input" else (cfg.n_embd // cfg.n_head, "head_dim")
    if not (isinstance(kv_group, int) and kv_group >= 1 and width % kv_group == 0):
        raise ValueError(f"kv_group={kv_group!r} must divide {axis}={width} (the {form} form quantizes "
                         f"{'x^' if form == 'input' else 'values'} per token in groups of channels)")
    # a windowed layer's ring holds whole key groups, and the unquantized tokens (the residual and the group
    # being filled) within its W slots
    tok = kv_group if form == "kv" else 1
    odd = [w for w in cfg.layer_windows if w and (w % tok or kv_residual + tok > w)]
    if odd:
        raise ValueError(f"attn_window={odd[0]} cannot hold this quantized cache: a windowed layer's ring needs W a "
                         f"multiple of {'kv_group' if tok > 1 else '1'}={tok} and kv_residual + {tok} <= W "
                         f"(kv_residual={kv_residual})")


def kv_cache_nbytes(cfg, form, batch_size, max_len, dtype=torch.float32, attn_skip_layers=(), kv_bits=16, kv_group=32,
                    kv_residual=0):
    """The bytes a KVCache holds, from the config alone (QuantizedBuffer's layout): per tensor of width C,
    max_len positions (per-channel groups: rounded up to whole groups) at C * bits / 8 bytes of codes and
    4 C / G of float16 scale and zero, and the full-precision ring of min(residual + tokens per group,
    max_len) positions. A windowed layer keeps min(max_len, W) positions (its ring)."""
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    for layer, window in zip(kv_layer_tensors(cfg, form, attn_skip_layers), cfg.layer_windows):
        L = min(max_len, window or max_len)
        total += sum(_tensor_nbytes(width, pc, L, size, kv_bits, kv_group, kv_residual) for width, pc in layer)
    return batch_size * total


def _tensor_nbytes(width, per_channel, L, size, kv_bits, kv_group, kv_residual):
    """The bytes one sequence's cached tensor of `width` values per position holds for L positions (Buffer,
    QuantizedBuffer); `size`: bytes of an unquantized value."""
    if kv_bits == 16:
        return L * width * size
    tok = kv_group if per_channel else 1
    padded = -(-L // tok) * tok
    return padded * width * kv_bits // 8 + padded * width // kv_group * 2 * 2 + min(kv_residual + tok, L) * width * size


def kv_workspace_nbytes(cfg, form, batch_size, max_len, dtype=torch.float32, attn_skip_layers=(), kv_bits=16,
                        kv_group=32):
    """The workspace a quantized KVCache dequantizes into: its largest tensor in dtype (0 at 16 bits)."""
    widths = [(w, pc, min(max_len, win or max_len)) for layer, win in
              zip(kv_layer_tensors(cfg, form, attn_skip_layers), cfg.layer_windows) for w, pc in layer]
    if kv_bits == 16 or not widths:
        return 0
    padded = lambda pc, L: -(-L // kv_group) * kv_group if pc else L
    largest = max(w * padded(pc, L) for w, pc, L in widths)
    # in dtype, and at 4 bits a byte per two of its values to unpack the codes into
    return batch_size * (largest * torch.empty((), dtype=dtype).element_size() + (largest // 2 if kv_bits == 4 else 0))


def kv_bytes_per_token(cfg, form, attn_skip_layers=(), kv_bits=16, kv_group=32, dtype=torch.float16, context=None,
                       kv_residual=0):
    """Bytes per token of a cache holding `context` tokens (block_size by default). A global layer's as a long
    context sees it (its quantization ring and padding are per sequence): values x bits / 8, plus 4 / G bytes
    of scale and zero per value at fewer than 16 bits. A layer whose window W is shorter than the context holds
    a ring of W positions whatever the context: its whole cache (kv_cache_nbytes' layout, its unquantized
    ring included) over the context, so its share falls as W / context."""
    T = cfg.block_size if context is None else context
    if not (isinstance(T, int) and not isinstance(T, bool) and T >= 1):
        raise ValueError(f"context={context!r} must be a whole number of tokens >= 1")
    size = torch.empty((), dtype=dtype).element_size()
    per_token, rings = 0, 0  # the global layers' bytes per token; the windowed layers' bytes per sequence
    for layer, window in zip(kv_layer_tensors(cfg, form, attn_skip_layers), cfg.layer_windows):
        if window and window < T:
            rings += sum(_tensor_nbytes(width, pc, window, size, kv_bits, kv_group, kv_residual) for width, pc in layer)
        else:
            values = sum(width for width, _ in layer)
            per_token += values * size if kv_bits == 16 else values * kv_bits / 8 + values * 4 / kv_group
    return per_token + rings / T if rings else per_token


def _zeros(*shape, like):
    return torch.zeros(*shape, device=like["device"], dtype=like["dtype"])


def _put(buf, dim, input_pos, t, wraps=False):
    """Write t into buf along dim at input_pos; None: a prefill, whose chunk starts at position 0. wraps: buf
    is a sliding window's ring of L slots, position p in slot p mod L (a prefill longer than L keeps its last L)."""
    L, n = buf.size(dim), t.size(dim)
    if input_pos is None and n > L:
        input_pos, t = torch.arange(n - L, n, device=t.device), t.narrow(dim, n - L, L)
    if input_pos is None:
        buf.narrow(dim, 0, n).copy_(t)
    else:
        buf.index_copy_(dim, input_pos % L if wraps else input_pos, t.to(buf.dtype))


def _probs(scores, input_pos, max_len):
    """Attention probabilities of (B, H, T, L) raw scores (already scaled) for a chunk at input_pos: a
    position sees the buffer up to itself; what is not written yet is masked. In a sliding window's ring
    (L = W slots) a token at p >= W - 1 sees every slot, each holding one of the positions p - W < j <= p."""
    visible = torch.arange(max_len, device=scores.device) <= input_pos.view(-1, 1)  # (T, L)
    return F.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)


def _gates(attn, dtype):
    """The lens gates do not change while decoding: computed once per cache, not per step."""
    if not attn.lens:
        return None
    with torch.no_grad():
        return tuple(None if g is None else g.to(dtype) for g in attn.query_gates())


# ----------------------------------------------------------------------------- storage
KV_BITS = (16, 8, 4)


def eager_cpu(input_pos):
    """Whether a step runs eagerly on a CPU, where reading a position on the host is free (elsewhere a step
    does the same work at every position, with no host sync)."""
    return input_pos.device.type == "cpu" and not torch.compiler.is_compiling()


def _grouped(x, group, per_channel):
    """(..., n, C) viewed as quantization groups: (..., n/G, G, C) for per-channel groups (G tokens of
    one channel), (..., n, C/G, G) for per-token groups (G channels of one token)."""
    *lead, n, C = x.shape
    return x.view(*lead, n // group, group, C) if per_channel else x.view(*lead, n, C // group, group)


def quantize(x, bits, group, per_channel):
    """Asymmetric integer quantization of x (..., n, C) in groups of `group` values: scale = (max - min)
    / (2^bits - 1) and zero = min, both stored in float16, codes = round((x - zero) / scale) in [0,
    2^bits - 1], 4-bit codes packed two to a byte along C. Returns (codes, scale, zero); scale and zero
    keep the group's reduced dimension (size 1), so that dequantize broadcasts them as they are."""
    g = _grouped(x, group, per_channel)
    dim = -2 if per_channel else -1
    big = torch.finfo(torch.float16).max  # beyond float16's range a group saturates instead of going infinite
    lo, hi = g.amin(dim, keepdim=True).clamp(-big, big), g.amax(dim, keepdim=True).clamp(-big, big)
    scale, zero = ((hi - lo) / (2 ** bits - 1)).to(torch.float16), lo.to(torch.float16)
    s = scale.to(x.dtype)
    inv = torch.where(s > 0, 1 / s, 0)  # a constant group (scale 0, or below float16's range): codes 0
    codes = ((g - zero.to(x.dtype)) * inv).round_().clamp_(0, 2 ** bits - 1).to(torch.uint8).view(x.shape)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return codes, scale, zero


def dequantize(codes, scale, zero, bits, group, per_channel, dtype, out=None, nibbles=None):
    """The values quantize's (codes, scale, zero) stand for, (..., n, C) in dtype, written into `out` where
    given, 4-bit codes unpacked through `nibbles` (uint8, codes' shape) where given. In place, so that a
    cache reading itself every step allocates nothing: a fresh tensor of the cache's size per step costs
    more in page faults than the arithmetic (measured: 10x on a CPU; 2.3x for the unpacking)."""
    *lead, n, packed = codes.shape
    if out is None:
        out = torch.empty(*lead, n, packed * 8 // bits, dtype=dtype, device=codes.device)
    if bits == 4 and nibbles is not None:  # low nibble first: two codes per byte
        pairs = out.view(*lead, n, packed, 2)
        pairs[..., 0].copy_(torch.bitwise_and(codes, 15, out=nibbles))
        pairs[..., 1].copy_(torch.bitwise_right_shift(codes, 4, out=nibbles))
    elif bits == 4:
        out.copy_(torch.stack((codes & 15, codes >> 4), dim=-1).view(*lead, n, 2 * packed))
    else:
        out.copy_(codes)
    _grouped(out, group, per_channel).mul_(scale).add_(zero)
    return out


def fake_quant(x, bits, group, per_channel):
    """quantize then dequantize: what a quantized cache gives back for x (the tests' reference)."""
    return x if bits == 16 else dequantize(*quantize(x, bits, group, per_channel), bits, group, per_channel, x.dtype)


class Buffer:
    """One cached tensor (..., L, C), kept as it is computed (kv_bits=16: the model's dtype); wraps: a
    sliding window's ring of L slots."""

    def __init__(self, lead, max_len, width, like, wraps=False):
        self.t, self.wraps = _zeros(*lead, max_len, width, like=like), wraps

    def write(self, input_pos, t):
        _put(self.t, -2, input_pos, t, self.wraps)

    def read(self, input_pos):
        return self.t

    def tensors(self):
        return [self.t]


class QuantizedBuffer:
    """One cached tensor (..., L, C) at `bits` bits (quantize), in groups of G channels of one token or,
    for key-like tensors (per_channel), G tokens of one channel (KIVI: keys have outlier channels). The
    newest tokens stay in full precision in a ring of W slots: the `residual` newest, and the group being
    filled (G tokens per channel, one per token), so a token is quantized when its group leaves the
    residual window; a step quantizes the group that its token pushes out (compiled, every step does the
    same work on static shapes). Reading dequantizes everything and puts the window's full-precision
    values back.
    The cache then takes a prefill and one token per step. wraps: the L positions are a sliding window's
    ring (L a whole number of groups): position p's codes in slot p mod L, a group stored only once complete,
    when the positions it overwrites have left the window."""

    def __init__(self, lead, max_len, width, like, bits, group, residual, per_channel, wraps=False):
        self.bits, self.group, self.residual, self.per_channel = bits, group, residual, per_channel
        self.wraps = wraps
        self.work = self.nibbles = None  # where read() dequantizes to: the KVCache's workspace, for every layer
        self.plans = {}  # a step's positions (_plan), shared by the KVCache's buffers
        self.tok = group if per_channel else 1  # tokens per group
        self.max_len, padded = max_len, -(-max_len // self.tok) * self.tok
        self.window = min(residual + self.tok, max_len)
        self.codes = torch.zeros(*lead, padded, width * bits // 8, dtype=torch.uint8, device=like["device"])
        groups = (*lead, padded // group, 1, width) if per_channel else (*lead, padded, width // group, 1)
        self.scale = torch.zeros(groups, dtype=torch.float16, device=like["device"])
        self.zero = torch.zeros_like(self.scale)
        self.ring = _zeros(*lead, self.window, width, like=like)

    def tensors(self):
        return [self.codes, self.scale, self.zero, self.ring]

    def quantized(self, n):
        """How many of the first n positions are quantized: whole groups older than the residual."""
        return (n - self.residual).clamp(min=0) // self.tok * self.tok

    def _store(self, idx, t, keep=None):
        """Quantize t (..., k*tok, C) into positions idx (whole groups); keep (a bool tensor): only where it
        is true, else the codes there stay."""
        codes, scale, zero = quantize(t, self.bits, self.group, self.per_channel)
        if self.wraps:
            idx = idx % self.max_len
        at = idx[::self.tok] // self.tok if self.per_channel else idx
        if keep is not None:
            codes = torch.where(keep, codes, self.codes.index_select(-2, idx))
            scale = torch.where(keep, scale, self.scale.index_select(-3, at))
            zero = torch.where(keep, zero, self.zero.index_select(-3, at))
        self.codes.index_copy_(-2, idx, codes)
        self.scale.index_copy_(-3, at, scale)
        self.zero.index_copy_(-3, at, zero)

    def _plan(self, input_pos):
        """A step's positions: the token's ring slot, the group it pushes out of the window (clamped before
        the first: masked until it is written again with its values) and that group's slots, and the
        position each ring slot holds with whether it is still unquantized. The same for every buffer with
        this window and grouping, so eager decoding computes it once per step (a dozen small integer ops per
        buffer cost as much as the dequantization at batch 1); `_version` catches a position tensor
        changed in place."""
        key = (self.window, self.tok, self.residual, self.wraps)  # a ring's plan differs (`complete`, below)
        hit = self.plans.get(key)
        if hit is not None and hit[0] is input_pos and hit[1] == input_pos._version:
            return hit[2]
        W, dev, n = self.window, input_pos.device, input_pos[-1:] + 1
        first = (input_pos - self.residual).clamp(min=0) // self.tok * self.tok
        group = first + torch.arange(self.tok, device=dev)
        # slot s holds the position p in [n - W, n) with p = s mod W (a p < 0, never written: p + W >= n, masked)
        pos = n - W + (torch.arange(W, device=dev) - n) % W
        pos = torch.where(pos < 0, pos + W, pos)
        # whether the group is complete this step: eager on a CPU, where reading the position is free, a
        # key group is then quantized once instead of at each of its G steps; else every step (static work)
        complete = True
        if eager_cpu(input_pos):
            t = int(input_pos[-1]) - self.residual
            complete = t >= 0 and (t + 1) % self.tok == 0
        elif self.wraps:  # in a ring, a group stored before it is complete would overwrite codes still in the
            t = input_pos[-1:] - self.residual  # window: the condition as a tensor (static work, no sync)
            complete = (t >= 0) & ((t + 1) % self.tok == 0)
        plan = (input_pos % W, group, group % W, pos, (pos >= self.quantized(n)).view(W, 1), complete)
        if not torch.compiler.is_compiling():
            self.plans[key] = (input_pos, input_pos._version, plan)
        return plan

    def write(self, input_pos, t):
        W = self.window
        if input_pos is None:  # a prefill from position 0: whole groups quantized, the rest to the ring
            n = t.size(-2)
            done = int(self.quantized(torch.tensor(n)))
            first = max(0, done - self.max_len) if self.wraps else 0  # a ring keeps its last L positions
            if done > first:
                self._store(torch.arange(first, done, device=t.device), t[..., first:done, :])
            keep = torch.arange(max(0, n - W), n, device=t.device)
            self.ring.index_copy_(-2, keep % W, t.index_select(-2, keep).to(self.ring.dtype))
            return
        if input_pos.numel() != 1:
            raise ValueError("a quantized cache takes a prefill and then one token per step")
        slot, group, group_slots, _, _, complete = self._plan(input_pos)
        self.ring.index_copy_(-2, slot, t.to(self.ring.dtype))
        if isinstance(complete, torch.Tensor):
            self._store(group, self.ring.index_select(-2, group_slots), keep=complete)
        elif complete:
            self._store(group, self.ring.index_select(-2, group_slots))

    def read(self, input_pos):
        """(..., L, C): the dequantized codes, with the positions from the oldest not quantized to the
        newest written replaced by the ring's full-precision values (position j >= quantized(n) is in slot
        j mod W). Eager, in place in the workspace; compiled, as one expression, which inductor fuses with
        its reader (in place on a view of an input, it would copy the workspace: measured 3x slower)."""
        args = (self.codes, self.scale, self.zero, self.bits, self.group, self.per_channel, self.ring.dtype)
        L = self.max_len
        if torch.compiler.is_compiling():
            j, n = torch.arange(L, device=input_pos.device), input_pos[-1:] + 1
            if self.wraps:  # slot j holds the newest position p < n with p = j mod L
                j = n - L + (j - n) % L
            fresh = (j >= self.quantized(n)).view(-1, 1)
            return torch.where(fresh, self.ring.index_select(-2, j % self.window), dequantize(*args)[..., :L, :])
        out = dequantize(*args, self.work, self.nibbles)[..., :L, :]
        _, _, _, pos, fresh, _ = self._plan(input_pos)
        slots = pos % L if self.wraps else pos
        out.index_copy_(-2, slots, torch.where(fresh, self.ring, out.index_select(-2, slots)))
        return out


def _store(lead, max_len, width, like, quant, per_channel, wraps=False):
    """A Buffer, or a QuantizedBuffer where quant = (bits, group, residual) asks for fewer than 16 bits."""
    if quant[0] == 16:
        return Buffer(lead, max_len, width, like, wraps)
    return QuantizedBuffer(lead, max_len, width, like, *quant, per_channel, wraps)


def slots(attn, max_len):
    """Positions a layer's cache keeps: max_len, or a sliding window's W (a ring) where W is shorter."""
    return min(max_len, attn.window or max_len)


class KVLayerCache:
    """K and V (B, H_kv, L, D), and with reciprocity the layer's own past queries (B, H, L, D). For
    multi-head reciprocity K~ = [k | q] is one buffer that attend reads as it is. Each is a Buffer or, at
    fewer bits, a QuantizedBuffer: keys and queries per channel, values per token."""
    query_only = False  # attend needs the chunk's K and V (attention's forward computes them)

    def __init__(self, attn, batch_size, max_len, like, attends=True, quant=(16,)):
        B, L, H, Hkv, D = batch_size, slots(attn, max_len), attn.n_head, attn.n_kv_head, attn.head_dim
        self.max_len, self.gates, self.kq, self.k, self.q, self.D = L, _gates(attn, like["dtype"]), None, None, None, D
        wraps = L < max_len
        if attn.use_rec and attends and Hkv == H:
            self.kq = _store((B, H), L, 2 * D, like, quant, True, wraps)
        else:
            self.k = _store((B, Hkv), L, D, like, quant, True, wraps)
            if attn.use_rec and attends:
                self.q = _store((B, H), L, D, like, quant, True, wraps)
        self.v = _store((B, Hkv), L, D, like, quant, False, wraps)

    def buffers(self):
        return [s for s in (self.kq, self.k, self.q, self.v) if s is not None]

    def write(self, input_pos, x, q, k, v):
        if self.kq is not None:
            self.kq.write(input_pos, torch.cat([k, q], -1))
        else:
            self.k.write(input_pos, k)
            if self.q is not None:
                self.q.write(input_pos, q)
        self.v.write(input_pos, v)

    def keys(self, input_pos):
        """The cached K (B, H_kv, L, D), for this layer or a CLA layer reading it."""
        return self.k.read(input_pos) if self.kq is None else self.kq.read(input_pos)[..., :self.D]

    def attend(self, attn, q, k, input_pos, gates=None, past_q=None):
        """(B, H, T, D) outputs. Query heads that share a K/V head are stacked into one matrix product,
        so each buffer is read once per step, never copied per head. `gates` and `past_q`: those of a
        CLA layer reading this one's K and V (SharedLayerCache; lens gates are on in every layer or none,
        so gates=None means this layer's own)."""
        B, H, T, D = q.shape
        own = gates is None
        qs, kr = attn.query_side(q, repeat_kv(k, H), self.gates if own else gates)
        if own and self.kq is not None:  # multi-head reciprocity: [qs | kr] . [k | q] in one product
            scores = torch.cat([qs, kr], -1) @ self.kq.read(input_pos).transpose(-2, -1)
        else:
            keys = self.keys(input_pos)
            scores = (qs.reshape(B, keys.size(1), -1, D) @ keys.transpose(-2, -1)).view(B, H, T, -1)
            if kr is not None:  # S^T against each head's own past queries
                scores = scores + kr @ (self.q if own else past_q).read(input_pos).transpose(-2, -1)
        p = _probs(scores * (1.0 / math.sqrt(D)), input_pos, self.max_len)
        v = self.v.read(input_pos)
        return (p.reshape(B, v.size(1), -1, p.size(-1)) @ v).view(B, H, T, D)


def _per_head(t, w):
    """(B, H, T, X) @ (H, X, Y) as one product per head with the sequences stacked in its rows: a
    broadcast matmul would copy w once per sequence (measured: 1.4x transformers' decode time at
    batch 16, from those copies alone)."""
    B, H, T, X = t.shape
    return (t.transpose(0, 1).reshape(H, B * T, X) @ w).view(H, B, T, -1).transpose(0, 1)


class InputLayerCache:
    """x^ = ln_1(x) (B, L, E), and head h's rows of c_attn, (H, D, E) (a K/V group's rows repeated), so
    that attention reads x^ once: scores = (q W_k) . x^_j, output = W_v (sum_j p_j x^_j) + b_v."""

    def __init__(self, attn, batch_size, max_len, like, quant=(16,)):
        H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
        E = H * D
        self.max_len, self.gates = slots(attn, max_len), _gates(attn, like["dtype"])
        self.query_only = not attn.use_rec  # the chunk's K enters only through S^T; V never does
        self.x = _store((batch_size,), self.max_len, E, like, quant, False, self.max_len < max_len)
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
        self.x.write(input_pos, x)

    def attend(self, attn, q, k, input_pos, gates=None, past_q=None):
        B, H, T, D = q.shape
        qs, kr = attn.query_side(q, None if k is None else repeat_kv(k, H), self.gates if gates is None else gates)
        qa = _per_head(qs, self.wk) + (0 if kr is None else _per_head(kr, self.wq))  # (B, H, T, E)
        x = self.x.read(input_pos)
        scores = (qa.reshape(B, H * T, -1) @ x.transpose(1, 2)).view(B, H, T, -1)
        p = _probs(scores * (1.0 / math.sqrt(D)), input_pos, self.max_len)
        z = (p.view(B, H * T, -1) @ x).view(B, H, T, -1)  # sum_j p_j x^_j
        return _per_head(z, self.wv.transpose(-2, -1)) + self.bv


class SharedLayerCache:
    """A CLA layer that does not own K and V: it reads its group's first layer's cache (K/V or input),
    with its own lens gates, and keeps only its own past queries (reciprocity, K/V form only)."""

    def __init__(self, attn, batch_size, max_len, like, owner, attends=True, quant=(16,)):
        self.owner, self.gates, self.q = owner, _gates(attn, like["dtype"]), None
        self.query_only = owner.query_only
        if attn.use_rec and attends:
            L = slots(attn, max_len)  # the group's window (one per CLA group)
            self.q = _store((batch_size, attn.n_head), L, attn.head_dim, like, quant, True, L < max_len)

    def buffers(self):
        return [] if self.q is None else [self.q]

    def write(self, input_pos, x, q, k, v):  # the group's first layer wrote the rest
        if self.q is not None:
            self.q.write(input_pos, q)

    def attend(self, attn, q, k, input_pos):
        return self.owner.attend(attn, q, k, input_pos, gates=self.gates, past_q=self.q)


class KVCache:
    """Every layer's cache for batch_size sequences of up to max_len positions (block_size by
    default), zeroed (masked positions must hold finite values), in the autocast dtype when autocast
    is on, else the model's. form: "kv", "input", or True / "auto" for the smaller (model.cache_form).
    kv_bits 8 or 4 keeps it quantized (QuantizedBuffer) in groups of kv_group values, the newest
    kv_residual tokens unquantized; 16 keeps it in that dtype."""

    def __init__(self, model, batch_size, max_len=None, attn_skip_layers=(), form="auto", dtype=None, kv_bits=16,
                 kv_group=32, kv_residual=0):
        model = unwrap(model)
        cfg = model.config
        self.form = cache_form(cfg, form)
        self.batch_size, self.max_len = batch_size, max_len or cfg.block_size
        if not 1 <= self.max_len <= cfg.block_size:
            raise ValueError(f"max_len={self.max_len} must be in [1, block_size={cfg.block_size}]")
        check_quant(cfg, self.form, kv_bits, kv_group, kv_residual)
        self.quant = (kv_bits, kv_group, kv_residual)
        self.attn_skip_layers = set(attn_skip_layers)
        self.length = 0  # positions filled: advance() moves it, reset() empties the cache
        # the shortest sliding window's ring, where one is shorter than the cache (None: nothing wraps)
        self.ring = min((w for w in cfg.layer_windows if w and w < self.max_len), default=None)
        device = model.lm_head.weight.device
        if dtype is None:
            dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                     else model.lm_head.weight.dtype)
        like = dict(device=device, dtype=dtype)
        self.layers, owner = [], None
        for i, block in enumerate(model.transformer.h):
            on = attends(cfg, i, self.attn_skip_layers)
            if not (on or feeds_group(cfg, i, self.attn_skip_layers)):
                self.layers.append(None)  # pruned, attention-free, or a group nobody reads
            elif block.attn.owns_kv:
                owner = (KVLayerCache(block.attn, batch_size, self.max_len, like, on, self.quant) if self.form == "kv"
                         else InputLayerCache(block.attn, batch_size, self.max_len, like, self.quant))
                self.layers.append(owner)
            else:
                self.layers.append(SharedLayerCache(block.attn, batch_size, self.max_len, like, owner, on, self.quant))
        # a quantized cache dequantizes one tensor at a time into one workspace (attention is done with
        # each before the next is read): memory that is not the cache's, but that decoding needs
        quantized = [s for layer in self.layers if layer for s in layer.buffers() if isinstance(s, QuantizedBuffer)]
        shapes = [(*s.codes.shape[:-1], s.codes.size(-1) * 8 // kv_bits) for s in quantized]
        self.workspace = _zeros(max((math.prod(sh) for sh in shapes), default=0), like=like)
        self.nibbles = torch.zeros(max((s.codes.numel() for s in quantized), default=0) if kv_bits == 4 else 0,
                                   dtype=torch.uint8, device=device)  # 4-bit codes unpacked one nibble at a time
        plans = {}
        for s, sh in zip(quantized, shapes):
            s.work, s.plans = self.workspace[:math.prod(sh)].view(sh), plans
            if kv_bits == 4:
                s.nibbles = self.nibbles[:s.codes.numel()].view(s.codes.shape)
        if device.type == "cuda":  # CUDA graphs may then write into them in place
            for t in self.buffers() + [self.workspace, self.nibbles]:
                torch._dynamo.mark_static_address(t)

    def advance(self, t):
        """Claim the next t positions; returns the first. The one place the position moves."""
        if self.length + t > self.max_len:
            raise ValueError(f"cannot add {t} positions to a KVCache holding {self.length} of {self.max_len}; reset() it")
        if self.length and t > 1 and self.ring and self.length + t > self.ring:
            raise ValueError(f"a sliding-window cache (W={self.ring}) takes a prefill, then one token per step once it "
                             f"wraps: a chunk of {t} at position {self.length} would overwrite keys it attends to")
        start, self.length = self.length, self.length + t
        return start

    def reset(self):
        """Empty the cache; the buffers stay (what they hold is masked until overwritten)."""
        self.length = 0

    def buffers(self):
        """The tensors the cache holds, each once (a CLA group's are its first layer's)."""
        return list({id(t): t for layer in self.layers if layer for s in layer.buffers() for t in s.tensors()}.values())

    def nbytes(self):
        """Bytes the cache holds (its buffers: what the past costs)."""
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def workspace_nbytes(self):
        """Bytes of the workspace a quantized cache dequantizes into (0 at 16 bits)."""
        return self.workspace.numel() * self.workspace.element_size() + self.nibbles.numel()


# ----------------------------------------------------------------------------- generation
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row, (b, 1), from last-position logits (b, vocab): the argmax at temperature 0;
    else a draw from softmax(logits / temperature) kept to the top_k most likely tokens (None or 0: all),
    then to the nucleus of top_p (the most likely tokens whose probability reaches top_p; None or 1: all),
    in transformers' order. Within the top k, the draw sees only the k values (topk, softmax over k,
    draw, gather the index): at GPT-2's vocabulary a softmax and torch.multinomial over every token
    cost ~10x more. The draw is an exponential race, sync-free and vectorised: with E_i ~ Exp(1) i.i.d.,
    E_i / p_i ~ Exp(rate p_i), and the first of independent exponential clocks is i with probability
    p_i / sum(p), so argmax(p / E) draws from p exactly (to float32's 2^-24 steps of U; p normalised or
    not). Top-p over the whole vocabulary sorts it, as transformers does. Random numbers come from
    torch's global generator (torch.manual_seed), or from `generator`."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    if not (temperature > 0 and (top_k is None or top_k >= 0) and (top_p is None or 0 < top_p <= 1)):
        raise ValueError(f"sampling needs temperature >= 0, top_k >= 0 and top_p in (0, 1], got temperature="
                         f"{temperature}, top_k={top_k}, top_p={top_p}")
    idx = None  # the vocabulary index of each column, where the columns are a subset
    if top_k and top_k < logits.size(-1):
        logits, idx = torch.topk(logits, top_k)  # sorted, most likely first
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        if idx is None:
            probs, idx = probs.sort(dim=-1, descending=True)
        # a token stays while the tokens more likely than it hold less than top_p: the most likely always does
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0)
    # E = -log U, U uniform on [0, 1) (a uniform and a log: torch's exponential_ is ~4x slower on a CPU):
    # E > 0, so no 0 / 0, and U = 0 gives E = inf, a token that never wins
    e = torch.rand(probs.shape, device=probs.device, generator=generator).log_().neg_()
    choice = (probs / e).argmax(dim=-1, keepdim=True)
    return choice if idx is None else idx.gather(-1, choice)


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
                    compile=False, kv_bits=16, kv_group=32, kv_residual=0, top_p=None, generator=None):
    """Yield max_new_tokens sampled tokens (b, 1), one at a time (sample_next: temperature, top_k, top_p,
    generator; temperature 0 is greedy). kv_cache: False recomputes the context every step, as nanoGPT
    does; True (= "auto": the smaller form for this config), "kv" or
    "input" prefill the prompt in one pass, then feed one token per step. compile=True runs that step
    through torch.compile (CUDA graphs on CUDA); it compiles once, not per position. kv_bits 8 or 4
    (kv_group, kv_residual): a quantized cache (KVCache). Every path
    conditions on the last block_size tokens: once the cache is full, the last block_size tokens are
    prefilled again, so all paths give the same logits."""
    bs = unwrap(model).config.block_size
    max_len = min(bs, idx.size(1) + max_new_tokens)  # decoding attends over the whole buffer: no longer than needed
    if compile and not kv_cache:
        raise ValueError("compile=True compiles the cached decode step: it needs kv_cache")
    if kv_bits != 16 and not kv_cache:
        raise ValueError(f"kv_bits={kv_bits} quantizes the KV cache: it needs kv_cache (False recomputes)")
    cache = KVCache(model, idx.size(0), max_len, attn_skip_layers, kv_cache, None, kv_bits, kv_group,
                    kv_residual) if kv_cache else None
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
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat((idx, nxt), dim=1)
        yield nxt


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, kv_cache=True, attn_skip_layers=(),
             compile=False, **options):
    """idx (b, t) followed by max_new_tokens sampled tokens; see generate_stream (options: kv_bits, kv_group,
    kv_residual, top_p, generator)."""
    new = list(generate_stream(model, idx, max_new_tokens, temperature, top_k, kv_cache, attn_skip_layers, compile,
                               **options))
    return torch.cat([idx] + new, dim=1)
