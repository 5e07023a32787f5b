"""ablate.py and report.py: a tiny study keeps one record per run in its results folder, its report gives
Welch's interval as computed by hand, a second invocation trains nothing, and the tables of docs/results.md
and the README's headline table are the report of results/."""
import glob
import json
import os
import re
import shutil
import statistics

import pytest

import report
from conftest import ROOT, TINY, run

FIELDS = {"config", "seed", "command", "model", "machine", "best_val_loss", "final_val_loss", "final_train_loss",
          "params", "tokens_seen", "ms_per_iter", "kv_bytes_per_token", "lens_gates", "route_gates", "half_pruned",
          "attention_contribution", "history", "pruning"}


@pytest.mark.slow
def test_tiny_ablation_study(char_data, tmp_path):
    res, out = tmp_path / "results", tmp_path / "out"
    train_args = " ".join(TINY[1:] + ["--max_iters=12", "--eval_interval=6"])
    args = ["ablate.py", "--configs=baseline,route_gate", "--seeds=3", f"--results={res}", f"--out_root={out}",
            f"--train_args={train_args}", "--eval_batches=2", "--eval_batch_size=4", "--kv_group=8"]
    p = run(*args)
    assert "[run 2/6] route_gate seed 0: to train" in p.stdout  # seed by seed: a study stopped early is balanced
    records = json.loads((res / "results.json").read_text())
    assert len(records) == 6 and all(FIELDS <= set(r) for r in records)
    assert sorted(os.listdir(res / "baseline")) == ["seed0.json", "seed1.json", "seed2.json"]
    assert not any(f.endswith(".pt") for _, _, fs in os.walk(res) for f in fs)  # checkpoints stay out
    r0 = json.loads((res / "route_gate" / "seed1.json").read_text())
    assert r0["command"].startswith("python train.py config/ablation_route_gate.py config/cpu.py --n_layer=2")
    assert "--seed=1338" in r0["command"] and r0["model"]["use_route_gate"] is True
    assert r0["kv_bytes_per_token"] == {"kv": 2 * 2 * 32 * 2 * 3 // 2, "input": 2 * 32 * 2}  # 16-bit, rec adds Q
    study = json.loads((res / "study.json").read_text())
    assert study["train_args"] == train_args and study["commands"] == [
        "python ablate.py " + " ".join(f"'{a}'" if " " in a else a for a in args[1:])]
    assert {r["tokens_seen"] for r in records} == {12 * 4 * 32}  # the same budget for every run
    assert all([h["iter"] for h in r["history"]] == [0, 6, 12] for r in records)  # every evaluation, kept

    text = (res / "report.md").read_text()
    for name in ("baseline", "route_gate"):
        losses = [r["best_val_loss"] for r in records if r["config"] == name]
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | 3 |"))
        assert f"{statistics.mean(losses):.4f} +- {statistics.stdev(losses):.4f}" in row
    # the stated test: Welch's interval for route_gate - baseline, computed by hand
    from scipy.stats import t as student_t
    a = [r["best_val_loss"] for r in records if r["config"] == "route_gate"]
    b = [r["best_val_loss"] for r in records if r["config"] == "baseline"]
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = student_t.ppf(0.975, df) * (va + vb) ** 0.5
    diff = statistics.mean(a) - statistics.mean(b)
    p_value = 2 * student_t.sf(abs(diff) / (va + vb) ** 0.5, df)
    row = next(line for line in text.splitlines() if line.startswith("| route_gate |"))
    assert f"{diff:+.4f} [{diff - half:+.4f}, {diff + half:+.4f}] | {p_value:.2g} |" in row  # one config: Holm = p
    verdict = "no difference detected" if diff - half < 0 < diff + half else "better" if diff < 0 else "worse"
    assert f"route_gate: loss {verdict}" in text and "Welch t, n=3 vs 3" in text
    assert "reciprocity" not in text.split("Answers:")[1]  # no sentence about a config that did not run
    assert (res / "loss_vs_kv.png").stat().st_size > 1000

    again = run(*args)  # every record present: nothing is trained
    assert again.stdout.count("done, skipped") == 6 and "tokens per iteration" not in again.stdout
    assert json.loads((res / "results.json").read_text()) == records
    os.remove(res / "route_gate" / "seed2.json")  # as if killed after its last checkpoint
    again = run(*args)
    assert again.stdout.count("done, skipped") == 5 and "route_gate seed 2: resuming" in again.stdout
    assert "step 0:" not in again.stdout
    assert json.loads((res / "route_gate" / "seed2.json").read_text())["best_val_loss"] == records[-1]["best_val_loss"]
    # a study is one overlay and one set of train.py arguments
    p = run(*args[:-3], "--train_args=--max_iters=13", check=False)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith(f"error: {res} is a study with train_args=")


def test_dry_run_lists_runs(tmp_path):
    """--dry_run lists each run and what the study would do with it, writing nothing: a run whose record
    exists is skipped, and the line names that record."""
    record = tmp_path / "r" / "lens" / "seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    p = run("ablate.py", "--configs=lens", "--seeds=2", "--dry_run=True", f"--results={tmp_path}/r",
            f"--out_root={tmp_path}/o")
    assert "2 configs x 2 seeds = 4 runs" in p.stdout and p.stdout.count("to train") == 3
    assert f"[run 2/4] lens seed 0: done, skipped (its record {record} exists)\n" in p.stdout
    assert f"[run 3/4] baseline seed 1: to train ({tmp_path}/o/baseline/seed1)\n" in p.stdout
    assert sorted(os.listdir(tmp_path)) == ["r"] and os.listdir(tmp_path / "r") == ["lens"]


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_to_ablate_stops_its_run(char_data, tmp_path, signame):
    """A stop signal sent to ablate.py alone (Ctrl-C, which the terminal now sends to it only; `kill PID`; a
    scheduler) reaches the training run once: it saves its checkpoint and stops, and ablate.py, having waited for
    it, exits 128 + the signal's number with one line saying how the study goes on; no record is written."""
    import signal
    import subprocess
    import sys

    import torch
    res, out = tmp_path / "results", tmp_path / "out"
    args = ["ablate.py", "--configs=baseline", "--seeds=1", f"--results={res}", f"--out_root={out}",
            "--train_args=" + " ".join(TINY[1:] + ["--max_iters=100000", "--log_interval=1"])]
    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in p.stdout:  # train.py writes here too: signal once it is training
        seen.append(line)
        if line.startswith("iter 2:"):
            break
    sig = getattr(signal, signame)
    p.send_signal(sig)
    rest, err = p.communicate(timeout=600)
    assert p.returncode == 128 + sig, (p.returncode, "".join(seen) + rest, err)
    assert err.strip().splitlines()[-1] == \
        "ablate: interrupted in baseline seed 0; the same command goes on from its checkpoint"
    ck = torch.load(out / "baseline" / "seed0" / "ckpt.pt", weights_only=True)
    assert ck["iter_num"] >= 2
    assert f"interrupted ({signame}): saved iteration {ck['iter_num']} to " in rest + err
    assert not (res / "baseline").exists()


