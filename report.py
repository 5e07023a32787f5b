"""
The report of an ablation study, from the result records in its folder (results/<study>/<config>/seed<N>.json,
which ablate.py writes): results.json, report.md and the plot of loss (and, for recall, accuracy) against
KV-cache bytes per token. The README's Results tables are these reports, pasted between markers.

$ python report.py                          # every study in results/, and the README's tables
$ python report.py --studies=results/cpu --readme=False

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

# -----------------------------------------------------------------------------
studies = ""  # comma-separated study folders; '' for every results/*/ with a study.json
readme = True  # rewrite the README's report blocks from results/
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
SHARES = (0.5, 0.25, 0.125, 0.0625)  # the best-cache tables: shares of the baseline's 16-bit K/V bytes
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
             "route_budget_half": "The route gate made able to close (half the layers)?"}


def fmt(v, spec=".4f"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{spec}}"


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
    its cache at 16, 8 and 4 bits, as CachePoints (bytes per token at long context: 16 bits at 2 bytes a
    value; fewer: codes, scale and zero; `pruned`: the layers whose attention is removed)."""
    return [CachePoint(q["bytes"], *mean_std(q[measure]), f"{n}{' without the greedy half of its attention' * bool(k)} "
                       f"in the {'K/V' if form == 'kv' else 'input'} form at {bits} bits", n, q[measure], form, k, bits)
            for n in names for (form, bits, k), q in sorted(S[n]["quant"].items())]


