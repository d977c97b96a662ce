"""Which GEMM runs each big product of the numba backend, chosen per machine from measurements.

The candidates for a product: `own` (what the backend runs with no tuning: gemm.py's 8 x 32
blocking, 5 x 16 on a target without AVX-512, split as untuned), the same GEMM in other register
blockings (gemm_variants.py: 12 x 32 for AVX-512 cores with two FMA units, 6 x 16 for AVX2-only
cores) and BLAS (SciPy's, the ?gemm np.dot calls; blas.py). On the first use of a product's shape
(LSTM_ENGINE_TUNE=auto, the default) every candidate is validated against a float64 NumPy product of
the same inputs, then timed; the fastest valid one is kept in a JSON file beside numba's cache,
keyed by CPU model, thread count, numba's target, library versions, the kernels' source stamp, dtype
and shape, so a change of any of them tunes again.  `own` wins unless another is faster by MARGIN.
At first use only the candidates whose machine code is ready (in this process or numba's disk
cache: compiling them, `own`'s entry included, costs minutes on a cold cache) take part, within FIRST_USE_SECONDS
for the whole process; such a record names what it timed and is redone when more are ready.
`lstm-engine tune` compiles and times every candidate.
LSTM_ENGINE_TUNE=off runs `own` everywhere, tunes nothing and reads no file.

Dimension legend: a product is C (m,n) = op(A) (m,k) @ op(B) (k,n) as in BLAS; nt threads.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..core import environment as env
from ..errors import UserError

TUNE_MIN_MACS = 1 << 22      # smaller products keep `own` untuned (compile time would not pay)
MARGIN = 1.1                 # another candidate replaces `own` only when this much faster
BUSY_LOAD_PER_CORE = 1.5     # above this 1-minute load per usable core timings are noise: no tuning then
SECONDS_PER_PRODUCT = 0.3    # timed rounds (one call of each valid candidate in turn): at least REPEATS,
REPEATS = 3                  # then more while within this; each candidate's best call counts, so a
MAX_ROUNDS = 25              # burst of load hits every candidate alike and a quiet moment serves all
MEASURE_MAX_MACS = 1 << 28   # a bigger product is measured on fewer rows (m) or a shorter sum (k): cost per
                             # row is constant at these sizes, and the float64 reference stays cheap
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}   # scale-relative, as tests/parity.py 'wide'
FIRST_USE_SECONDS = 3.0      # all first-use tuning of a process; products past it run `own`, unrecorded
QUICK_COMPILE = ()           # candidates timed at first use even when cold (none: blas compiles in seconds too)
MAX_ENTRIES = 512            # choices kept in the file (the oldest go first)
FILE_NAME = "lstm_engine_tune.json"
FORMAT = 1

_memory = {}                 # key -> choice name, this process
_file_cache = None           # the file's entries as read once by this process
_spent = [0.0]               # seconds of first-use tuning in this process (against FIRST_USE_SECONDS)
_said = set()                # the one-time stderr lines already printed
_clock = time.perf_counter   # the tuner's clock (tests give it a fake one)


@dataclass(frozen=True)
class Product:
    """One product the backend asks about.  kind 'lstm': `own` is lstm_layer.mm (split by columns);
    'output': output_layer.mm_rows (rows split, alpha 1, beta 0).  betas: the betas it is called with."""
    label: str = field(compare=False)
    kind: str
    m: int
    k: int
    n: int
    trans_a: bool = False
    trans_b: bool = False
    betas: tuple = field(default=(0.0,), compare=False)

    @property
    def shape(self):
        return f"{self.m}x{self.k}x{self.n}"

    @property
    def macs(self):
        """Multiply-adds of one call: its size for TUNE_MIN_MACS and the first-use order."""
        return self.m * self.k * self.n


def layer_products(T, B, I, H, table, G=None):
    """The tuned products of one layer (T,B) I -> H with G gate columns (4H: lstm, peephole; 3H:
    coupled, gru); with the layer-0 table only dW_h's."""
    N, G = T * B, G or 4 * H
    rec = Product("h^T dz", "lstm", H, N, G, True, False, (0.0, 1.0))               # dW_h (H,G)
    if table:
        return [rec]
    return [Product("x W_x", "lstm", N, I, G),                                      # acts (N,G)
            rec,
            Product("x^T dz", "lstm", I, N, G, True, False, (0.0, 1.0)),            # dW_x (I,G)
            Product("dz W_x^T", "lstm", N, G, I, False, True)]                      # dx (N,I)