def test_docs_tables_are_the_reports_of_results():
    """Every table of docs/results.md is what report.py prints from the records in results/ (the context sweep
    and the longer runs too), and the README's headline tables are what report.py draws from results/cpu and results/cpu_long."""
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        blocks = report.report_blocks(f.read())
    studies = {os.path.relpath(os.path.dirname(p), ROOT) for p in glob.glob(os.path.join(ROOT, "results", "*", "study.json"))}
    assert set(blocks) == studies and "results/cpu" in studies  # every study in results/ has its block
    for study, text in blocks.items():
        assert text == report.block_text(study), f"docs/results.md's {study} table is stale: run python report.py"
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        sweep = [m.group(3) for m in report.SWEEP_BLOCK.finditer(f.read())]
    assert sweep == [report.context_sweep_text()], "docs/results.md's context sweep is stale: run python report.py"
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        longer = [m.group(3) for m in report.LONGER_BLOCK.finditer(f.read())]
    assert longer == [report.longer_runs_text()], "docs/results.md's longer runs are stale: run python report.py"
    with open(os.path.join(ROOT, "README.md")) as f:
        headline = report.headline_blocks(f.read())
    assert list(headline) == list(report.HEADLINES)  # results/cpu (64 tokens) and results/cpu_long (512)
    for study, text in headline.items():
        assert text == report.headline_text(study), f"README's {study} headline is stale: run python report.py"
    assert headline["results/cpu"].count("\n| ") == len(report.HEADLINE) + 1  # every row drawn, and the header