def pareto_lines(S, names, measure, recall, records):
    """The Pareto of every route the records measured through a cache (form x placement or pruning x
    GQA/MQA/CLA x bits): a table of every config with quantized-cache records, whole and with the greedy half
    of its attention pruned, in each form at 16, 8 and 4 bits, the frontier marked, and the headline: the
    smallest cache within +0.01 nats (or 0.01 accuracy) of the baseline's 16-bit cache, on the same seeds."""
    pts = quant_points(S, names, measure)
    if not any(p.bits != 16 for p in pts) or ("kv", 16, 0) not in S["baseline"]["quant"]:
        return [], []
    front = {id(p) for p in pareto(pts, recall)}
    ref = statistics.mean(S["baseline"]["quant"]["kv", 16, 0][measure])
    gpt2 = S["baseline"]["kv"]["kv"]
    seeds = sorted({len(p.values) for p in pts})
    # keys are quantized a group of G tokens at a time: at a short context most of them are still whole
    rec = next(r for r in records if r.quant)
    bs, G = rec.model["block_size"], next(q.kv_group for q in rec.quant if q.kv_bits != 16)
    keys = statistics.mean((t + 1) // G * G / (t + 1) for t in range(bs))
    what = "recall accuracy" if recall else "validation loss"
    lines = ["", f"The Pareto of every route: cache bytes per token against {what} for each config with quantized-"
             f"cache records ({seeds[0]}{'' if len(seeds) == 1 else '-' + str(seeds[-1])} seeds), whole and, where the "
             "records have it, with the greedy half of its attention layers removed (`n layers pruned`), in each cache form, "
             "at 16 bits (2 bytes a value) and through 8- and 4-bit caches (codes, plus float16 scale and zero per "
             f"group of {G}: bytes per token at long context), teacher-forced one token per step; mean +- std over "
             "seeds. `*`: on the Pareto front of these points. The baseline's 16-bit cache on these seeds: "
             f"{ref:.4f}. The input form's `x^` and the K/V form's values are quantized per token, each as soon as "
             f"it is written; keys per channel in groups of {G} tokens, so at this {bs}-token context a query reads "
             f"{keys:.0%} of its keys quantized on average (the K/V form's rows are kinder to it than a long "
             "context would be).", "",
             f"| config | form | 16-bit B/tok | {what} | 8-bit B/tok | {what} | 4-bit B/tok | {what} |",
             "|---|---|---|---|---|---|---|---|"]
    cell = lambda p: f"{p.bytes:,.0f} | {'*' if id(p) in front else ''}{p.mean:.4f} +- {fmt(p.std)}"
    for n in (n for n in names if S[n]["quant"]):
        for k in sorted({p.pruned for p in pts if p.config == n}):
            for form in S[n]["kv"]:
                by_bits = {p.bits: p for p in pts if p.config == n and p.form == form and p.pruned == k}
                lines.append(f"| {n}{f', {k} layers pruned' if k else ''} | {'K/V' if form == 'kv' else 'input'} | "
                             + " | ".join(cell(by_bits[b]) if b in by_bits else "- | -" for b in (16, 8, 4)) + " |")
    close = [p for p in pts if (ref - p.mean if recall else p.mean - ref) <= 0.01]
    best = min(close, key=lambda p: (p.bytes, p.mean if not recall else -p.mean))
    answer = (f"- The smallest cache within {'0.01 accuracy' if recall else '+0.01 nats'} of the baseline: {best.label}"
              f", {best.bytes:,.0f} B/token, {what} "
              f"{best.mean:.4f} ({best.mean - ref:+.4f}), {best.bytes / gpt2:.3f}x of GPT-2's 16-bit K/V cache "
              f"(1/{gpt2 / best.bytes:.1f}).")
    return lines, [answer]


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


def report(records, study):
    """The report's Markdown lines. Every sentence follows from the numbers in its tables."""
    S, names, recall = summarize(records)
    base = S["baseline"]
    kv0 = base["kv"]["kv"]
    seeds = sorted({S[n]["n"] for n in names})
    n_seeds = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    lines = ["Commands: " + "; ".join(f"`{c}`" for c in study.commands) + f". Trained on: {machines(records)}.", "",
             f"{study.title}: {len(names)} configs, {n_seeds} seeds each ({len(records)} runs), "
             f"{base['tokens']:,} training tokens per run. Loss: best validation loss, mean +- std over seeds. "
             "Delta: against the baseline, the difference of means with its 95% confidence interval (Welch's t) "
             "and the p-value with Holm's correction across the configs. KV: cache bytes per token at 16-bit "
             "precision, in the K/V form and in the input form (exact; `-` where a config cannot use it). Half "
             "pruned: validation loss with attention removed from half of the layers that have it, in the greedy "
             "order (each step removes the layer whose removal costs least on training batches, never on the "
             "reported ones), lowest route gate first, or lowest measured contribution first (`n/a`: a record "
             "made before that order existed)." + (" Recall acc: the share of answers predicted exactly on the "
                                               f"validation set (chance {records[0].chance_accuracy:.4f})." if recall else ""),
             "",
             "| config | seeds | params | loss | delta [95% CI] | p (Holm) | K/V B/token | input B/token | "
             "half pruned (greedy) | half pruned (gate) | half pruned (contribution) |"
             + (" recall acc | delta acc [95% CI] | p (Holm) | no attention acc |" if recall else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if recall else "")]

    def delta(t, p):
        return "- | -" if t is None else f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}] | {p:.2g}"

    for n in names:
        s = S[n]
        row = (f"| {n} | {s['n']} | {s['params']:,} | {s['loss']:.4f} +- {fmt(s['loss_std'])} | "
               f"{delta(s.get('test'), s.get('test_p'))} | {s['kv']['kv']:,} | {fmt(s['kv'].get('input'), ',')} | "
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
        budget = int(share * kv0)
        # each config's best way into the budget (a cache form, or pruning), best first
        best = {}
        for p in sorted(pts, key=lambda p: ((-1 if recall else 1) * p[1], p[0])):
            if p[0] <= budget:
                best.setdefault(p[4], p)
        rows = sorted(best.values(), key=lambda p: ((-1 if recall else 1) * p[1], p[0]))
        if not rows:
            continue
        lines += ["", f"Every config's best way to a cache of at most {share}x the baseline's K/V bytes ({budget:,} B/token), "
                  f"best first: {'recall accuracy' if recall else 'validation loss'} of the final models on the pruning "
                  f"evaluation's batches, against the baseline with its whole cache ({statistics.mean(ref):.4f}), "
                  "Welch's t, p uncorrected.", "",
                  f"| way | B/token | {'recall acc' if recall else 'loss'} | delta [95% CI] | p |", "|---|---|---|---|---|"]
        for p in rows:
            t = None if p[5] == ref else welch(p[5], ref)  # the baseline's own row: nothing to compare
            lines.append(f"| {p[3]} | {p[0]:,} | {p[1]:.4f} +- {fmt(p[2])} | {delta(t, t and t['p'])} |")
        t = welch(rows[0][5], ref)
        answer = (f"- The best way to at most {share}x the baseline's K/V bytes: {rows[0][3]}, {rows[0][0]:,} B/token, "
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
def plot(records, path, title):
    """Loss (and recall accuracy) against 16-bit KV bytes per token: every config in each cache form (o K/V,
    s input), pruned points (x), error bars (std over seeds) and the Pareto front. Labels are a legend, so
    they never overlap; points at one cache size are spread sideways a little to keep them apart."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
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
            ax.set_xlabel("KV cache bytes per token (16-bit; quantized: codes, scale and zero)")
            ax.set_ylabel(("recall accuracy" if measure == "acc" else "validation loss") + " (final model)")
            ax.set_title("unpruned configs only" + (f" (left out, far from the baseline: {', '.join(far)})" if far else "")
                         if zoom else "every config, cache form and pruned point", fontsize=9)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=8,
               title="o K/V form, s input form,\nx attention pruned,\n^ 8-bit, v 4-bit cache\n(hollow: input form)",
               title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- files
def study_info(study):
    """study.json: the study's title, overlay, train.py arguments and the ablate.py commands that made it."""
    return Study.load(os.path.join(study, "study.json"))


def write_study(study):
    """results.json (every record), report.md and loss_vs_kv.png in the study folder; returns the report's lines."""
    records = load_records(study)
    if not records:
        raise SystemExit(f"error: {study} holds no run records")
    info = study_info(study)
    lines = report(records, info)
    write_record(os.path.join(study, "results.json"), records)
    write_text(os.path.join(study, "report.md"), "# Ablation report\n\n" + "\n".join(lines) + "\n")
    plot(records, os.path.join(study, "loss_vs_kv.png"), info.title)
    return lines


BLOCK = re.compile(r"(<!-- report: (\S+) -->\n)(.*?)(<!-- end of report -->)", re.S)


def readme_blocks(text):
    """{study folder: the text between its markers} for every study the README shows."""
    return {m.group(2): m.group(3) for m in BLOCK.finditer(text)}


def block_text(study):
    folder = os.path.join(ROOT, study)
    return "\n".join(report(load_records(folder), study_info(folder))) + "\n"


def update_readme(path=README):
    with open(path) as f:
        text = f.read()
    new = BLOCK.sub(lambda m: m.group(1) + block_text(m.group(2)) + m.group(4), text)
    write_text(path, new)
    return sorted(readme_blocks(text))


def main():
    configure(globals(), sys.argv[1:])
    folders = studies.split(",") if studies else sorted(os.path.dirname(p) for p in glob.glob(os.path.join("results", "*", "study.json")))
    for study in folders:  # every output checked before any is written
        if not os.path.isfile(os.path.join(study, "study.json")):
            raise SystemExit(f"error: {study} is not a study folder (no study.json)")
        check_writable(study, "studies")
    if readme:
        check_writable(README, "README", is_dir=False)
    for study in folders:
        print("\n".join(write_study(study)))
        print(f"wrote {study}/results.json, report.md, loss_vs_kv.png\n")
    if readme:
        print(f"README.md: report blocks for {', '.join(update_readme()) or 'no study'} rewritten")


if __name__ == "__main__":
    main()
