"""
The report of an ablation study, from the result records in its folder (results/<study>/<config>/seed<N>.json,
which ablate.py writes): results.json, report.md and the plot of loss (and, for recall, accuracy) against
KV-cache bytes per token at the study's context (its block_size: a windowed layer holds min(T, W) tokens), and
where the records have them, the loss by position (loss_by_position.png) and recall by distance
(recall_by_distance.png). The tables of docs/results.md are these reports, pasted between markers, with the
context sweep (results/context_sweep/report.md and delta_vs_context.png: each route's cost at 64 ... 1024
tokens), and the README's
headline tables are drawn from the records of results/cpu and results/cpu_long (with results/recall_window).

$ python report.py                          # every study in results/, docs/results.md and the README's headline
$ python report.py --studies=results/cpu --docs=False

Each config is compared with the baseline by Welch's t: the difference of means with its 95% confidence
interval, and the p-value with Holm's correction across the study's configs. The verdict follows from the
interval: better, worse, or no difference detected.
"""
import glob
import math
import os
import re
import statistics
import sys
import warnings
from typing import NamedTuple

from configurator import ablation_names, configure
from records import Study, atomic_write, check_writable, load_run, write_record, write_text

ROOT = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(ROOT, "README.md")
RESULTS_MD = os.path.join(ROOT, "docs", "results.md")

# -----------------------------------------------------------------------------
studies = ""  # comma-separated study folders; '' for every results/*/ with a study.json
docs = True  # rewrite docs/results.md's blocks, the README's headline table and results/context_sweep/ from results/
# -----------------------------------------------------------------------------


def load_records(study):
    """Every run record of a study folder, in the study's config order (baseline first), then by seed."""
    records = [load_run(path) for path in glob.glob(os.path.join(study, "*", "seed*.json"))]
    order = {n: i for i, n in enumerate(ablation_names("all"))}
    return sorted(records, key=lambda r: (order.get(r.config, len(order)), r.config, r.seed))


# ----------------------------------------------------------------------------- the stated test
def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def welch(a, b):
    """Welch's t test of mean(a) - mean(b): the difference, its 95% confidence interval and the
    two-sided p-value; None with fewer than two values on either side (no spread to test against)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats as st
    if statistics.variance(a) + statistics.variance(b) == 0:  # identical runs: no interval to compute
        d = statistics.mean(a) - statistics.mean(b)
        return {"diff": d, "lo": d, "hi": d, "p": 1.0 if d == 0 else 0.0, "n": (len(a), len(b))}
    with warnings.catch_warnings():  # scipy warns when one side's seeds all agree (e.g. accuracy 1.0); the test stands
        warnings.simplefilter("ignore", RuntimeWarning)
        t = st.ttest_ind(a, b, equal_var=False)
    ci = t.confidence_interval(0.95)
    return {"diff": statistics.mean(a) - statistics.mean(b), "lo": float(ci.low), "hi": float(ci.high),
            "p": float(t.pvalue), "n": (len(a), len(b))}


def holm(tests):
    """Holm's step-down correction of the p-values in {name: test} (None tests are left out)."""
    ranked = sorted((t["p"], n) for n, t in tests.items() if t is not None)
    adjusted, running = {}, 0.0
    for i, (p, n) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * p))
        adjusted[n] = running
    return adjusted


def verdict(t, p, lower_is_better=True, p_name="Holm p"):
    """better, worse, or no difference detected, from the 95% interval; the test and n named."""
    if t is None:
        return "fewer than 2 seeds: not tested"
    test = f"Welch t, n={t['n'][0]} vs {t['n'][1]}, {p_name}={p:.2g}"
    ci = f"95% CI [{t['lo']:+.4f}, {t['hi']:+.4f}]"
    if t["lo"] > 0 or t["hi"] < 0:
        good = (t["hi"] < 0) == lower_is_better
        return f"{'better' if good else 'worse'} by {abs(t['diff']):.4f} ({ci}; {test})"
    return f"no difference detected ({ci}; {test})"


def learned_at(history, level=0.9):
    """The first evaluated iteration at which validation accuracy reached `level`, or None."""
    return next((h["iter"] for h in history if h.get("val_acc") is not None and h["val_acc"] >= level), None)


# ----------------------------------------------------------------------------- summary
def summarize(records):
    """Per config, in the records' order: means and spreads over its seeds, and the tests against the baseline."""
    names = list(dict.fromkeys(r.config for r in records))
    if "baseline" not in names:
        raise SystemExit("error: the study has no baseline runs to compare with")
    recall = all(r.eval_val_acc is not None for r in records)
    S = {}
    for name in names:
        rs = [r for r in records if r.config == name]
        s = {"n": len(rs), "kv": rs[0].kv_bytes_per_token,
             "params": rs[0].params, "tokens": rs[0].tokens_seen, "model": rs[0].model,
             "losses": [r.best_val_loss for r in rs]}
        s["loss"], s["loss_std"] = mean_std(s["losses"])
        for ranking in RANKINGS:
            vals = [r.half_pruned[ranking].val_loss for r in rs if ranking in r.half_pruned]
            s[f"half_val_loss_{ranking}"] = statistics.mean(vals) if vals else None
        s["attn_layers"] = [r.attn_layers for r in rs]
        s["gated"] = any(r.attn_gates for r in rs)  # a budget run: its placement was learned
        # the pruning curve, averaged over seeds, in the best honest order: greedy (chosen on training
        # batches) where the records have it, else by contribution. Choosing the order by the loss the
        # curve reports would select on the test batches
        curves = {}
        for row in rs[0].pruning:
            same = [p for r in rs for p in r.pruning if p.ranking == row.ranking and len(p.layers) == len(row.layers)]
            curves.setdefault(row.ranking, []).append(
                {"k": len(row.layers), "kv": row.kv_bytes_per_token, "loss": [p.val_loss for p in same],
                 "acc": [p.val_acc for p in same] if recall else None})
        # (greedy only where every seed has it: a point's seeds must be the config's seeds)
        s["ranking"] = next(r for r in ("greedy", "contribution")
                            if all(any(p.ranking == r for p in rec.pruning) for rec in rs))
        s["curve"] = curves[s["ranking"]]
        # quantized caches: the whole model (and the greedy half-pruned one) through each form at each bit
        # width, over the seeds whose records have them (made by this evaluation), on the curve's batches
        s["quant"] = {}
        for r in rs:
            for q in r.quant:
                point = s["quant"].setdefault((q.form, q.kv_bits, len(q.layers)),
                                              {"bytes": q.kv_bytes_per_token, "loss": [], "acc": []})
                point["loss"].append(q.val_loss)
                point["acc"].append(q.val_acc)
        if recall:
            s["accs"] = [r.eval_val_acc for r in rs]
            s["acc"], s["acc_std"] = mean_std(s["accs"])
            s["acc_none"] = statistics.mean(r.all_pruned.val_acc for r in rs)
            s["learned"] = [learned_at(r.history) for r in rs]
        S[name] = s
    others = [n for n in names if n != "baseline"]
    for key, measure in (("test", "losses"), ("acc_test", "accs")) if recall else (("test", "losses"),):
        tests = {n: welch(S[n][measure], S["baseline"][measure]) for n in others}
        adjusted = holm(tests)
        for n in others:
            S[n][key], S[n][key + "_p"] = tests[n], adjusted.get(n)
    return S, names, recall


RANKINGS = ("greedy", "route_gate", "contribution")  # the pruning orders a record may hold
# the best-cache tables: shares of the baseline's 16-bit K/V bytes at the study's context, down to the 1/64 that
# local/global layers with MQA, CLA and 4-bit caches reach
SHARES = (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)
QUESTIONS = {"reciprocity": "Does reciprocity help?", "discoverability": "Does discoverability help?",
             "lens": "Do reciprocity and discoverability together help?", "full": "Does every mechanism together help?",
             "attn_only": "Can attention-only work?", "route_annealed": "Does an annealed route gate change the loss?",
             "route_free": "Does a freely learned route gate change the loss?",
             "gqa": "What does grouped-query attention cost?", "mqa": "What does multi-query attention cost?",
             "cla": "What does sharing K/V across adjacent layers (CLA) cost?",
             "attn_first_half": "What does attention in the first half of the layers only cost?",
             "attn_first_half_iso": "The same at the baseline's parameter count?",
             "attn_first_layer": "What does attention in layer 0 only cost?",
             "attn_first_half_mqa": "Attention in the first half, multi-query?",
             "attn_first_layer_mqa": "Attention in layer 0 only, multi-query?",
             "attn_first_layer_reciprocity": "Attention in layer 0 only, with reciprocity?",
             "attn_budget_half": "Learned placement, half the layers?",
             "attn_budget_quarter": "Learned placement, a quarter of the layers?",
             "route_budget_half": "The route gate made able to close (half the layers)?",
             "swa": "What does a sliding window in every layer (Mistral's) cost?",
             "swa_mqa": "A sliding window in every layer, multi-query?",
             "local_global": "One global layer in 4, the first of each 4 (local elsewhere)?",
             "local_global_last": "One global layer in 4, the last of each 4 (local elsewhere)?",
             "local_global_last_mqa": "Local/global (global last), multi-query?",
             "local_global_last_cla": "Local/global (global last), K/V shared across the local layers (CLA)?"}


def fmt(v, spec=".4f"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{spec}}"


def nbytes(b):
    """Bytes per token as the tables print them: whole bytes as they are, a windowed layer's fractions (a ring of W
    positions over a T-token context) to two places."""
    return f"{b:,.2f}".rstrip("0").rstrip(".")


def share_label(share):
    """1/2, 1/4, ... 1/64 (of the baseline's bytes)."""
    return f"1/{1 / share:.3g}" if share < 1 else f"{share:.3g}"


