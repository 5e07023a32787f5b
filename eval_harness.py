"""
Score a lensgpt or nanoGPT checkpoint on the benchmarks everyone reports, with EleutherAI's
lm-evaluation-harness (optional: pip install "lm_eval[hf]>=0.4.10,<0.5"). The model class is registered
with lm-eval as `lensgpt`; the results JSON goes next to the checkpoint.

$ python eval_harness.py --out_dir=out --tasks=hellaswag,lambada_openai --limit=100
$ python eval_harness.py --out_dir=out --tasks=lensgpt_mc,lensgpt_lambada --include_path=tests/harness_tasks
$ python eval_harness.py --out_dir=out --tasks=hellaswag --kv_cache=input --kv_bits=4   # through a 4-bit cache
$ python eval_harness.py --out_dir=out --tasks=hellaswag --attn_skip_layers="(2,3)"      # attention pruned
$ python eval_harness.py --init_from=gpt2 --tasks=hellaswag --device=cuda   # GPT-2 124M (needs transformers)
$ python eval_harness.py --out_dir=out --tasks=lensgpt_mc --include_path=tests/harness_tasks --bench
$ python eval_harness.py lm_eval --model lensgpt --model_args out_dir=out --tasks hellaswag --device cpu

The last form is lm-eval's own command line (every lm-eval option), with this module imported so that
`--model lensgpt` exists; `python -c "import eval_harness, lm_eval.__main__ as m; m.cli_evaluate()" ...` is
the same thing.
"""
import ast
import contextlib
import difflib
import json
import os
import re
import sys
import time
from types import SimpleNamespace

try:
    import lm_eval.models  # lm-eval's own models, registered (lazily) before ours: `hf` stays available
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:
    if __name__ != "__main__" or not {"-h", "--help"} & set(sys.argv[1:]) or sys.argv[1] in ("lm_eval", "lm-eval"):
        raise SystemExit('error: eval_harness.py needs lm-evaluation-harness: pip install "lm_eval[hf]>=0.4.10,<0.5"')
    TemplateLM = object  # --help alone: it lists the settings below, as every script's does, with no lm-eval
import torch
import torch.nn.functional as F
from tqdm import tqdm

from configurator import config_keys, configure, die, require, setup_device
from engine import cache_form, check_quant, generate_stream
from evaluate import cached_logits, dataset_meta, trained_model
from model import GPT
from records import check_writable, write_text

# ----------------------------------------------------------------------------- settings (the command line)
init_from = "resume"  # 'resume' (the checkpoint in out_dir) or a GPT-2 name / local Hugging Face directory
out_dir = "out"  # the checkpoint's folder; the results JSON is written there
tasks = ""  # lm-eval task (or group) names, comma-separated: hellaswag,lambada_openai
include_path = ""  # a folder of task YAML files, e.g. tests/harness_tasks (local tasks, no download)
limit = None  # examples per task (None: all; a float below 1: that fraction)
num_fewshot = None  # None: each task's own
batch_size = 16  # sequences per forward pass (sorted by length, longest first)
device = None  # None: cuda, then mps, then cpu
dtype = None  # None: bfloat16 where supported on CUDA (else float16), float32 elsewhere
kv_cache = "False"  # False: score each sequence in one pass; kv, input or auto (True): decode every token through that cache
kv_bits = 16  # 8 or 4: score through a quantized cache (needs kv_cache)
kv_group = 32  # values per quantization group
kv_residual = 0  # the newest tokens kept unquantized
attn_skip_layers = ()  # run these layers with attention removed
max_gen_toks = 256  # generation tasks: at most this many new tokens unless the task says otherwise
json_out = ""  # the results JSON; empty: <out_dir>/lm_eval_<tasks>[_<cache>].json
log_samples = False  # also keep every request and its answer in the JSON
bench = False  # instead of scoring: requests per second, this class against lm-eval's hf backend on the export
bench_rounds = 3  # rounds of each backend, alternating (the median is reported)
# -----------------------------------------------------------------------------
# the defaults, which every run starts from (main() never changes them: run_many runs the script many
# times in one process)
SETTINGS = {k: v for k, v in dict(globals()).items() if k in config_keys(globals())}