def output_products(N, H, V):
    """The output layer's products: logits, dx (W^T copied once) and dW."""
    return [Product("x Wy", "output", N, H, V),                                     # logits (N,V)
            Product("dy Wy^T", "output", N, V, H),                                  # dx (N,H)
            Product("x^T dy", "output", H, N, V, True)]                             # dWy (H,V)


_products = [None]   # "bf16" while this process trains with bfloat16 products (set_products)
_sampler = [None]    # "int8" or "bf16" while this process's sampler alone streams such weights (set_products)


def mode():
    """'auto', 'off', or the name of a candidate forced for every product (LSTM_ENGINE_TUNE, checked;
    'bf16' while set_products asks for it)."""
    return _products[0] or env.get("LSTM_ENGINE_TUNE", "auto")


def set_products(name, sampler_only=False):
    """'bf16': force the bfloat16 products in this process (a run's --products); 'int8', or 'bf16'
    with sampler_only: the sampler's weights in 8 bits or bfloat16 (generate --products), every
    product as LSTM_ENGINE_TUNE says; else back to LSTM_ENGINE_TUNE."""
    _products[0] = "bf16" if name == "bf16" and not sampler_only else None
    _sampler[0] = name if name == "int8" or name == "bf16" and sampler_only else None


def sampler_weights():
    """What the sampler streams of a float32 model: what set_products gave it ('int8', 'bf16'), 'bf16'
    with bfloat16 products, else None (the weights as stored)."""
    return _sampler[0] or ("bf16" if mode() == "bf16" else None)


def active(products):
    """True when the backend must ask `choose` about these products: tuning on and one of them
    big enough, or a candidate forced (whatever the size: tests run forced candidates on small shapes)."""
    m = mode()
    return m != "off" and m != "own" and (m != "auto" or max(p.macs for p in products) >= TUNE_MIN_MACS)


# ----------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------

def candidates(kind):
    """name -> product(A, B, C, trans_a, trans_b, alpha, beta, prod) for a product kind, `own` first;
    BLAS only where numba finds it."""
    from ..kernels.numba import blas, gemm_variants, lstm_layer, output_layer
    if kind == "lstm":
        out = {"own": lstm_layer.mm}
    else:
        def own_rows(A, B, C, trans_a, trans_b, alpha, beta, prod):
            output_layer.mm_rows(A, B, C, trans_a, trans_b, prod)
        own_rows.calls = lambda args: (output_layer.mm_rows, args[:5] + args[7:])    # what `compiled` checks
        out = {"own": own_rows}
    out.update(gemm_variants.PRODUCTS)
    if blas.available()[0]:
        out["blas"] = blas.mm_blas
    return out


_EXTRA = {}          # name -> product added to every kind's candidates (tests inject a wrong one here)
_FNS = {}
OPT_IN = ("bf16",)   # products only LSTM_ENGINE_TUNE forces: they round the operands, so never chosen


_OFFERED = {}        # name -> (product or None, why not): the CPU and the ISA switch do not change in a process


def opt_in(name):
    """The opt-in product `name` -> (product or None, why not)."""
    got = _OFFERED.get(name)
    if got is None:
        from ..kernels.numba import gemm_amx, gemm_bf16
        ok, why = gemm_bf16.available()
        fn = gemm_bf16.mm_bf16 if ok else None
        if ok and gemm_amx.available()[0]:       # AMX tiles: several times vdpbf16ps's rate (docs/numba.md)
            fn = gemm_amx.mm_amx
        got = _OFFERED[name] = fn, why
    return got


def bf16_loops(dtype):
    """True when LSTM_ENGINE_TUNE=bf16 and dtype is float32: the time loops' recurrent products
    then run in bfloat16 too (a UserError where the CPU lacks them)."""
    if mode() != "bf16" or np.dtype(dtype) != np.float32:
        return False
    _forced("bf16", "lstm")
    return True


