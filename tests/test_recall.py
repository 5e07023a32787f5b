"""The MQAR recall probe: the generated data, the loader's ignored targets and sequence-aligned
windows, and the probe itself: a baseline at config/recall.py's size learns the lookup (> 0.9
accuracy, where knowing only which values are in the sequence gives 0.25) within 1,000 steps on a
tiny variant, and with its attention removed from every layer it is at chance."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import DATA, run
from evaluate import load_split, val_batches

# a tiny variant of the task: 16 keys, 16 values, 4 pairs and 4 distinct queries in 32 tokens
TINY_TASK = ["--vocab_size=33", "--num_pairs=4", "--num_queries=4", "--distinct_queries=1", "--seq_len=32",
             "--train_seqs=20000", "--val_seqs=500"]
NAME = "recall_tiny"
# what the baseline learns from: 12 queries drawn with replacement, as config/recall.py's set (three
# times the answers per sequence of TINY_TASK, and no answering the last query by elimination)
LEARN_TASK = ["--vocab_size=33", "--num_pairs=4", "--num_queries=12", "--seq_len=32", "--train_seqs=20000",
              "--val_seqs=500"]
LEARN = "recall_tiny_rep"
STEPS = 1000


@pytest.fixture(scope="module")
def recall_data():
    run("data/recall/prepare.py", *TINY_TASK, f"--out_dir={os.path.join(DATA, NAME)}")
    return os.path.join(DATA, NAME)


@pytest.fixture(scope="module")
def learn_data():
    run("data/recall/prepare.py", *LEARN_TASK, f"--out_dir={os.path.join(DATA, LEARN)}")
    return os.path.join(DATA, LEARN)


def read(d, split):
    tokens = np.fromfile(os.path.join(d, f"{split}.bin"), dtype=np.uint16).astype(np.int64)
    mask = np.fromfile(os.path.join(d, f"{split}_mask.bin"), dtype=np.uint8)
    return tokens, mask


def test_sequences_are_mqar(recall_data):
    meta = pickle.load(open(os.path.join(recall_data, "meta.pkl"), "rb"))
    assert (meta["vocab_size"], meta["seq_len"], meta["num_keys"], meta["num_values"]) == (33, 32, 16, 16)
    assert meta["chance_accuracy"] == 1 / 16 and meta["bag_accuracy"] == 1 / 4 and meta["mask"] is True
    tokens, mask = read(recall_data, "val")
    assert len(tokens) == len(mask) == 500 * 32 + 1
    seqs, masks = tokens[:-1].reshape(500, 32), mask[:-1].reshape(500, 32)
    for seq, m in zip(seqs, masks):
        keys, values = seq[0:8:2], seq[1:8:2]
        assert len(set(keys)) == 4 and len(set(values)) == 4
        assert keys.min() >= 1 and keys.max() <= 16 and values.min() >= 17 and values.max() <= 32  # disjoint
        pairs = dict(zip(keys, values))
        answers = np.flatnonzero(m)
        assert len(answers) == 4 and answers.min() >= 9  # targets only at the query answers
        for a in answers:  # each answer is the value of the key just before it
            assert seq[a] == pairs[seq[a - 1]]
        assert len({seq[a - 1] for a in answers}) == 4  # distinct keys asked for
        rest = np.ones(32, bool)
        rest[:8] = False
        rest[answers] = rest[answers - 1] = False
        assert (seq[rest] == 0).all()  # filler elsewhere
    train, _ = read(recall_data, "train")
    assert not np.array_equal(train[:32 * 500 + 1], tokens)  # the splits are different draws


def test_prepare_is_deterministic_and_checks_its_options(recall_data, tmp_path):
    run("data/recall/prepare.py", *TINY_TASK, f"--out_dir={tmp_path}")
    for split in ("train", "val"):
        for a, b in zip(read(recall_data, split), read(str(tmp_path), split)):
            assert np.array_equal(a, b)
    for bad, msg in [("--num_queries=5", "--num_queries=5 must be 1 .. num_pairs=4 with --distinct_queries=1"),
                     ("--seq_len=14", "--seq_len=14 is too short for 4 pairs and 4 queries (needs 16)"),
                     ("--num_pairs=17", "--num_pairs=17 must be 1 .. 16")]:
        p = run("data/recall/prepare.py", *TINY_TASK, bad, f"--out_dir={tmp_path}", check=False)
        assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith(f"error: {msg}")


def test_queries_with_replacement(tmp_path):
    run("data/recall/prepare.py", "--num_pairs=4", "--num_queries=12", "--seq_len=32", "--train_seqs=10",
        "--val_seqs=200", f"--out_dir={tmp_path}")
    tokens, mask = read(str(tmp_path), "val")
    seqs, masks = tokens[:-1].reshape(200, 32), mask[:-1].reshape(200, 32)
    repeated = 0
    for seq, m in zip(seqs, masks):
        pairs = dict(zip(seq[0:8:2], seq[1:8:2]))
        answers = np.flatnonzero(m)
        assert len(answers) == 12 and all(seq[a] == pairs[seq[a - 1]] for a in answers)
        repeated += len({seq[a - 1] for a in answers}) < 12
    assert repeated == 200  # 12 queries of 4 keys: keys come back, so the last ones cannot be guessed by elimination


def test_loader_windows_start_at_sequences_and_ignore_all_but_answers(recall_data):
    for block in (32, 64):  # one sequence per window, or two whole ones
        x, y = torch.cat([b[0] for b in val_batches(NAME, block, 8, 16, "cpu")]), \
            torch.cat([b[1] for b in val_batches(NAME, block, 8, 16, "cpu")])
        assert ((x[:, 0] >= 1) & (x[:, 0] <= 16)).all()  # every window starts with a sequence's first key
        scored = y >= 0
        assert (scored.sum(1) == 4 * block // 32).all()
        assert ((y[scored] >= 17) & (y[scored] <= 32)).all()  # the answers are values
    tokens, mask = read(recall_data, "val")
    os.remove(os.path.join(recall_data, "val_mask.bin"))  # a mask file gone missing is an error, not "no mask"
    try:
        with pytest.raises(SystemExit, match="val_mask.bin is missing or does not match"):
            load_split(NAME, "val")
    finally:
        mask.tofile(os.path.join(recall_data, "val_mask.bin"))


@pytest.mark.slow
def test_baseline_learns_recall_and_is_at_chance_without_attention(learn_data, tmp_path):
    out = tmp_path / "out"
    p = run("train.py", "config/ablation_baseline.py", "config/recall.py", f"--dataset={LEARN}",
            f"--max_iters={STEPS}", f"--lr_decay_iters={STEPS}", "--eval_interval=250", f"--out_dir={out}")
    assert "chance accuracy 0.0625" in p.stdout
    accs = [float(line.split("val acc ")[1].split(",")[0]) for line in p.stdout.splitlines()
            if line.startswith("step ")]
    assert len(accs) == STEPS // 250 + 1 and accs[0] < 0.15
    # chance is 1/16; knowing which values are in the sequence gives 1/4 (the plateau before the lookup)
    assert accs[-1] > 0.9, p.stdout
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert round(ck["val_acc"], 4) == accs[-1] and ck["model_args"]["tie_embeddings"] is False
    p = run("sample.py", f"--out_dir={out}", check=False)  # token ids, no text: a clear error
    assert p.returncode == 1 and "no text vocabulary" in p.stderr.strip().splitlines()[-1]
    p = run("train.py", "config/ablation_baseline.py", "config/recall.py", f"--dataset={LEARN}", "--block_size=16",
            f"--out_dir={tmp_path / 'short'}", check=False)
    assert p.returncode == 1 and "block_size=16 is shorter than the sequences" in p.stderr.strip().splitlines()[-1]

    # the pruning curve: attention removed from 0, 1, ..., 4 layers
    js = tmp_path / "kv.json"
    p = run("kv_cache_bench.py", "--configs=", f"--ckpt={out}/ckpt.pt", "--eval_batches=8", "--eval_batch_size=32",
            f"--json={js}", "--device=cpu", "--dtype=float32")
    assert "recall acc" in p.stdout
    (points,) = [c["points"] for c in json.loads(js.read_text())["pruning"]]
    curve = [p for p in points if p["ranking"] == "contribution"]
    assert [len(p["layers"]) for p in curve] == [0, 1, 2, 3, 4]
    assert curve[0]["val_acc"] > 0.9
    none = curve[-1]
    assert none["kv_bytes_per_token"] == {"kv": 0, "input": 0}
    assert none["val_acc"] < 0.12, none  # at chance (1/16 = 0.0625 over 3,072 answers): it cannot see the pairs
    assert none["val_loss"] > np.log(16) - 0.3


def test_ablation_report_has_recall_accuracy(recall_data, tmp_path):
    train_args = f"--dataset={NAME} --n_layer=2 --n_embd=32 --max_iters=20 --eval_interval=10 --eval_iters=2"
    run("ablate.py", "--configs=baseline,mqa", "--overlay=config/recall.py", f"--results={tmp_path}",
        f"--out_root={tmp_path}/out", f"--train_args={train_args}", "--eval_batches=2", "--eval_batch_size=8",
        "--kv_group=8")
    records = json.loads((tmp_path / "results.json").read_text())
    for r in records:
        assert 0 <= r["eval_val_acc"] <= 1 and r["chance_accuracy"] == 1 / 16
        assert r["all_pruned"]["layers"] == [0, 1] and set(r["all_pruned"]["kv_bytes_per_token"].values()) == {0}
        assert r["half_pruned"]["contribution"]["val_acc"] is not None
        # the whole model, and without the greedy half of its attention, through its cache at 16, 8 and 4 bits:
        # at 16 bits, the loss and accuracy of a forward pass on the same batches (the pruning curve's)
        half = r["half_pruned"]["greedy"]
        q = {(p["form"], p["kv_bits"], tuple(p["layers"])): p for p in r["quant"]}
        forms, cut = ("kv", "input"), tuple(half["layers"])
        assert len(cut) == 1 and set(q) == {(f, b, k) for f in forms for b in (16, 8, 4) for k in ((), cut)}
        assert all(abs(q[f, 16, ()]["val_loss"] - r["eval_val_loss"]) < 1e-4 for f in forms)
        assert all(q[f, 16, ()]["val_acc"] == r["eval_val_acc"] for f in forms)
        assert all(abs(q[f, 16, cut]["val_loss"] - half["val_loss"]) < 1e-4 for f in forms)
        assert all(q[f, b, cut]["kv_bytes_per_token"] == q[f, b, ()]["kv_bytes_per_token"] / 2
                   for f in forms for b in (16, 8, 4))
    report = (tmp_path / "report.md").read_text()
    assert "The Pareto of every route" in report and "The smallest cache within 0.01 accuracy" in report
    assert "| baseline, 1 layers pruned | K/V |" in report
    assert "recall acc" in report and "chance 0.0625" in report
    for r in records:
        row = next(line for line in report.splitlines() if line.startswith(f"| {r['config']} |"))
        assert f"| {r['eval_val_acc']:.4f} +- n/a |" in row and row.endswith(f"| {r['all_pruned']['val_acc']:.4f} |")
    # iterations to learn the lookup: one row per config, from each run's evaluation history
    assert "accuracy reached 0.9 (evaluated every 10 iterations)" in report
    for r in records:
        learned = next((h["iter"] for h in r["history"] if h["val_acc"] >= 0.9), None)
        row = f"| {r['config']} | off | {0 if learned is None else 1} of 1 | {'n/a' if learned is None else learned} |"
        assert row in report
    assert "Does discoverability delay or block learning the lookup? not tested" in report
    assert (tmp_path / "loss_vs_kv.png").stat().st_size > 1000
