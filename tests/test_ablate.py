"""ablate.py: a tiny study writes results.json, a report whose numbers are the JSON's, and a plot;
a second invocation skips what is finished and resumes what is not."""
import json
import os
import statistics

from conftest import TINY, run

FIELDS = {"config", "seed", "best_val_loss", "final_val_loss", "final_train_loss", "params", "tokens_seen",
          "ms_per_iter", "kv_bytes_per_token", "lens_gates", "route_gates", "half_pruned", "attention_contribution",
          "history", "pruning"}


def test_tiny_ablation_study(char_data, tmp_path):
    train_args = " ".join(TINY[1:] + ["--max_iters=12", "--eval_interval=6"])
    args = ["ablate.py", "--configs=baseline,route_gate", "--seeds=2", f"--out_root={tmp_path}",
            f"--train_args={train_args}", "--eval_batches=2", "--eval_batch_size=4"]
    p = run(*args)
    assert "[run 4/4] route_gate seed 1: to train" in p.stdout
    records = json.loads((tmp_path / "results.json").read_text())
    assert len(records) == 4 and all(FIELDS <= set(r) for r in records)
    assert {r["tokens_seen"] for r in records} == {12 * 4 * 32}  # the same budget for every run
    assert all([h["iter"] for h in r["history"]] == [0, 6, 12] for r in records)  # every evaluation, kept
    gated = [r for r in records if r["config"] == "route_gate"]
    assert all(len(r["route_gates"]) == 2 and set(r["half_pruned"]) == {"route_gate", "contribution"} for r in gated)
    report = (tmp_path / "report.md").read_text()
    for name in ("baseline", "route_gate"):
        losses = [r["best_val_loss"] for r in records if r["config"] == name]
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert f"{statistics.mean(losses):.4f} +- {statistics.stdev(losses):.4f}" in row
    # the stated test: Welch's interval for route_gate - baseline, computed by hand
    from scipy.stats import t as student_t
    a = [r["best_val_loss"] for r in records if r["config"] == "route_gate"]
    b = [r["best_val_loss"] for r in records if r["config"] == "baseline"]
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = student_t.ppf(0.975, df) * (va + vb) ** 0.5
    diff = statistics.mean(a) - statistics.mean(b)
    row = next(line for line in report.splitlines() if line.startswith("| route_gate |"))
    assert f"{diff:+.4f} [{diff - half:+.4f}, {diff + half:+.4f}]" in row
    assert "Welch t, n=2 vs 2" in report
    kv = {r["config"]: r["kv_bytes_per_token"] for r in records}
    assert f"| {kv['route_gate']:,} | {kv['route_gate'] / kv['baseline']:.2f} |" in report
    assert "## Answers" in report and "KV bytes per token in the K/V form, against the baseline: route_gate" in report
    assert "reciprocity" not in report.split("## Answers")[1]  # no sentence about a config that did not run
    assert (tmp_path / "loss_vs_kv.png").stat().st_size > 1000

    os.remove(tmp_path / "route_gate" / "seed1" / "result.json")  # as if killed after its last checkpoint
    again = run(*args)
    assert again.stdout.count("done, skipped") == 3 and "route_gate seed 1: resuming" in again.stdout
    assert "step 0:" not in again.stdout
    assert json.loads((tmp_path / "results.json").read_text())[3]["best_val_loss"] == records[3]["best_val_loss"]


def test_dry_run_lists_runs(tmp_path):
    p = run("ablate.py", "--configs=lens", "--seeds=2", "--dry_run=True", f"--out_root={tmp_path}")
    assert "2 configs x 2 seeds = 4 runs" in p.stdout and p.stdout.count("to train") == 4
    assert not os.listdir(tmp_path)