INSTALL = 'pip install "lm_eval[hf]>=0.4.10,<0.5"'


def model_and_vocab(init_from, out_dir, device):
    """(model, meta) of a lensgpt or nanoGPT checkpoint (out_dir/ckpt.pt: a budget run's model as the static
    model it became, evaluate.trained_model) or of GPT-2 weights (a name, or a local Hugging Face folder);
    meta: the character vocabulary (meta.pkl) of the checkpoint's dataset, or None for GPT-2's BPE."""
    if init_from == "resume":
        ckpt, model, _ = trained_model(os.path.join(out_dir, "ckpt.pt"), device)
        dataset = ckpt["config"].get("dataset")
        meta = dataset_meta(dataset) or None
        if meta is not None and meta.get("mask"):
            die(f"this model was trained on data/{dataset}, token ids with no text vocabulary: lm-eval's tasks are "
                f"text; measure it with kv_cache_bench.py or ablate.py")
        if meta is None and model.config.vocab_size < 50257:
            die(f"this model has {model.config.vocab_size} tokens, fewer than GPT-2's 50257, and no character "
                f"vocabulary: data/{dataset}/meta.pkl is missing (prepare the dataset again)")
        return model, (meta if meta and "stoi" in meta else None)
    try:
        model = GPT.from_pretrained(init_from).to(device).eval()
    except (OSError, ValueError) as e:
        die(f"cannot load {init_from}: {str(e).splitlines()[0]}")
    if model.config.vocab_size < 50257:  # a character-level export: its vocabulary is its checkpoint's meta.pkl
        die(f"{init_from} has {model.config.vocab_size} tokens, fewer than GPT-2's 50257: score a character-level "
            f"model from its checkpoint (--out_dir)")
    return model, None


def cache_arg(value):
    """kv_cache as False, True, "auto", "kv" or "input" (the command lines give text); anything else is an error."""
    form = {"True": True, "true": True, "False": False, "false": False, "None": False, None: False}.get(value, value)
    if form not in (False, True, "auto", "kv", "input"):
        die(f"kv_cache must be False, True, auto, kv or input, got {value!r}")
    return form