def test_report_errors(tmp_path):
    p = run("report.py", f"--studies={tmp_path}", "--docs=False", check=False)
    assert p.returncode == 1 and p.stderr.strip() == f"error: {tmp_path} is not a study folder (no study.json)"
    # a damaged record (a truncated copy): one line that names it and says what to do
    study = tmp_path / "study"
    shutil.copytree(os.path.join(ROOT, "results", "cpu"), study)
    damaged = study / "baseline" / "seed1.json"
    damaged.write_text(damaged.read_text()[:300])
    p = run("report.py", f"--studies={study}", "--docs=False", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert re.fullmatch(rf"error: {re.escape(str(damaged))} is not a readable record \(JSONDecodeError: .*\); delete it "
                        r"and run ablate\.py again, which trains that run again", p.stderr.strip()), p.stderr


def test_help_lists_settings_only():
    """Module constants (upper case) are not settings: --help leaves them out, and --ROOT is unknown."""
    p = run("report.py", "--help")
    assert "--studies=" in p.stdout and "--ROOT" not in p.stdout and "--README" not in p.stdout
    p = run("report.py", "--ROOT=/tmp", check=False)
    assert p.returncode == 1 and p.stderr.strip().startswith("error: unknown config key 'ROOT'")


def test_run_records_are_typed_and_old_ones_load(tmp_path):
    """Every committed record loads as a RunRecord and writes back to the same fields; a record from before
    attention placement gets every layer as its attention layers; a retrained run is the same run when its
    loss agrees to 1e-3, or, on an accuracy-scored set, its accuracy to 0.005; a foreign JSON is one line."""
    import dataclasses
    from records import PruningPoint, RunRecord, load_run, same_run, write_record
    paths = glob.glob(os.path.join(ROOT, "results", "*", "*", "seed*.json"))
    assert len(paths) >= 168
    for path in paths:
        r = load_run(path)
        assert isinstance(r.all_pruned, PruningPoint) and all(isinstance(p, PruningPoint) for p in r.pruning)
        assert r.attn_layers == (json.load(open(path)).get("attn_layers") or list(range(r.model["n_layer"])))
    r = load_run(paths[0])
    write_record(tmp_path / "r.json", r)
    assert load_run(str(tmp_path / "r.json")) == r
    near = dataclasses.replace(r, best_val_loss=r.best_val_loss + 9e-4)
    far = dataclasses.replace(r, best_val_loss=r.best_val_loss + 2e-3)
    assert same_run(near, r) and not same_run(dataclasses.replace(far, eval_val_acc=None), r)
    scored = dataclasses.replace(r, eval_val_acc=1.0)
    assert same_run(dataclasses.replace(far, eval_val_acc=0.996), scored)
    assert not same_run(dataclasses.replace(far, eval_val_acc=0.99), scored)
    (tmp_path / "bad.json").write_text('{"config": "x"}')
    with pytest.raises(SystemExit, match=r"bad.json is not a run record \(unknown \[\], missing \["):
        load_run(str(tmp_path / "bad.json"))
    assert RunRecord.__dataclass_fields__.keys() >= FIELDS