def product_fn(kind, name):
    """The candidate `name` of a product kind (as the backend calls it)."""
    fn = _FNS.get((kind, name))
    if fn is None:
        fn = _FNS[kind, name] = opt_in(name)[0] if name in OPT_IN else {**candidates(kind), **_EXTRA}[name]
    return fn


def compiled(fn, args):
    """True when fn(*args) runs without compiling: a plain Python function, or a numba dispatcher
    with machine code for these argument types in this process or in its disk cache."""
    if not hasattr(fn, "overloads") or not hasattr(fn, "typeof_pyval"):
        return True
    try:
        sig = tuple(fn.typeof_pyval(a) for a in args)
        if sig in fn.overloads:
            return True
        cache = fn._cache              # numba's index: (sig, target, code hash) -> data file; stale source -> {}
        return cache._index_key(sig, fn.targetctx.codegen()) in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - no disk cache, or numba's internals moved: counted as not ready
        return False


def ready(product, dtype, prod):
    """name -> product of the candidates measure() can time now without a long compile: those in
    QUICK_COMPILE and those compiled for the argument types measure() calls them with (`own`'s
    entry too: cold, it compiles for tens of seconds like the others)."""
    a = np.zeros((1, 1), dtype)                                                    # (1,1): only its type counts
    args = (a, a, a, product.trans_a, product.trans_b, 1.0, 0.0, prod)
    fns = {**candidates(product.kind), **_EXTRA}
    return {n: f for n, f in fns.items()
            if n in QUICK_COMPILE or compiled(*(f.calls(args) if hasattr(f, "calls") else (f, args)))}


# ----------------------------------------------------------------------------
# Keys and the file
# ----------------------------------------------------------------------------

def machine_key(nt):
    """What a measurement depends on besides the product: CPU, threads, numba's target, versions."""
    from importlib import metadata

    from ..kernels.numba.cache import kernels_stamp

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    import numba

    from ..core.environment import vector_width
    return {"cpu": cpu_model(), "threads": int(nt), "numba_cpu": numba.config.CPU_NAME or "host",
            "vectors": vector_width(),
            "numba": numba.__version__, "numpy": np.__version__, "scipy": version("scipy"),
            "engine": version("lstm-engine"), "kernels": kernels_stamp()[:16], "blas": blas_kernel()}


def blas_kernel():
    """The kernels the process's BLAS libraries run ('SkylakeX', 'Haswell': OpenBLAS picks one at
    load and OPENBLAS_CORETYPE overrides it), on which the blas candidate's speed depends."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:     # pragma: no cover - an install_requires
        return None
    kinds = {str(lib.get("architecture")) for lib in threadpool_info() if lib.get("user_api") == "blas"}
    return ",".join(sorted(kinds)) or None


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, with its family/model numbers where listed."""
    fields = env.cpuinfo()
    import platform
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    ids = "/".join(fields[k] for k in ("cpu family", "model", "stepping") if k in fields)
    return f"{name} ({ids})" if ids else name


def key_of(product, dtype, nt):
    """The file's key of one choice (a JSON string: readable, and any change of a part misses)."""
    return json.dumps([machine_key(nt), product.kind, np.dtype(dtype).name, product.m, product.k, product.n,
                       product.trans_a, product.trans_b], sort_keys=True)


def tune_file():
    """LSTM_ENGINE_TUNE_FILE, else beside numba's cache of the kernels: $NUMBA_CACHE_DIR, the
    kernels' __pycache__ when writable, else the user's cache directory."""
    path = env.get("LSTM_ENGINE_TUNE_FILE")
    if path:
        return path
    return os.path.join(os.environ.get("NUMBA_CACHE_DIR") or env._default_numba_cache(), FILE_NAME)