def layers_arg(value):
    """attn_skip_layers as a tuple of ints, from a tuple, a list, an int, or text such as "(2,3)" or "2;3"."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = ast.literal_eval(text) if text.startswith(("(", "[")) else \
                tuple(int(v) for v in re.split(r"[;\s]+", text) if v)
        except (ValueError, SyntaxError):
            die(f"attn_skip_layers={value!r} must be layer numbers, e.g. (2,3) or 2;3")
    value = (value,) if isinstance(value, int) else value
    if not isinstance(value, (tuple, list)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        die(f"attn_skip_layers={value!r} must be layer numbers, e.g. (2,3)")
    return tuple(value)


class LensGPT(TemplateLM):
    """lm-eval's model API for a lensgpt or nanoGPT checkpoint. Log-likelihoods come from one forward pass
    per sequence (kv_cache=False) or from decoding every token through a KV cache in the form, bits and
    pruning asked for (evaluate.cached_logits: what generation with that cache would compute); generation
    runs through the engine's KV cache (engine.generate_stream)."""

    def __init__(self, out_dir="out", init_from="resume", device=None, dtype=None, batch_size=16,
                 max_batch_size=None, kv_cache=False, kv_bits=16, kv_group=32, kv_residual=0, attn_skip_layers=(),
                 max_gen_toks=256, **unknown):
        super().__init__()
        if unknown:
            near = {k: difflib.get_close_matches(k, self.ARGS, n=1) for k in unknown}
            k = next(iter(unknown))
            die(f"lensgpt does not take model_args {', '.join(unknown)}"
                + (f" (did you mean {near[k][0]}?)" if near[k] else f"; it takes {', '.join(self.ARGS)}"))
        try:  # lm-eval's command line passes numbers as text
            batch_size, kv_bits, kv_group, kv_residual, max_gen_toks = (
                int(v) for v in (batch_size, kv_bits, kv_group, kv_residual, max_gen_toks))
        except ValueError:
            die(f"batch_size, kv_bits, kv_group, kv_residual and max_gen_toks must be whole numbers (batch_size=auto "
                f"is not supported), got {batch_size!r}, {kv_bits!r}, {kv_group!r}, {kv_residual!r}, {max_gen_toks!r}")
        require((batch_size >= 1 and max_gen_toks >= 1, "batch_size and max_gen_toks must be >= 1"))
        self._device, _, self.dtype, _, self.ctx = setup_device(device, dtype)
        self.model, meta = model_and_vocab(init_from, out_dir, self._device)
        cfg = self.model.config
        skip = layers_arg(attn_skip_layers)
        bad = [i for i in skip if not 0 <= i < cfg.n_layer]
        if bad:
            die(f"attn_skip_layers {bad} are not layers of this {cfg.n_layer}-layer model")
        form = cache_arg(kv_cache)
        try:  # the cache forms and quantization are the engine's to check: one check each
            gen_form = cache_form(cfg, form or "auto")
            check_quant(cfg, gen_form, kv_bits, kv_group, kv_residual)
        except ValueError as e:
            die(str(e))
        if kv_bits != 16 and not form:
            die(f"kv_bits={kv_bits} quantizes the KV cache: it needs kv_cache (kv, input or auto) to score through it")
        self.cache = dict(form=gen_form, kv_bits=kv_bits, kv_group=kv_group, kv_residual=kv_residual,
                          attn_skip_layers=skip)
        self.scores_cached = bool(form)  # else one forward pass per sequence (generation always uses the cache)
        self.batch_size, self.max_gen_toks, self.skip = batch_size, max_gen_toks, skip
        self.batch_sizes = {}  # lm-eval records it in the results' config
        if meta is None:  # GPT-2's BPE through tiktoken (its files from TIKTOKEN_CACHE_DIR where set)
            import tiktoken
            enc = tiktoken.get_encoding("gpt2")
            self._eot, self.eos = enc.eot_token, "<|endoftext|>"
            self._encode = lambda s: enc.encode(s, allowed_special="all")  # as HF's GPT-2 tokenizer reads specials
            # ids past the tokenizer's 50257 are the embedding's padding (50304): no text maps to them
            self._decode = lambda ids: enc.decode([i for i in ids if i < enc.n_vocab])
        else:  # a character vocabulary (meta.pkl)
            stoi, itos = meta["stoi"], meta["itos"]
            if "\n" not in stoi:
                die("the character vocabulary has no newline, which stands in for an end-of-text token it lacks")
            # no end-of-text token: a newline starts an empty context (as sample.py's empty prompt), and
            # generation stops only at the task's stop strings
            self._eot, self.eos = stoi["\n"], None

            def encode(s):
                missing = sorted({c for c in s if c not in stoi})
                if missing:
                    die(f"the task's text has characters this model's vocabulary lacks: {''.join(missing)!r}")
                return [stoi[c] for c in s]
            # (an id past the vocabulary, the embedding's padding where vocab_size was rounded up, has no text)
            self._encode, self._decode = encode, lambda ids: "".join(itos.get(i, "") for i in ids)

    ARGS = ("out_dir", "init_from", "device", "dtype", "batch_size", "max_batch_size", "kv_cache", "kv_bits", "kv_group",
            "kv_residual", "attn_skip_layers", "max_gen_toks")

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        """lm-eval's "k=v,k=v" model_args, with commas inside brackets kept: attn_skip_layers=(2,3)."""
        from lm_eval.utils import handle_arg_string
        args = {}
        for item in re.split(r",(?![^()\[\]]*[)\]])", arg_string or ""):
            if item.strip():
                k, eq, v = item.partition("=")
                if not eq:
                    die(f"model_args item {item!r} is not key=value")
                args[k.strip()] = handle_arg_string(v)
        return cls(**args, **{k: v for k, v in (additional_config or {}).items() if v is not None})

    # ------------------------------------------------------------------------- what lm-eval asks of a model
    @property
    def eot_token_id(self):
        return self._eot

    @property
    def max_length(self):
        return self.model.config.block_size

    @property
    def tokenizer_name(self):
        return "gpt2" if self.eos else "chars"

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        return self._encode(string)

    def tok_decode(self, tokens, **kwargs):
        return self._decode(list(tokens))

    @torch.no_grad()
    def _score(self, x, spans):
        """Log-probabilities (n, V), float32, of the positions that predict each row's continuation:
        spans[r] = (length of row r, length of its continuation), x (B, T) right-padded."""
        with self.ctx:
            if self.scores_cached:
                logits = cached_logits(self.model, x, **self.cache)
                picked = torch.cat([logits[r, n - c:n] for r, (n, c) in enumerate(spans)])
            else:
                # the model's forward gives only the last position's logits (nanoGPT's inference path):
                # take ln_f's output at every position, and run the head on the scored positions alone
                hidden = []
                hook = self.model.transformer.ln_f.register_forward_hook(lambda m, i, out: hidden.append(out))
                try:
                    self.model(x, attn_skip_layers=self.skip)
                finally:
                    hook.remove()
                picked = self.model.lm_head(torch.cat([hidden[0][r, n - c:n] for r, (n, c) in enumerate(spans)]))
        return F.log_softmax(picked.float(), dim=-1)

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        """(log-likelihood, is greedy) of each (key, context tokens, continuation tokens), as lm-eval's hf
        backend computes them: the context truncated from the left to block_size, the sequences sorted
        longest first and batched (the first batch is the largest: an out-of-memory error shows at once)."""
        bs, seqs = self.max_length, []
        for _, context, continuation in requests:
            if not 0 < len(continuation) <= bs:
                die(f"a continuation of {len(continuation)} tokens cannot be scored with block_size={bs}")
            seqs.append(((context + continuation)[-(bs + 1):][:-1], continuation))
        order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i][0]), seqs[i][0]))
        out = [None] * len(seqs)
        bar = tqdm(total=len(seqs), disable=disable_tqdm, desc="lensgpt loglikelihood")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            x = torch.zeros(len(rows), len(seqs[rows[0]][0]), dtype=torch.long)  # padding: any id, never scored
            for r, i in enumerate(rows):
                x[r, :len(seqs[i][0])] = torch.tensor(seqs[i][0])
            spans = [(len(seqs[i][0]), len(seqs[i][1])) for i in rows]
            logp = self._score(x.to(self._device), spans)
            at = 0
            for i, (_, c) in zip(rows, spans):
                cont = torch.tensor(seqs[i][1], device=logp.device)
                lp = logp[at:at + c]
                # summed in float64: a rolling text adds up hundreds of windows' sums
                out[i] = (lp.gather(1, cont[:, None]).double().sum().item(), bool((lp.argmax(-1) == cont).all()))
                at += c
                if requests[i][0] is not None:  # lm-eval's --use_cache
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
            bar.update(len(rows))
        bar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """Each text's whole log-likelihood, in windows of block_size that score every token once, the
        first conditioned on the end-of-text token (lm-eval's get_rolling_token_windows, as its hf backend)."""
        windows, owner = [], []
        for i, (string,) in enumerate(r.args for r in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += ll
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    GEN_OPTIONS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k")

    def generate_until(self, requests, disable_tqdm=False):
        """Text generated for each (context, generation options), through the engine's KV cache (the
        scoring's form, bits and pruning; the smaller form where scoring uses none), until a stop string or
        max_gen_toks tokens; temperature 0 (or do_sample False) is greedy. Requests with the same options and
        context length decode as one batch (the model has no padding mask). The context keeps its last
        block_size - max_gen_toks tokens, as lm-eval's hf backend; where max_gen_toks leaves no room, the
        last block_size, and the window slides as tokens are made."""
        jobs = {}
        for i, (context, gen_kwargs) in enumerate(r.args for r in requests):
            opts = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            extra = sorted(set(opts) - set(self.GEN_OPTIONS))
            if extra:
                die(f"generation option(s) {', '.join(extra)} are not supported by lensgpt "
                    f"({', '.join(self.GEN_OPTIONS)} are)")
            until = handle_stop_sequences(opts["until"], eos=self.eos)
            n = int(opts["max_gen_toks"])
            temperature = float(opts["temperature"]) if opts["do_sample"] else 0.0
            ids = self.tok_encode(context) or [self.prefix_token_id]
            ids = ids[-(self.max_length - n if n < self.max_length else self.max_length):]
            key = (json.dumps(until), n, temperature, opts.get("top_k") or None, len(ids))  # top_k 0: all tokens
            jobs.setdefault(key, []).append((i, ids))
        out = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="lensgpt generate_until")
        for (until, n, temperature, top_k, _), items in sorted(jobs.items(), key=lambda kv: -kv[0][-1]):
            until = json.loads(until)
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                x = torch.tensor([ids for _, ids in batch], dtype=torch.long, device=self._device)
                made, done = [[] for _ in batch], [False] * len(batch)
                with self.ctx:
                    for tok in generate_stream(self.model, x, n, temperature=temperature, top_k=top_k,
                                               kv_cache=self.cache["form"], attn_skip_layers=self.skip,
                                               kv_bits=self.cache["kv_bits"], kv_group=self.cache["kv_group"],
                                               kv_residual=self.cache["kv_residual"]):
                        for r, t in enumerate(tok[:, 0].tolist()):
                            if not done[r]:
                                made[r].append(t)
                                text = self.tok_decode(made[r])
                                done[r] = any(s and s in text for s in until)
                        if all(done):
                            break
                for (i, _), toks in zip(batch, made):
                    out[i] = postprocess_generated_text(self.tok_decode(toks), until, None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(batch))
        bar.close()
        return out


