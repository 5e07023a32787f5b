"""report.py's long-context sections, on synthetic records in temporary folders: cache budgets and the Pareto at
the study's context with a window's fractional bytes, the loss by position, recall within and beyond a window,
and the context sweep across studies; each number checked against a computation by hand. Old records (without
the new measures) leave those sections out."""
import dataclasses
import math
import os
import statistics

import pytest
from scipy.stats import t as student_t

import report
from records import PruningPoint, QuantPoint, RunRecord, Study, write_record

MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_kv_head": 4, "kv_share": 1, "use_discoverability": False,
         "attn_layers": None}


def record(config, seed, loss, T, window=None, kv=None, acc=None, positions=None, distances=None, quant=(), tokens=1000):
    """A run record with what report.py reads: its loss (best and on the evaluation's batches), its context T,
    its window, its 16-bit bytes per token at T, and, where given, the new long-context measures."""
    kv = kv or {"kv": 2048, "input": 1024}
    model = dict(MODEL, block_size=T, **({"attn_window": window} if window else {}))
    whole = PruningPoint(layers=[], val_loss=loss, val_acc=acc, kv_bytes_per_token=kv, ranking="greedy")
    none = PruningPoint(layers=[0, 1, 2, 3], val_loss=loss + 1, val_acc=None if acc is None else 0.03,
                        kv_bytes_per_token={f: 0 for f in kv}, ranking="greedy")
    return RunRecord(
        config=config, seed=seed, command="python train.py", model=model,
        machine={"device": "cpu", "torch": "2.13.0+cpu", "cpus": 2, "arch": "x86_64"},
        best_val_loss=loss, final_val_loss=loss, final_train_loss=loss, params=1000, iters=10, tokens_seen=tokens,
        ms_per_iter=1.0, wall_s=1.0, kv_bytes_per_token=kv, lens_gates={}, route_gates=None,
        attention_contribution=[1.0] * 4, half_pruned={}, all_pruned=none, pruning=[whole, none], eval_val_loss=loss,
        eval_val_acc=acc, dataset="recall_long" if acc is not None else "shakespeare_char",
        chance_accuracy=None if acc is None else 1 / 32, history=[], quant=list(quant),
        loss_by_position=positions, recall_by_distance=distances)


def study(folder, records, title="synthetic"):
    """A study folder as ablate.py leaves it: study.json and one record per run."""
    os.makedirs(folder, exist_ok=True)
    write_record(os.path.join(folder, "study.json"), Study(title=title, overlay="config/cpu.py", train_args=""))
    for r in records:
        os.makedirs(os.path.join(folder, r.config), exist_ok=True)
        write_record(os.path.join(folder, r.config, f"seed{r.seed}.json"), r)
    return str(folder)