def read_entries(path):
    """The file's entries {key: record}; {} when it is missing, unreadable or not ours (rewritten later)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("choice"), str)}


def write_entry(path, key, record):
    """Add one choice to the file (read, merge, atomic replace); a file that cannot be written is
    left as it is and the choice stays in this process only."""
    from ..storage.atomic import atomic_write_bytes
    entries = read_entries(path)
    entries.pop(key, None)
    entries[key] = record
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    data = json.dumps({"format": FORMAT, "entries": entries}, indent=1, sort_keys=False).encode()
    try:
        atomic_write_bytes(path, data, make_dirs=True)
    except OSError as e:
        print(f"numba tune: could not write {path} ({e.strerror or e}); the choice holds for this run only",
              file=sys.stderr)
    return entries


# ----------------------------------------------------------------------------
# Validating and timing
# ----------------------------------------------------------------------------

def _operands(product, dtype, seed=0):
    """Random A, B of the product's layout and the float64 reference of op(A) op(B)."""
    rng = np.random.default_rng(seed)
    p = product
    A = rng.standard_normal((p.k, p.m) if p.trans_a else (p.m, p.k)).astype(dtype)    # (m,k) or (k,m)
    B = rng.standard_normal((p.n, p.k) if p.trans_b else (p.k, p.n)).astype(dtype)    # (k,n) or (n,k)
    C0 = rng.standard_normal((p.m, p.n)).astype(dtype)                                # (m,n) for beta = 1
    ref = (A.T if p.trans_a else A).astype(np.float64) @ (B.T if p.trans_b else B).astype(np.float64)
    return A, B, C0, ref


def validate(fn, product, dtype, operands, prod):
    """Worst scale-relative error of fn over the product's betas (beta 0 writes over NaN); inf
    when it raises or returns NaN."""
    A, B, C0, ref = operands
    worst = 0.0
    for beta in product.betas:
        C = C0.copy() if beta else np.full(C0.shape, np.nan, C0.dtype)               # (m,n)
        want = ref + C0 if beta else ref
        try:
            fn(A, B, C, product.trans_a, product.trans_b, 1.0, float(beta), prod)
        except Exception:      # noqa: BLE001 - a candidate that crashes is reported, never chosen
            return float("inf")
        if not np.isfinite(C).all():
            return float("inf")
        worst = max(worst, float(np.abs(C - want).max() / max(np.abs(want).max(), 1e-30)))
    return worst


