"""
GPT-2 from scratch with lens-gated attention, route gates and a low-rank MLP context path; every
mechanism is a GPTConfig switch, and with all of them off this is exactly GPT-2.

Attention logits per head (s = 1/sqrt(D)), (w_std, w_rec, w_disc) = softmax(lens_gates) over the enabled terms:
    logits[i, j] = w_std s q_i.k_j  +  w_rec s q_j.k_i  +  w_disc k_j.u     (then the causal mask)
folded into ONE scaled_dot_product_attention call with every gate on the query side:
    Q~_i = [w_std q_i + (w_disc / s) u  |  w_rec k_i],   K~_j = [k_j | q_j]
(width D with discoverability alone, 2D with reciprocity; no T x T matrix is built). A cache keeps the raw
[k | q], or ln_1's output x^_j, in which everything a past token contributes is linear (engine.py).
Block, with the route gate g = sigmoid(route_raw + route_bias):
    a = attn(ln_1(x));  m = mlp(ln_2(x + a), a);  x_next = x + g a + (1 - g) m
MLP context: h = (1 - alpha) gelu(c_fc(x)) + alpha ctx_up(ctx_down(a)), then c_proj.
Peers that shrink the cache by retraining: grouped- and multi-query attention (n_kv_head) and cross-layer
attention (kv_share). Attention the model can give up: placement (attn_layers) and a hard-concrete gate per
layer held to a budget (attn_budget), whose closed layers are then removed exactly.
"""