# ----------------------------------------------------------------------------- the command line
def task_manager(names, include_path):
    """lm-eval's TaskManager for these task names: the include_path folder alone where it has them all
    (indexing lm-eval's own ~15,000 task files takes seconds), else with lm-eval's tasks. A name lm-eval
    does not know is a one-line error with the close names."""
    from lm_eval.tasks import TaskManager
    if include_path:
        if not os.path.isdir(include_path):
            die(f"include_path={include_path} is not a folder")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    tm = TaskManager(include_path=include_path or None)
    for n in names:
        if n not in tm.all_tasks:
            near = difflib.get_close_matches(n, tm.all_tasks, n=5, cutoff=0.6)
            die(f"lm-eval does not know the task {n!r}" + (f"; close names: {', '.join(near)}" if near else
                                                             "; list them with `lm-eval ls tasks`"))
    return tm


@contextlib.contextmanager
def task_data_errors():
    """A task's data that cannot be read (offline, or data_files not where its YAML says): one line."""
    try:
        yield
    except OSError as e:  # datasets' ConnectionError and FileNotFoundError among them
        where = (f" (a task's data_files are found from the working directory, {os.getcwd()})"
                 if isinstance(e, FileNotFoundError) else "")
        die(f"lm-eval could not load a task's data: {str(e).splitlines()[0] if str(e) else type(e).__name__}{where}")