def context(records):
    """The study's context T: every record's block_size, which its bytes per token are taken at (a windowed layer
    holds min(T, W) tokens); a study mixing contexts is a one-line error."""
    sizes = sorted({r.model["block_size"] for r in records})
    if len(sizes) != 1:
        raise SystemExit(f"error: the study's records mix contexts (block_size {sizes}); a study is one context")
    return sizes[0]


class CachePoint(NamedTuple):
    """One way a study reaches a cache size: its bytes per token, the measure's mean and std over seeds,
    a label for the tables, the config, the per-seed values, the cache form and how many layers' attention
    are pruned."""
    bytes: int
    mean: float
    std: float
    label: str
    config: str
    values: list
    form: str
    pruned: int
    bits: int = 16


def cache_points(S, names, measure):
    """Every way this study reaches a cache size: each config in each cache form it can use, and each
    pruned point (in its smaller form), as CachePoints. measure: "loss" or "acc". All on the same
    validation batches (ablate.py's evaluation of the final model), so they compare."""
    pts = []
    for n in names:
        s = S[n]
        for form, b in s["kv"].items():
            vals = s["curve"][0][measure]
            pts.append(CachePoint(b, *mean_std(vals), f"{n} in the {'K/V' if form == 'kv' else 'input'} form", n, vals,
                                  form, 0))
        for p in s["curve"][1:-1]:  # 1 .. L-1 of its attention layers pruned
            form = min(p["kv"], key=p["kv"].get)
            pts.append(CachePoint(p["kv"][form], *mean_std(p[measure]),
                                  f"{n} with {p['k']} layers' attention pruned, {s['ranking']} order "
                                  f"({'K/V' if form == 'kv' else 'input'} form)", n, p[measure], form, p["k"]))
    return pts


def quant_points(S, names, measure):
    """Every config's whole model, and its greedy half-pruned one where the records have it, decoded through
    its cache at 16, 8 and 4 bits, as CachePoints (bytes per token at the run's context, block_size: 16 bits at 2
    bytes a value; fewer: codes, scale and zero; `pruned`: the layers whose attention is removed)."""
    return [CachePoint(q["bytes"], *mean_std(q[measure]), f"{n}{' without the greedy half of its attention' * bool(k)} "
                       f"in the {'K/V' if form == 'kv' else 'input'} form at {bits} bits", n, q[measure], form, k, bits)
            for n in names for (form, bits, k), q in sorted(S[n]["quant"].items())]


def pareto_lines(S, names, measure, recall, records):
    """The Pareto of every route the records measured through a cache (form x placement or pruning x
    GQA/MQA/CLA x windows x bits): a table of every config with quantized-cache records, whole and with the greedy
    half of its attention pruned, in each form at 16, 8 and 4 bits, the frontier marked, and the headlines: the
    smallest cache within +0.01 and within +0.02 nats (or accuracy) of the baseline's 16-bit cache, on the same
    seeds. Bytes per token are at the study's context T (a windowed layer holds min(T, W) tokens)."""
    pts = quant_points(S, names, measure)
    if not any(p.bits != 16 for p in pts) or ("kv", 16, 0) not in S["baseline"]["quant"]:
        return [], []
    front = {id(p) for p in pareto(pts, recall)}
    ref = statistics.mean(S["baseline"]["quant"]["kv", 16, 0][measure])
    gpt2 = S["baseline"]["kv"]["kv"]
    seeds = sorted({len(p.values) for p in pts})
    # keys are quantized a group of G tokens at a time: at a short context most of them are still whole
    rec = next(r for r in records if r.quant)
    bs, G = context(records), next(q.kv_group for q in rec.quant if q.kv_bits != 16)
    keys = statistics.mean((t + 1) // G * G / (t + 1) for t in range(bs))
    what = "recall accuracy" if recall else "validation loss"
    lines = ["", f"The Pareto of every route: cache bytes per token against {what} for each config with quantized-"
             f"cache records ({seeds[0]}{'' if len(seeds) == 1 else '-' + str(seeds[-1])} seeds), whole and, where the "
             "records have it, with the greedy half of its attention layers removed (`n layers pruned`), in each cache form, "
             "at 16 bits (2 bytes a value) and through 8- and 4-bit caches (codes, plus float16 scale and zero per "
             f"group of {G}), teacher-forced one token per step; bytes per token of a cache holding the study's {bs} "
             f"tokens (a windowed layer holds min({bs}, W) of them; per-sequence padding left out); mean +- std over "
             "seeds. `*`: on the Pareto front of these points. The baseline's 16-bit cache on these seeds: "
             f"{ref:.4f}. The input form's `x^` and the K/V form's values are quantized per token, each as soon as "
             f"it is written; keys per channel in groups of {G} tokens, so at this {bs}-token context a query reads "
             f"{keys:.0%} of its keys quantized on average (the K/V form's rows are kinder to it than a long "
             "context would be).", "",
             f"| config | form | 16-bit B/tok at {bs} | {what} | 8-bit B/tok at {bs} | {what} | 4-bit B/tok at {bs} | {what} |",
             "|---|---|---|---|---|---|---|---|"]
    cell = lambda p: f"{nbytes(p.bytes)} | {'*' if id(p) in front else ''}{p.mean:.4f} +- {fmt(p.std)}"
    for n in (n for n in names if S[n]["quant"]):
        for k in sorted({p.pruned for p in pts if p.config == n}):
            for form in S[n]["kv"]:
                by_bits = {p.bits: p for p in pts if p.config == n and p.form == form and p.pruned == k}
                lines.append(f"| {n}{f', {k} layers pruned' if k else ''} | {'K/V' if form == 'kv' else 'input'} | "
                             + " | ".join(cell(by_bits[b]) if b in by_bits else "- | -" for b in (16, 8, 4)) + " |")
    answers = []
    for tol in TOLERANCES:
        close = [p for p in pts if (ref - p.mean if recall else p.mean - ref) <= tol]
        best = min(close, key=lambda p: (p.bytes, p.mean if not recall else -p.mean))
        answers.append(f"- The smallest cache within {f'{tol} accuracy' if recall else f'+{tol} nats'} of the baseline: "
                       f"{best.label}, {nbytes(best.bytes)} B/token at {bs} tokens, {what} {best.mean:.4f} "
                       f"({best.mean - ref:+.4f}), {best.bytes / gpt2:.3f}x of GPT-2's 16-bit K/V cache at that context "
                       f"(1/{gpt2 / best.bytes:.1f}).")
    return lines, answers


TOLERANCES = (0.01, 0.02)  # the Pareto's headlines: the smallest cache within this much of the baseline (issue targets)


def pareto(pts, higher_is_better):
    """The points that no other point beats with a cache at most as large."""
    sign = -1 if higher_is_better else 1
    front, best = [], float("inf")
    for p in sorted(pts, key=lambda p: (p[0], sign * p[1])):
        if sign * p[1] < best:
            front.append(p)
            best = sign * p[1]
    return front


def machines(records):
    """The machines a study's runs were trained on, as the records name them."""
    seen = sorted({(m["device"], m.get("arch", "?"), m.get("cpus"), m["torch"]) for m in (r.machine for r in records)})
    return "; ".join(f"{d} ({a}, {c} cores), torch {t}" for d, a, c, t in seen)


# ----------------------------------------------------------------------------- long context: windows, positions, distance
def windows_of(model):
    """The attention windows of a record's config, from its model dict's attn_window (a whole number for every local
    layer, or one per layer with 0 or None for a global one), sorted; [] where every layer is global (or the record
    is from before windows existed)."""
    w = model.get("attn_window")
    return sorted({v for v in (w if isinstance(w, list) else [w]) if v}) if w else []


def window_label(model):
    wins = windows_of(model)
    return "global" if not wins else ", ".join(map(str, wins))


def mean_ci(values):
    """(mean, lo, hi) of a measure over seeds: its 95% interval by Student's t; lo and hi None under two seeds."""
    m = statistics.mean(values)
    if len(values) < 2:
        return m, None, None
    from scipy.stats import t as student_t
    half = student_t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def ci_cell(values):
    """A mean over seeds with its 95% interval where there are two seeds or more."""
    m, lo, hi = mean_ci(values)
    return f"{m:.4f}" if lo is None else f"{m:.4f} [{lo:.4f}, {hi:.4f}]"


def contrast(groups):
    """sum(c * mean(v)) over independent groups [(values, c)], its 95% interval and p by Welch-Satterthwaite (for two
    groups, +1 and -1, Welch's t itself): how much a config's delta against its own study's baseline changes from
    one study to another is (config - baseline) there minus (config - baseline) here. None under two values a group."""
    if any(len(v) < 2 for v, _ in groups):
        return None
    from scipy.stats import t as student_t
    d = sum(c * statistics.mean(v) for v, c in groups)
    parts = [statistics.variance(v) / len(v) for v, _ in groups]
    se = math.sqrt(sum(parts))
    if se == 0:  # identical runs: no interval to compute
        return {"diff": d, "lo": d, "hi": d, "p": 1.0 if d == 0 else 0.0, "n": tuple(len(v) for v, _ in groups)}
    df = se ** 4 / sum(q ** 2 / (len(v) - 1) for q, (v, _) in zip(parts, groups))
    half = student_t.ppf(0.975, df) * se
    return {"diff": d, "lo": d - half, "hi": d + half, "p": float(2 * student_t.sf(abs(d) / se, df)),
            "n": tuple(len(v) for v, _ in groups)}


def ci_delta(t):
    return "-" if t is None else f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}]"


