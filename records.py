"""Files that must never be half written, and the records they hold: every record, report and
checkpoint goes through atomic_write (temporary file, fsync, rename); every script checks its output
paths with check_writable before any work; a record that cannot be read is a one-line error that names
the file. One dataclass per record kind, written and read by ablate.py, report.py and
kv_cache_bench.py alike. No torch here: report.py reads records without it."""
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional


def atomic_write(path, write):
    """Write `path` through write(f) to a temporary file beside it, flush and fsync it, then rename it
    over `path`: a process killed at any moment leaves the old file or the new one, never half of one.
    The temporary name has the pid, so two processes never write into each other's file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path, obj):
    """A record (JSON), written atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def write_text(path, text):
    """A text file (a report, the README), written atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def check_writable(path, what="out_dir", is_dir=True):
    """That `path` (a folder, or a file's folder) can be created and written, checked before any work:
    a one-line error where not."""
    folder = path if is_dir else (os.path.dirname(os.path.abspath(path)))
    if not is_dir and os.path.isdir(path):
        raise SystemExit(f"error: {what}={path} is a folder, not a file")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"error: {what}={path} cannot be written ({e.strerror or e}); choose another")


def load_record(path):
    """One JSON record; a damaged one (truncated, say, by a full disk or a killed copy) is a one-line
    error that names it and says what to do."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path} is not a readable record ({type(e).__name__}: {e}); delete it and run "
                         "ablate.py again, which trains that run again") from None


# ----------------------------------------------------------------------------- record kinds
@dataclass
class PruningPoint:
    """A model evaluated with attention removed from `layers` (none: the whole model), on fixed
    validation batches; the 16-bit cache bytes per token it then needs in each cache form it can use."""
    layers: list
    val_loss: float
    val_acc: Optional[float]  # recall accuracy where the dataset scores answers, else None
    kv_bytes_per_token: dict  # {"kv": bytes, "input": bytes}
    ranking: Optional[str] = None  # the order that chose the layers: greedy, route_gate or contribution


@dataclass
class QuantPoint:
    """The model's validation loss (and recall accuracy) decoding through a cache in `form` at `kv_bits`,
    teacher-forced one token per step (evaluate.quantized_eval), and what one token costs in that cache
    at long context (engine.kv_bytes_per_token: codes, scale and zero; 16 bits at 2 bytes); `layers`: the
    attention layers removed (the greedy half), none for the whole model."""
    form: str
    kv_bits: int
    kv_group: int
    kv_residual: int
    val_loss: float
    val_acc: Optional[float]
    kv_bytes_per_token: float
    layers: list = field(default_factory=list)


