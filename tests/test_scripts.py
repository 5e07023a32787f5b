"""Every script is driven from its --help: it lists every setting with its default and comment and
exits 0; bare boolean flags and --key value work; a flag that needs a value says so in one line."""
import os
import re
import subprocess

import pytest

from conftest import ROOT, run, run_many

SCRIPTS = ["train.py", "sample.py", "bench.py", "kv_cache_bench.py", "ablate.py", "report.py", "export_hf.py",
           "eval_harness.py"]  # (these two list their settings without transformers or lm-eval too)


def test_help_lists_every_setting():
    for script, p in zip(SCRIPTS, run_many(*[[s, "--help"] for s in SCRIPTS])):
        assert p.returncode == 0 and "Traceback" not in p.stderr, (script, p.stderr)
        settings = re.findall(r"^  --(\w+)=", p.stdout, flags=re.M)
        with open(os.path.join(ROOT, script)) as f:  # every top-level plain setting of the script, in order
            source = f.read()
        block = source.split("# " + "-" * 77)[1]
        declared = re.findall(r"^(\w+) = ", block, flags=re.M)
        assert declared and set(declared) <= set(settings), (script, set(declared) - set(settings))
        assert p.stdout.startswith(source.split('"""')[1].strip().splitlines()[0]), script  # the docstring first


def test_prepare_help():
    scripts = ["data/shakespeare_char/prepare.py", "data/shakespeare/prepare.py", "data/recall/prepare.py",
               "data/fineweb_edu/prepare.py"]
    for script, p in zip(scripts, run_many(*[[s, "--help"] for s in scripts])):
        # each lists its options: the text prepare scripts take a local copy (--input), the recall set its shape
        assert p.returncode == 0 and ("--num_pairs" if "recall" in script else "--input") in p.stdout, script
        assert "--out_dir" in p.stdout, script


def test_bare_flags_and_key_value():
    p, q, r, s = run_many(["ablate.py", "--dry_run", "--configs", "baseline,lens", "--seeds", "2"],
                          ["ablate.py", "--dry_run=True", "--configs=baseline,lens", "--seeds=2"],
                          ["ablate.py", "--dry_run", "False", "--seeds"], ["ablate.py", "--seeds", "two"])
    assert p.stdout.count("[run ") == 4 and p.stdout.count("lens seed") == 2, p.stdout  # 2 configs x 2 seeds
    assert p.stdout == q.stdout
    assert r.returncode == 1 and r.stderr.strip() == "error: --seeds needs a value (--seeds=VALUE)"
    assert s.returncode == 1 and "Traceback" not in s.stderr and "wants an int" in s.stderr


BAD = [  # (script and arguments, the one line it must print)
    (["train.py", "config/cpu.py", "--batch_size=0"], "error: batch_size, block_size and gradient_accumulation_steps must be >= 1"),
    (["train.py", "config/cpu.py", "--learning_rate=-1"], "error: need learning_rate > 0 and 0 <= min_lr <= learning_rate, got -1.0 and 0.0001"),
    (["train.py", "config/cpu.py", "--eval_interval=0"], "error: eval_interval, log_interval and eval_iters must be >= 1"),
    (["train.py", "config/cpu.py", "--beta2=1.0"], "error: beta1 and beta2 must be in [0, 1), got 0.9 and 1.0"),
    (["train.py", "config/cpu.py", "--n_layer=0"], "error: bad model settings: block_size, vocab_size, n_layer, n_head and n_embd must be >= 1"),
    (["train.py", "config/cpu.py", "--n_head=0"], "error: bad model settings: block_size, vocab_size, n_layer, n_head and n_embd must be >= 1"),
    (["train.py", "--max_itres=5"], "error: unknown config key 'max_itres' (did you mean 'max_iters'?)"),
    (["train.py", "--batch_size=big"], "error: config key 'batch_size' wants an int, got 'big' (str)"),
    (["train.py", "--learning_rate=fast"], "error: config key 'learning_rate' wants a float, got 'fast' (str)"),
    (["train.py", "--device=cuda"], "error: device=cuda, but this machine has no CUDA device"),
    (["train.py", "--device=tpu"], "error: device must be cpu, cuda, cuda:N or mps, got 'tpu'"),
    (["sample.py", "--device=cuda"], "error: device=cuda, but this machine has no CUDA device"),
    (["bench.py", "--dtype=fp16"], "error: dtype must be float32, bfloat16 or float16, got 'fp16'"),
    (["kv_cache_bench.py", "--dtype=fp16"], "error: dtype must be float32, bfloat16 or float16, got 'fp16'"),
    (["kv_cache_bench.py", "--forms=latent"], "error: forms takes kv and/or input, got 'latent'"),
    (["kv_cache_bench.py", "--configs=nope"], "error: no config file config/ablation_nope.py"),
    (["bench.py", "--compare=nope"], "error: no config file config/ablation_nope.py"),
    (["ablate.py", "--configs=nope"], "error: no config file config/ablation_nope.py"),
    # a name or a config file that is not there: the close ones, in every script
    (["ablate.py", "--configs=baseline,ful"], "error: no config file config/ablation_ful.py (did you mean full?)"),
    (["kv_cache_bench.py", "--configs=config/ablation_lense.py"],
     "error: no config file config/ablation_config/ablation_lense.py.py (did you mean lens?)"),
    (["bench.py", "--compare=gqa,mqq"], "error: no config file config/ablation_mqq.py (did you mean mqa"),
    (["bench.py", "--config=config/ablation_swaa.py"], "error: config file config/ablation_swaa.py not found (did you mean "
                                                       "config/ablation_swa.py"),
    (["bench.py", "--kernels=True", "--window=64", "--block_size=64"], "error: window=64 must be in [1, block_size=64)"),
    (["sample.py", "config/cpu"], "error: config file config/cpu not found (did you mean config/cpu.py"),
    (["report.py", "config/ablation_lense.py"], "error: config file config/ablation_lense.py not found (did you mean "
                                                "config/ablation_lens.py"),
    (["ablate.py", "--overlay=config/cpu.py", "cpu.py"], "error: config file cpu.py not found (did you mean config/cpu.py?)"),
    (["ablate.py", "--seeds=0"], "error: seeds, eval_batches and eval_batch_size must be >= 1"),
    (["sample.py", "--temperature=-1"], "error: temperature and top_k must be >= 0, got -1.0 and 200"),
    (["sample.py", "--num_samples=0"], "error: num_samples must be >= 1 and max_new_tokens >= 0"),
    (["bench.py", "--steps=0"], "error: batch_size, block_size, the model's sizes, steps and rounds must be >= 1"),
    (["kv_cache_bench.py", "--contexts=a,b"], "error: contexts takes comma-separated token counts, got 'a,b'"),
    (["kv_cache_bench.py", "--decode_tokens=0"], "error: contexts must be >= 2, and the model's sizes"),
    (["kv_cache_bench.py", "--mem_budget=-1"], "error: throughput_steps must be >= 1, throughput_context and mem_budget"),
    # a peer whose settings make it the baseline would be measured as a peer it is not
    (["kv_cache_bench.py", "--configs=gqa", "--n_head=2", "--n_embd=32"],
     "error: config/ablation_gqa.py at n_layer=6, n_head=2, n_embd=32 is the baseline (n_kv_head=2 changes nothing"),
    (["bench.py", "--compare=gqa", "--n_head=2", "--n_embd=32"], "error: config/ablation_gqa.py at n_layer=6, n_head=2"),
    # every output path is checked before any work: under a regular file nothing can be written
    (["kv_cache_bench.py", "--json=README.md/kv.json"], "error: json=README.md/kv.json cannot be written ("),
    (["kv_cache_bench.py", "--plot=README.md/kv.png"], "error: plot=README.md/kv.png cannot be written ("),
    (["ablate.py", "--results=README.md/x"], "error: results=README.md/x cannot be written ("),
    (["ablate.py", "--out_root=README.md/x", "--results=/tmp"], "error: out_root=README.md/x cannot be written ("),
]