def delta_cell(values, ref):
    """mean(values) - mean(ref) with Welch's 95% interval, or marked as untested under two seeds a side."""
    t = welch(values, ref)
    return ci_delta(t) if t else f"{statistics.mean(values) - statistics.mean(ref):+.4f} (one seed: untested)"


def range_mean(curve, lo, hi):
    """The mean over positions lo .. hi-1 of a loss-by-position curve, each position weighted alike (positions where
    nothing is scored left out); None where nothing in the range is scored."""
    vals = [v for v in curve[lo:hi] if v is not None]
    return statistics.mean(vals) if vals else None


def position_split(records):
    """Where the loss-by-position table splits the context: the study's smallest window (up to it a windowed layer
    sees the whole context, as a global one does; past it, each windowed layer reads only its last W tokens), or half the context where no
    config has a window."""
    wins = [w for r in records for w in windows_of(r.model)]
    return min(wins) if wins else context(records) // 2


def position_lines(records, names):
    """The loss-by-position table (records with loss_by_position only: older records lack it): each config's mean
    loss at the positions before the study's window W and from W on, mean +- std over seeds; the loss from W on
    against the baseline's; and how much the gap to the baseline changes past W, from per-seed differences (after
    minus before), so that a config that is worse everywhere is not read as losing the far context."""
    T, W = context(records), position_split(records)
    seeds = {n: [r for r in records if r.config == n and r.loss_by_position is not None] for n in names}
    seeds = {n: rs for n, rs in seeds.items() if rs}
    if not seeds:
        return [], []
    split = {n: [(range_mean(r.loss_by_position, 0, W), range_mean(r.loss_by_position, W, T)) for r in rs]
             for n, rs in seeds.items()}
    split = {n: [(a, b) for a, b in v if a is not None and b is not None] for n, v in split.items()}
    split = {n: v for n, v in split.items() if v}  # (a recall set may score nothing on one side of W)
    if not split:
        return [], []
    base = split.get("baseline")
    lines = ["", f"Loss by position: the validation loss of the prediction made at each position of the {T}-token "
             f"context (position t has t + 1 tokens of context), averaged over positions 0-{W - 1} (where a window of "
             f"{W} sees the whole context) and {W}-{T - 1} (where each windowed layer reads only its last {W} tokens), on the pruning "
             "evaluation's batches; mean +- std over seeds (the records that have it). Delta: against the baseline "
             "(Welch's 95% interval). Change past the window: the delta from position "
             f"{W} on minus the delta before it, from each seed's difference (after minus before), with Welch's "
             "interval against the baseline's: what the window costs beyond what the config costs everywhere."
             + ("" if base else " The baseline's records predate this measure: no deltas until it is evaluated again."), "",
             f"| config | window | seeds | loss 0-{W - 1} | loss {W}-{T - 1} | delta {W}-{T - 1} [95% CI] | "
             "change past the window [95% CI] |", "|---|---|---|---|---|---|---|"]
    answers = []
    for n, v in split.items():
        before, after = [a for a, _ in v], [b for _, b in v]
        t_after = welch(after, [b for _, b in base]) if base and n != "baseline" else None
        t_change = welch([b - a for a, b in v], [b - a for a, b in base]) if base and n != "baseline" else None
        lines.append(f"| {n} | {window_label(seeds[n][0].model)} | {len(v)} | {mean_std(before)[0]:.4f} +- "
                     f"{fmt(mean_std(before)[1])} | {mean_std(after)[0]:.4f} +- {fmt(mean_std(after)[1])} | "
                     f"{ci_delta(t_after)} | {ci_delta(t_change)} |")
        if t_change is not None and windows_of(seeds[n][0].model):
            answers.append(f"- Does {n} lose what lies past its window? Its gap to the baseline from position {W} on, "
                           f"against before it: {verdict(t_change, t_change['p'], p_name='p, uncorrected')}.")
    return lines, answers


DISTANCE_START = 16  # the recall-by-distance table's first bucket is distances 1-15; each next one doubles


def distance_edges(T, wins):
    """The buckets' edges [lo, hi) of the recall-by-distance table: 1, 16, 32, 64, ... up to the context T, and
    every window (so that a bucket is wholly within a window or wholly beyond it)."""
    edges, e = {1, T}, DISTANCE_START
    while e < T:
        edges.add(e)
        e *= 2
    return sorted(edges | {w for w in wins if 1 < w < T})


def distance_acc(record, lo, hi):
    """A record's recall accuracy over the answers whose key lies lo <= d < hi tokens back; None with no answers."""
    right = answers = 0
    for d, (r, a) in record.recall_by_distance.items():
        if lo <= int(d) < hi:
            right, answers = right + r, answers + a
    return right / answers if answers else None