def welch_by_hand(a, b):
    """Welch's difference of means a - b and its 95% interval, from the formula."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    d, half = statistics.mean(a) - statistics.mean(b), student_t.ppf(0.975, df) * math.sqrt(va + vb)
    return d, d - half, d + half


def ci(d, lo, hi):
    return f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def row(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


def quant(form, bits, loss, nbytes):
    return QuantPoint(form=form, kv_bits=bits, kv_group=32, kv_residual=0, val_loss=loss, val_acc=None,
                      kv_bytes_per_token=nbytes)


def test_budgets_and_pareto_at_the_study_context_with_fractional_bytes():
    """Budgets are shares of the baseline's K/V bytes at the study's context (down to 1/64), a window's fractional
    bytes are printed as they are and fit the budget they equal, and every byte figure names the context."""
    base = [1.80, 1.81, 1.82]
    swa = [1.83, 1.85, 1.84]
    # a window of 32 at 512 tokens: 1/16 of the K/V values in every layer; 12.5 B/token: a fraction, at 1/64
    records = ([record("baseline", s, v, 512, quant=[quant("kv", 16, v, 2048), quant("kv", 4, v + 0.001, 640)])
                for s, v in enumerate(base)]
               + [record("swa", s, v, 512, window=32, kv={"kv": 128.0},
                         quant=[quant("kv", 16, v, 128.0), quant("kv", 4, v + 0.001, 40.5)]) for s, v in enumerate(swa)]
               + [record("swa_mqa", s, v + 0.1, 512, window=32, kv={"kv": 12.5, "input": 64.0}) for s, v in enumerate(swa)])
    text = "\n".join(report.report(records, Study("synthetic", "config/cpu_long.py", "")))
    assert "| K/V B/token at 512 | input B/token at 512 |" in text and "at this study's 512-token context" in text
    assert row(text, "| swa |").split(" | ")[6:8] == ["128", "-"] and row(text, "| swa_mqa |").split(" | ")[6] == "12.5"
    # 1/16 of 2,048: swa's 128 B/token is within it, exactly
    assert "at most 1/16 of the baseline's K/V bytes (128 B/token at 512 tokens)" in text
    part = text.split("at most 1/16 of the baseline's K/V bytes")[1].split("\n\n")[1]
    d, lo, hi = welch_by_hand(swa, base)
    assert f"| swa in the K/V form | 128 | {statistics.mean(swa):.4f} +- {statistics.stdev(swa):.4f} | {ci(d, lo, hi)} |" in part
    assert "at most 1/64 of the baseline's K/V bytes (32 B/token at 512 tokens)" in text
    assert "| swa_mqa in the K/V form | 12.5 |" in text.split("at most 1/64 of the baseline's K/V bytes")[1]
    assert "at most 1/32" in text and "0.0625x" not in text
    # the Pareto: fractional 4-bit bytes, and the smallest cache within +0.01 and +0.02 of the baseline, at T
    assert "| 16-bit B/tok at 512 |" in text and "| swa | K/V | 128 |" in text and "| 40.5 |" in text
    ref = statistics.mean(base)
    gap = statistics.mean(swa) + 0.001 - ref  # 0.031: beyond both tolerances; the baseline's 4-bit cache is within
    assert gap > 0.02
    assert ("- The smallest cache within +0.01 nats of the baseline: baseline in the K/V form at 4 bits, 640 B/token at "
            "512 tokens") in text
    assert "- The smallest cache within +0.02 nats of the baseline: baseline in the K/V form at 4 bits" in text


def test_records_of_two_contexts_are_refused():
    records = [record("baseline", 0, 1.8, 256), record("baseline", 1, 1.8, 512)]
    with pytest.raises(SystemExit, match=r"error: the study's records mix contexts \(block_size \[256, 512\]\)"):
        report.report(records, Study("x", "", ""))


def test_loss_by_position_table(tmp_path):
    """Loss before the window and from it on, mean +- std over seeds; the delta from the window on against the
    baseline and the change of the gap past the window (per-seed differences), by Welch's formula. A config whose
    records lack loss_by_position (old records) has no row, and without any no section is written."""
    T, W = 8, 4
    base = [[3.0, 2.5, 2.2, 2.0, 1.9, 1.8, 1.7, 1.6], [3.1, 2.4, 2.3, 2.1, 1.8, 1.9, 1.6, 1.7],
            [2.9, 2.6, 2.1, None, 2.0, 1.7, 1.8, 1.5]]
    swa = [[3.0, 2.5, 2.2, 2.0, 2.1, 2.0, 2.2, 2.1], [3.0, 2.6, 2.2, 2.1, 2.2, 2.0, 2.1, 2.2],
           [3.1, 2.4, 2.3, 2.0, 2.0, 2.1, 2.3, 2.0]]
    records = ([record("baseline", s, 1.8 + s / 100, T, positions=c) for s, c in enumerate(base)]
               + [record("swa", s, 1.9 + s / 100, T, window=W, positions=c) for s, c in enumerate(swa)]
               + [record("mqa", s, 1.85 + s / 100, T) for s in range(3)])  # old records: no loss by position
    text = "\n".join(report.report(records, Study("synthetic", "", "")))
    mean = lambda c, lo, hi: statistics.mean(v for v in c[lo:hi] if v is not None)
    before = {n: [mean(c, 0, W) for c in cs] for n, cs in (("baseline", base), ("swa", swa))}
    after = {n: [mean(c, W, T) for c in cs] for n, cs in (("baseline", base), ("swa", swa))}
    assert "| config | window | seeds | loss 0-3 | loss 4-7 | delta 4-7 [95% CI] | change past the window [95% CI] |" in text
    line = row(text, "| swa | 4 | 3 |")
    change = welch_by_hand([a - b for a, b in zip(after["swa"], before["swa"])],
                           [a - b for a, b in zip(after["baseline"], before["baseline"])])
    assert line == (f"| swa | 4 | 3 | {statistics.mean(before['swa']):.4f} +- {statistics.stdev(before['swa']):.4f} | "
                    f"{statistics.mean(after['swa']):.4f} +- {statistics.stdev(after['swa']):.4f} | "
                    f"{ci(*welch_by_hand(after['swa'], after['baseline']))} | {ci(*change)} |")
    assert row(text, "| baseline | global | 3 |").endswith("| - | - |")
    assert not any(line.startswith("| mqa | global |") for line in text.splitlines())
    assert change[1] > 0 and "- Does swa lose what lies past its window? Its gap to the baseline from position 4 on, against before it: worse by" in text
    # a baseline from before the measure: the others' losses, no deltas, and it says so
    mixed = [record("baseline", s, 1.8 + s / 100, T) for s in range(3)] + records[3:6]
    text = "\n".join(report.report(mixed, Study("x", "", "")))
    assert "The baseline's records predate this measure" in text and row(text, "| swa | 4 | 3 |").endswith("| - | - |")
    # old records only: no section, and no plot
    old = [record("baseline", s, 1.8 + s / 100, T) for s in range(2)]
    assert "Loss by position" not in "\n".join(report.report(old, Study("x", "", "")))
    folder = study(tmp_path / "old", old)
    report.write_study(folder)
    assert not os.path.exists(os.path.join(folder, "loss_by_position.png"))
    folder = study(tmp_path / "new", records)
    report.write_study(folder)
    assert os.path.getsize(os.path.join(folder, "loss_by_position.png")) > 1000


def test_recall_by_distance_tables(tmp_path):
    """Accuracy by distance bucket (1-15, 16-31, 32-63, 64-127 at 128 tokens), mean over seeds with Student's
    interval; within and beyond each windowed config's window against the baseline on the same answers."""
    T = 128
    # {distance: [right, answers]}: the baseline gets everything right but a few far answers
    base = [{"4": [10, 10], "20": [9, 10], "40": [9, 10], "100": [8, 10]},
            {"4": [10, 10], "20": [10, 10], "40": [8, 10], "100": [9, 10]},
            {"4": [9, 10], "20": [10, 10], "40": [10, 10], "100": [10, 10]}]
    swa = [{"4": [10, 10], "20": [9, 10], "40": [3, 10], "100": [2, 10]},
           {"4": [10, 10], "20": [10, 10], "40": [2, 10], "100": [3, 10]},
           {"4": [10, 10], "20": [8, 10], "40": [4, 10], "100": [2, 10]}]
    records = ([record("baseline", s, 0.1, T, acc=0.9, distances=d) for s, d in enumerate(base)]
               + [record("swa", s, 0.5, T, window=32, acc=0.5, distances=d) for s, d in enumerate(swa)]
               + [record("mqa", s, 0.1, T, acc=0.9) for s in range(3)])  # old records: no recall by distance
    text = "\n".join(report.report(records, Study("synthetic", "config/recall_long.py", "")))
    assert "| config | window | seeds | d 1-15 | d 16-31 | d 32-63 | d 64-127 |" in text
    assert "(10, 10, 10, 10 answers in these buckets, per seed)" in text

    def cell(values):
        m = statistics.mean(values)
        half = student_t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        return f"{m:.4f} [{m - half:.4f}, {m + half:.4f}]"
    acc = lambda ds, d: [x[d][0] / x[d][1] for x in ds]
    assert row(text, "| swa | 32 | 3 |") == "| swa | 32 | 3 | " + " | ".join(
        cell(acc(swa, d)) if len(set(acc(swa, d))) > 1 else f"{acc(swa, d)[0]:.4f} [1.0000, 1.0000]"
        for d in ("4", "20", "40", "100")) + " |"
    assert not any(line.startswith("| mqa | global |") for line in text.splitlines())
    # within (d < 32) and beyond (d >= 32): pooled answers per seed
    pool = lambda ds, keys: [sum(x[k][0] for k in keys) / sum(x[k][1] for k in keys) for x in ds]
    within, beyond, ref = pool(swa, ("4", "20")), pool(swa, ("40", "100")), pool(base, ("40", "100"))
    ratio = statistics.mean(beyond) / statistics.mean(ref)
    assert row(text, "| swa | 32 | 3 | 0.9") == (f"| swa | 32 | 3 | {cell(within)} | {cell(beyond)} | {cell(ref)} | "
                                               f"{ratio:.3f} | {ci(*welch_by_hand(beyond, ref))} |")
    assert (f"- Does swa keep recall beyond its window of 32? Accuracy {statistics.mean(beyond):.4f} against the "
            f"baseline's {statistics.mean(ref):.4f} on the same answers ({ratio:.3f}x): worse by") in text
    folder = study(tmp_path / "recall_long", records)
    report.write_study(folder)
    assert os.path.getsize(os.path.join(folder, "recall_by_distance.png")) > 1000