def time_calls(fns, product, operands, prod):
    """name -> best seconds of one call, the candidates timed in turns (see SECONDS_PER_PRODUCT)."""
    A, B, C0, _ = operands
    C = C0.copy()                                                                  # (m,n)
    best = {name: float("inf") for name in fns}
    t_start, rounds = time.perf_counter(), 0
    while fns and (rounds < REPEATS or time.perf_counter() - t_start < SECONDS_PER_PRODUCT and rounds < MAX_ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(A, B, C, product.trans_a, product.trans_b, 1.0, 0.0, prod)
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


def measured_shape(product):
    """The product as measured: m, then k, cut so that m*k*n <= MEASURE_MAX_MACS (never below 512)."""
    from dataclasses import replace
    m, k, n = product.m, product.k, product.n
    if m * k * n > MEASURE_MAX_MACS and m > 512:
        m = max(512, MEASURE_MAX_MACS // (k * n))
    if m * k * n > MEASURE_MAX_MACS and k > 512:
        k = max(512, MEASURE_MAX_MACS // (m * n))
    return replace(product, m=m, k=k)


def measure(product, dtype, prod, fns=None):
    """-> record {choice, why, seconds, rows: [{name, error, seconds, valid}], untimed} for one
    product, over the candidates fns (name -> product; all of them when None)."""
    dtype = np.dtype(dtype)
    t_start = time.perf_counter()
    timed = measured_shape(product)
    operands = _operands(timed, dtype)
    tol = TOLERANCE[dtype]
    every = {**candidates(product.kind), **_EXTRA}
    fns = every if fns is None else fns
    errors = {name: validate(fn, timed, dtype, operands, prod) for name, fn in fns.items()}   # also compiles
    seconds = time_calls({n: f for n, f in fns.items() if errors[n] <= tol}, timed, operands, prod)
    rows = [{"name": name, "error": err if np.isfinite(err) else None, "seconds": seconds.get(name),
             "valid": err <= tol} for name, err in errors.items()]
    choice, why = decide(rows, tol)
    return {"choice": choice, "why": why, "product": product.label, "shape": product.shape, "timed": timed.shape,
            "dtype": dtype.name, "threads": prod or 1, "rows": rows, "untimed": [n for n in every if n not in fns],
            "tuned_seconds": round(time.perf_counter() - t_start, 3)}


def decide(rows, tol):
    """The fastest valid candidate if it beats `own` by MARGIN, else `own` -> (name, why)."""
    valid = [r for r in rows if r["valid"]]
    own = next((r for r in valid if r["name"] == "own"), None)
    if not valid:
        return "own", f"no candidate within {tol:.0e} of the reference"
    best = min(valid, key=lambda r: r["seconds"])
    if own is None:
        return best["name"], f"fastest valid candidate (own failed validation)"
    if best["name"] != "own" and best["seconds"] * MARGIN <= own["seconds"]:
        return best["name"], f"{own['seconds'] / best['seconds']:.2f}x faster than own"
    return "own", ("fastest" if best["name"] == "own"
                   else f"{best['name']} only {own['seconds'] / best['seconds']:.2f}x faster (< {MARGIN}x)")


# ----------------------------------------------------------------------------
# The backend's question
# ----------------------------------------------------------------------------

def choose(product, dtype, prod):
    """The candidate name for a product of this dtype on `prod` threads (None: one): `own` when
    tuning is off or the product is small; else the cached choice, measured now on a miss or when
    candidates that record did not time are ready now."""
    m = mode()
    if m in OPT_IN and np.dtype(dtype) != np.float32:
        return "own"                                   # rounding to bfloat16 would undo a float64 model
    if m != "auto":
        return _forced(m, product.kind)
    if product.macs < TUNE_MIN_MACS:
        return "own"
    nt = prod or 1
    mem_key = (product, np.dtype(dtype).name, nt)
    got = _memory.get(mem_key)
    if got is not None:
        return got
    record = cached(key_of(product, dtype, nt))
    fns, kept = None, "own"
    if record is not None and record["choice"] in set(candidates(product.kind)) | set(_EXTRA):
        kept = record["choice"]
        if record.get("untimed"):
            fns = ready(product, dtype, prod)              # a first use's record: redone once more are ready
        if fns is None or not set(fns) & set(record["untimed"]):
            _memory[mem_key] = kept
            return kept
    _memory[mem_key] = choice = _first_use(product, dtype, prod, fns, kept)
    return choice


def _first_use(product, dtype, prod, fns, kept):
    """Measure a product at first use over the ready candidates (fns, else found now) and store
    the record -> choice; `kept` (the cached choice, else `own`), nothing stored, when the machine
    is busy, the process's FIRST_USE_SECONDS are spent or only `own` is ready."""
    if not may_measure():
        return kept
    t0 = _clock()
    fns = ready(product, dtype, prod) if fns is None else fns
    if "own" not in fns or len(fns) < 2:                   # nothing to compare without compiling
        _spent[0] += _clock() - t0
        cold = [n for n in {**candidates(product.kind), **_EXTRA} if n not in fns]
        _say("cold", f"numba tune: not measured: {', '.join(cold)} not compiled yet for these products; the "
                     f"shipped GEMM runs, nothing cached (`lstm-engine tune` compiles and times every candidate)")
        return kept
    record = measure(product, dtype, prod, fns)
    _spent[0] += _clock() - t0
    path = store(key_of(product, dtype, prod or 1), record)
    print(f"numba tune: {report_line(record)} (cached in {path})", file=sys.stderr)
    return record["choice"]


def cached(key):
    """The file's record under key (the file read once a process), or None."""
    global _file_cache
    if _file_cache is None:
        _file_cache = read_entries(tune_file())
    return _file_cache.get(key)


def store(key, record):
    """Write a record under key into the file and this process's copy of it -> the file's path."""
    global _file_cache
    path = tune_file()
    _file_cache = write_entry(path, key, record)
    return path


def may_measure():
    """False, said once, when the machine is busy or this process's FIRST_USE_SECONDS are spent."""
    if busy():
        _say("busy", f"numba tune: the machine is busy ({busy()}): the shipped kernels for now, nothing cached; "
                     f"run `lstm-engine tune` when it is idle")
        return False
    if _spent[0] >= FIRST_USE_SECONDS:
        _say("budget", f"numba tune: first-use budget of {FIRST_USE_SECONDS:g}s spent: what is left keeps the "
                       f"shipped kernels and is measured by a later run (`lstm-engine tune`: all now)")
        return False
    return True


def _say(what, line):
    """Print a line on stderr once per process."""
    if what not in _said:
        _said.add(what)
        print(line, file=sys.stderr)


def _forced(name, kind):
    """The candidate LSTM_ENGINE_TUNE forces ('off' runs `own`); a UserError where it is missing here."""
    if name == "off":
        return "own"
    if name in OPT_IN and opt_in(name)[0] is not None:
        return name
    if name not in candidates(kind):
        raise UserError(f"LSTM_ENGINE_TUNE={name}: that GEMM is not available here ({_missing(name)}); "
                        f"choose auto or another")
    return name


def _missing(name):
    from ..kernels.numba import blas
    if name in OPT_IN:
        return opt_in(name)[1]
    return blas.available()[1] if name == "blas" else "unknown"


def retune(items, dtype, on_record=None):
    """Measure every (product, prod) of items again, whatever is cached, and store the choices
    (`lstm-engine tune`) -> [record] in order, one per distinct product."""
    records, seen = [], set()
    for product, prod in items:
        if (product, prod) in seen:
            continue
        seen.add((product, prod))
        record = measure(product, dtype, prod)
        store(key_of(product, dtype, prod or 1), record)
        _memory[(product, np.dtype(dtype).name, prod or 1)] = record["choice"]
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def busy():
    """'load L on N cores' when other work holds the cores (threaded timings would measure the
    scheduler, and a choice is cached for good), else ''."""
    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (OSError, AttributeError):          # no load average here: measure
        return ""
    return f"load {load:.1f} on {cores} cores" if load > BUSY_LOAD_PER_CORE * cores else ""


def new_budget():
    """FIRST_USE_SECONDS anew for what follows: `bench` gives each config what a training run of
    it would have in a process of its own, and a training run its model what the calibration of a
    time budget spent on the candidates it timed."""
    _spent[0] = 0.0
    _said.discard("budget")


def forget():
    """Drop what this process remembers (tests; the file stays)."""
    global _file_cache
    _memory.clear()
    _FNS.clear()
    _OFFERED.clear()
    _said.clear()
    _spent[0] = 0.0
    _file_cache = None


def report_line(record):
    """'x W_x 1600x128x512 float32 2 thr: gemm12x32 (1.20x faster than own); own 80us, ...'."""
    times = ", ".join(f"{r['name']} {r['seconds'] * 1e6:.0f}us" if r["valid"] else f"{r['name']} invalid"
                      for r in record["rows"])
    timed = "" if record["timed"] == record["shape"] else f" (timed on {record['timed']})"
    rest = record.get("untimed")
    rest = f"; {', '.join(rest)} not compiled yet: `lstm-engine tune` times them" if rest else ""
    return (f"{record['product']} {record['shape']}{timed} {record['dtype']} {record['threads']} thr: "
            f"{record['choice']} ({record['why']}); {times}; {record['tuned_seconds']:.2f}s{rest}")


def format_table(records):
    """The table `lstm-engine tune` prints: one row per candidate of each product, the choice marked."""
    head = ("product", "shape m x k x n", "dtype", "thr", "candidate", "us a call", "error", "chosen")
    rows = []
    for r in records:
        for c in r["rows"]:
            mark = f"<- {r['why']}" if c["name"] == r["choice"] else ""
            err = "crashed" if c["error"] is None else f"{c['error']:.1e}"
            us = f"{c['seconds'] * 1e6:,.0f}" if c["valid"] else "invalid"
            shape = r["shape"] if r["timed"] == r["shape"] else f"{r['shape']} (timed {r['timed']})"
            rows.append((r["product"], shape, r["dtype"], str(r["threads"]), c["name"], us, err, mark))
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    fmt = lambda row: "  ".join(v.ljust(w) if i in (0, 1, 2, 4, 7) else v.rjust(w)      # noqa: E731
                                for i, (v, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows])


def machine_line(key, path):
    """One line: what the choices are keyed by, and where they are kept."""
    return (f"numba tune: {key['cpu']}, {key['threads']} threads, numba {key['numba']} target {key['numba_cpu']} "
            f"(vectors {key.get('vectors', 'default')}), "
            f"numpy {key['numpy']}, scipy {key['scipy']}; choices in {path} (used when LSTM_ENGINE_TUNE="
            f"{mode()}{'' if mode() == 'auto' else ', auto uses them'})"
            + (f"; measured while busy ({busy()}): times are noisy" if busy() else ""))