def distance_lines(records, names):
    """Recall beyond the window (records with recall_by_distance only): accuracy by the distance from a query back
    to its key's latest earlier occurrence, in buckets, mean over seeds with its 95% interval; then each windowed
    config within its window (d < W: the key's position is among the query's last W) and beyond it (d >= W, W its
    largest window), against the baseline on the same answers."""
    T = context(records)
    rs = {n: [r for r in records if r.config == n and r.recall_by_distance is not None] for n in names}
    rs = {n: v for n, v in rs.items() if v}
    if not rs:
        return [], []
    edges = distance_edges(T, sorted({w for v in rs.values() for w in windows_of(v[0].model)}))
    buckets = list(zip(edges, edges[1:]))
    label = lambda lo, hi: f"{lo}" if hi - 1 == lo else f"{lo}-{hi - 1}"
    first = next(iter(rs.values()))[0]
    counts = [sum(a for d, (_, a) in first.recall_by_distance.items() if lo <= int(d) < hi) for lo, hi in buckets]
    lines = ["", "Recall by distance: recall accuracy on the answers whose query's key last occurred d tokens earlier "
             f"(its pair, or an earlier query of the same key), by d, on the pruning evaluation's batches "
             f"({', '.join(f'{c:,}' for c in counts)} answers in these buckets, per seed); mean over seeds with its "
             "95% interval (Student's t) where there are two seeds or more.", "",
             "| config | window | seeds | " + " | ".join(f"d {label(lo, hi)}" for lo, hi in buckets) + " |",
             "|---|---|---|" + "---|" * len(buckets)]
    for n, v in rs.items():
        cells = []
        for lo, hi in buckets:
            accs = [a for a in (distance_acc(r, lo, hi) for r in v) if a is not None]
            cells.append(ci_cell(accs) if accs else "-")
        lines.append(f"| {n} | {window_label(v[0].model)} | {len(v)} | " + " | ".join(cells) + " |")
    windowed = [n for n in rs if windows_of(rs[n][0].model)]
    answers = []
    if not windowed:
        return lines, answers
    base = rs.get("baseline")
    lines += ["", "Within and beyond each windowed config's window W (its largest): recall accuracy on the answers "
              "whose key is among the query's last W tokens (d < W) and on those farther back (d >= W), mean over "
              "seeds with its 95% interval; the baseline's accuracy on the same answers beyond W, the config's as a "
              "multiple of it, and the difference with Welch's 95% interval."
              + ("" if base else " The baseline's records predate this measure: no comparison until it is evaluated again."), "",
              "| config | window | seeds | within (d < W) | beyond (d >= W) | baseline beyond | x baseline | "
              "delta beyond [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for n in windowed:
        W = windows_of(rs[n][0].model)[-1]
        within = [a for a in (distance_acc(r, 1, W) for r in rs[n]) if a is not None]
        beyond = [a for a in (distance_acc(r, W, T) for r in rs[n]) if a is not None]
        ref = [a for a in (distance_acc(r, W, T) for r in base) if a is not None] if base else []
        if not beyond:
            lines.append(f"| {n} | {W} | {len(rs[n])} | {ci_cell(within) if within else '-'} | - | - | - | - |")
            continue
        ratio = statistics.mean(beyond) / statistics.mean(ref) if ref and statistics.mean(ref) else None
        t = welch(beyond, ref) if ref else None
        lines.append(f"| {n} | {W} | {len(rs[n])} | {ci_cell(within) if within else '-'} | {ci_cell(beyond)} | "
                     f"{ci_cell(ref) if ref else '-'} | {fmt(ratio, '.3f')} | {ci_delta(t)} |")
        if ref:
            answers.append(f"- Does {n} keep recall beyond its window of {W}? Accuracy {statistics.mean(beyond):.4f} "
                           f"against the baseline's {statistics.mean(ref):.4f} on the same answers"
                           + (f" ({ratio:.3f}x)" if ratio is not None else "")
                           + f": {verdict(t, t and t['p'], lower_is_better=False, p_name='p, uncorrected')}.")
    return lines, answers


def run_time(records):
    """How long a run took: the median over runs of the records' time per iteration (iterations trained without an
    evaluation, over every resumed part), its range (the machine's load), and what that makes of a run's iterations."""
    ms = sorted(r.ms_per_iter for r in records if r.ms_per_iter > 0)  # (0: a record of a run resumed at its end)
    if not ms:
        return ""
    iters = statistics.median(r.iters for r in records)
    spread = "one run" if len(ms) == 1 else \
        f"median over {len(ms)} runs; {ms[0]:,.0f}-{ms[-1]:,.0f} as the machine's load varied"
    return (f" Time: {statistics.median(ms):,.0f} ms per training iteration ({spread}), about "
            f"{statistics.median(ms) * iters / 60000:,.0f} minutes for a run's {iters:,.0f} iterations, evaluations aside.")


def report(records, study):
    """The report's Markdown lines. Every sentence follows from the numbers in its tables."""
    S, names, recall = summarize(records)
    base = S["baseline"]
    kv0 = base["kv"]["kv"]
    T = context(records)
    seeds = sorted({S[n]["n"] for n in names})
    n_seeds = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    lines = ["Commands: " + "; ".join(f"`{c}`" for c in study.commands) + f". Trained on: {machines(records)}."
             + run_time(records), "",
             f"{study.title}: {len(names)} configs, {n_seeds} seeds each ({len(records)} runs), "
             f"{base['tokens']:,} training tokens per run. Loss: best validation loss, mean +- std over seeds. "
             "Delta: against the baseline, the difference of means with its 95% confidence interval (Welch's t) "
             "and the p-value with Holm's correction across the configs. KV: cache bytes per token at 16-bit "
             f"precision at this study's {T}-token context (a windowed layer holds min({T}, W) tokens), in the K/V "
             "form and in the input form (exact; `-` where a config cannot use it). Half "
             "pruned: validation loss with attention removed from half of the layers that have it, in the greedy "
             "order (each step removes the layer whose removal costs least on training batches, never on the "
             "reported ones), lowest route gate first, or lowest measured contribution first (`n/a`: a record "
             "made before that order existed)." + (" Recall acc: the share of answers predicted exactly on the "
                                               f"validation set (chance {records[0].chance_accuracy:.4f})." if recall else ""),
             "",
             f"| config | seeds | params | loss | delta [95% CI] | p (Holm) | K/V B/token at {T} | input B/token at {T} | "
             "half pruned (greedy) | half pruned (gate) | half pruned (contribution) |"
             + (" recall acc | delta acc [95% CI] | p (Holm) | no attention acc |" if recall else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if recall else "")]

    def delta(t, p):
        return "- | -" if t is None else f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}] | {p:.2g}"

    for n in names:
        s = S[n]
        row = (f"| {n} | {s['n']} | {s['params']:,} | {s['loss']:.4f} +- {fmt(s['loss_std'])} | "
               f"{delta(s.get('test'), s.get('test_p'))} | {nbytes(s['kv']['kv'])} | "
               f"{nbytes(s['kv']['input']) if 'input' in s['kv'] else '-'} | "
               f"{fmt(s['half_val_loss_greedy'])} | {fmt(s['half_val_loss_route_gate'])} | "
               f"{fmt(s['half_val_loss_contribution'])} |")
        if recall:
            row += f" {s['acc']:.4f} +- {fmt(s['acc_std'])} | {delta(s.get('acc_test'), s.get('acc_test_p'))} | {s['acc_none']:.4f} |"
        lines.append(row)

    answers = []
    for n in names[1:]:
        answers.append(f"- {QUESTIONS.get(n, 'Against the baseline:')} {n}: loss {verdict(S[n]['test'], S[n]['test_p'])}.")
        if recall:
            answers.append(f"  Recall accuracy: {verdict(S[n]['acc_test'], S[n]['acc_test_p'], lower_is_better=False)}.")
    if "route_annealed" in S and "route_free" in S:  # one comparison outside the family against the baseline
        t = welch(S["route_annealed"]["losses"], S["route_free"]["losses"])
        answers.append("- Annealed against freely learned route gates (route_annealed minus route_free): "
                       f"{verdict(t, t and t['p'], p_name='p, uncorrected')}.")
    measure = "acc" if recall else "loss"
    ref = base["curve"][0][measure]  # the baseline with its whole cache, on the same batches as every point
    pts = cache_points(S, names, measure)
    for share in SHARES:
        budget = share * kv0  # at the study's context, as every point's bytes are
        # each config's best way into the budget (a cache form, or pruning), best first
        best = {}
        for p in sorted(pts, key=lambda p: ((-1 if recall else 1) * p[1], p[0])):
            if p[0] <= budget * (1 + 1e-9):  # a window's fractional bytes: a rounding error is not over budget
                best.setdefault(p[4], p)
        rows = sorted(best.values(), key=lambda p: ((-1 if recall else 1) * p[1], p[0]))
        if not rows:
            continue
        lines += ["", f"Every config's best way to a cache of at most {share_label(share)} of the baseline's K/V bytes "
                  f"({nbytes(budget)} B/token at {T} tokens), "
                  f"best first: {'recall accuracy' if recall else 'validation loss'} of the final models on the pruning "
                  f"evaluation's batches, against the baseline with its whole cache ({statistics.mean(ref):.4f}), "
                  "Welch's t, p uncorrected.", "",
                  f"| way | B/token at {T} | {'recall acc' if recall else 'loss'} | delta [95% CI] | p |", "|---|---|---|---|---|"]
        for p in rows:
            t = None if p[5] == ref else welch(p[5], ref)  # the baseline's own row: nothing to compare
            lines.append(f"| {p[3]} | {nbytes(p[0])} | {p[1]:.4f} +- {fmt(p[2])} | {delta(t, t and t['p'])} |")
        t = welch(rows[0][5], ref)
        answer = (f"- The best way to at most {share_label(share)} of the baseline's K/V bytes at {T} tokens: {rows[0][3]}, "
                  f"{nbytes(rows[0][0])} B/token, "
                  f"{'recall acc' if recall else 'validation loss'} {rows[0][1]:.4f}; against the baseline with its whole "
                  f"cache {verdict(t, t and t['p'], not recall, 'p, uncorrected')}")
        if len(rows) > 1:
            t = welch(rows[0][5], rows[1][5])
            answer += (f"; against the next best, {rows[1][3]} ({rows[1][1]:.4f}), "
                       f"{verdict(t, t and t['p'], not recall, 'p, uncorrected')}")
        answers.append(answer + ".")
    answers += placement_answers(S, names, measure, recall)
    more, headline = pareto_lines(S, names, measure, recall, records)
    lines += more
    answers += headline
    for section in (position_lines, distance_lines):  # long context: the records that have these measures
        more, said = section(records, names)
        lines += more
        answers += said
    if recall:
        answers.append(f"- With attention removed from every layer, recall accuracy is {min(S[n]['acc_none'] for n in names):.4f}"
                       f" .. {max(S[n]['acc_none'] for n in names):.4f} (chance {records[0].chance_accuracy:.4f}).")
        lines += ["", "Iterations to learn the lookup: the first evaluation at which a run's validation recall "
                  "accuracy reached 0.9 (evaluated every "
                  f"{records[0].history[1]['iter'] - records[0].history[0]['iter'] if len(records[0].history) > 1 else '?'}"
                  " iterations).", "",
                  "| config | discoverability | reached 0.9 | median iteration | range |", "|---|---|---|---|---|"]
        for n in names:
            got = [i for i in S[n]["learned"] if i is not None]
            lines.append(f"| {n} | {'on' if S[n]['model']['use_discoverability'] else 'off'} | {len(got)} of {S[n]['n']} | "
                         f"{fmt(statistics.median(got) if got else None, 'g')} | "
                         f"{f'{min(got)} .. {max(got)}' if got else '-'} |")
        answers.append("- Does discoverability delay or block learning the lookup? " + discoverability_answer(S, names))
    return lines + ["", "Answers:", ""] + answers


def placement_answers(S, names, measure, recall):
    """Where attention must stay: the layers that the learned gates kept (per seed), and what pruning
    the baseline in the greedy order removes first."""
    out = []
    for n in (n for n in names if S[n]["gated"]):
        kept = {}
        for layers in S[n]["attn_layers"]:
            kept[tuple(layers)] = kept.get(tuple(layers), 0) + 1
        out.append(f"- Where must attention stay? {n}'s gates kept attention in {len(S[n]['attn_layers'][0])} of "
                   f"{S[n]['model']['n_layer']} layers: " + ", ".join(
                       f"layers {list(k)} in {c} of {S[n]['n']} seeds" for k, c in sorted(kept.items(), key=lambda kc: -kc[1])) + ".")
    base = S["baseline"]
    if base["ranking"] == "greedy" and len(base["curve"]) > 2:
        first = base["curve"][1]
        out.append(f"- Pruning the trained baseline in the greedy order: one layer's attention removed costs "
                   f"{statistics.mean(first[measure]) - statistics.mean(base['curve'][0][measure]):+.4f} "
                   f"({'recall accuracy' if recall else 'validation loss'}), half of them "
                   f"{statistics.mean(base['curve'][len(base['curve']) // 2][measure]) - statistics.mean(base['curve'][0][measure]):+.4f}"
                   + (f"; in the contribution order half cost {base['half_val_loss_contribution'] - statistics.mean(base['curve'][0]['loss']):+.4f}"
                      if base["half_val_loss_contribution"] is not None and not recall else "") + ".")
    return out


def discoverability_answer(S, names):
    """Runs with discoverability on against runs with it off, pooled over the configs with attention in
    every layer (placement configs fail or succeed for a reason of their own: one attention layer cannot
    do the lookup): how many never reached 0.9 (Fisher's exact test: does it block?), and a Mann-Whitney
    U test of the iterations (does it delay? a run that never learned ranks last)."""
    from scipy.stats import fisher_exact, mannwhitneyu
    everywhere = [n for n in names if all(len(a) == S[n]["model"]["n_layer"] for a in S[n]["attn_layers"])]
    groups = {on: [i for n in everywhere if S[n]["model"]["use_discoverability"] == on for i in S[n]["learned"]]
              for on in (True, False)}
    if not groups[True] or not groups[False]:
        return "not tested: the study has no runs with it on, or none with it off."
    never = {on: sum(i is None for i in g) for on, g in groups.items()}
    late = max(i for g in groups.values() for i in g if i is not None) if any(
        i is not None for g in groups.values() for i in g) else 0
    ranked = {on: [late + 1 if i is None else i for i in g] for on, g in groups.items()}
    p = mannwhitneyu(ranked[True], ranked[False], alternative="two-sided").pvalue if len(set(
        ranked[True] + ranked[False])) > 1 else 1.0
    med = {on: statistics.median(ranked[on]) for on in groups}
    p_block = fisher_exact([[never[on], len(groups[on]) - never[on]] for on in (True, False)]).pvalue
    where = "later" if med[True] > med[False] else "earlier" if med[True] < med[False] else "at the same median"
    return (f"pooled over the configs with attention in every layer: with it on, "
            f"{len(groups[True]) - never[True]} of {len(groups[True])} runs reached 0.9 "
            f"(median iteration {fmt(med[True], 'g')}, a run that never did counted last); with it off, "
            f"{len(groups[False]) - never[False]} of {len(groups[False])} (median {fmt(med[False], 'g')}). "
            f"Blocks? Runs that never learned it: {never[True]} of {len(groups[True])} on, {never[False]} of "
            f"{len(groups[False])} off, Fisher's exact p={p_block:.2g}"
            + (" (a difference at the 5% level)" if p_block < 0.05 else " (no difference detected at the 5% level)")
            + f". Delays? Runs with it on learn {where}, Mann-Whitney U p={p:.2g}"
            + (" (a difference at the 5% level)." if p < 0.05 else " (no difference detected at the 5% level)."))


