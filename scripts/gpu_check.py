"""
The one-call GPU check: on a machine with CUDA, in about ten minutes, the CUDA test cases, the 124M
training-step ratios (compiled), decode ms/token in every cache form and mode against Hugging Face
transformers (greedy at 124M batch 1 and 6x384 batch 16; sampling within the top 200 at 6x384 batch 16),
and throughput within a memory budget, unquantized and through 8- and 4-bit caches; at long context, the
sliding-window kernels (banded SDPA against FlexAttention), windowed training steps at 256 and 1024 tokens, and
decoding and throughput at 1024 and 2048 tokens. Writes one JSON
(gpu_check.json) and a README-ready markdown table (gpu_check.md) to --out.

$ python scripts/gpu_check.py                    # out-gpu-check/
$ python scripts/gpu_check.py --out=DIR --device=cpu --tiny   # the plumbing on a CPU, in a minute (tests)
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from records import check_writable, write_json, write_text  # noqa: E402  (the repo's atomic writes)
GPT2 = ["--n_layer=12", "--n_head=12", "--n_embd=768"]
SMALL = ["--n_layer=6", "--n_head=6", "--n_embd=384"]
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32"]


def steps(tiny, device):
    """(name, command, JSON it writes or None): each step of the check."""
    big, small = (TINY, TINY) if tiny else (GPT2, SMALL)
    dev = [f"--device={device}"]
    quick = ["--rounds=1", "--peer_new_tokens=8", "--peer_prompt=8"] if tiny else ["--rounds=3"]
    return [
        ("cuda tests", [sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py"], None),
        ("training step, 124M compiled", [sys.executable, "bench.py", "--compare=lens,full,attn_first_half,mqa",
                                          *big, "--vocab_size=50304", "--compile=True", *dev,
                                          *(["--block_size=32", "--batch_size=2", "--steps=2", "--warmup=1", "--rounds=1"]
                                            if tiny else ["--block_size=1024", "--batch_size=8", "--rounds=2"])], "bench"),
        ("decode vs transformers, 124M batch 1", [sys.executable, "kv_cache_bench.py", "--configs=", "--peer=hf", *big,
                                                   "--vocab_size=50257", "--batch_size=1", *dev, *quick], "peer_124m"),
        ("decode vs transformers, 6x384 batch 16", [sys.executable, "kv_cache_bench.py", "--configs=", "--peer=hf", *small,
                                                     "--vocab_size=50257", "--batch_size=16", *dev, *quick], "peer_6x384"),
        ("top-k sampling vs transformers, 6x384 batch 16", [
            sys.executable, "kv_cache_bench.py", "--configs=", "--peer=hf", "--peer_top_k=200", *small,
            "--vocab_size=50257", "--batch_size=16", *dev, *quick], "peer_6x384_topk"),
        ("decode and throughput at a memory budget", [sys.executable, "kv_cache_bench.py",
                                                      "--configs=baseline,attn_first_half,attn_first_layer,mqa,cla",
                                                      *small, *dev, *(["--contexts=16,32", "--throughput_context=32",
                                                                       "--decode_tokens=4", "--rounds=1", "--mem_budget=0.001"]
                                                                      if tiny else ["--contexts=256,1024", "--rounds=3"])],
         "kv"),
        # long context: the sliding-window kernels (banded SDPA vs FlexAttention, with backward on CUDA), the
        # training step of windowed configs at 256 and 1024 tokens, and decoding at 1024 and 2048 tokens
        ("sliding-window kernels, 1024 tokens", [sys.executable, "bench.py", "--kernels=True", *small, *dev,
                                                 *(["--block_size=64", "--batch_size=2", "--window=16", "--steps=1",
                                                    "--rounds=1"] if tiny else ["--block_size=1024", "--batch_size=8"])],
         "kernels"),
        *[(f"training step, windows, {t} tokens", [sys.executable, "bench.py", "--compare=swa,local_global_last", *small, *dev,
                                                   *(["--block_size=64", "--batch_size=2", "--steps=1", "--warmup=1",
                                                      "--rounds=1"] if tiny else [f"--block_size={t}", f"--batch_size={b}"])],
           f"bench_window_{t}") for t, b in ((256, 32), (1024, 8))],
        ("decode and throughput at long context, windows", [
            sys.executable, "kv_cache_bench.py", "--configs=baseline,swa,local_global_last", *small, *dev,
            *(["--contexts=48,64", "--throughput_context=64", "--decode_tokens=4", "--rounds=1", "--mem_budget=0.001"]
              if tiny else ["--contexts=1024,2048", "--throughput_context=2048", "--rounds=3"])], "long"),
        # quantized caches where memory binds: the batch a smaller cache buys, decoded compiled
        ("quantized caches: decode and throughput at a memory budget", [
            sys.executable, "kv_cache_bench.py", "--configs=baseline", "--kv_bits=16,8,4", *small, *dev, "--modes=eager",
            "--throughput_modes=compiled", *(["--contexts=32", "--throughput_context=32", "--decode_tokens=4", "--rounds=1",
                                              "--mem_budget=0.001", "--kv_group=16"] if tiny
                                             else ["--contexts=1024", "--rounds=3", "--mem_budget=4"])], "quant"),
    ]


def table(results):
    """README-ready markdown from the steps' JSON."""
    out = []
    if "bench" in results:
        b = results["bench"]
        out += [f"Training step, {b['shape']['n_layer']}x{b['shape']['n_embd']}, block {b['shape']['block_size']}, "
                f"batch {b['shape']['batch_size']}, {b['dtype']}, compiled={b['compile']}:", "",
                "| config | ms/step | x baseline | peak memory x baseline |", "|---|---|---|---|"]
        out += [f"| {r['config']} | {r['ms_per_step']:.1f} | {r['x_base_time']:.2f} | {r['x_base_memory']:.2f} |" for r in b["rows"]]
    for key in ("peer_124m", "peer_6x384", "peer_6x384_topk"):
        if key in results and results[key]["peer"]:
            rows = results[key]["peer"]
            how = "same tokens" if rows[0]["decoding"] == "greedy" else "temperature 1, same weights and prompts"
            out += ["", f"Decoding ({rows[0]['decoding']}) against transformers ({rows[0]['shape']}, batch "
                        f"{rows[0]['batch_size']}, {rows[0]['prompt']}-token prompt + {rows[0]['new_tokens']} new, {how}):", "",
                    "| engine | form | mode | ms/token | x transformers |", "|---|---|---|---|---|"]
            out += [f"| {r['engine']} | {r['form']} | {r['mode']} | {r['ms_per_token']:.2f} | {r['x_transformers']:.2f} |"
                    for r in rows]
    if "kernels" in results:
        k = results["kernels"]
        out += ["", f"Sliding-window kernels (window {k['window']}, {k['shape']['n_head']} heads of {k['shape']['head_dim']}, "
                    f"{k['shape']['block_size']} tokens, batch {k['shape']['batch_size']}):", "",
                "| kernel | pass | ms | x causal SDPA |", "|---|---|---|---|"]
        out += [f"| {r['kernel']} | {r['pass']} | {r['ms']:.2f} | {r['x_causal']:.2f} |" for r in k["rows"]]
    for key in ("bench_window_256", "bench_window_1024"):
        if key in results:
            b = results[key]
            out += ["", f"Training step with windows, block {b['shape']['block_size']}, batch {b['shape']['batch_size']}:", "",
                    "| config | ms/step | x baseline | peak memory x baseline |", "|---|---|---|---|"]
            out += [f"| {r['config']} | {r['ms_per_step']:.1f} | {r['x_base_time']:.2f} | {r['x_base_memory']:.2f} |"
                    for r in b["rows"]]
    for key, what in (("kv", ""), ("long", ", long context")):
        if key in results and results[key]["throughput"]:
            top = {}
            for t in results[key]["throughput"]:
                if t["largest"]:
                    top[(t["config"], t["form"])] = t
            ctx = next(iter(top.values()))["context"] if top else ""
            out += ["", f"Throughput at the memory budget{what} (context {ctx}, largest batch whose cache fits):", "",
                    "| config | form | max batch | tokens/s |", "|---|---|---|---|"]
            out += [f"| {c} | {f} | {t['batch_size']} | {t['tokens_per_s']:.0f} |" for (c, f), t in top.items()]
    if "quant" in results and results["quant"]["throughput"]:
        rows = [t for t in results["quant"]["throughput"] if t["largest"]]
        base = {t["form"]: t["tokens_per_s"] for t in rows if t["kv_bits"] == 16}
        dtype = results["quant"]["records"][0]["dtype"]  # what the unquantized cache holds (bfloat16 on CUDA)
        out += ["", f"Quantized caches at the memory budget (context {rows[0]['context']}, {rows[0]['mode']}):", "",
                f"| form | cache | max batch | tokens/s | x {dtype} |", "|---|---|---|---|---|"]
        out += [f"| {t['form']} | {dtype if t['kv_bits'] == 16 else str(t['kv_bits']) + '-bit'} | {t['batch_size']} | "
                f"{t['tokens_per_s']:.0f} | {t['tokens_per_s'] / base[t['form']]:.2f} |" for t in rows]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", default="out-gpu-check", help="folder for gpu_check.json, gpu_check.md and each step's JSON")
    ap.add_argument("--device", default="cuda", help="cuda (the check), or cpu with --tiny (its plumbing)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and one round: checks the script, measures nothing")
    args = ap.parse_args()
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device: the GPU check needs one (--device=cpu --tiny checks the script)")
    check_writable(args.out, "out")
    results, log = {}, []
    for name, cmd, key in steps(args.tiny, args.device):
        path = os.path.abspath(os.path.join(args.out, f"{key}.json")) if key else None
        t0 = time.time()
        p = subprocess.run(cmd + ([f"--json={path}"] if path else []), cwd=ROOT, capture_output=True, text=True)
        took = time.time() - t0
        ok = p.returncode == 0
        log.append(dict(step=name, command=" ".join(cmd), rc=p.returncode, seconds=round(took, 1),
                        tail=(p.stdout + p.stderr)[-2000:]))
        print(f"[{'ok' if ok else 'FAILED'}] {name} ({took:.0f} s)", flush=True)
        if not ok:
            print((p.stdout + p.stderr)[-3000:])
        elif path:
            with open(path) as f:
                results[key] = json.load(f)
    write_json(os.path.join(args.out, "gpu_check.json"), {"steps": log, "results": results})
    md = table(results)
    write_text(os.path.join(args.out, "gpu_check.md"), md)
    print(md)
    print(f"wrote {args.out}/gpu_check.json and gpu_check.md")
    if any(s["rc"] != 0 for s in log):
        raise SystemExit("error: a step of the GPU check failed (its output is above and in gpu_check.json)")


if __name__ == "__main__":
    main()