def test_bad_values_are_one_line_errors(char_data, tmp_path):
    import torch
    cases = [(args, line) for args, line in BAD if not (torch.cuda.is_available() and "cuda" in " ".join(args))]
    # a train.py run that gets as far as its out_dir takes a lock there (held while the process lives):
    # each its own, out of the repo
    commands = [[a[0], f"--out_dir={tmp_path / str(i)}", *a[1:]] if a[0] == "train.py" else a
                for i, (a, _) in enumerate(cases)]
    wrong = [(args, p.returncode, p.stderr) for (args, line), p in zip(cases, run_many(*commands))
             if not (p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.strip().startswith(line))]
    assert not wrong, wrong


def test_float16_on_a_cpu_warns():
    p = run("bench.py", "--dtype=float16", "--device=cpu", "--steps=1", "--warmup=0", "--rounds=1", "--n_layer=1",
            "--n_embd=32", "--n_head=2", "--block_size=16", "--batch_size=2", "--config=config/ablation_baseline.py",
            "--profile")
    assert "warning: float16 on a CPU is emulated" in p.stderr
    assert "baseline: top operators by self time over one step" in p.stdout  # --profile: where the time goes


def readme_commands(*sections):
    """The `python ...` commands in the README's bash blocks under the given headings."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    cmds = []
    for title in sections:
        body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
        for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
            for line in block.splitlines():
                for part in line.split(" && "):
                    part = part.split("  #")[0].strip()
                    if part.startswith("python "):
                        cmds.append(part)
    return cmds


def test_readme_commands_parse():
    """Every python command of the README's quickstart and Scripts sections parses its arguments (--help
    appended: config files and settings are read, then the help is printed; nothing runs)."""
    cmds = readme_commands("Install and quickstart", "Scripts")
    assert len(cmds) >= 10, cmds
    # each command's arguments as bash expands them (the README's `$(...)` included), then run with --help
    argv = [subprocess.run(["bash", "-c", f"set -- {c.split(' ', 1)[1]}; printf '%s\\0' \"$@\""], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")[:-1] for c in cmds]
    for cmd, p in zip(cmds, run_many(*[a + ["--help"] for a in argv])):
        assert p.returncode == 0 and "Traceback" not in p.stderr, (cmd, p.stderr[-2000:])


def test_ctrl_c_is_one_line():
    """Ctrl-C in a script that configure() set up: one line and exit status 130, no traceback."""
    import signal
    import sys
    code = ("import time\nfrom configurator import configure\nwait = 60\nconfigure(globals(), [])\n"
            "print('ready', flush=True)\ntime.sleep(wait)\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip() == "interrupted (SIGINT)", (p.returncode, err)