# ----------------------------------------------------------------------------- plot
def pyplot():
    """matplotlib's pyplot, drawing to files, or None (one line said) where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    return plt


def save(fig, plt, path):
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return True



def plot(records, path, title):
    """Loss (and recall accuracy) against 16-bit KV bytes per token: every config in each cache form (o K/V,
    s input), pruned points (x), error bars (std over seeds) and the Pareto front. Labels are a legend, so
    they never overlap; points at one cache size are spread sideways a little to keep them apart."""
    plt = pyplot()
    if plt is None:
        return False
    S, names, recall = summarize(records)
    measures = ["loss", "acc"] if recall else ["loss"]
    fig, axes = plt.subplots(len(measures), 2, figsize=(15, 5 * len(measures)), squeeze=False)
    palette = plt.get_cmap("tab20").colors
    color = {n: (palette[0::2] + palette[1::2])[i % 20] for i, n in enumerate(names)}  # dark ones first
    spread = 0.012 * S["baseline"]["kv"]["kv"]
    for row, measure in zip(axes, measures):
        pts = cache_points(S, names, measure)
        # the zoom leaves out what lies far from the baseline (attention-only), so the rest keep their hundredths
        m0, sd0 = mean_std(S["baseline"]["curve"][0][measure])
        far = sorted({p.config for p in pts if not p.pruned and abs(p.mean - m0) > 10 * sd0})
        for ax, zoom in zip(row, (False, True)):  # every point; the unpruned ones alone, where they differ by 0.01
            taken = {}  # points already drawn at each cache size: spread sideways
            for b, m, sd, label, n, _, form, pruned, _ in pts:
                if zoom and (pruned or n in far):
                    continue
                j = taken[b, pruned] = taken.get((b, pruned), -1) + 1
                marker = "x" if pruned else "o" if form == "kv" else "s"
                ax.errorbar(b + j * spread, m, yerr=0 if math.isnan(sd) else sd, fmt=marker, color=color[n],
                            mfc="none" if marker == "s" else color[n], ms=4 if pruned else 5, capsize=2,
                            alpha=0.6 if pruned else 1.0, label=n if marker == "o" and not zoom else None)
            if not zoom:  # quantized caches (the records that have them): ^ 8 bits, v 4 bits
                for p in (p for p in quant_points(S, names, measure) if p.bits != 16):
                    ax.errorbar(p.bytes, p.mean, yerr=0 if math.isnan(p.std) else p.std, fmt="^" if p.bits == 8 else "v",
                                color=color[p.config], mfc="none" if p.form == "input" else color[p.config], ms=5,
                                capsize=2)
            front = pareto([p for p in pts if not (zoom and (p.pruned or p.config in far))], measure == "acc")
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1,
                    label="Pareto front" if not zoom and measure == "loss" else None)
            ax.set_xlabel(f"KV cache bytes per token at {context(records)} tokens (16-bit; quantized: codes, scale and zero)")
            ax.set_ylabel(("recall accuracy" if measure == "acc" else "validation loss") + " (final model)")
            ax.set_title("unpruned configs only" + (f" (left out, far from the baseline: {', '.join(far)})" if far else "")
                         if zoom else "every config, cache form and pruned point", fontsize=9)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=8,
               title="o K/V form, s input form,\nx attention pruned,\n^ 8-bit, v 4-bit cache\n(hollow: input form)",
               title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return save(fig, plt, path)


POSITION_BINS = 32  # the loss-by-position plot: positions averaged in this many bins


def binned(curve, bins):
    """(bin centres, means) of a per-position curve in `bins` equal bins (positions with nothing scored left out)."""
    T = len(curve)
    edges = [round(i * T / bins) for i in range(bins + 1)]
    xs, ys = [], []
    for lo, hi in zip(edges, edges[1:]):
        m = range_mean(curve, lo, hi) if hi > lo else None
        if m is not None:
            xs.append((lo + hi - 1) / 2)
            ys.append(m)
    return xs, ys


def mean_curve(curves):
    """The per-position mean over seeds' curves (None where no seed scores a position)."""
    return [None if not [c[t] for c in curves if c[t] is not None] else
            statistics.mean(c[t] for c in curves if c[t] is not None) for t in range(len(curves[0]))]