@dataclass
class RunRecord:
    """One training run of a study (results/<study>/<config>/seed<N>.json), made by ablate.py from the
    run's final checkpoint and read by report.py."""
    config: str
    seed: int
    command: str  # the exact train.py command
    model: dict  # its GPTConfig
    machine: dict
    best_val_loss: float
    final_val_loss: float
    final_train_loss: float
    params: int
    iters: int
    tokens_seen: int
    ms_per_iter: float  # mean time of an iteration that trained alone (no evaluation), over every resumed part
    wall_s: float  # seconds train.py ran, every resumed part together
    kv_bytes_per_token: dict  # 16-bit, per cache form the config can use
    lens_gates: dict
    route_gates: Optional[list]
    attention_contribution: list
    half_pruned: dict  # {ranking: PruningPoint} with half of the attention layers removed
    all_pruned: PruningPoint
    pruning: list  # every PruningPoint of every order, 0 .. all layers
    eval_val_loss: float  # the whole model on the pruning evaluation's batches
    eval_val_acc: Optional[float]
    dataset: str
    chance_accuracy: Optional[float]
    history: list  # every evaluation during training: {"iter", "train_loss", "val_loss", "val_acc"}
    attn_layers: Optional[list] = None  # where attention is (placed, or learned under a budget)
    attn_gates: Optional[dict] = None  # a budget run's gates: {"p_open": [...], "z": [...]}
    recorded_best_val_loss: Optional[float] = None  # what a record made again replaced
    quant: list = dataclasses.field(default_factory=list)  # QuantPoints: each form at 16, 8 and 4 bits
    # evaluate.position_eval on the pruning evaluation's batches: the loss at each position of the context,
    # and on the recall set [right, answers] by distance from a query back to its key's latest occurrence
    loss_by_position: Optional[list] = None
    recall_by_distance: Optional[dict] = None

    def __post_init__(self):  # records written before attention placement existed: every layer attends
        if self.attn_layers is None:
            self.attn_layers = list(range(self.model["n_layer"]))

    @classmethod
    def from_dict(cls, d, path="record"):
        """The record a JSON object holds; an unknown or missing field is a one-line error naming the file."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if not isinstance(d, dict) or set(d) - names or required - set(d):
            wrong = sorted(set(d) - names) if isinstance(d, dict) else []
            lacks = sorted(required - set(d)) if isinstance(d, dict) else sorted(required)
            raise SystemExit(f"error: {path} is not a run record (unknown {wrong}, missing {lacks}); delete it and "
                             "run ablate.py again, which trains that run again")
        point = lambda p: PruningPoint(**p)
        return cls(**{**d, "half_pruned": {k: point(p) for k, p in d["half_pruned"].items()},
                      "all_pruned": point(d["all_pruned"]), "pruning": [point(p) for p in d["pruning"]],
                      "quant": [QuantPoint(**q) for q in d.get("quant", [])]})

    def to_dict(self):
        return dataclasses.asdict(self)


def same_run(record, old):
    """Whether a retrained run is the run its old record describes: training is deterministic up to float
    noise (thread counts and kernels reorder sums), which the best validation loss shows as ~1e-4. On a
    dataset scored by accuracy (the recall set) the loss sits near zero, where that noise grows to ~1e-3
    over 2000 steps (seen: 0.0022 against 0.0035); there the study's measure decides, the final accuracy
    to within 0.005."""
    if abs(record.best_val_loss - old.best_val_loss) <= 1e-3:
        return True
    return record.eval_val_acc is not None and old.eval_val_acc is not None and \
        abs(record.eval_val_acc - old.eval_val_acc) <= 0.005


def load_run(path):
    return RunRecord.from_dict(load_record(path), path)


def write_record(path, record):
    """A dataclass record (or a list of them), as JSON, atomically."""
    as_dict = lambda r: dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r
    write_json(path, [as_dict(r) for r in record] if isinstance(record, list) else as_dict(record))


@dataclass
class Study:
    """results/<study>/study.json: one overlay and one set of train.py arguments for all of a study's runs,
    and every ablate.py command that added to it."""
    title: str
    overlay: str
    train_args: str
    commands: list = field(default_factory=list)

    @classmethod
    def load(cls, path):
        d = load_record(path)
        try:
            return cls(**d)
        except TypeError:
            raise SystemExit(f"error: {path} is not a study record (it needs title, overlay, train_args and commands)")


@dataclass
class DecodeRow:
    """kv_cache_bench: one config in one cache form at one context (random weights)."""
    config: str
    form: str
    context: int
    batch_size: int
    dtype: str
    kv_bytes_per_token: int  # analytic, in dtype
    kv_bytes_per_token_measured: float  # bytes the cache's tensors hold / (batch x context)
    prefill_ms: float
    decode_ms: dict = field(default_factory=dict)  # {"eager": ms per token, "compiled": ...}
    kv_bits: int = 16  # 8 or 4: a quantized cache (kv_bytes_per_token: exact bytes of the cache / context)


@dataclass
class ThroughputRow:
    """kv_cache_bench: decoding tokens/s at one batch size, within a memory budget."""
    config: str
    form: str
    context: int
    batch_size: int
    mode: str
    cache_bytes: int
    tokens_per_s: float
    largest: bool  # the largest batch whose cache fits the budget
    kv_bits: int = 16


@dataclass
class PeerRow:
    """kv_cache_bench --peer: one engine's whole generate call, per new token."""
    engine: str
    form: str
    mode: str
    shape: str
    vocab_size: int
    batch_size: int
    prompt: int
    new_tokens: int
    ms_per_token: float
    x_transformers: float = 1.0
    decoding: str = "greedy"  # or "sampled, top_k=K" or "sampled, full vocabulary" (kv_cache_bench --peer_top_k)


@dataclass
class CheckpointCurve:
    """kv_cache_bench --ckpt: a trained checkpoint's pruning curve in every order."""
    checkpoint: str
    config: str  # its run directory
    attention_contribution: list
    points: list  # PruningPoint
    quant: list = field(default_factory=list)  # QuantPoint: the whole model through each cache form and bit width