def test_distance_buckets_split_at_every_window():
    assert report.distance_edges(128, []) == [1, 16, 32, 64, 128]
    assert report.distance_edges(128, [24]) == [1, 16, 24, 32, 64, 128]
    assert report.distance_edges(32, [8]) == [1, 8, 16, 32]


def test_contrast_of_two_groups_is_welch():
    a, b = [1.0, 1.2, 1.1, 1.4], [0.9, 1.0, 0.95]
    t, c = report.welch(a, b), report.contrast([(a, 1), (b, -1)])
    assert all(abs(t[k] - c[k]) < 1e-12 for k in ("diff", "lo", "hi", "p"))


def test_context_sweep(tmp_path):
    """Each config's delta against its own study's baseline at each context, its cache share there, and the
    change of its delta from the shortest to the longest context with the Welch-Satterthwaite interval; a study not
    made yet is absent, one without a baseline is named as left out."""
    losses = {  # context: {config: per-seed best losses}
        64: {"baseline": [1.90, 1.91, 1.89], "attn_first_half": [1.905, 1.915, 1.90], "mqa": [1.92, 1.90, 1.91]},
        256: {"baseline": [1.78, 1.79, 1.77], "attn_first_half": [1.82, 1.83, 1.815], "swa": [1.75, 1.76, 1.74]},
        512: {"baseline": [1.74, 1.75, 1.73], "attn_first_half": [1.80, 1.79, 1.81], "swa": [1.73, 1.72, 1.745]},
    }
    kv = {"baseline": {"kv": 2048, "input": 1024}, "attn_first_half": {"kv": 1024, "input": 512},
          "mqa": {"kv": 512}, "swa": None}
    folders = []
    for T, runs in losses.items():
        records = [record(n, s, v, T, window=32 if n == "swa" else None, tokens=T * 100,
                          kv=kv[n] or {"kv": 2048 * 32 / T, "input": 1024 * 32 / T})
                   for n, vals in runs.items() for s, v in enumerate(vals)]
        folders.append(study(tmp_path / f"ctx{T}", records))
    folders.append(study(tmp_path / "nobase", [record("swa", 0, 1.7, 1024, window=32)]))
    folders.append(str(tmp_path / "not_made_yet"))
    text = report.context_sweep_text(folders=folders)
    assert "not_made_yet" not in text and f"(left out: `{folders[3]}` (no baseline records yet))" in text
    assert "| config | 64 tokens | 256 tokens | 512 tokens |" in text
    base = lambda T: losses[T]["baseline"]
    cells = [f"{ci(*welch_by_hand(losses[T]['attn_first_half'], base(T)))} (3 vs 3)" for T in (64, 256, 512)]
    assert "| attn_first_half | " + " | ".join(cells) + " |" in text
    swa = [f"{ci(*welch_by_hand(losses[T]['swa'], base(T)))} (3 vs 3)" for T in (256, 512)]
    assert "| swa | - | " + " | ".join(swa) + " |" in text
    assert not any(line.startswith("| mqa |") for line in text.splitlines())  # one study only
    assert "| baseline: loss | " + " | ".join(f"{statistics.mean(base(T)):.4f} +- {statistics.stdev(base(T)):.4f} (3 seeds)"
                                              for T in (64, 256, 512)) + " |" in text
    # shares at each context: a window of 32 holds 1/8 of 256 tokens and 1/16 of 512
    assert "| swa | - | K/V 1/8, input 1/16 | K/V 1/16, input 1/32 |" in text
    assert "| attn_first_half | K/V 1/2, input 1/4 | K/V 1/2, input 1/4 | K/V 1/2, input 1/4 |" in text
    # the change of attn_first_half's delta from 64 to 512 tokens: four independent sets, Welch-Satterthwaite
    groups = [losses[512]["attn_first_half"], base(512), losses[64]["attn_first_half"], base(64)]
    signs = [1, -1, -1, 1]
    d = sum(c * statistics.mean(g) for g, c in zip(groups, signs))
    parts = [statistics.variance(g) / len(g) for g in groups]
    df = sum(parts) ** 2 / sum(p ** 2 / (len(g) - 1) for p, g in zip(parts, groups))
    half = student_t.ppf(0.975, df) * math.sqrt(sum(parts))
    assert d - half > 0
    line = row(text, "- attn_first_half:")
    assert line.startswith(f"- attn_first_half: {statistics.mean(losses[64]['attn_first_half']) - statistics.mean(base(64)):+.4f}"
                           f" at 64 tokens (K/V 1/2, input 1/4), ")
    assert f"its cost grows by {d:.4f} (95% CI [{d - half:+.4f}, {d + half:+.4f}]" in line
    assert row(text, "- swa:").startswith("- swa: ") and " at 256 tokens " in row(text, "- swa:")
    assert report.plot_context_sweep(str(tmp_path / "sweep.png"), folders=folders)
    assert os.path.getsize(tmp_path / "sweep.png") > 1000
    # two studies at one context: which one is the sweep's is not for report.py to guess
    with pytest.raises(SystemExit, match=r"error: the context sweep has two studies at one context \(.*ctx256, .*ctx256b\)"):
        report.context_sweep_text(folders=[folders[1], study(tmp_path / "ctx256b", [record("baseline", 0, 1.8, 256)])])
    # no study made yet: one line, no plot
    assert report.context_sweep_text(folders=[str(tmp_path / "none")]).startswith("No study of the context sweep")
    assert not report.plot_context_sweep(str(tmp_path / "none.png"), folders=[str(tmp_path / "none")])