def plot_positions(records, path, title):
    """Validation loss by position (binned), a curve per config, mean over seeds, and each config's curve minus the
    baseline's; dotted lines at the study's windows. Nothing is drawn where no record has loss_by_position."""
    curves = {}
    for r in records:
        if r.loss_by_position is not None:
            curves.setdefault(r.config, []).append(r.loss_by_position)
    if not curves:
        return False
    plt = pyplot()
    if plt is None:
        return False
    T = context(records)
    bins = min(POSITION_BINS, T)
    means = {n: mean_curve(c) for n, c in curves.items()}
    fig, axes = plt.subplots(1, 2 if "baseline" in means else 1, figsize=(14 if "baseline" in means else 8, 5),
                             squeeze=False)
    for n, c in means.items():
        axes[0][0].plot(*binned(c, bins), marker=".", label=f"{n} ({len(curves[n])} seeds)")
        if "baseline" in means:
            diff = [None if a is None or b is None else a - b for a, b in zip(c, means["baseline"])]
            axes[0][1].plot(*binned(diff, bins), marker=".")
    for ax in axes[0]:
        for w in sorted({w for r in records for w in windows_of(r.model)}):
            ax.axvline(w - 0.5, color="k", ls=":", lw=1)
        ax.set_xlabel(f"position in the {T}-token context (bins of {T // bins}; dotted: the windows)")
    axes[0][0].set_ylabel("validation loss (final model)")
    if "baseline" in means:
        axes[0][1].axhline(0, color="k", lw=0.5)
        axes[0][1].set_ylabel("loss minus the baseline's")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.suptitle(f"{title}: loss by position, mean over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    return save(fig, plt, path)


DISTANCE_BINS = 16  # the recall-by-distance plot: distances 1 .. T-1 in this many bins (0 is never a distance)


def plot_distance(records, path, title):
    """Recall accuracy against the distance back to the query's key (binned), a line per config, mean +- std over
    seeds; dotted lines at the windows. Nothing is drawn where no record has recall_by_distance."""
    rs = {}
    for r in records:
        if r.recall_by_distance is not None:
            rs.setdefault(r.config, []).append(r)
    if not rs:
        return False
    plt = pyplot()
    if plt is None:
        return False
    T = context(records)
    width = max(1, math.ceil(T / DISTANCE_BINS))
    fig, ax = plt.subplots(figsize=(10, 5))
    for n, v in rs.items():
        xs, ms, sds = [], [], []
        for lo in range(0, T, width):  # bins at multiples of the width: a window that is one is a bin's edge
            accs = [a for a in (distance_acc(r, lo, lo + width) for r in v) if a is not None]
            if accs:
                m, sd = mean_std(accs)
                xs.append(max(lo, 1) + (lo + width - 1 - max(lo, 1)) / 2)
                ms.append(m)
                sds.append(0 if math.isnan(sd) else sd)
        ax.errorbar(xs, ms, yerr=sds, marker="o", ms=3, capsize=2, label=f"{n} ({'window ' * bool(windows_of(v[0].model))}{window_label(v[0].model)})")
    for w in sorted({w for v in rs.values() for w in windows_of(v[0].model)}):
        ax.axvline(w - 0.5, color="k", ls=":", lw=1)
    ax.set_xlabel(f"distance d from the query back to its key (bins of {width}; dotted: the windows, d >= W is beyond)")
    ax.set_ylabel("recall accuracy (final model)")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: recall by distance, mean +- std over seeds", fontsize=10)
    fig.tight_layout()
    return save(fig, plt, path)


# ----------------------------------------------------------------------------- files
def study_info(study):
    """study.json: the study's title, overlay, train.py arguments and the ablate.py commands that made it."""
    return Study.load(os.path.join(study, "study.json"))


def write_study(study):
    """results.json (every record), report.md and loss_vs_kv.png in the study folder, and where records have them,
    loss_by_position.png and recall_by_distance.png; returns the report's lines."""
    records = load_records(study)
    if not records:
        raise SystemExit(f"error: {study} holds no run records")
    info = study_info(study)
    lines = report(records, info)
    write_record(os.path.join(study, "results.json"), records)
    write_text(os.path.join(study, "report.md"), "# Ablation report\n\n" + "\n".join(lines) + "\n")
    plot(records, os.path.join(study, "loss_vs_kv.png"), info.title)
    plot_positions(records, os.path.join(study, "loss_by_position.png"), info.title)
    plot_distance(records, os.path.join(study, "recall_by_distance.png"), info.title)
    return lines


BLOCK = re.compile(r"(<!-- report: (\S+) -->\n)(.*?)(<!-- end of report -->)", re.S)
HEADLINE_BLOCK = re.compile(r"(<!-- headline: (\S+) -->\n)(.*?)(<!-- end of headline -->)", re.S)
# The README's headline table: (what it is, config, cache form, attention pruned from half the layers, bits),
# the routes to a smaller cache that answer the repo's question, each on the records of one study
HEADLINE = [("the baseline (GPT-2's architecture)", "baseline", "kv", False, 16),
            ("lens attention (reciprocity + discoverability)", "lens", "kv", False, 16),
            ("lens + route gate + MLP context (`full`)", "full", "kv", False, 16),
            ("the baseline, input-form cache (no retraining)", "baseline", "input", False, 16),
            ("the baseline, attention removed from half the layers after training", "baseline", "input", True, 16),
            ("attention in the first half of the layers, from step 0", "attn_first_half", "input", False, 16),
            ("cross-layer K/V sharing (CLA)", "cla", "input", False, 16),
            ("attention in the first half, multi-query", "attn_first_half_mqa", "kv", False, 16),
            ("multi-query attention (MQA), 4-bit cache", "mqa", "kv", False, 4),
            ("attention in layer 0 only, multi-query", "attn_first_layer_mqa", "kv", False, 16)]


def report_blocks(text):
    """{study folder: the text between its markers} for every study a page shows (docs/results.md)."""
    return {m.group(2): m.group(3) for m in BLOCK.finditer(text)}


def headline_blocks(text):
    """{study folder: the text between its headline markers} (the README's headline table)."""
    return {m.group(2): m.group(3) for m in HEADLINE_BLOCK.finditer(text)}


def block_text(study):
    folder = os.path.join(ROOT, study)
    return "\n".join(report(load_records(folder), study_info(folder))) + "\n"


# The long-context headline (results/cpu_long, 512 tokens): what a window costs shows on recall, not on
# Shakespeare's loss, so each row also gives its config's recall on the probe with windows of 8
# (results/recall_window)
LONG_HEADLINE = [("the baseline (GPT-2's architecture)", "baseline", "kv", False, 16),
                 ("the baseline, input-form cache (no retraining)", "baseline", "input", False, 16),
                 ("attention in the first half of the layers, from step 0", "attn_first_half", "input", False, 16),
                 ("multi-query attention (MQA), 4-bit cache", "mqa", "kv", False, 4),
                 ("a window of 32 in every layer (`swa`, Mistral's pattern)", "swa", "kv", False, 16),
                 ("`swa`, input-form cache at 4 bits", "swa", "input", False, 4),
                 ("one global layer in 4, the first (`local_global`)", "local_global", "kv", False, 16),
                 ("one global layer in 4, the last (`local_global_last`)", "local_global_last", "kv", False, 16),
                 ("`local_global_last`, multi-query", "local_global_last_mqa", "kv", False, 16),
                 ("`local_global_last`, multi-query, 4-bit cache", "local_global_last_mqa", "kv", False, 4)]
HEADLINES = {"results/cpu": (HEADLINE, None), "results/cpu_long": (LONG_HEADLINE, "results/recall_window")}
RECALL_KEPT = 0.95  # a route keeps recall where its accuracy beyond the window is at least this multiple of the baseline's


def probe_recall(study):
    """The recall probe's figures for a headline: its window W (every windowed config's), and per config, per seed,
    recall accuracy on the answers whose key lies W or more tokens back (16-bit cache), and on every answer through
    each whole model's (form, bits) cache; and the key groups of its quantized caches."""
    records = load_records(os.path.join(ROOT, study))
    T = context(records)
    wins = sorted({w for r in records for w in windows_of(r.model)})
    if len(wins) != 1:
        raise SystemExit(f"error: {study}'s windowed configs must share one window to compare recall beyond it, not {wins}")
    W, acc = wins[0], {}
    for r in records:
        a = acc.setdefault(r.config, {"beyond": []})
        beyond = distance_acc(r, W, T) if r.recall_by_distance is not None else None
        if beyond is not None:
            a["beyond"].append(beyond)
        for q in r.quant:
            if not q.layers:
                a.setdefault((q.form, q.kv_bits), []).append(q.val_acc)
    return W, acc, sorted({q.kv_group for r in records for q in r.quant if q.kv_bits != 16})


def headline_text(study):
    """A README headline table from a study's records: each row's cache bytes per token and validation loss of
    the final models on the pruning evaluation's batches (mean over seeds), against the baseline with its whole
    16-bit K/V cache on the same batches (Welch's 95% interval); where the headline has a recall probe, each
    config's recall on it and the smallest caches that keep it."""
    if study not in HEADLINES:
        raise SystemExit(f"error: README.md has a headline block for {study}; report.py draws them for "
                         f"{', '.join(HEADLINES)}")
    spec, probe_study = HEADLINES[study]
    folder = os.path.join(ROOT, study)
    records = load_records(folder)
    S, names, _ = summarize(records)
    gpt2, T = S["baseline"]["kv"]["kv"], context(records)
    W, probe, groups = probe_recall(probe_study) if probe_study else (None, None, None)
    mean = lambda v: f"{statistics.mean(v):.3f}" if v else "-"
    rows, seeds, probe_seeds = [], set(), set()
    for label, n, form, half, bits in spec:
        if n not in S or form not in S[n]["kv"]:
            continue
        s = S[n]
        if bits != 16:  # through a quantized cache: against the baseline's 16-bit cache on the same seeds' batches
            q, ref = s["quant"].get((form, bits, 0)), S["baseline"]["quant"].get(("kv", 16, 0))
            if q is None or ref is None:
                continue
            size, values, ref = q["bytes"], q["loss"], ref["loss"]
        elif half:  # the pruning curve's half point, in the config's best honest order
            p = next((p for p in s["curve"] if p["k"] == len(s["attn_layers"][0]) // 2), None)
            if p is None:
                continue
            size, values, ref = p["kv"][form], p["loss"], S["baseline"]["curve"][0]["loss"]
            label += f" ({s['ranking']} order)"
        else:
            size, values, ref = s["kv"][form], s["curve"][0]["loss"], S["baseline"]["curve"][0]["loss"]
        seeds.add(len(values))
        if (n, form, half, bits) == ("baseline", "kv", False, 16):
            delta = "-"
        elif values == ref:  # the same runs through an exact cache form: the same model, nothing to test
            delta = "0 (exact: the same model)"
        else:
            delta = delta_cell(values, ref)
        share = f"{size / gpt2:.3g}x" if size >= gpt2 else f"1/{gpt2 / size:.3g}"
        row = (f"| {label} | {'K/V' if form == 'kv' else 'input'}, {bits}-bit | {nbytes(size)} | {share} | "
               f"{statistics.mean(values):.4f} | {delta} |")
        if probe is not None:
            a = probe.get(n, {})
            probe_seeds.update(len(a[k]) for k in ("beyond", (form, bits)) if a.get(k))
            row += f" {mean(a.get('beyond'))} | {mean(a.get((form, bits)))} |"
        rows.append(row)
    n_seeds = lambda found: f"{min(found)}" if len(found) == 1 else f"{min(found)}-{max(found)}"
    lines = [f"{study_info(folder).title}, {n_seeds(seeds)} seeds a row, trained on {machines(records)}. Loss: validation "
             "loss of the final models (mean over seeds), all on the same validation batches. Delta: against GPT-2 "
             f"with its whole 16-bit K/V cache, with Welch's 95% interval. B/token: cache bytes per token at the study's "
             f"{T}-token context ({'a windowed layer holds its last W tokens; ' if probe else ''}4-bit: codes, scale and "
             f"zero). Drawn by `python report.py` from the records in `{study}/`"
             + (f" and, for recall, `{probe_study}/`: the same config on the recall probe with windows of {W} (every "
                f"answer's key lies within 32 tokens), recall accuracy on the answers whose key lies {W} or more tokens "
                f"back (through a 16-bit cache) and on every answer through this row's cache (key groups of "
                f"{', '.join(map(str, groups))}), mean over "
                f"{n_seeds(probe_seeds or {0})} seeds." if probe else "."), "",
             f"| model | cache | B/token at {T} | x GPT-2's | loss | delta [95% CI] |"
             + (f" recall beyond {W} | recall, this cache |" if probe else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if probe else "")]
    return "\n".join(lines + rows + (kept_answers(S, names, T, W, probe) if probe else [])) + "\n"


def kept_answers(S, names, T, W, probe):
    """The long-context headline's answers: for each tolerance, the smallest cache (every config's whole model, each
    form and bit width) within it of the baseline's loss whose config keeps RECALL_KEPT of the baseline's recall
    on the probe, beyond the window through a 16-bit cache and on every answer through that cache; and the
    smallest within it whatever its recall, where that is another."""
    pts = [p for p in quant_points(S, names, "loss") if not p.pruned]
    ref = S["baseline"]["quant"].get(("kv", 16, 0))
    base = probe.get("baseline", {})
    if ref is None or not base.get("beyond") or not base.get(("kv", 16)):
        return []
    ref, gpt2 = ref["loss"], S["baseline"]["kv"]["kv"]
    ref_mean = statistics.mean(ref)
    base_beyond, base_all = statistics.mean(base["beyond"]), statistics.mean(base[("kv", 16)])

    def recall_of(p):  # (beyond W at 16 bits, every answer through p's cache), None where the probe lacks either
        a = probe.get(p.config, {})
        return (statistics.mean(a["beyond"]), statistics.mean(a[p.form, p.bits])) \
            if a.get("beyond") and a.get((p.form, p.bits)) else None

    def said(p):
        r = recall_of(p)
        return (f"{p.label}: {nbytes(p.bytes)} B/token at {T} tokens, 1/{gpt2 / p.bytes:.3g} of GPT-2's 16-bit K/V "
                f"cache; loss {p.mean:.4f}, {delta_cell(p.values, ref)} against the baseline; recall beyond {W} tokens "
                + (f"{r[0]:.3f} against the baseline's {base_beyond:.3f} ({r[0] / base_beyond:.2f}x), through this "
                   f"cache {r[1]:.3f} against {base_all:.3f}" if r else "not measured (no records on the probe)"))
    found = []  # [kept, close, the tolerances that find them]
    for tol in TOLERANCES:
        close = sorted((p for p in pts if p.mean - ref_mean <= tol), key=lambda p: (p.bytes, p.mean))
        kept = [p for p in close if (r := recall_of(p)) and r[0] >= RECALL_KEPT * base_beyond
                and r[1] >= RECALL_KEPT * base_all]
        pair = (kept[0] if kept else None, close[0] if close else None)
        if found and found[-1][0] is pair[0] and found[-1][1] is pair[1]:
            found[-1][2].append(tol)
        else:
            found.append([*pair, [tol]])
    lines = [""]
    for kept, close, tols in found:
        within = f"within +{tols[0]} nats" + (f" (and +{', +'.join(map(str, tols[1:]))})" if tols[1:] else "")
        lines.append(f"- The smallest cache {within} of the baseline that keeps {RECALL_KEPT}x its recall: "
                     + (said(kept) if kept else "none among these records") + ".")
        if close is not None and close is not kept:
            lines.append(f"- The smallest {within} whatever its recall: {said(close)}.")
    return lines


# ----------------------------------------------------------------------------- the context sweep
# One scale family (config/cpu.py's model, 2000 iterations) at each context, a study per block_size: how each route's
# cost grows with context. A study not made yet is left out
SWEEP = ("results/cpu", "results/cpu_block256", "results/cpu_long", "results/cpu_long_block1024")
SWEEP_DIR = os.path.join(ROOT, "results", "context_sweep")  # no study.json: not a study
SWEEP_MD, SWEEP_PNG = os.path.join(SWEEP_DIR, "report.md"), os.path.join(SWEEP_DIR, "delta_vs_context.png")
SWEEP_BLOCK = re.compile(r"(<!-- (context sweep) -->\n)(.*?)(<!-- end of context sweep -->)", re.S)


def made_records(folder):
    """A study folder's records, or None where it is not made yet (no study.json)."""
    path = os.path.join(ROOT, folder)
    return load_records(path) if os.path.isfile(os.path.join(path, "study.json")) else None


def sweep_studies(folders=SWEEP):
    """([(T, folder, S)] by context: each of the sweep's studies that has records, summarized as its report does
    (every config tested against its own baseline); [the studies left out, with why])."""
    found, left = [], []
    for folder in folders:
        records = made_records(folder)
        if records is None:
            continue  # not made yet
        if not any(r.config == "baseline" for r in records):
            left.append(f"`{folder}` (no baseline records yet)")
            continue
        found.append((context(records), folder, summarize(records)[0]))
    found.sort(key=lambda f: f[0])
    same = [a[1:2] + b[1:2] for a, b in zip(found, found[1:]) if a[0] == b[0]]
    if same:
        raise SystemExit(f"error: the context sweep has two studies at one context ({same[0][0]}, {same[0][1]})")
    return found, left


def sweep_configs(found):
    """The configs (baseline aside) that two or more of the sweep's studies ran, in the ablation order."""
    order = {n: i for i, n in enumerate(ablation_names("all"))}
    names = {n for _, _, S in found for n in S if n != "baseline"}
    return sorted((n for n in names if sum(n in S for _, _, S in found) >= 2), key=lambda n: (order.get(n, len(order)), n))


def cache_share(S, n):
    """A config's 16-bit cache in each form as a share of its study's baseline K/V bytes (both at that context)."""
    kv0 = S["baseline"]["kv"]["kv"]
    share = lambda b: f"{b / kv0:.3g}x" if b >= kv0 else f"1/{kv0 / b:.3g}"
    return ", ".join(f"{'K/V' if f == 'kv' else 'input'} {share(b)}" for f, b in S[n]["kv"].items())


def untested_or_ci(S, n):
    """A config's delta against its study's baseline: its Welch interval, or the bare difference marked untested
    under two seeds a side."""
    if S[n]["test"] is None:
        return f"{S[n]['loss'] - S['baseline']['loss']:+.4f} ({S[n]['n']} vs {S['baseline']['n']}: not tested)"
    return ci_delta(S[n]["test"])


def delta_change(S0, S1, n):
    """(config - baseline) in S1 minus (config - baseline) in S0, from contrast() over the four sets of seeds."""
    return contrast([(S1[n]["losses"], 1), (S1["baseline"]["losses"], -1), (S0[n]["losses"], -1),
                     (S0["baseline"]["losses"], 1)])


def growth(t):
    """How a config's delta changed from the shortest context to the longest, from contrast()."""
    if t is None:
        return "not tested (fewer than 2 seeds on a side)"
    ci = f"95% CI [{t['lo']:+.4f}, {t['hi']:+.4f}], Welch-Satterthwaite p={t['p']:.2g}"
    if t["lo"] > 0 or t["hi"] < 0:
        return f"{'grows' if t['diff'] > 0 else 'shrinks'} by {abs(t['diff']):.4f} ({ci})"
    return f"no change detected ({t['diff']:+.4f}, {ci})"


def context_sweep_lines(folders=SWEEP):
    """The context sweep's Markdown lines: each config's delta against its own study's baseline at each context,
    its cache share at that context, and how its delta changed from the shortest context it ran to the longest."""
    found, left = sweep_studies(folders)
    if not found:
        return ["No study of the context sweep has records yet (" + ", ".join(f"`{f}`" for f in folders) + ")."]
    names = sweep_configs(found)
    head = "| config | " + " | ".join(f"{T} tokens" for T, _, _ in found) + " |"
    rule = "|---|" + "---|" * len(found)
    lines = ["The context sweep: one scale family at each context, "
             + ", ".join(f"`{f}` at {T} tokens" for T, f, _ in found)
             + (f" (left out: {', '.join(left)})" if left else "") + ". Delta: each config's best validation loss "
             "against its own study's baseline, the difference of means with its 95% interval (Welch's t; seeds n vs "
             "n); `-` where a study did not run the config. Cache: the config's 16-bit cache in each form as a share of "
             "the baseline's K/V bytes, both at that context (a windowed layer holds min(T, W) tokens: its share "
             "falls as T grows). Configs that two or more of these studies ran. Drawn by `python report.py` from the "
             "records in those folders.", "", head, rule,
             "| baseline: loss | " + " | ".join(f"{S['baseline']['loss']:.4f} +- {fmt(S['baseline']['loss_std'])} "
                                               f"({S['baseline']['n']} seed{'s' * (S['baseline']['n'] > 1)})" for _, _, S in found)
             + " |",
             "| baseline: training tokens per run | " + " | ".join(f"{S['baseline']['tokens']:,}" for _, _, S in found) + " |"]
    for n in names:
        cells = []
        for _, _, S in found:
            if n not in S:
                cells.append("-")
            else:
                cells.append(untested_or_ci(S, n) + ("" if S[n]["test"] is None else f" ({S[n]['n']} vs {S['baseline']['n']})"))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Cache at each context, 16-bit, as a share of the baseline's K/V bytes at that context:", "",
              head, rule, "| baseline: K/V B/token | " + " | ".join(nbytes(S["baseline"]["kv"]["kv"]) for _, _, S in found) + " |"]
    lines += [f"| {n} | " + " | ".join(cache_share(S, n) if n in S else "-" for _, _, S in found) + " |" for n in names]
    lines += ["", "How each route's cost grows with context, from the shortest context it ran to the longest: the change "
              "of its delta, (config - baseline) at the longer minus (config - baseline) at the shorter, with its 95% "
              "interval (Welch-Satterthwaite over the four independent sets of seeds).", ""]
    for n in names:
        ran = [f for f in found if n in f[2]]
        (T0, _, S0), (T1, _, S1) = ran[0], ran[-1]
        t = delta_change(S0, S1, n)
        lines.append(f"- {n}: {S0[n]['loss'] - S0['baseline']['loss']:+.4f} at {T0} tokens ({cache_share(S0, n)}), "
                     f"{S1[n]['loss'] - S1['baseline']['loss']:+.4f} at {T1} tokens ({cache_share(S1, n)}): its cost "
                     f"{growth(t)}.")
    return lines


def context_sweep_text(_=None, folders=SWEEP):
    return "\n".join(context_sweep_lines(folders)) + "\n"


def plot_context_sweep(path, folders=SWEEP):
    """Each config's delta against its own study's baseline (95% interval) against the context, and its K/V cache
    share at that context, one line per config. Nothing is drawn with fewer than two studies."""
    found, _ = sweep_studies(folders)
    if len(found) < 2:
        return False
    plt = pyplot()
    if plt is None:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    for n in sweep_configs(found):
        at = [(T, S) for T, _, S in found if n in S]
        d = [S[n]["loss"] - S["baseline"]["loss"] for _, S in at]
        err = [[0 if S[n]["test"] is None else S[n]["test"]["diff"] - S[n]["test"]["lo"] for _, S in at],
               [0 if S[n]["test"] is None else S[n]["test"]["hi"] - S[n]["test"]["diff"] for _, S in at]]
        line = left.errorbar([T for T, _ in at], d, yerr=err, marker="o", capsize=3, label=n)
        right.plot([T for T, _ in at], [S[n]["kv"]["kv"] / S["baseline"]["kv"]["kv"] for _, S in at], marker="o",
                   color=line[0].get_color())
    contexts = [T for T, _, _ in found]
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [str(T) for T in contexts])
        ax.set_xlabel("context (block_size, tokens)")
    left.axhline(0, color="k", lw=0.5)
    left.set_ylabel("best validation loss minus its study's baseline (95% CI)")
    right.set_yscale("log", base=2)
    right.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"1/{1 / v:.3g}" if v < 1 else f"{v:.3g}"))
    right.set_ylabel("16-bit K/V cache bytes / the baseline's, at that context")
    fig.legend(*left.get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.suptitle("The context sweep: " + ", ".join(f"{f} ({T})" for T, f, _ in found), fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    return save(fig, plt, path)


LONGER = ("results/cpu_block256", "results/cpu_block256_x4")  # the same configs at one context, then at 4x the iterations
LONGER_DIR = os.path.join(ROOT, "results", "longer_runs")  # no study.json: not a study
LONGER_MD, LONGER_PNG = os.path.join(LONGER_DIR, "report.md"), os.path.join(LONGER_DIR, "loss_by_iteration.png")
LONGER_BLOCK = re.compile(r"(<!-- (longer runs) -->\n)(.*?)(<!-- end of longer runs -->)", re.S)


def longer_studies(folders=LONGER):
    """[(iterations, folder, records, S)] for the shorter and the longer study, or None where either has no
    baseline records yet. Two studies at different contexts, or of one length, are not a comparison of length."""
    found = []
    for folder in folders:
        records = made_records(folder) or []
        if not any(r.config == "baseline" for r in records):
            return None
        found.append((max(r.iters for r in records), folder, records, summarize(records)[0]))
    (n0, f0, r0, _), (n1, f1, r1, _) = found
    if context(r0) != context(r1) or n0 >= n1:
        raise SystemExit(f"error: the longer runs compare one context at two lengths; {f0} is {context(r0)} tokens, "
                         f"{n0} iterations and {f1} is {context(r1)} tokens, {n1} iterations")
    return found


def best_iter(record):
    """The iteration of a run's best validation loss (its first evaluation at that loss)."""
    return min(record.history, key=lambda h: h["val_loss"])["iter"] if record.history else None


def lead_at(S, n):
    """Where a config stands against the baseline of its own length, from its Welch interval."""
    t = S[n]["test"]
    if t is None:
        return "not tested (fewer than 2 seeds on a side)"
    if t["hi"] < 0:
        return f"ahead by {-t['diff']:.4f}"
    if t["lo"] > 0:
        return f"behind by {t['diff']:.4f}"
    return f"no difference detected ({t['diff']:+.4f})"


def longer_runs_lines(folders=LONGER):
    """The longer runs' Markdown lines: each config's best loss and its delta against the baseline of the same
    length, at both lengths; where its best loss fell and its final training loss in the longer runs; and the
    change of its delta with length, which says whether a lead at the shorter length lasts."""
    found = longer_studies(folders)
    if found is None:
        return ["The longer runs have no records at both lengths yet (" + ", ".join(f"`{f}`" for f in folders) + ")."]
    (n0, f0, r0, S0), (n1, f1, r1, S1) = found
    order = {n: i for i, n in enumerate(ablation_names("all"))}
    names = sorted((n for n in S1 if n in S0), key=lambda n: (n != "baseline", order.get(n, len(order)), n))
    cell = lambda S, n: "-" if n == "baseline" else untested_or_ci(S, n)
    at = lambda records, n, f: [f(r) for r in records if r.config == n]
    lines = [f"The longer runs: the same configs at {context(r0)} tokens, trained for {n0} iterations (`{f0}`) and for "
             f"{n1} (`{f1}`), with the learning-rate schedule stretched to each length. Loss: the best validation "
             f"loss, mean +- sd over seeds; delta: against the baseline of the same length, with its 95% interval "
             f"(Welch's t). Best at: the mean iteration of the best validation loss; train: the final training loss, "
             f"both in the {n1}-iteration runs. Drawn by `python report.py` from the records in those folders.", "",
             f"| config | {n0} its: loss | {n0} its: delta | {n1} its: loss | {n1} its: delta | best at | train |",
             "|---|---|---|---|---|---|---|"]
    for n in names:
        best = [b for b in at(r1, n, best_iter) if b is not None]
        lines.append(f"| {n} | {S0[n]['loss']:.4f} +- {fmt(S0[n]['loss_std'])} ({S0[n]['n']}) | {cell(S0, n)} | "
                     f"{S1[n]['loss']:.4f} +- {fmt(S1[n]['loss_std'])} ({S1[n]['n']}) | {cell(S1, n)} | "
                     f"{statistics.mean(best) if best else float('nan'):.0f} | "
                     f"{statistics.mean(at(r1, n, lambda r: r.final_train_loss)):.4f} |")
    if len(names) == 1:
        return lines + ["", "No config but the baseline has records at both lengths yet."]
    lines += ["", f"Does a lead at {n0} iterations last? Each config against the baseline at {n1} iterations, and the "
              f"change of its delta from {n0} to {n1} iterations, (config - baseline) at {n1} minus (config - "
              f"baseline) at {n0}, with its 95% interval (Welch-Satterthwaite over the four independent sets of seeds; "
              f"a lead that shrinks moves its delta up):", ""]
    for n in names[1:]:
        t = delta_change(S0, S1, n)
        lines.append(f"- {n}: at {n0} iterations {lead_at(S0, n)}; at {n1}, {lead_at(S1, n)}. Its delta {growth(t)}.")
    return lines


def longer_runs_text(_=None, folders=LONGER):
    return "\n".join(longer_runs_lines(folders)) + "\n"


def mean_history(records, key):
    """{iteration: mean of key over the records evaluated there}, at the iterations every record reached."""
    seen = [{h["iter"]: h[key] for h in r.history} for r in records]
    return {i: statistics.mean(s[i] for s in seen) for i in sorted(set.intersection(*(set(s) for s in seen)))}


def plot_longer_runs(path, folders=LONGER):
    """Validation (solid) and training (dotted) loss against iteration, mean over seeds, each config in the
    longer runs, and its validation loss in the shorter runs (dashed). Nothing is drawn before both have records."""
    found = longer_studies(folders)
    plt = pyplot() if found else None
    if plt is None:
        return False
    (n0, f0, r0, S0), (n1, f1, r1, S1) = found
    fig, ax = plt.subplots(figsize=(9, 5))
    for n in (n for n in S1 if n in S0):
        long = [r for r in r1 if r.config == n]
        val, train = mean_history(long, "val_loss"), mean_history(long, "train_loss")
        line = ax.plot(list(val), list(val.values()), label=f"{n}, {n1} its (validation)")[0]
        ax.plot(list(train), list(train.values()), ":", color=line.get_color(), label=f"{n}, {n1} its (training)")
        short = mean_history([r for r in r0 if r.config == n], "val_loss")
        ax.plot(list(short), list(short.values()), "--", color=line.get_color(), label=f"{n}, {n0} its (validation)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 2.6))  # the first evaluations (loss ~4) would flatten the rest
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (mean over seeds)")
    ax.set_title(f"The longer runs: {f0} ({n0} its) and {f1} ({n1} its), {context(r1)} tokens", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, plt, path)


def update_blocks(path, pattern, text_of):
    """Rewrite the text between each of a page's markers; returns the study folders rewritten."""
    with open(path) as f:
        text = f.read()
    write_text(path, pattern.sub(lambda m: m.group(1) + text_of(m.group(2)) + m.group(4), text))
    return sorted(m.group(2) for m in pattern.finditer(text))


def main():
    configure(globals(), sys.argv[1:])
    folders = studies.split(",") if studies else sorted(os.path.dirname(p) for p in glob.glob(os.path.join("results", "*", "study.json")))
    for study in folders:  # every output checked before any is written
        if not os.path.isfile(os.path.join(study, "study.json")):
            raise SystemExit(f"error: {study} is not a study folder (no study.json)")
        check_writable(study, "studies")
    if docs:
        check_writable(RESULTS_MD, "docs", is_dir=False)
        check_writable(README, "docs", is_dir=False)
        check_writable(SWEEP_DIR, "docs")
        check_writable(LONGER_DIR, "docs")
    for study in folders:
        print("\n".join(write_study(study)))
        print(f"wrote {study}/results.json, report.md, loss_vs_kv.png\n")
    if docs:
        done = update_blocks(RESULTS_MD, BLOCK, block_text)
        print(f"docs/results.md: report blocks for {', '.join(done) or 'no study'} rewritten")
        done = update_blocks(README, HEADLINE_BLOCK, headline_text)
        print(f"README.md: headline table from {', '.join(done) or 'no study'} rewritten")
        for title, text_of, md, plot_to, png, pattern in (
                ("Context sweep", context_sweep_text, SWEEP_MD, plot_context_sweep, SWEEP_PNG, SWEEP_BLOCK),
                ("Longer runs", longer_runs_text, LONGER_MD, plot_longer_runs, LONGER_PNG, LONGER_BLOCK)):
            text = text_of()  # drawn once: the report and the docs block are the same text
            write_text(md, f"# {title}\n\n" + text)
            drawn = plot_to(png)
            done = update_blocks(RESULTS_MD, pattern, lambda _: text)
            print(f"wrote {os.path.relpath(md, ROOT)}{', ' + os.path.basename(png) if drawn else ''}; docs/results.md: "
                  f"{title.lower() + ' block rewritten' if done else 'no ' + title.lower() + ' block'}")


if __name__ == "__main__":
    main()