def task_requests(names, tm, limit=None):
    """{request type: [Instance]} of these tasks, built as lm-eval's evaluator builds them."""
    from lm_eval.evaluator_utils import get_sample_size
    from lm_eval.tasks import get_task_dict

    def leaves(d):
        for v in d.values():
            yield from (leaves(v) if isinstance(v, dict) else [v] if hasattr(v, "build_all_requests") else [])
    out = {}
    for task in leaves(get_task_dict(names, tm)):
        task.build_all_requests(limit=get_sample_size(task, limit), rank=0, world_size=1)
        for inst in task.instances:
            out.setdefault(inst.request_type, []).append(inst)
    return out


def results_path(o, names):
    """<out_dir>/lm_eval_<tasks>[_<cache form><bits>][_skip<layers>].json."""
    tag, form = "+".join(names), cache_arg(o.kv_cache)
    if form:
        tag += f"_{'auto' if form is True else form}{o.kv_bits}"
    if o.attn_skip_layers:
        tag += "_skip" + "-".join(map(str, o.attn_skip_layers))
    return os.path.join(o.out_dir, f"lm_eval_{tag}.json")


def run_bench(o, lens, names, tm):
    """Requests per second of this class and of lm-eval's hf backend on the same model exported with
    export_hf.py, on the same requests (the tasks' own), the backends alternating for bench_rounds rounds;
    and how far apart their log-likelihoods are."""
    import statistics
    import tempfile
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        die(f"--bench runs lm-eval's hf backend, which needs transformers: {INSTALL}")
    from export_hf import export
    with task_data_errors():
        reqs = task_requests(names, tm, o.limit)
    with tempfile.TemporaryDirectory(prefix="lensgpt-bench-") as d:
        to = os.path.join(d, "hf")
        export(o.out_dir, to, quiet=True)
        hf = HFLM(pretrained=to, device=str(lens.device), batch_size=o.batch_size, max_length=lens.max_length,
                  dtype=lens.dtype, trust_remote_code=True)
        times, answers = {"lensgpt": [], "hf": []}, {}
        for _ in range(o.bench_rounds):
            for name, lm in (("lensgpt", lens), ("hf", hf)):
                t0 = time.perf_counter()
                answers[name] = {k: getattr(lm, k)(v, disable_tqdm=True) for k, v in reqs.items()}
                if torch.device(lens.device).type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
    n = sum(len(v) for v in reqs.values())
    lls = lambda a: [x[0] if isinstance(x, tuple) else x for k in ("loglikelihood", "loglikelihood_rolling")
                     for x in a.get(k, [])]
    gap = max((abs(p - q) for p, q in zip(lls(answers["lensgpt"]), lls(answers["hf"]))), default=0.0)
    print(f"{n} requests ({', '.join(f'{len(v)} {k}' for k, v in reqs.items())}) of {', '.join(names)}; device "
          f"{lens.device}, {lens.dtype}, batch_size {o.batch_size}, {torch.get_num_threads()} threads, median of "
          f"{o.bench_rounds} rounds")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:8s} {t:8.3f} s  {n / t:8.1f} requests/s")
    print(f"  hf time / lensgpt time: {statistics.median(times['hf']) / statistics.median(times['lensgpt']):.2f}; "
          f"largest log-likelihood difference {gap:.2e}")


