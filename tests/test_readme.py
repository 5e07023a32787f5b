"""The README's model section runs as written: each `python -c` line and each python block succeeds
(`from model import *` gives every name it uses), and the one-liner prints the per-layer parameter
counts and cache ratios that the section's table claims for GPT-2 124M."""
import contextlib
import io
import os
import re
import shlex

from conftest import ROOT


def section(title):
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_of(body):
    """The Python source of each `python -c "..."` line in the bash blocks, and of each python block."""
    codes = [shlex.split(line)[2] for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S)
             for line in block.splitlines() if line.startswith("python -c ")]
    return codes + re.findall(r"```python\n(.*?)```", body, flags=re.S)


def run_code(code):
    """stdout of running `code` as `python -c` would, in a fresh namespace in this process (no torch import
    to pay again); an exception fails the test with its traceback."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<README>", "exec"), {"__name__": "__main__"})
    return out.getvalue()


def test_model_section_code_runs_and_prints_the_table():
    body = section("The model")
    codes = code_of(body)
    assert codes and "from model import *" in codes[0], codes
    outputs = [run_code(code) for code in codes]
    summary = next(o for o in outputs if "params" in o)
    # every mechanism row of the table with a GPT-2 124M count: the summary prints that count on its line
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("| ")]
    claimed = {}
    for row in rows[1:]:
        count = re.fullmatch(r"([\d,]+)( \(.*\))?", row[2])  # "9,216", "432 (three terms)"; not "124M"
        if count and count.group(1) != "0":
            claimed[row[0].replace("`", "").split(",")[0]] = count.group(1)
    assert {"discoverability u", "lens gates", "route gate", "MLP context"} <= set(claimed), claimed
    for mechanism, count in claimed.items():
        line = next((line for line in summary.splitlines() if line.strip().startswith(mechanism)), None)
        assert line is not None and f" {count} params" in line, (mechanism, count, summary)
    assert re.search(r"GPT-2 \(124,\d{3},\d{3}, incl", summary), summary  # the baseline's 124M
    # reciprocity's K/V form holds 1.5x GPT-2's cache, the input form 0.5x (the table's cache columns)
    assert re.search(r"KV cache: .*\(1\.50?x GPT-2's", summary), summary
    assert re.search(r"input-form cache .*\(0\.50?x\)", summary), summary
