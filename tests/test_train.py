"""train.py end to end: every ablation config trains, resume is exact, saves are atomic, bad
settings are one-line errors, DDP on two CPU processes matches one process, wandb offline works."""
import glob
import os
import re
import shlex

import pytest
import torch

from checkpoint import load_checkpoint, save_checkpoint
from conftest import DATA, ROOT, TINY, run, run_many

ABLATIONS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "config", "ablation_*.py")))


def val_losses(stdout):
    """The validation loss of each evaluation a run logged."""
    return [float(v) for v in re.findall(r"^step \d+: train loss [\d.]+, val loss (\d+\.\d+)", stdout, flags=re.M)]


def test_every_ablation_config_has_a_first_line_comment():
    assert len(ABLATIONS) == 31
    for name in ABLATIONS:
        with open(os.path.join(ROOT, "config", name)) as f:
            assert f.readline().startswith("# "), name


# four configs that between them switch on every mechanism run in the quick suite, the rest in the slow one
QUICK = ("ablation_baseline.py", "ablation_full.py", "ablation_attn_budget_half.py", "ablation_cla.py",
         "ablation_local_global.py")


def window_args(name):
    """A windowed config's window (32) is TINY's whole block_size: at TINY scale it gets 8; one global layer in 4
    needs 4 layers to have one (with CLA over the 3 local layers), else 1 in 2."""
    with open(os.path.join(ROOT, "config", name)) as f:
        text = f.read()
    if "attn_window" not in text:
        return []
    if "attn_global_every" not in text:
        return ["--attn_window=8"]
    return ["--attn_window=8"] + (["--n_layer=4"] if "kv_share" in text else ["--attn_global_every=2"])


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in ABLATIONS])
def test_ablation_trains_and_loss_falls(name, char_data, tmp_path):
    p = run("train.py", f"config/{name}", *TINY, *window_args(name), "--max_iters=40", "--eval_interval=40",
            "--learning_rate=3e-3", f"--out_dir={tmp_path}")
    losses = val_losses(p.stdout)
    assert len(losses) == 2 and losses[1] < losses[0] - 0.3, p.stdout
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["iter_num"] == 40 and ckpt["config"]["max_iters"] == 40


def test_resume_is_exact(char_data, tmp_path):
    """A run made in three parts ends where a straight run ends, bit for bit: resumed once with its whole
    command, then, as in nanoGPT, from --out_dir alone (every other setting is the checkpoint's), each time
    extended by a larger max_iters."""
    # a run stopped early and extended later keeps one schedule: set it explicitly (or stop with Ctrl-C)
    common = ["config/ablation_full.py", *TINY, "--dropout=0.1", "--eval_interval=5", "--always_save_checkpoint=True",
              "--lr_decay_iters=20", "--route_anneal_start=4", "--route_anneal_end=16"]
    split = tmp_path / "split"
    run("train.py", *common, "--max_iters=20", f"--out_dir={tmp_path / 'straight'}")
    run("train.py", *common, "--max_iters=10", f"--out_dir={split}")
    # the time kept over the parts: marked in the first part's checkpoint, it must reach the last one
    ck = load_checkpoint(str(split / "ckpt.pt"))
    assert ck["timing"][1] == 8  # iterations 0-9 less the evaluations' 0 and 5
    save_checkpoint({**ck, "timing": [100.0, 8], "wall_s": 1e6}, str(split / "ckpt.pt"))
    p = run("train.py", *common, "--max_iters=15", "--init_from=resume", f"--out_dir={split}")
    assert f"resuming {split} from iteration 10" in p.stdout and "step 10:" in p.stdout and "step 0:" not in p.stdout
    p = run("train.py", f"--out_dir={split}", "--init_from=resume", "--max_iters=20")
    assert f"resuming {split} from iteration 15" in p.stdout and "step 15:" in p.stdout and "step 10:" not in p.stdout
    a = load_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))
    b = load_checkpoint(str(split / "ckpt.pt"))
    assert a["iter_num"] == b["iter_num"] == 20
    assert a["timing"][1] == b["timing"][1] == 16 and b["timing"][0] > 100 and b["wall_s"] > 1e6
    assert b["ms_per_iter"] == 1000 * b["timing"][0] / 16
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["iter"] for h in a["history"]] == [0, 5, 10, 15, 20] and a["history"] == b["history"]  # evals kept
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), i