def main(argv):
    g = dict(SETTINGS, __file__=__file__, __doc__=__doc__)  # --help reads the comments beside the settings
    configure(g, argv)
    o = SimpleNamespace(**{k: g[k] for k in SETTINGS})
    names = [t for t in o.tasks.split(",") if t]
    require((names, "tasks is empty: name lm-eval tasks, e.g. --tasks=hellaswag,lambada_openai"),
            (o.limit is None or (isinstance(o.limit, (int, float)) and o.limit > 0),
             f"limit must be > 0 (or None for all), got {o.limit!r}"),
            (o.bench_rounds >= 1, "bench_rounds must be >= 1"))
    if o.init_from == "resume" and not os.path.isfile(os.path.join(o.out_dir, "ckpt.pt")):
        die(f"no checkpoint at {os.path.join(o.out_dir, 'ckpt.pt')}")
    path = o.json_out or results_path(o, names)
    if not o.bench:
        check_writable(path, "json_out", is_dir=False)
    tm = task_manager(names, o.include_path)
    args = {k: getattr(o, k) for k in LensGPT.ARGS if k != "max_batch_size"}
    lens = LensGPT(**args)
    if o.bench:
        return run_bench(o, lens, names, tm)
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable, make_table
    with task_data_errors():
        results = simple_evaluate(model=lens, tasks=names, num_fewshot=o.num_fewshot, limit=o.limit, task_manager=tm,
                                  log_samples=o.log_samples, batch_size=o.batch_size)
    # the model went in as an object: record how it was made, so that the JSON says what was scored
    results["config"].update(model="lensgpt", model_args=args)
    write_text(path, json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    print(make_table(results))
    print(f"results: {path}")


def lm_eval_cli(argv):
    """lm-eval's own command line, with `lensgpt` registered (this module is imported)."""
    from lm_eval.__main__ import cli_evaluate
    sys.argv = ["lm_eval"] + argv
    cli_evaluate()


if __name__ == "__main__":
    if TemplateLM is object:  # no lm-eval, and --help: main() prints the settings and exits
        main(sys.argv[1:])
    # the class is registered by the module `eval_harness`, once per process, however often this script runs
    import eval_harness
    if sys.argv[1:2] in (["lm_eval"], ["lm-eval"]):
        eval_harness.lm_eval_cli(sys.argv[2:])
    else:
        eval_harness.main(sys.argv[1:])
else:
    register_model("lensgpt")(LensGPT)