def test_long_headline_keeps_recall(tmp_path, monkeypatch):
    """The long-context README headline: each row's bytes and loss at the study's context, its config's recall on
    the probe (beyond the window, and through the row's cache), and as the answer the smallest cache within the
    tolerance whose config keeps 0.95x the baseline's recall, not merely the smallest within it."""
    base, swa, lgl = [1.98, 1.99, 2.00], [1.75, 1.76, 1.77], [1.74, 1.75, 1.77]
    q = lambda form, bits, loss, nbytes, acc=None: dataclasses.replace(quant(form, bits, loss, nbytes), val_acc=acc)
    long = study(tmp_path / "long", (
        [record("baseline", s, v, 512, quant=[q("kv", 16, v, 2048), q("kv", 4, v, 640)]) for s, v in enumerate(base)]
        + [record("swa", s, v, 512, window=32, kv={"kv": 128.0, "input": 64.0},
                  quant=[q("kv", 16, v, 128.0), q("input", 4, v + 0.005, 22.0)]) for s, v in enumerate(swa)]
        + [record("local_global_last_mqa", s, v, 512, window=32, kv={"kv": 152.0},
                  quant=[q("kv", 16, v, 152.0), q("kv", 4, v + 0.003, 59.875)]) for s, v in enumerate(lgl)]))
    # the probe at 32 tokens, windows of 8: {distance: [right, answers]}; swa answers only what lies near
    near_far = lambda near, far: {"4": [near, 10], "12": [far, 10]}
    probe = study(tmp_path / "probe", (
        [record("baseline", s, 0.1, 32, acc=1.0, distances=near_far(10, 10 - s), quant=[q("kv", 16, 0.1, 128, 1.0)])
         for s in range(3)]
        + [record("swa", s, 1.0, 32, window=8, acc=0.3, distances=near_far(9, 2 + s),
                  quant=[q("kv", 16, 1.0, 32, 0.3), q("input", 4, 1.0, 8, 0.28)]) for s in range(3)]
        + [record("local_global_last_mqa", s, 0.1, 32, window=8, acc=1.0, distances=near_far(10, 10),
                  quant=[q("kv", 16, 0.1, 40, 1.0), q("kv", 4, 0.1, 20, 0.99)]) for s in range(2)]))
    monkeypatch.setattr(report, "HEADLINES", {long: (report.LONG_HEADLINE, probe)})
    text = report.headline_text(long)
    assert "| model | cache | B/token at 512 | x GPT-2's | loss | delta [95% CI] | recall beyond 8 | recall, this cache |" in text
    base_far = statistics.mean([1.0, 0.9, 0.8])
    assert row(text, "| a window of 32") == (f"| a window of 32 in every layer (`swa`, Mistral's pattern) | K/V, 16-bit | 128 "
                                            f"| 1/16 | {statistics.mean(swa):.4f} | {ci(*welch_by_hand(swa, base))} | "
                                            f"{statistics.mean([0.2, 0.3, 0.4]):.3f} | 0.300 |")
    lgl4 = [v + 0.003 for v in lgl]
    assert row(text, "| `local_global_last`, multi-query, 4-bit") == (
        f"| `local_global_last`, multi-query, 4-bit cache | K/V, 4-bit | 59.88 | 1/34.2 | {statistics.mean(lgl4):.4f} | "
        f"{ci(*welch_by_hand(lgl4, base))} | 1.000 | 0.990 |")
    assert "mean over 2-3 seeds" in text and "key groups of 32" in text
    kept = row(text, "- The smallest cache within +0.01 nats (and +0.02) of the baseline that keeps 0.95x its recall: ")
    assert kept.endswith(f"local_global_last_mqa in the K/V form at 4 bits: 59.88 B/token at 512 tokens, 1/34.2 of GPT-2's "
                         f"16-bit K/V cache; loss {statistics.mean(lgl4):.4f}, {ci(*welch_by_hand(lgl4, base))} against "
                         f"the baseline; recall beyond 8 tokens 1.000 against the baseline's {base_far:.3f} "
                         f"({1 / base_far:.2f}x), through this cache 0.990 against 1.000.")
    assert row(text, "- The smallest within +0.01 nats (and +0.02) whatever its recall: ").startswith(
        "- The smallest within +0.01 nats (and +0.02) whatever its recall: swa in the input form at 4 bits: 22 B/token")