import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    n_kv_head: Optional[int] = None  # None = n_head; fewer = grouped-query, 1 = multi-query
    # cross-layer attention (CLA, Brandon et al. 2024): each group of kv_share adjacent layers computes K and V
    # once, in its first layer; the others keep their own queries. 2 halves the cache
    kv_share: int = 1
    # lens-gated attention
    use_reciprocity: bool = False  # add S^T: costs Q in the KV cache
    use_discoverability: bool = False  # add the column bias d_j = k_j . u
    lens_gate_init: tuple = (2.2, 0.6, 0.1)  # raw (std, rec, disc); softmax over the enabled ones
    # route gate between attention and MLP
    use_route_gate: bool = False
    init_route_gate: float = 0.8  # raw value: sigmoid(0.8) ~ 0.69
    route_anneal_start: int = 2000
    route_anneal_end: int = 10000
    route_anneal_target: float = -1.0  # raw value reached at route_anneal_end: sigmoid(-1) ~ 0.27
    # MLP
    mlp_use_ctx_summary: bool = False  # low-rank context from the attention output
    mlp_ctx_rank: int = 128
    mlp_ctx_alpha_init: float = 0.1
    mlp_ctx_conductor: bool = False  # use the context only while the block's g < 0.5
    mlp_disabled: bool = False  # no MLP and no ln_2 at all
    mlp_expansion_ratio: float = 4.0
    # the MLP's GELU: "tanh" is GPT-2's gelu_new (Hugging Face's GPT-2, and every lensgpt checkpoint from
    # before this setting); "exact" is the erf GELU of nanoGPT and nn.GELU(). The two differ by ~1e-3
    mlp_activation: str = "tanh"
    # attention placement: the layers that have attention at all (None = every layer; "first_half" = the
    # first n_layer // 2). A layer outside it has no ln_1 and no attention parameters, costs no attention
    # time and caches nothing
    attn_layers: Optional[tuple] = None
    attn_free_mlp_iso: bool = False  # widen attention-free layers' MLPs to a whole layer's parameters
    # learned placement: one hard-concrete gate per attention layer, the expected number of open gates
    # held to round(attn_budget * attention layers) by a learned Lagrange multiplier (None = off)
    attn_budget: Optional[float] = None
    # sliding-window attention (Mistral's every layer; Gemma's and Character.AI's local layers): token i attends to
    # keys j with i - W < j <= i. An int windows every attention layer; a tuple gives each layer its own (0 or None:
    # global). attn_global_every=k keeps one layer in k global, the first of each group of k (attn_global_last: the
    # last), window attn_window elsewhere. A windowed layer's cache is a ring of W positions
    attn_window: Optional[object] = None
    attn_global_every: int = 0
    attn_global_last: bool = False
    # False: a separate lm_head, and embeddings at unit scale (nn.Embedding's default, as modded-nanogpt's): at
    # GPT-2's 0.02 (an output layer's scale) a fresh model stays on the recall probe's plateau (docs/results.md)
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        self.lens_gate_init = tuple(float(v) for v in self.lens_gate_init)
        layers = self.attn_layers
        if layers == "first_half":  # a config file's words, before an overlay sets n_layer: resolved here
            layers = tuple(range(max(1, self.n_layer // 2)))
        if layers is not None:
            layers = (layers,) if isinstance(layers, int) else tuple(layers) if isinstance(layers, (tuple, list)) else ()
            if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ValueError(f"attn_layers must be a non-empty tuple of layer indices, got {self.attn_layers!r}")
            if any(not 0 <= i < self.n_layer for i in layers) or len(set(layers)) != len(layers):
                raise ValueError(f"attn_layers={self.attn_layers!r} must name distinct layers in [0, {self.n_layer})")
            self.attn_layers = tuple(sorted(layers))
        has = set(self.attention_layers) if self.n_layer >= 1 else set()
        mixed = [g for g in range(0, max(self.n_layer, 0), max(self.kv_share, 1))
                 if len({i in has for i in range(g, min(g + self.kv_share, self.n_layer))}) > 1]
        checks = [
            (min(self.block_size, self.vocab_size, self.n_layer, self.n_head, self.n_embd) >= 1,
             "block_size, vocab_size, n_layer, n_head and n_embd must be >= 1"),
            (self.n_head < 1 or self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}"),
            (1 <= self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0,
             f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}"),
            (self.kv_share >= 1, "kv_share must be >= 1"),
            (len(self.lens_gate_init) == 3, "lens_gate_init needs three raw values (std, rec, disc)"),
            (not (self.mlp_disabled and self.use_route_gate), "use_route_gate needs an MLP to route to (mlp_disabled=True)"),
            (not (self.mlp_disabled and self.mlp_use_ctx_summary), "mlp_use_ctx_summary needs an MLP (mlp_disabled=True)"),
            (not self.mlp_ctx_conductor or (self.mlp_use_ctx_summary and self.use_route_gate),
             "mlp_ctx_conductor needs mlp_use_ctx_summary=True and use_route_gate=True"),
            (self.mlp_ctx_rank >= 1, "mlp_ctx_rank must be >= 1"),
            (self.mlp_expansion_ratio > 0, "mlp_expansion_ratio must be > 0"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.mlp_activation in ("tanh", "exact"), f"mlp_activation must be 'tanh' or 'exact', got {self.mlp_activation!r}"),
            (not mixed, f"kv_share={self.kv_share} groups layers {mixed[0] if mixed else 0}.. with and without "
                        f"attention (attn_layers={self.attn_layers}): a layer cannot share K/V with an attention-free one"),
            (not (self.attn_free_mlp_iso and self.mlp_disabled), "attn_free_mlp_iso needs an MLP (mlp_disabled=True)"),
            (self.attn_budget is None or 0 < self.attn_budget <= 1, f"attn_budget must be in (0, 1], got {self.attn_budget}"),
            (self.attn_budget is None or self.attn_budget_layers >= 1,
             f"attn_budget={self.attn_budget} of {len(has)} attention layers rounds to none; use at least "
             f"{0.5 / max(len(has), 1):.3g}"),
            (self.attn_budget is None or not self.mlp_disabled,
             "attn_budget needs an MLP to fall back on (mlp_disabled=True is attention only)"),
            (self.attn_budget is None or self.kv_share == 1, "attn_budget gates single layers: it needs kv_share=1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.check_windows(has)

    def check_windows(self, has):
        """ValueError (one line) for a window setting this config cannot take."""
        w, k = self.attn_window, self.attn_global_every
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)
        if isinstance(w, list):
            w = self.attn_window = tuple(w)
        if not (whole(k) and k >= 0):
            raise ValueError(f"attn_global_every must be a whole number >= 0, got {k!r}")
        if w is None:
            if k or self.attn_global_last:
                raise ValueError(f"attn_global_every={k}, attn_global_last={self.attn_global_last} need attn_window "
                                 f"(the window of the other layers)")
            return
        if self.attn_global_last and not k:
            raise ValueError("attn_global_last needs attn_global_every (one layer in how many is global)")
        if k == 1:
            raise ValueError("attn_global_every=1 makes every layer global: use attn_window=None")
        if isinstance(w, tuple):
            if k:
                raise ValueError("attn_global_every needs one attn_window for every local layer, not a per-layer tuple")
            if len(w) != self.n_layer:
                raise ValueError(f"attn_window has {len(w)} entries for n_layer={self.n_layer} layers (0 or None: global)")
            bad = [v for v in w if not (v is None or (whole(v) and v >= 0))]
            if bad:
                raise ValueError(f"attn_window entries must be whole numbers >= 1 (0 or None: global), got {bad[0]!r}")
            lost = [i for i, v in enumerate(w) if v and i not in has]
            if lost:
                raise ValueError(f"attn_window gives layer {lost[0]} a window, but it has no attention "
                                 f"(attn_layers={self.attn_layers})")
        elif not (whole(w) and w >= 1):
            raise ValueError(f"attn_window must be a whole number of tokens >= 1, a per-layer tuple or None, got {w!r}")
        wins = self.layer_windows
        if k and all(wins[i] for i in has):
            raise ValueError(f"attn_global_every={k}{' with attn_global_last' if self.attn_global_last else ''} leaves no "
                             f"attention layer global among n_layer={self.n_layer} (attn_layers={self.attn_layers})")
        big = [v for v in wins if v is not None and v >= self.block_size]
        if big:
            raise ValueError(f"attn_window={big[0]} is not below block_size={self.block_size}: such a layer sees its whole "
                             f"context (global); give it 0 (global) or a window below block_size")
        for g in range(0, self.n_layer, self.kv_share):
            group = {wins[i] for i in range(g, min(g + self.kv_share, self.n_layer)) if i in has}
            if len(group) > 1:
                raise ValueError(f"kv_share={self.kv_share} groups layers {g}.. with different windows "
                                 f"({', '.join(str(v or 'global') for v in sorted(group, key=lambda v: v or 0))}): a CLA "
                                 f"group shares one K/V and so one window")

    @property
    def layer_windows(self):
        """Each layer's window W (keys i - W < j <= i), or None for a global layer or one without attention."""
        w, k, n = self.attn_window, self.attn_global_every, self.n_layer
        if w is None:
            return (None,) * n
        if isinstance(w, (tuple, list)):
            wins = tuple(v or None for v in w)
        else:
            glob = lambda i: k and (i % k == (k - 1 if self.attn_global_last else 0))
            wins = tuple(None if glob(i) else w for i in range(n))
        return tuple(v if i in self.attention_layers else None for i, v in enumerate(wins))

    @property
    def attention_layers(self):
        """The layers that have attention, in order."""
        return tuple(range(self.n_layer)) if self.attn_layers is None else self.attn_layers

    @property
    def attn_budget_layers(self):
        """k: how many attention layers keep their gate open under attn_budget (0 when off)."""
        return 0 if self.attn_budget is None else int(math.floor(self.attn_budget * len(self.attention_layers) + 0.5))

    @property
    def lens_terms(self):
        """Indices into (std, rec, disc) of the enabled logit terms."""
        return [0] + [1] * self.use_reciprocity + [2] * self.use_discoverability


class CausalSelfAttention(nn.Module):
    def __init__(self, config, owns_kv=True, window=None):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.window = window  # None: global; W: keys i - W < j <= i (sliding window)
        self.head_dim = config.n_embd // config.n_head
        self.owns_kv = owns_kv  # False: a CLA layer that uses the K and V of its group's first layer
        kv_dim = self.n_kv_head * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_dim * owns_kv, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.use_rec, self.use_disc = config.use_reciprocity, config.use_discoverability
        self.lens = self.use_rec or self.use_disc
        if self.use_disc:
            self.u = nn.Parameter(0.02 * torch.randn(self.n_head, self.head_dim))
        if self.lens:
            raw = [config.lens_gate_init[i] for i in config.lens_terms]
            self.lens_gates = nn.Parameter(torch.tensor(raw).repeat(self.n_head, 1))

    def lens_weights(self):
        """(w_std, w_rec, w_disc), each [H]; a disabled term is exactly 0."""
        zero = torch.zeros(self.n_head, device=self.c_proj.weight.device)
        if not self.lens:
            return zero + 1, zero, zero
        w = F.softmax(self.lens_gates.float(), dim=-1).unbind(-1)
        return w[0], (w[1] if self.use_rec else zero), (w[-1] if self.use_disc else zero)

    def query_gates(self):
        """(w_std, w_rec, (w_disc / s) u), shaped to act on (B, H, T, D) queries; None where a term is off."""
        w_std, w_rec, w_disc = (w.view(-1, 1, 1) for w in self.lens_weights())
        offset = (w_disc * math.sqrt(self.head_dim)) * self.u.unsqueeze(1) if self.use_disc else None
        return w_std, (w_rec if self.use_rec else None), offset

    def query_side(self, q, k, gates=None):
        """The two halves of Q~ = [w_std q + (w_disc / s) u | w_rec k] (the second None without reciprocity):
        s Q~_i . [k_j | q_j] = w_std S[i, j] + w_disc d_j + w_rec S[j, i], as w_disc k_j.u = s k_j.(w_disc u / s).
        `gates`: query_gates(), which a KV cache computes once for all its decode steps."""
        if not self.lens:
            return q, None
        w_std, w_rec, offset = self.query_gates() if gates is None else gates
        qs = w_std.to(q.dtype) * q
        if offset is not None:
            qs = qs + offset.to(q.dtype)
        return qs, (None if w_rec is None else w_rec.to(q.dtype) * k)

    def attend(self, q, k, v, dropout_p=0.0):
        """Causal attention of a chunk on itself: one fused SDPA call at width D (2D with
        reciprocity), q (B, H, T, D), k and v (B, H_kv, T, D)."""
        k, v = repeat_kv(k, self.n_head), repeat_kv(v, self.n_head)
        qs, kr = self.query_side(q, k)
        qt, kt = (qs, k) if kr is None else (torch.cat([qs, kr], -1), torch.cat([k, q], -1))
        D, W = v.size(-1), qt.size(-1)
        # V zero-padded to the width of Q~ and K~ (zeros change no output column): the flash kernels (CPU and
        # CUDA) need equal widths; on a 2-core CPU the math kernel a narrower V falls to is 1.7x slower (fwd+bwd)
        if W > D:
            v = F.pad(v, (0, W - D))
        T, Wn = q.size(2), self.window
        if Wn is not None and T >= BANDED_MIN_RATIO * Wn:
            return banded_attention(qt, kt, v, Wn, dropout_p, 1.0 / math.sqrt(D))[..., :D]
        if Wn is not None and T > Wn:  # a window that is a large part of T: one T x T band mask is cheaper
            mask = window_mask(T, Wn, q.device)
            return sdpa(qt, kt, v, attn_mask=mask, dropout_p=dropout_p, scale=1.0 / math.sqrt(D))[..., :D]
        y = sdpa(qt, kt, v, dropout_p=dropout_p, is_causal=T > 1, scale=1.0 / math.sqrt(D))
        return y[..., :D]

    def forward(self, x, cache=None, input_pos=None, kv=None, skip=False):
        """(output, (k, v)) for x, ln_1's output (B, T, E). `cache`: this layer's (engine.py), written at
        input_pos, which the chunk then attends to (input_pos None: training or a prefill, the chunk attends
        to itself). `kv`: the K and V of a CLA layer's group. skip: the attention is pruned, but later layers
        of the group use its K and V: compute (and cache) them only."""
        B, T, C = x.size()
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        if cache is not None and input_pos is not None and cache.query_only:
            # a cache that attends from x^ alone (the input form, without reciprocity) needs no K and V
            # of the chunk: only c_attn's query rows are read, not W_k and W_v a second time
            bias = None if self.c_attn.bias is None else self.c_attn.bias[:C]
            q, k, v = F.linear(x, self.c_attn.weight[:C], bias), None, None
        elif self.owns_kv:
            q, k, v = self.c_attn(x).split([C, Hkv * D, Hkv * D], dim=2)
            k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, H_kv, T, D)
            v = v.view(B, T, Hkv, D).transpose(1, 2)
        else:
            q, (k, v) = self.c_attn(x), kv
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            cache.write(input_pos, x, q, k, v)
        if skip:
            return None, (k, v)
        if cache is not None and input_pos is not None:
            y = cache.attend(self, q, k, input_pos)
        elif self.lens and torch.is_grad_enabled():  # keep the widened operands out of backward
            y = checkpoint(self.attend, q, k, v, self.dropout * self.training, use_reentrant=False,
                           context_fn=sdpa_saves_only)
        else:
            y = self.attend(q, k, v, self.dropout * self.training)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


# Banded attention does ~2 T W scores against causal attention's T^2 / 2, in smaller products. On a 2-core CPU,
# forward + backward, 4 heads of 32, W = 32, against causal attention (`python bench.py --kernels=True --n_head=4
# --n_embd=128 --window=32 --block_size=T`): banded 0.81x at T = 8 W, 1.08x at 6 W, 1.65x at 4 W, 2.4x at 2 W;
# one T x T band mask 0.90-1.11x at every T. Below this ratio of T to W a windowed layer uses the T x T mask
BANDED_MIN_RATIO = 8


def window_mask(T, W, device):
    """(T, T) bool: query i sees key j when i - W < j <= i."""
    i = torch.arange(T, device=device)
    return (i.view(-1, 1) >= i) & (i.view(-1, 1) - i < W)


def band_mask(n, C, W, device):
    """(n, C, 2C) bool: query r of chunk c (position cC + r) sees key s of [chunk c-1 | chunk c] (position
    (c-1)C + s) when i - W < j <= i, i.e. r + C - W < s <= r + C; chunk 0's first half is padding."""
    r, s = torch.arange(C, device=device).view(-1, 1), torch.arange(2 * C, device=device)
    band = (s <= r + C) & (s > r + C - W)
    first = band & (s >= C)
    return torch.cat([first.unsqueeze(0), band.expand(n - 1, C, 2 * C)]) if n > 1 else first.unsqueeze(0)


def banded_attention(q, k, v, W, dropout_p=0.0, scale=None):
    """Causal attention within a sliding window of W, exact, in O(T W): the sequence is cut into chunks of
    C = W positions, and chunk c's queries attend to the keys of chunks c-1 and c under one band mask, where a
    T x T mask would have SDPA compute all T^2 scores. q, k, v: (B, H, T, X) (k and v repeated to H heads); T
    is padded to whole chunks (padded keys come after every real query, so the mask hides them)."""
    B, H, T, X = q.shape
    C = W
    n = -(-T // C)
    pad = n * C - T
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    # [chunk c-1 | chunk c] for every c, with a chunk of zeros before the first (masked)
    pair = lambda t: torch.cat([F.pad(t, (0, 0, C, 0))[:, :, :-C].reshape(B * H, n, C, -1),
                                t.reshape(B * H, n, C, -1)], 2)
    y = sdpa(q.reshape(B * H, n, C, X), pair(k), pair(v), attn_mask=band_mask(n, C, W, q.device), dropout_p=dropout_p,
             scale=scale)
    return y.view(B, H, n * C, -1)[:, :, :T]


def repeat_kv(t, n_head):
    """(B, H_kv, T, D) -> (B, n_head, T, D): each group of query heads shares one K/V head."""
    return t if t.size(1) == n_head else t.repeat_interleave(n_head // t.size(1), dim=1)


# cuDNN attention builds a new execution plan for every new sequence length, which costs ms per
# call: fine for training (one length), ruinous for generation (a new length every token)
INFERENCE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa(*args, **kw):
    """scaled_dot_product_attention, without cuDNN at inference on CUDA."""
    with sdpa_kernel(INFERENCE_BACKENDS) if args[0].is_cuda and not torch.is_grad_enabled() else nullcontext():
        return F.scaled_dot_product_attention(*args, **kw)


# Lens attention widens Q~, K~ and V, which autograd would keep for backward (more memory than all of GPT-2's
# attention). Selective activation checkpointing keeps only what the SDPA kernel returns (output, log-sum-exp)
# and rebuilds the operands from q, k, v in backward, eager and compiled alike.
SDPA_OPS = {getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    if hasattr(torch.ops.aten, name)}


def sdpa_saves_only():
    return create_selective_checkpoint_contexts(
        lambda ctx, op, *args, **kw: CheckpointPolicy.MUST_SAVE if op in SDPA_OPS else CheckpointPolicy.PREFER_RECOMPUTE)


def mlp_hidden(config, has_attn=True):
    """The MLP's hidden width. With attn_free_mlp_iso an attention-free layer turns the parameters its attention
    would have had (c_attn, c_proj, ln_1) into hidden units of 2 E + 1 parameters each (c_fc's row and bias,
    c_proj's column): the model keeps the parameter count of the same model with attention everywhere."""
    hidden = round(config.mlp_expansion_ratio * config.n_embd)
    if config.attn_free_mlp_iso and not has_attn:
        E, b = config.n_embd, int(config.bias)
        qkv = E + 2 * config.n_kv_head * (E // config.n_head)
        attn = E * qkv + E * E + b * (qkv + E) + E * (1 + b)
        hidden += round(attn / (2 * E + b))
    return hidden


class MLP(nn.Module):
    def __init__(self, config, has_attn=True):
        super().__init__()
        hidden = mlp_hidden(config, has_attn)
        self.approximate = "tanh" if config.mlp_activation == "tanh" else "none"
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.use_ctx, self.conductor = config.mlp_use_ctx_summary, config.mlp_ctx_conductor
        if self.use_ctx:
            self.ctx_down = nn.Linear(config.n_embd, config.mlp_ctx_rank, bias=False)
            self.ctx_up = nn.Linear(config.mlp_ctx_rank, hidden, bias=False)
            self.alpha_raw = nn.Parameter(torch.tensor(float(config.mlp_ctx_alpha_init)))

    def forward(self, x, resid=None, g=None):
        """The MLP's output. `resid` is the block's residual stream (before, after) attention, whose difference
        is the attention output a; `g`, the block's route gate, which the conductor reads. One forward for
        training and inference (a training-only form that folded alpha and g into c_proj's weights was within
        2% of this one's step time on a CPU: not worth a second copy to keep equal)."""
        h = F.gelu(self.c_fc(x), approximate=self.approximate)  # "tanh": GPT-2's gelu_new
        if self.use_ctx:
            alpha = self.alpha_raw.clamp(0.0, 1.0)
            if self.conductor:  # a tensor mask, not an `if`: no host sync, one graph
                alpha = alpha * (g < 0.5).to(alpha.dtype)
            # h = (1 - alpha) gelu(c_fc(x)) + alpha ctx_up(ctx_down(a)); a = 0 where this layer's attention is pruned
            ctx = 0.0 if resid is None else self.ctx_up(self.ctx_down(resid[1] - resid[0]))
            h = (1 - alpha) * h + alpha * ctx
        return self.dropout(self.c_proj(h))


# The hard-concrete gate (Louizos et al. 2018): temperature beta and the stretch (gamma, zeta) past [0, 1]
# that lets a gate sit at exactly 0 or 1 with non-zero probability
HC_BETA, HC_GAMMA, HC_ZETA = 2 / 3, -0.1, 1.1
ATTN_GATE_INIT = 1.0  # log alpha at the start: P(open) = 0.93, every layer attends


class Block(nn.Module):
    def __init__(self, config, layer=0):
        super().__init__()
        owns_kv = layer % config.kv_share == 0
        self.has_attn = layer in config.attention_layers
        if self.has_attn:
            self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.attn = CausalSelfAttention(config, owns_kv, config.layer_windows[layer])
        if not config.mlp_disabled:
            self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.mlp = MLP(config, self.has_attn)
        self.use_route = config.use_route_gate
        if self.use_route:
            self.route_raw = nn.Parameter(torch.tensor(float(config.init_route_gate)))
            # moved by apply_route_annealing, never by the optimizer; saved in checkpoints, because
            # a trained model must be sampled and evaluated with the bias it was trained with
            self.register_buffer("route_bias", torch.zeros(()))
        self.use_gate = config.attn_budget is not None and self.has_attn
        if self.use_gate:
            self.attn_log_alpha = nn.Parameter(torch.tensor(ATTN_GATE_INIT))
            # -1: the gate is learned; 0 or 1: fixed (training's last phase), so the model is deterministic
            self.register_buffer("attn_gate_fixed", torch.tensor(-1.0))

    def route_gate(self):
        return torch.sigmoid(self.route_raw + self.route_bias)

    def attn_gate(self, shape=()):
        """z in [0, 1], the attention branch's multiplier: in training a hard-concrete sample per token (`shape`,
        (B, T, 1): the gradient averages over the batch, as dropout's); in evaluation its deterministic value; or
        the fixed 0 or 1. Tensor ops only: no host sync."""
        log_alpha = self.attn_log_alpha
        if self.training:
            u = torch.rand(shape, device=log_alpha.device).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / HC_BETA)
        else:
            s = torch.sigmoid(log_alpha)
        z = (s * (HC_ZETA - HC_GAMMA) + HC_GAMMA).clamp(0.0, 1.0)
        return torch.where(self.attn_gate_fixed >= 0, self.attn_gate_fixed, z)

    def attn_open_probability(self):
        """P(z > 0) of the hard-concrete gate: what the budget constrains."""
        return torch.sigmoid(self.attn_log_alpha - HC_BETA * math.log(-HC_GAMMA / HC_ZETA))

    def forward(self, x, cache=None, input_pos=None, skip_attn=False, kv=None, need_kv=False):
        """(x_next, (k, v)): the block's output, and the K and V its attention used (None when pruned
        or absent). cache, input_pos: this layer's cache and the chunk's positions (attention's forward);
        kv: the group's K and V, for a CLA layer that does not own them; need_kv: this layer's attention
        is pruned (skip_attn), but later layers of its group still use its K and V."""
        a = None
        if self.has_attn and (not skip_attn or need_kv):
            a, kv = self.attn(self.ln_1(x), cache, input_pos, kv, skip=skip_attn)
            if a is not None and self.use_gate:
                a = self.attn_gate(a.shape[:2] + (1,)).to(a.dtype) * a
        h = x if a is None else x + a
        if not hasattr(self, "mlp"):
            return h, kv
        g = self.route_gate() if self.use_route else None
        m = self.mlp(self.ln_2(h), None if a is None else (x, h), g)
        if g is None:
            return h + m, kv
        if a is None:  # attention pruned or absent: the gate still weighs the MLP
            return x + (1 - g) * m, kv
        return x + g * a + (1 - g) * m, kv  # the route: x_next = x + g a + (1 - g) m


def attends(cfg, i, attn_skip_layers=()):
    """Whether layer i attends: it has attention (attn_layers) and it is not pruned."""
    return i not in attn_skip_layers and (cfg.attn_layers is None or i in cfg.attn_layers)


def feeds_group(cfg, i, attn_skip_layers=()):
    """Whether layer i owns its CLA group's K and V and some layer of the group still attends
    (then its K and V are computed and cached even where its own attention is pruned)."""
    group = range(i, min(i + cfg.kv_share, cfg.n_layer))
    return i % cfg.kv_share == 0 and any(attends(cfg, j, attn_skip_layers) for j in group)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        if config.attn_budget is not None:
            # the budget's Lagrange multipliers (lambda_1, lambda_2), which gradient ascent grows until the expected
            # number of open gates meets it; and the number asked for now, every attention layer down to k over a
            # warmup (apply_budget_schedule, CoFi's), so that the gates part by what the loss says of each layer
            self.budget_lambda = nn.Parameter(torch.zeros(2))
            self.register_buffer("budget_target", torch.tensor(float(config.attn_budget_layers)))
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        # The blocks' weights lie in memory as (in, out), GPT-2's Conv1D layout, behind nn.Linear's (out, in) shape:
        # a one-row product (decoding) streams them row by row (124M's decode went from 1.10x to 0.99x transformers'
        # time, docs/benchmarks.md). Shapes and checkpoints are unchanged; autograd and AdamW keep the layout
        for m in self.transformer.h.modules():
            if isinstance(m, nn.Linear):
                m.weight = nn.Parameter(m.weight.detach().t().contiguous().t())

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            untied_embedding = isinstance(module, nn.Embedding) and not self.config.tie_embeddings
            torch.nn.init.normal_(module.weight, mean=0.0, std=1.0 if untied_embedding else 0.02)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=True):
        """Parameter count; position embeddings are subtracted by default, as in nanoGPT
        (tied token embeddings are shared with lm_head, so they count once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, cache=None, attn_skip_layers=(), input_pos=None):
        """Logits and loss (targets of -1 ignored; without targets, only the last position's logits, as in
        nanoGPT). `cache` (engine.KVCache) decodes incrementally: the chunk takes the cache's next positions,
        or `input_pos` (as a compiled decode step passes). `attn_skip_layers` run with attention removed."""
        b, t = idx.size()
        if cache is not None:  # the cache was built for its own pruned layers
            if attn_skip_layers and set(attn_skip_layers) != cache.attn_skip_layers:
                raise ValueError("attn_skip_layers differs from the KVCache's own")
            attn_skip_layers = cache.attn_skip_layers
            if input_pos is None:
                start = cache.advance(t)  # a chunk at 0 is a prefill: it attends to itself (input_pos None)
                input_pos = torch.arange(start, start + t, device=idx.device) if start else None
        elif t > self.config.block_size:
            raise ValueError(f"cannot forward {t} positions, block_size is {self.config.block_size}")
        pos = torch.arange(t, device=idx.device) if input_pos is None else input_pos
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        kv = None  # the K and V of the current CLA group
        for i, block in enumerate(self.transformer.h):
            layer = None if cache is None else cache.layers[i]
            x, kv = block(x, layer, input_pos, i in attn_skip_layers, kv,
                          need_kv=feeds_group(self.config, i, attn_skip_layers))
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            if self.training and self.config.attn_budget is not None:
                loss = loss + self.budget_penalty()
        else:
            logits, loss = self.lm_head(x[:, [-1], :]), None
        return logits, loss

    def budget_penalty(self):
        """lambda_1 (E - k) + lambda_2 (E - k)^2, E the expected number of open attention gates and k
        the budget's; zero once the gates are fixed (the last phase of training)."""
        gated = [b for b in self.transformer.h if b.use_gate]
        excess = sum(b.attn_open_probability() for b in gated) - self.budget_target
        learned = (gated[0].attn_gate_fixed < 0).to(excess.dtype)
        return learned * (self.budget_lambda[0] * excess + self.budget_lambda[1] * excess ** 2)

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. pretrained GPT-2's 1024) by dropping position embeddings."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    # ---------------------------------------------------------------- optimizer, MFU
    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, gate_lr_scale=50.0):
        """AdamW, decaying only the Linear and Embedding weights (lens gates and u are 2-D, but never decayed).
        With attn_budget, the gates' log alpha and the multipliers (gradient ascent: maximize) get groups at
        gate_lr_scale times the learning rate ("lr_scale"): a gate must travel several units in one run."""
        decay_ids = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        gate_ids = {id(b.attn_log_alpha) for b in self.transformer.h if b.use_gate}
        lam = getattr(self, "budget_lambda", None)
        params = [p for p in self.parameters() if p.requires_grad and p is not lam]  # tied weights appear once
        decay = [p for p in params if id(p) in decay_ids]
        no_decay = [p for p in params if id(p) not in decay_ids | gate_ids]
        groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
                  {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
        if lam is not None:
            groups += [{"params": [p for p in params if id(p) in gate_ids], "weight_decay": 0.0, "lr_scale": gate_lr_scale},
                       {"params": [lam], "weight_decay": 0.0, "lr_scale": gate_lr_scale, "maximize": True}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if device_type == "cuda" else {}))

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the weights plus the attention matmuls, QK^T at the width of Q~
        and K~ (D, or 2D with reciprocity; discoverability adds none) and PV at D (padding is not arithmetic)."""
        cfg, D = self.config, self.config.n_embd // self.config.n_head
        qk = D * (1 + cfg.use_reciprocity)
        return 6 * self.get_num_params() + 6 * len(cfg.attention_layers) * cfg.block_size * cfg.n_head * (qk + D)

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model FLOPs utilization as a fraction of `peak_flops` (default: A100 bf16, as nanoGPT)."""
        flops = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops / dt / peak_flops

    def kv_cache_bytes_per_token(self, dtype=torch.float32, attn_skip_layers=(), form="kv", context=None):
        """What one token costs in the cache in `form` at `context` tokens (block_size by default), summed over
        layers (engine.kv_bytes_per_token)."""
        # __import__, not an import statement, here and below: exports ship this file (export_hf.py), and the
        # Hub refuses to run code whose import statements name a module that is not installed (engine.py)
        engine = __import__("engine")
        return engine.kv_bytes_per_token(self.config, engine.cache_form(self.config, form), attn_skip_layers,
                                         dtype=dtype, context=context)

    @classmethod
    def from_pretrained(cls, name_or_dir, **overrides):
        """OpenAI GPT-2 weights in the Hugging Face layout, from a local directory (config.json and
        model.safetensors or pytorch_model.bin) or by name through `transformers`; an export_hf.py directory
        gives its own model exactly. `overrides` add lens mechanisms (from their usual init), dropout or
        attn_layers (other layers' attention is dropped)."""
        checkpoint = __import__("checkpoint")  # (not an import statement: kv_cache_bytes_per_token says why)
        args, sd = checkpoint.hf_gpt2_weights(name_or_dir)
        for k, v in overrides.items():
            if k in args and v != args[k]:
                raise ValueError(f"{k}={v} does not match the pretrained weights ({k}={args[k]})")
        model = cls(GPTConfig(**{**args, **overrides}))
        checkpoint.load_base_weights(model, sd)
        if model.config.attn_window is not None and "attn_window" in overrides:  # its weights read every past token
            print(f"from_pretrained: {name_or_dir} was trained with global attention; with attn_window="
                  f"{model.config.attn_window} it is a different model until it is fine-tuned", file=sys.stderr)
        return model

    def generate(self, idx, max_new_tokens, **options):
        """idx (b, t) followed by max_new_tokens sampled tokens: engine.generate."""
        return __import__("engine").generate(self, idx, max_new_tokens, **options)  # (kv_cache_bytes_per_token)


# The helpers users know by name from model: they live where their job is (analysis.py, engine.py) and
# load on first use, so that `from model import analyze_lens_gates` works as it always has
ELSEWHERE = {**dict.fromkeys(("apply_route_annealing apply_budget_schedule route_bias_at get_mean_route_gate "
                              "analyze_route_gates analyze_lens_gates analyze_attn_gates fix_attn_gates "
                              "remove_closed_attention attention_contribution mechanism_param_counts "
                              "print_architecture_summary patch_gpt2_with_lens_attention").split(), "analysis"),
             **dict.fromkeys(("KVCache cache_form cache_forms kv_layer_values generate generate_stream decode_step "
                              "compiled_decode_step sample_next unwrap").split(), "engine"),
             "load_base_weights": "checkpoint"}


def __getattr__(name):
    if name not in ELSEWHERE:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(__import__(ELSEWHERE[name]), name)


# `from model import *` gives the model's own names and every helper above (loaded then), as a user expects
__all__ = ["GPTConfig", "GPT", "CausalSelfAttention", "MLP", "Block", "attends", "feeds_group", *ELSEWHERE]