def test_a_killed_save_loses_nothing(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    old = {"model": {"w": torch.ones(3)}, "model_args": {}, "iter_num": 1, "best_val_loss": 2.0, "config": {}}
    save_checkpoint(old, path)

    def dies_halfway(obj, f):  # the process is killed after writing part of the file
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**old, "iter_num": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iter_num"] == 1  # the previous checkpoint is intact


@pytest.mark.slow
def test_resume_after_a_killed_save_continues(char_data, tmp_path):
    schedule = ["--lr_decay_iters=20", "--route_anneal_start=4", "--route_anneal_end=16"]  # one for both parts
    run("train.py", "config/ablation_lens.py", *TINY, "--max_iters=10", "--eval_interval=10", *schedule,
        f"--out_dir={tmp_path}")
    with open(tmp_path / "ckpt.pt.tmp", "wb") as f:  # the leftovers of a save that was killed
        f.write(b"garbage")
    p = run("train.py", "config/ablation_lens.py", *TINY, "--max_iters=20", "--eval_interval=10", *schedule,
            "--init_from=resume", f"--out_dir={tmp_path}")
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["iter_num"] == 20, p.stdout


CONFIG_ERRORS = [  # (train.py's arguments, what its one error line says)
    (["--n_layers=2"], "unknown config key 'n_layers' (did you mean 'n_layer'?)"),
    (["--max_iters=ten"], "config key 'max_iters' wants an int, got 'ten'"),
    (["--use_reciprocity=1"], "config key 'use_reciprocity' wants a bool"),
    (["config/nope.py"], "config file config/nope.py not found"),
    (["config/ablation_ful.py"], "config file config/ablation_ful.py not found (did you mean config/ablation_full.py, "),
    (["configs/cpu.py"], "config file configs/cpu.py not found (did you mean config/cpu.py"),
    (["--dataset=nope"], f"{DATA}/nope/train.bin not found; prepare it with: python data/nope/prepare.py "
                         f"--out_dir={DATA}/nope"),
    (["--n_kv_head=4", "--n_head=6"], "n_kv_head=4 must divide n_head=6"),
    (["--init_from=resume", "--out_dir=/nonexistent/x"], "no checkpoint at /nonexistent/x/ckpt.pt"),
    (["--attn_layers=(0,0)"], "bad model settings: attn_layers=(0, 0) must name distinct layers in [0, 6)"),
    (["--attn_budget=1.5"], "bad model settings: attn_budget must be in (0, 1], got 1.5"),
    (["--mlp_activation=relu"], "bad model settings: mlp_activation must be 'tanh' or 'exact', got 'relu'"),
]


def test_configuration_errors_are_one_line(char_data, tmp_path):
    bad = tmp_path / "bad.py"  # a config file that fails, and one with a typo
    bad.write_text("n_layer = 1 / 0\n")
    typo = tmp_path / "typo.py"
    typo.write_text("learning_rte = 1e-3\n")
    cases = [(["--out_dir=" + str(tmp_path / str(i)), *args, "--device=cpu"], message)
             for i, (args, message) in enumerate(CONFIG_ERRORS)]
    cases += [([str(bad)], f"config file {bad} failed: ZeroDivisionError: division by zero"),
              ([str(typo)], "unknown config key 'learning_rte' (did you mean 'learning_rate'?)")]
    # an out_dir that cannot be written is checked before anything else: the missing dataset is never reached
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases += [(["--dataset=nope", f"--out_dir={blocker / 'out'}"], f"out_dir={blocker / 'out'} cannot be written (")]
    for (args, message), p in zip(cases, run_many(*[["train.py", *args] for args, _ in cases])):
        assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, (args, p.stderr)


def test_checkpoint_errors(char_data, tmp_path):
    """Resuming with settings that contradict what the checkpoint is: every contradiction in one line (from
    a config file or the command line), with what the checkpoint was trained with; a setting that does not
    change the weights is no contradiction. A truncated checkpoint: one line."""
    run("train.py", "config/ablation_baseline.py", *TINY, "--max_iters=5", "--eval_interval=5", f"--out_dir={tmp_path}")
    ckpt = tmp_path / "ckpt.pt"
    broken = tmp_path / "broken"
    broken.mkdir()
    data = ckpt.read_bytes()
    (broken / "ckpt.pt").write_bytes(data[: len(data) // 2])  # truncated
    resume = ["train.py", "--init_from=resume", f"--out_dir={tmp_path}"]
    cases = [
        (["train.py", "config/ablation_lens.py", *TINY, *resume[1:]], f"error: {ckpt} was trained with use_reciprocity=False, "
         "use_discoverability=False but the config says use_reciprocity=True, use_discoverability=True; resuming "
         "takes them from the checkpoint: leave them out"),
        ([*resume, "--n_layer=3", "--block_size=64", "--n_kv_head=2", "--dataset=recall", "--max_iters=9",
          "--dropout=0.3"], f"error: {ckpt} was trained with block_size=32, n_layer=2, n_kv_head=4, "
         "dataset='shakespeare_char' but the config says block_size=64, n_layer=3, n_kv_head=2, dataset='recall'; "
         "resuming takes them from the checkpoint: leave them out"),
        ([*resume, "--n_head=2"], f"error: {ckpt} was trained with n_head=4 but the config says n_head=2; resuming "
         "takes it from the checkpoint: leave it out"),
        (["train.py", "--init_from=resume", f"--out_dir={broken}"], f"error: {broken / 'ckpt.pt'} is not a readable "
         "checkpoint (truncated or corrupt?)"),
    ]
    for (args, line), p in zip(cases, run_many(*[args for args, _ in cases])):
        assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        assert p.stderr.strip().startswith(line), (args, p.stderr)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(char_data, tmp_path):
    common = ["config/ablation_full.py", *TINY, "--max_iters=6", "--eval_interval=3", "--gradient_accumulation_steps=2"]
    one = run("train.py", *common, f"--out_dir={tmp_path / 'one'}")
    two = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *common,
              f"--out_dir={tmp_path / 'two'}", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    a, b = val_losses(one.stdout), val_losses(two.stdout)
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, abs=1e-4), (a, b)
    ca, cb = (load_checkpoint(str(tmp_path / d / "ckpt.pt")) for d in ("one", "two"))
    for k in ca["model"]:
        assert torch.allclose(ca["model"][k], cb["model"][k], atol=1e-5), k


@pytest.mark.slow
def test_ddp_sigterm_stops_every_rank_at_one_step(char_data, tmp_path):
    """torchrun forwards a scheduler's SIGTERM to its workers: both stop at the same logged iteration,
    rank 0 alone writes the checkpoint and says so once."""
    import signal
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", *TINY, "--max_iters=100000", "--log_interval=5", "--gradient_accumulation_steps=2",
                          f"--out_dir={tmp_path}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    for line in p.stdout:
        if line.startswith("iter 20:"):
            p.send_signal(signal.SIGTERM)
            break
    out = p.communicate(timeout=600)[0]
    ck = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ck["iter_num"] > 20 and ck["iter_num"] % 5 == 0
    assert out.count("interrupted (SIGTERM): saved iteration") == 1
    assert f"interrupted (SIGTERM): saved iteration {ck['iter_num']} to {tmp_path / 'ckpt.pt'}" in out


@pytest.mark.slow
def test_wandb_offline_writes_files(char_data, tmp_path):
    pytest.importorskip("wandb")
    run("train.py", "config/ablation_route_gate.py", *TINY, "--max_iters=4", "--eval_interval=2", "--wandb_log=True",
        f"--out_dir={tmp_path}", env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "*.wandb"))
    assert runs, os.listdir(tmp_path)


SIGNAL_RUN = ["config/ablation_full.py", *TINY, "--dropout=0.1", "--max_iters=300", "--eval_interval=100",
              "--log_interval=1"]


@pytest.fixture(scope="module")
def straight_run(char_data, tmp_path_factory):
    """The uninterrupted run that every interrupted and resumed one must equal."""
    out = tmp_path_factory.mktemp("straight")
    run("train.py", *SIGNAL_RUN, f"--out_dir={out}")
    return load_checkpoint(str(out / "ckpt.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_a_signal_saves_and_resumes_exactly(signame, straight_run, tmp_path):
    """Ctrl-C (SIGINT), a scheduler's SIGTERM and SLURM's --signal (SIGUSR1) mid-run: a checkpoint at the
    interrupted iteration, one line saying how to resume, exit 128 + the signal's number; resuming from it
    ends where an uninterrupted run ends, bit for bit."""
    import signal
    import subprocess
    import sys
    sig = getattr(signal, signame)
    p = subprocess.Popen([sys.executable, "train.py", *SIGNAL_RUN, f"--out_dir={tmp_path}"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in p.stdout:  # interrupt once training is under way
        if line.startswith("iter 20:"):
            p.send_signal(sig)
            break
    out, err = p.communicate(timeout=600)
    assert p.returncode == 128 + sig and "Traceback" not in err, (p.returncode, err)
    cut = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert 20 < cut["iter_num"] < 300
    assert out.strip().splitlines()[-1] == (f"interrupted ({signame}): saved iteration {cut['iter_num']} to "
                                            f"{tmp_path / 'ckpt.pt'}; resume with: python train.py "
                                            f"--out_dir={tmp_path} --init_from=resume")
    run("train.py", f"--out_dir={tmp_path}", "--init_from=resume")  # the command it names
    a, b = straight_run, load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert a["iter_num"] == b["iter_num"] == 300
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_good_checkpoint(char_data, tmp_path):
    """A loss that turns non-finite stops the run at once with one line naming the iteration and the
    last good checkpoint, whose bytes stay as they were; a run that diverges before any save saves nothing."""
    run("train.py", *TINY, "--max_iters=10", "--eval_interval=10", f"--out_dir={tmp_path}")
    good = (tmp_path / "ckpt.pt").read_bytes()
    p = run("train.py", *TINY, "--max_iters=40", "--eval_interval=10", "--init_from=resume", "--learning_rate=1e6",
            "--min_lr=1e6", "--grad_clip=0", f"--out_dir={tmp_path}", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: training diverged at iteration (\d+) \(the training loss or gradient norm is not "
                        rf"finite\); the last good checkpoint, {re.escape(str(tmp_path / 'ckpt.pt'))} \(iteration 10\), "
                        rf"is unchanged\. .*", line), line
    assert (tmp_path / "ckpt.pt").read_bytes() == good
    fresh = tmp_path / "fresh"
    p = run("train.py", *TINY, "--max_iters=40", "--eval_interval=10", "--learning_rate=1e6", "--min_lr=1e6",
            f"--out_dir={fresh}", check=False)
    assert p.returncode == 1 and "nothing was saved" in p.stderr.strip().splitlines()[-1]
    assert not (fresh / "ckpt.pt").exists()


def test_a_checkpoint_is_never_written_with_non_finite_values(tmp_path):
    from checkpoint import nonfinite
    assert nonfinite({"model": {"w": torch.ones(2)}, "val_loss": 1.5, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}}}) is None
    assert nonfinite({"model": {"h.0.w": torch.tensor([1.0, float("nan")])}}) == "model.h.0.w"
    assert nonfinite({"model": {}, "val_loss": float("inf")}) == "val_loss"


@pytest.mark.slow
def test_one_run_per_out_dir(char_data, tmp_path):
    """A live run holds an OS lock on its out_dir: a second run into it is refused in one line naming the
    live run's pid; once the first is killed (SIGKILL: no chance to clean up) the next run starts."""
    import signal
    import subprocess
    import sys
    first = subprocess.Popen([sys.executable, "train.py", *TINY, "--max_iters=100000", "--log_interval=1",
                              f"--out_dir={tmp_path}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in first.stdout:
            if line.startswith("iter 1:"):
                break
        p = run("train.py", *TINY, "--max_iters=2", f"--out_dir={tmp_path}", check=False)
        assert p.returncode == 1 and p.stderr.strip() == (
            f"error: {tmp_path} is in use by a live run (pid {first.pid}); wait for it, stop it, or choose another --out_dir")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    p = run("train.py", *TINY, "--max_iters=2", "--eval_interval=2", f"--out_dir={tmp_path}")
    assert "step 2:" in p.stdout


@pytest.mark.slow
def test_extending_a_finished_run(char_data, tmp_path):
    """A 20-iteration run extended to 40, as nanoGPT users do: the iteration count goes on from 20, the
    learning rate stays at min_lr after the decay that ended at 20, the annealing window is the first
    run's (already over: the route bias stays at its target), and a contradicting setting is refused."""
    common = ["config/ablation_route_annealed.py", *TINY, "--eval_interval=10", "--log_interval=5"]
    run("train.py", *common, "--max_iters=20", f"--out_dir={tmp_path}")
    first = load_checkpoint(str(tmp_path / "ckpt.pt"))["config"]
    p = run("train.py", *common, "--max_iters=40", "--init_from=resume", f"--out_dir={tmp_path}")
    assert "step 10:" not in p.stdout and "step 40:" in p.stdout
    assert re.search(r"iter 30: loss [\d.]+, lr 1\.00e-04,", p.stdout), p.stdout
    ck = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ck["iter_num"] == 40 and ck["config"]["max_iters"] == 40
    for k in ("lr_decay_iters", "route_anneal_start", "route_anneal_end"):
        assert ck["config"][k] == first[k], k
    assert all(v.item() == pytest.approx(-1.8) for k, v in ck["model"].items() if k.endswith("route_bias"))
    p = run("train.py", *common, "--max_iters=60", "--init_from=resume", "--route_anneal_end=50",
            f"--out_dir={tmp_path}", check=False)
    assert p.returncode == 1 and p.stderr.strip() == (
        f"error: {tmp_path / 'ckpt.pt'} was trained with route_anneal_end={first['route_anneal_end']} but the config "
        "says route_anneal_end=50; resuming takes it from the checkpoint: leave it out")


@pytest.mark.slow
def test_short_run_schedule_follows_max_iters(char_data, tmp_path):
    """--max_iters after config/cpu.py (2000 iterations) takes the decay and the annealing window along,
    unless the same command sets them: a 60-iteration run anneals and decays within its own length."""
    run("train.py", "config/ablation_route_annealed.py", *TINY, "--max_iters=60", "--eval_interval=60",
        f"--out_dir={tmp_path / 'a'}")
    ck = load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))
    cfg = ck["config"]
    assert cfg["lr_decay_iters"] == 60 and (cfg["route_anneal_start"], cfg["route_anneal_end"]) == (7, 39)
    assert all(v.item() == pytest.approx(-1.8) for k, v in ck["model"].items() if k.endswith("route_bias"))
    run("train.py", "config/ablation_route_annealed.py", *TINY, "--max_iters=60", "--eval_interval=60",
        "--lr_decay_iters=50", f"--out_dir={tmp_path / 'b'}")
    assert load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))["config"]["lr_decay_iters"] == 50


@pytest.mark.slow
def test_wandb_without_a_key_never_waits(char_data, tmp_path):
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(tmp_path)}  # no key, no ~/.netrc
    p = run("train.py", *TINY, "--max_iters=2", "--wandb_log=True", f"--out_dir={tmp_path / 'out'}", env=env, timeout=120)
    assert "warning: wandb could not start (RuntimeError: no API key" in p.stdout
    assert "step 2:" in p.stdout


def test_the_end_of_run_summary_and_a_quiet_log(char_data, tmp_path):
    """A run ends with its best and final validation loss, its checkpoint, and the commands that sample and
    measure it, which work as printed. A log that is not a terminal has no progress bar and no MFU (a CPU has
    no peak to measure against); wandb is not even imported unless wandb_log=True."""
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nprint('wandb imported:', 'wandb' in sys.modules)\n")
    train, check = run_many(["train.py", *TINY, "--max_iters=6", "--eval_interval=3", "--log_interval=1",
                             f"--out_dir={tmp_path}"], [str(probe)])
    assert train.returncode == 0, train.stderr
    losses = val_losses(train.stdout)
    ckpt = tmp_path / "ckpt.pt"
    summary = train.stdout.strip().split("\n\n")[-1].splitlines()
    assert summary[:3] == [
        f"done: 6 iterations; best val loss {min(losses):.4f}, final val loss {losses[-1]:.4f}",
        f"checkpoint: {ckpt} (iteration 6)",
        f"sample it:  python sample.py --out_dir={tmp_path}"], summary
    assert summary[3].startswith(f"measure it: python kv_cache_bench.py --configs= --ckpt={ckpt}   # ")
    assert "iter 5: loss" in train.stdout and "mfu" not in train.stdout
    assert "it/s" not in train.stderr and "\r" not in train.stderr + train.stdout  # no tqdm bar
    assert check.stdout.strip() == "wandb imported: False"
    sample, measure = (shlex.split(line.split(":", 1)[1].split("#")[0]) for line in summary[2:4])
    sample, measure = run_many(sample[1:] + ["--max_new_tokens=4", "--num_samples=1"],
                               measure[1:] + ["--eval_batches=1", "--eval_batch_size=2"])
    assert sample.returncode == 0 and "tokens in" in sample.stdout, sample.stderr
    assert measure.returncode == 0 and "greedy" in measure.stdout, measure.stderr
    assert "pruning curves" not in measure.stderr  # its progress bar, too, is for a terminal only


def test_a_gpu_sized_run_on_a_cpu_warns_first(char_data, tmp_path):
    """On a CPU, a run that would take hours says so before its first evaluation, with the overlay that
    scales it to a CPU and the command with it; Ctrl-C before training stops it at once."""
    import signal
    import subprocess
    import sys
    rest = [*TINY[1:], "--max_iters=1000000000", f"--out_dir={tmp_path}"]
    p = subprocess.Popen([sys.executable, "train.py", "config/ablation_full.py", *rest], cwd=ROOT, text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = p.stderr.readline()
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=600)[1]
    assert re.fullmatch(r"warning: on this CPU this run takes about \d+ days \(1,000,000,000 iterations of 4 x 32 tokens "
                        r"at 2 layers x 32, evaluations included\); it is GPU-sized: config/cpu\.py is the CPU scale "
                        r"\(minutes\): python train\.py config/ablation_full\.py config/cpu\.py " + re.escape(" ".join(rest)),
                        line.strip()), line
    assert p.returncode == 130 and "Traceback" not in err, err


@pytest.mark.slow
def test_ctrl_c_answers_at_once(char_data, tmp_path):
    """Ctrl-C during an evaluation of ten million batches: a line at once says what happens, the evaluation
    stops at its next batch, the iteration reached is saved (the cut evaluation is not recorded: a resumed run
    makes it again), exit 130, no traceback. A second Ctrl-C during a long iteration stops at once, with one
    line, and leaves the checkpoint as it was."""
    import signal
    import subprocess
    import sys
    ckpt = tmp_path / "ckpt.pt"
    run("train.py", *TINY, "--max_iters=2", "--eval_interval=2", f"--out_dir={tmp_path}")

    def start(*args):
        return subprocess.Popen([sys.executable, "train.py", f"--out_dir={tmp_path}", "--init_from=resume", *args],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    p = start("--max_iters=100", "--eval_interval=4", "--eval_iters=10000000", "--log_interval=1")
    for line in p.stdout:
        if line.startswith("iter 3:"):  # the next thing it does is the evaluation at iteration 4
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=600)  # (the evaluation alone would take hours)
    assert p.returncode == 130 and "Traceback" not in err, (p.returncode, err)
    # (after the warning that such an evaluation takes hours)
    assert err.strip().splitlines()[-1] == "stopping after this iteration; Ctrl-C again to stop now"
    assert out.strip().splitlines()[-1] == (f"interrupted (SIGINT): saved iteration 4 to {ckpt}; resume with: "
                                            f"python train.py --out_dir={tmp_path} --init_from=resume")
    cut = load_checkpoint(str(ckpt))
    assert cut["iter_num"] == 4 and [h["iter"] for h in cut["history"]] == [0, 2]
    saved = ckpt.read_bytes()

    # iterations of 500 micro-steps: the second Ctrl-C comes while the first waits for the iteration to end
    p = start("--gradient_accumulation_steps=500", "--eval_interval=1000", "--eval_iters=4", "--log_interval=1")
    for line in p.stdout:
        if line.startswith("iter 4:"):
            p.send_signal(signal.SIGINT)
            break
    assert p.stderr.readline().strip() == "stopping after this iteration; Ctrl-C again to stop now"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 130 and "Traceback" not in err, (p.returncode, err)
    # (iteration 4 where the signals came between its log line and its end)
    assert re.fullmatch(rf"stopped \(SIGINT\) at iteration [45]: {re.escape(str(ckpt))} \(iteration 4\) is as it was",
                        err.strip()), err
    assert ckpt.read_bytes() == saved and sorted(os.listdir(tmp_path)) == ["ckpt.pt", "train.lock"]