def test_run_time_from_the_records():
    """A study's time per iteration: the median of its records' (a record with none, 0, left out), its range, and
    the minutes that makes of a run's iterations."""
    rs = [dataclasses.replace(record("baseline", s, 1.9, 512), ms_per_iter=ms, iters=2000)
          for s, ms in enumerate([300.0, 100.0, 0.0, 500.0])]
    assert report.run_time(rs) == (" Time: 300 ms per training iteration (median over 3 runs; 100-500 as the machine's "
                                   "load varied), about 10 minutes for a run's 2,000 iterations, evaluations aside.")
    assert report.run_time(rs[2:3]) == ""
    assert "(one run)" in report.run_time(rs[:1])


def test_longer_runs(tmp_path):
    """The longer runs: each config's delta against the baseline of its own length at both lengths, where it
    stands (ahead, behind, no difference) from its Welch interval, and the change of its delta from the shorter
    runs to the longer with the Welch-Satterthwaite interval; where the best loss fell and the final training loss
    come from the longer runs' records. Two studies at different contexts are refused in one line."""
    losses = {2000: {"baseline": [1.78, 1.79, 1.77], "swa": [1.74, 1.75, 1.745], "mqa": [1.80, 1.79, 1.81]},
              8000: {"baseline": [1.70, 1.71, 1.705], "swa": [1.70, 1.69, 1.71]}}
    best = {"baseline": 8000, "swa": 4000}  # the iteration of each longer run's best validation loss

    def run(n, s, v, its):
        hist = [{"iter": i, "train_loss": 2.0 - i / 1e4, "val_loss": v + (0 if i == best.get(n, its) else 0.1),
                 "val_acc": None} for i in range(0, its + 1, 2000)]
        return dataclasses.replace(record(n, s, v, 256, window=32 if n == "swa" else None), iters=its, history=hist,
                                   final_train_loss=1.5 - s / 100)

    folders = [study(tmp_path / f"its{its}", [run(n, s, v, its) for n, vals in runs.items() for s, v in enumerate(vals)])
               for its, runs in losses.items()]
    assert report.longer_runs_text(folders=[folders[0], str(tmp_path / "none")]).startswith(
        "The longer runs have no records at both lengths yet")
    text = report.longer_runs_text(folders=folders)
    assert "| config | 2000 its: loss | 2000 its: delta | 8000 its: loss | 8000 its: delta | best at | train |" in text
    b0, b1 = losses[2000]["baseline"], losses[8000]["baseline"]
    s0, s1 = losses[2000]["swa"], losses[8000]["swa"]
    sd = lambda v: f"{statistics.mean(v):.4f} +- {statistics.stdev(v):.4f} (3)"
    assert f"| baseline | {sd(b0)} | - | {sd(b1)} | - | 8000 | {statistics.mean([1.5, 1.49, 1.48]):.4f} |" in text
    assert (f"| swa | {sd(s0)} | {ci(*welch_by_hand(s0, b0))} | {sd(s1)} | {ci(*welch_by_hand(s1, b1))} | 4000 |"
            in text)
    assert not any(line.startswith("| mqa |") for line in text.splitlines())  # the shorter runs only
    d0, lo0, hi0 = welch_by_hand(s0, b0)
    d1, lo1, hi1 = welch_by_hand(s1, b1)
    assert hi0 < 0 and lo1 < 0 < hi1  # ahead at 2000, level at 8000
    groups, signs = [s1, b1, s0, b0], [1, -1, -1, 1]
    d = sum(c * statistics.mean(g) for g, c in zip(groups, signs))
    parts = [statistics.variance(g) / len(g) for g in groups]
    df = sum(parts) ** 2 / sum(p ** 2 / (len(g) - 1) for p, g in zip(parts, groups))
    half = student_t.ppf(0.975, df) * math.sqrt(sum(parts))
    assert d - half > 0  # the lead shrank
    assert row(text, "- swa:") == (f"- swa: at 2000 iterations ahead by {-d0:.4f}; at 8000, no difference detected "
                                   f"({d1:+.4f}). Its delta grows by {d:.4f} (95% CI [{d - half:+.4f}, {d + half:+.4f}], "
                                   f"Welch-Satterthwaite p={report.contrast([(g, c) for g, c in zip(groups, signs)])['p']:.2g}).")
    assert report.plot_longer_runs(str(tmp_path / "longer.png"), folders=folders)
    assert os.path.getsize(tmp_path / "longer.png") > 1000
    alone = study(tmp_path / "alone", [run("baseline", s, v, 8000) for s, v in enumerate(losses[8000]["baseline"])])
    assert report.longer_runs_text(folders=[folders[0], alone]).endswith("No config but the baseline has records at both "
                                                                       "lengths yet.\n")
    other = study(tmp_path / "ctx512", [dataclasses.replace(record("baseline", 0, 1.9, 512), iters=8000)])
    with pytest.raises(SystemExit, match=r"^error: the longer runs compare one context at two lengths; .*its2000 is 256 "
                                         r"tokens, 2000 iterations and .*ctx512 is 512 tokens, 8000 iterations$"):
        report.longer_runs_text(folders=[folders[0], other])
