"""The Numba CPU backend: the reference's interface over fused, jitted kernels.

Every function here validates its arguments, allocates the outputs and calls one
private @njit kernel from lstm_engine.kernels.numba (lstm_layer, output_layer, adam,
sample); the kernels only loop, and their matrix products run in the hand-written gemm
(kernels/numba/gemm.py), not BLAS.  Shapes, return values and meaning are those of
numpy_backend.py, which the tests compare this module against.

Dimension legend:
    T time steps   B batch   I input size   H hidden   G = 4H   V vocabulary
    E embedding    N = T*B   L layers

Caches are `LayerCache` objects: .x (T,B,I) input (None for layer 0 with the table),
.tokens (T,B) and .Emb (V,E) for layer 0, .W, .h0, .c0, .hs (T,B,H), .cs (T,B,H) and
.acts (T,B,G) activated gates i,f,g,o - the reference's tuple by name.

Per-machine choice: the big products (input projection, weight gradients, the output layer) may
run in another GEMM than the kernels' own when numba_tune.py measured one faster here; the
backend then calls the time loop and the chosen products one by one (LSTM_ENGINE_TUNE=off: never).

Compilation: kernels are compiled on first use for each dtype and thread plan (and, for
Adam and the sampler, each parameter count) and cached on disk (cache=True), so a second
process loads machine code instead of compiling.

Process-wide effects when the kernels first load (docs/numba.md says why):
every BLAS in the process is set to one thread (threadpoolctl) - the cores are used by
numba's threads, numba.get_num_threads() of them (NUMBA_NUM_THREADS=1 on a busy machine) -
and on glibc freed memory up to 256 MiB stays in the heap (mallopt).  PIN_BLAS and
TUNE_MALLOC switch these off when set to False before the first kernel call.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from ..errors import UserError
from . import numba_ahead

NAME = "numba"
xp = np

_K = None   # the kernels modules, imported (and numba with them) on first use

# A layer runs on numba's threads when its recurrent products have at least
# PARALLEL_MIN_MACS multiply-adds (T*B*H*4H) and there are two or more threads: below it,
# one thread is as fast.  Each thread takes a slice of the batch for the whole window (no
# barrier inside the loop) or, when one step's product has at least COLUMNS_MIN_MACS
# (B*H*4H), a slice of the hidden units with a barrier per step (a product runs faster on
# all B rows times fewer columns).  The big products after the loop are split by columns.
PARALLEL_MIN_MACS = 1 << 22
COLUMNS_MIN_MACS = 1 << 24
# Generation splits each layer's hidden units over a team of threads (numba_team.py) when
# the model has at least SAMPLE_ROWS_PER_THREAD hidden units per thread and one call does at
# least SAMPLE_TEAM_MIN_MACS multiply-adds (characters x weights; a team without the caller's
# cache ends with the call, so it pays a thread start): batch-1 sampling is bound by one
# core's cache bandwidth, which each thread of a team adds (docs/numba.md, "Batch-1 sampling").
SAMPLE_ROWS_PER_THREAD = 64
SAMPLE_TEAM_MIN_MACS = 1 << 20
# The softmax cross-entropy splits its rows over the threads from this many logits (N*V).
SOFTMAX_PARALLEL_MIN = 1 << 13
# build the layer-0 sampling table (V rows, by BLAS) only when >= this x V characters will read it
V_TABLE_MIN_CHARS_PER_ROW = 0.5
PIN_BLAS = True     # pin BLAS to one thread when the kernels load (see _single_threaded_blas)
TUNE_MALLOC = True  # keep freed buffers in the heap (see _keep_freed_memory)


def _kernels():
    global _K
    if _K is None:
        from types import SimpleNamespace

        from ..kernels.numba import adam as numba_adam
        from ..kernels.numba import gemm as numba_gemm
        from ..kernels.numba import lstm_layer as numba_lstm
        from ..kernels.numba import output_layer as numba_output
        from ..kernels.numba import sample as numba_sample
        from ..kernels.numba import sample_team as numba_sample_team
        _K = SimpleNamespace(lstm=numba_lstm, out=numba_output, adam=numba_adam, sample=numba_sample,
                             team=numba_sample_team, gemm=numba_gemm)
        from . import numba_notice
        numba_notice.install()                  # a line when a cold cache compiles for long (CLI)
        if PIN_BLAS:
            _single_threaded_blas()
        if TUNE_MALLOC:
            _keep_freed_memory()
    return _K


_BLAS_LIBS = []    # threadpoolctl controllers of the BLAS libraries loaded with the kernels


def _single_threaded_blas():
    """Pin every BLAS loaded in the process (NumPy's, which builds the sampler's layer-0 table,
    and SciPy's) to one thread.  The cores are used by numba's OpenMP threads, which run the
    kernels' own GEMM (kernels/numba/gemm.py) on their blocks; a spinning BLAS pool would fight
    them for the cores."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:     # pragma: no cover - an install_requires
        return
    try:                    # load SciPy's BLAS now (numba would on a first np.dot), so it is pinned too
        from numba.np.linalg import ensure_blas
        ensure_blas()
    except ImportError:     # no SciPy: the blas candidate is not offered
        pass
    _BLAS_LIBS[:] = ThreadpoolController().select(user_api="blas").lib_controllers
    _blas_one_thread()


def _blas_one_thread():
    """Re-pin BLAS to one thread if someone raised it since (checked before threaded kernels)."""
    for lib in _BLAS_LIBS:
        if lib.get_num_threads() != 1:
            lib.set_num_threads(1)


def _keep_freed_memory():
    """glibc: serve buffers up to 32 MiB from the heap and keep up to 256 MiB of freed heap
    instead of returning it to the kernel.  By default every multi-megabyte array NumPy
    allocates (the model's logits and output gradients each step) is a fresh mmap, and its
    first touch costs a page fault per 4 KiB - with several threads also contention on the
    process's page tables.  A process-wide setting, made once when the kernels load; no-op
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)      # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)     # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        pass


def _threads(T, B, H, dt=None):
    """-> (prod, rows, units) for a layer of window T, batch B, hidden size H, as the kernels
    of lstm_layer take them: each None (the calling thread) or a thread count.  With dt (the
    fused LSTM kernels about to run) numba_tune_plan may replace the rule's plan by a measured one."""
    import numba
    nt = numba.get_num_threads()
    if nt < 2 or T * B * H * 4 * H < PARALLEL_MIN_MACS:
        return None, None, None
    if PIN_BLAS:
        _blas_one_thread()                     # no BLAS threads inside numba's threads
    if B * H * 4 * H >= COLUMNS_MIN_MACS and H >= nt:
        rule = nt, None, nt
    else:
        rule = (nt, min(nt, B), None)          # B = 1 too: a loop of one thread, compiled once with B > 1's
    if dt is None:
        return rule
    from . import numba_tune_plan
    return numba_tune_plan.choose(T, B, H, dt, nt, rule, lambda: _plan_probe(T, B, H, dt))


def compile_ahead(model_cfg, batch, seq_len, eval_lengths=()):
    """A context manager: on a cold numba cache, a helper process compiles what a first training
    step of this model (windows (seq_len, batch)) needs after its forward, and what evaluation
    chunks of eval_lengths need beyond it, while this process compiles the forward (numba_ahead.py);
    nothing where the cache holds them, on one core, in an MPI job.  Before that, numba_tune is asked
    about the model's products biggest first (tune_first_use), before a helper takes the other core."""
    tune_first_use(model_cfg, batch, seq_len)
    table = model_cfg.vocab_size <= seq_len * batch                 # embed_lstm_forward's test
    plan = _threads(seq_len, batch, model_cfg.hidden_size)          # the rule's (a measured plan is not yet)
    return numba_ahead.session(model_cfg, batch, seq_len, eval_lengths, table, plan)


def sample_ahead(model_cfg, chars):
    """A context manager: on a cold numba cache, a helper process compiles the sampler's team for
    this model while this process compiles the one-thread sampler, before the first generate
    measures one against the other (numba_ahead.sample_session)."""
    import numba

    from . import numba_tune_sample
    measured = numba_tune_sample.active({}, numba.get_num_threads(), model_cfg.hidden_size)
    return numba_ahead.sample_session(model_cfg, chars, measured)


def tune_plan(T, B, H, dt):
    """The thread plan of a layer of this shape measured again (`lstm-engine tune`) -> record, or
    None where the rule runs it on one thread (small, or one numba thread)."""
    from . import numba_tune_plan
    rule = _threads(T, B, H)
    if rule[0] is None:
        return None
    return numba_tune_plan.retune(T, B, H, dt, rule[0], rule, lambda: _plan_probe(T, B, H, dt))


def _probe_inputs(T, B, H, dt):
    """Random inputs of one layer (I = H) -> x (T,B,H), W (2H,4H), b (4H,), h0, c0 (B,H), dhs (T,B,H);
    the weights drawn as the model's init draws them (U(-1/sqrt(H), 1/sqrt(H)))."""
    rng = np.random.default_rng(0)
    f = lambda k, *shape: rng.uniform(-k, k, shape).astype(dt)                     # noqa: E731
    w = 1.0 / np.sqrt(H)
    return f(1, T, B, H), f(w, 2 * H, 4 * H), f(w, 4 * H), f(1, B, H), f(1, B, H), f(1, T, B, H)


def _plan_probe(T, B, H, dt):
    """(ready(plan), run(plan) -> (hs, dW)) for numba_tune_plan: one layer (I = H) forward and
    backward by the fused kernels on random inputs of this shape; ready: no compile needed.
    The weights are drawn as the model's init draws them (U(-1/sqrt(H), 1/sqrt(H))): larger ones
    make the recurrence chaotic, and a plan's last-bit rounding then grows past the check's tolerance
    within a window."""
    from . import numba_tune
    K = _kernels().lstm
    x, W, b, h0, c0, dhs = _probe_inputs(T, B, H, dt)
    acts, dW = np.empty((T, B, 4 * H), dt), np.empty((2 * H, 4 * H), dt)           # (T,B,G), (H+I,G)

    def ready(plan):
        return (numba_tune.compiled(K.lstm_forward_kernel, (x, W, b, h0, c0, x, x, acts, *plan)) and
                numba_tune.compiled(K.lstm_backward_kernel, (x, x, W, h0, c0, x, x, acts, acts, h0, h0, x, dW, b,
                                                             *plan)))

    def run(plan):
        hs, cs, gates, dzs = np.empty_like(x), np.empty_like(x), np.empty_like(acts), np.empty_like(acts)
        K.lstm_forward_kernel(x, W, b, h0, c0, hs, cs, gates, *plan)
        dh, dc, dx, dW, db = np.zeros_like(h0), np.zeros_like(c0), np.empty_like(x), np.empty_like(W), np.empty_like(b)
        K.lstm_backward_kernel(dhs, x, W, h0, c0, hs, cs, gates, dzs, dh, dc, dx, dW, db, *plan)
        return hs, dW
    return ready, run


def _tuned(products, dt, prod):
    """The product functions numba_tune chose for these products, or None when every one is the
    kernels' own (tuning off, products small, or own measured fastest): the fused entry kernels run."""
    from . import numba_tune
    if not numba_tune.active(products):
        return None
    names = [numba_tune.choose(p, dt, prod) for p in products]
    if all(n == "own" for n in names):
        return None
    return [numba_tune.product_fn(p.kind, n) for p, n in zip(products, names)]


def _layer_products(T, B, I, H, table, G=None):
    from .numba_tune import layer_products
    return layer_products(T, B, I, H, table, G)


def tune_products(E, H, L, B, T, V, cells=("lstm",)):
    """[(Product, prod threads)] the backend asks numba_tune about for a model of these sizes
    (`lstm-engine tune`), with the thread plans it would use; each cell's layers by its gate
    width G (products the cells share are listed once)."""
    from .numba_cells import GATES
    from .numba_tune import output_products
    _kernels()
    items = []
    for G in dict.fromkeys(GATES.get(cell, 4) * H for cell in cells):
        for l in range(L):
            table = l == 0 and V <= T * B
            prod = _threads(T, B, H)[0]
            items += [(p, prod) for p in _layer_products(T, B, E if l == 0 else H, H, table, G)]
    items += [(p, _linear_threads(T * B, H, V)) for p in output_products(T * B, H, V)]
    return list(dict.fromkeys(items))


def tune_first_use(model_cfg, batch, seq_len):
    """Ask numba_tune about this model's products (windows (seq_len, batch)) before its first step,
    the biggest first, so that the first-use budget goes to the products a step spends most of its
    time in (at a large vocabulary, the output layer's), not to those the first layers happen to
    call first; the layers' calls then find their choices made.  Each is asked as the step asks it:
    a cached choice is read, a measurement stays within the budget.  The model about to train gets
    the whole budget (new_budget): a time-budget run's calibration may have spent it on candidates
    it then did not take."""
    from . import numba_tune
    if numba_tune.mode() != "auto":
        return
    numba_tune.new_budget()
    c = model_cfg
    items = tune_products(c.embed_size, c.hidden_size, c.layers, batch, seq_len, c.vocab_size, (c.cell,))
    for product, prod in sorted(items, key=lambda item: -item[0].macs):
        numba_tune.choose(product, np.dtype(c.dtype), prod)


def bf16_products():
    """(True, '') where this backend can train with bfloat16 products (--products bf16: numba
    compiling for a CPU with AVX512_BF16), else (False, why)."""
    from . import numba_tune
    fn, why = numba_tune.opt_in("bf16")
    return fn is not None, why


def bf16_pays():
    """True when a layer trains numba_tune.MARGIN faster with bfloat16 products than in float32 on
    this machine (numba_tune_bf16: measured once per machine, a second or two; cached).  Asked only
    where bf16_products() offers them."""
    import numba

    from . import numba_tune_bf16
    nt = numba.get_num_threads()
    return numba_tune_bf16.pays(nt, _bf16_probe(), lambda: numba_tune_bf16.start_helper(nt))


def tune_bf16():
    """The bfloat16-against-float32 layer timing measured again (`lstm-engine tune`) -> record."""
    import numba

    from . import numba_tune_bf16
    nt = numba.get_num_threads()
    return numba_tune_bf16.retune(nt, _bf16_probe(), lambda: numba_tune_bf16.start_helper(nt))


def _bf16_probe():
    """run(name) -> (seconds, hs) of one layer (numba_tune_bf16.SHAPE, I = H) forward and backward
    with products `name` ('float32' or 'bf16'), on inputs drawn as _plan_probe draws them."""
    from . import numba_tune, numba_tune_bf16
    T, B, H = numba_tune_bf16.SHAPE
    dt = np.float32
    x, W, b, h0, c0, dhs = _probe_inputs(T, B, H, dt)
    zero = np.zeros((B, H), dt)                                                    # (B,H) dL/dh_T, dL/dc_T

    def run(name):
        was = numba_tune._products[0]
        numba_tune.set_products(name)
        try:
            t0 = time.perf_counter()
            hs, _, _, cache = lstm_forward(x, W, b, h0, c0)
            out = hs.copy()                                                        # (T,B,H) out of the pool
            lstm_backward(dhs, zero, zero, cache)
            return time.perf_counter() - t0, out
        finally:
            numba_tune._products[0] = was
    return run


def use_products(name):
    """'bf16': every big product and the LSTM's recurrent ones take bfloat16 operands in this
    process (as LSTM_ENGINE_TUNE=bf16), and the sampler streams bfloat16 weights
    (numba_generate.sample_weights); on a CPU without bfloat16 products (training refuses them
    there first: bf16_products) the sampler alone does, as it widens each weight it reads on any
    CPU, so a checkpoint trained with them generates everywhere; 'int8': the sampler streams 8-bit
    weights, the products as LSTM_ENGINE_TUNE says; 'float32': as LSTM_ENGINE_TUNE says."""
    from . import numba_tune
    numba_tune.set_products(name, sampler_only=name == "bf16" and not bf16_products()[0])


def is_available():
    """(True, '') when numba and SciPy (numba's BLAS for np.dot; benchmarks/gemm.py) import."""
    from ..core.environment import apply_numba_isa
    apply_numba_isa()                      # LSTM_ENGINE_NUMBA_ISA: before numba is imported
    try:
        import numba  # noqa: F401
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError as e:     # pragma: no cover - both are install_requires
        return False, f"{e.name} is not installed"
    return True, ""


def asarray(a, dtype=None):
    """Host array -> this backend's array (a contiguous copy when dtype changes)."""
    return np.ascontiguousarray(a, dtype=dtype)


def to_numpy(a):
    """This backend's array -> host NumPy array."""
    return np.asarray(a)


def synchronize():
    """Wait for queued work (nothing to wait for on the CPU)."""


class LayerCache:
    """What BPTT needs from the forward pass of one layer (see the module docstring)."""

    __slots__ = ("x", "tokens", "Emb", "W", "h0", "c0", "hs", "cs", "acts")

    def __init__(self, x, tokens, Emb, W, h0, c0, hs, cs, acts):
        self.x, self.tokens, self.Emb, self.W = x, tokens, Emb, W
        self.h0, self.c0, self.hs, self.cs, self.acts = h0, c0, hs, cs, acts


class _Pool:
    """Recycled big arrays.  Fresh multi-megabyte np.empty arrays come from mmap and cost a
    page fault per 4 KiB on first touch, every training step.
    An array is handed out again only when the pool holds the last reference to it (views
    such as hT = hs[-1] keep their base alive), so nothing in use is ever overwritten."""

    MIN_BYTES = 1 << 17          # smaller arrays come from malloc's heap without faults
    PER_SHAPE = 4                # arrays kept per (shape, dtype)

    def __init__(self):
        self.arrays = {}

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize < self.MIN_BYTES:     # math.prod: np.prod is slow on a tuple
            return np.empty(shape, dtype)
        kept = self.arrays.setdefault((tuple(shape), dtype), [])
        for a in kept:
            if sys.getrefcount(a) == 3:      # the list, the loop variable and the call's argument
                return a
        a = np.empty(shape, dtype)
        if len(kept) < self.PER_SHAPE:
            kept.append(a)
        return a


_pool = _Pool()


# ----------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _dtype_of(*arrays):
    dt = arrays[0].dtype
    if dt not in _FLOATS:
        raise UserError(f"the numba backend computes in float32 or float64, not {dt}")
    for a in arrays[1:]:
        if a.dtype != dt:
            raise UserError(f"the numba backend needs one dtype for all arrays, got {dt} and {a.dtype}")
    return dt


def _c(a):
    """C-contiguous view (a copy only when needed)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _check_layer(W, b, h0, c0, I):
    H = h0.shape[-1]
    if h0.ndim != 2 or c0.shape != h0.shape:
        raise UserError(f"h0 and c0 must both be (B,H); got {h0.shape} and {c0.shape}")
    if W.shape != (H + I, 4 * H) or b.shape != (4 * H,):
        raise UserError(f"W must be (H+I, 4H) = {(H + I, 4 * H)} and b (4H,); got {W.shape} and {b.shape}")


def _check_tokens(tokens, V):
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise UserError(f"tokens must be a (T,B) integer array; got {tokens.dtype} {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= V):
        raise UserError(f"token ids must lie in [0, {V}); got {tokens.min()}..{tokens.max()}")
    return np.ascontiguousarray(tokens, dtype=np.int64)


# ----------------------------------------------------------------------------
# LSTM layers
# ----------------------------------------------------------------------------

def lstm_forward(x, W, b, h0, c0):
    """One layer over a window.

    x (T,B,I), W (H+I,G), b (G,), h0 (B,H), c0 (B,H)
    -> hs (T,B,H), hT (B,H), cT (B,H), cache for lstm_backward
    """
    dt = _dtype_of(x, W, b, h0, c0)
    if x.ndim != 3 or x.shape[1] != h0.shape[0]:
        raise UserError(f"x must be (T,B,I) with B = {h0.shape[0]}; got {x.shape}")
    T, B, I = x.shape
    _check_layer(W, b, h0, c0, I)
    x, W, b, h0, c0 = _c(x), _c(W), _c(b), _c(h0), _c(c0)
    H = h0.shape[1]
    hs = _pool.empty((T, B, H), dt)
    cs = _pool.empty((T, B, H), dt)
    acts = _pool.empty((T, B, 4 * H), dt)
    if T:
        prod, rows, units = _threads(T, B, H)
        fns = _tuned(_layer_products(T, B, I, H, False)[:1], dt, prod)
        if fns is None:
            _kernels().lstm.lstm_forward_kernel(x, W, b, h0, c0, hs, cs, acts, *_threads(T, B, H, dt))
        else:                                      # the chosen product, then the time loop
            fns[0](x.reshape(T * B, I), W[H:], acts.reshape(T * B, 4 * H), False, False, 1.0, 0.0, prod)
            _forward_loop(W, b, h0, c0, hs, cs, acts, rows, units, _NO_TOKENS, np.empty((0, 4 * H), dt))
    hT, cT = (hs[-1], cs[-1]) if T else (h0, c0)
    return hs, hT, cT, LayerCache(x, None, None, W, h0, c0, hs, cs, acts)


_NO_TOKENS = np.empty((0, 0), np.int64)     # the tokens of a layer without the table


def _bf16_loops(dt):
    """True when the recurrent products run in bfloat16 (LSTM_ENGINE_TUNE=bf16 or --products bf16,
    float32): _bf16_loop_kernels, imported only then (LLVM compiles them only for CPUs with
    AVX512_BF16, or AMX)."""
    from . import numba_tune
    return numba_tune.bf16_loops(dt)


def _bf16_loop_kernels():
    """The bfloat16 time loops: on AMX tiles where the CPU has them (lstm_layer_amx), else by
    vdpbf16ps (lstm_layer_bf16); each imported only where LLVM can compile it."""
    from ..kernels.numba import gemm_amx
    if gemm_amx.available()[0]:
        from ..kernels.numba import lstm_layer_amx
        return lstm_layer_amx
    from ..kernels.numba import lstm_layer_bf16
    return lstm_layer_bf16


def _forward_loop(W, b, h0, c0, hs, cs, acts, rows, units, tokens, table):
    """The forward time loop over acts (T,B,G) holding x_t W_x, or gathering table (V,G) rows by
    tokens: the bfloat16 loop split by batch rows (its only split), or lstm_layer's."""
    H = h0.shape[1]
    if _bf16_loops(acts.dtype):
        nt = rows or units
        _bf16_loop_kernels().run_forward_steps(W[:H], b, h0, c0, hs, cs, acts, nt and min(nt, h0.shape[0]),
                                               tokens, table)
    else:
        _kernels().lstm.run_forward_steps(W[:H], b, h0, c0, hs, cs, acts, rows, units, tokens, table)


def _backward_loop(dhs, cache, dzs, dh, dc, rows, units, tokens, db, dtable):
    """The reverse time loop -> dzs, db, dtable (as _forward_loop: bfloat16 or lstm_layer's)."""
    H = dh.shape[1]
    args = (dhs, cache.W[:H], cache.c0, cache.cs, cache.acts, dzs, dh, dc)
    if _bf16_loops(dzs.dtype):
        nt = rows or units
        _bf16_loop_kernels().run_backward_steps(*args, nt and min(nt, dh.shape[0]), tokens, db, dtable)
    else:
        _kernels().lstm.run_backward_steps(*args, rows, units, tokens, db, dtable)


def _pads_dz(m, H, dt):
    """True when gemm would read dz (rows 4H apart) from a copy with padded rows in products
    whose C has m rows (gemm.pads_b: an L1 cache-set conflict): the backend then makes that
    copy once per layer (_padded_rows).  Never with bfloat16 products: they read dz once, to pack it."""
    return not _bf16_loops(dt) and _kernels().gemm.pads_b(m, 4 * H * np.dtype(dt).itemsize)


def _padded_rows(dz2):
    """dz2 (N,G) copied into a pooled (N, G + PAD) buffer -> its (N,G) view, rows G + PAD apart.
    The fused kernels made this copy fresh each call; past glibc's mmap threshold (medium) that
    costs a page fault per 4 KiB every step (docs/numba.md, "L1 cache sets")."""
    N, G = dz2.shape
    rows = _pool.empty((N, G + _kernels().gemm.PAD), dz2.dtype)[:, :G]   # (N,G) view
    rows[...] = dz2
    return rows


def _own_products(n):
    """The kernels' own GEMM for n products, as _tuned lists the chosen ones."""
    return [_kernels().lstm.mm] * n


def _weight_grads(fns, cache, dz2, dW, prod):
    """dW_h = sum_t h_{t-1}^T dz_t (two products) and, with fns[1], dW_x = x^T dz, by the chosen
    products; dz2 (N,G) the dz rows."""
    B, H = cache.h0.shape
    N = dz2.shape[0]
    fns[0](cache.h0, dz2[:B], dW[:H], True, False, 1.0, 0.0, prod)                       # h_0^T dz_1
    fns[0](cache.hs.reshape(N, H)[:N - B], dz2[B:], dW[:H], True, False, 1.0, 1.0, prod)  # + the rest
    if len(fns) > 1:
        fns[1](cache.x.reshape(N, -1), dz2, dW[H:], True, False, 1.0, 0.0, prod)          # dW_x (I,G)


def _backward_buffers(dhs, dhT, dcT, cache):
    T, B, H = cache.hs.shape
    dt = _dtype_of(dhs, dhT, dcT, cache.W)
    if dhs.shape != (T, B, H) or dhT.shape != (B, H) or dcT.shape != (B, H):
        raise UserError(f"gradients must be dhs {(T, B, H)}, dhT and dcT {(B, H)}; "
                        f"got {dhs.shape}, {dhT.shape}, {dcT.shape}")
    dh = np.array(dhT, dtype=dt, order="C")          # in: dL/dh_T, out: dL/dh_0
    dc = np.array(dcT, dtype=dt, order="C")          # in: dL/dc_T, out: dL/dc_0
    dzs = _pool.empty((T, B, 4 * H), dt)             # gate gradients of every step
    dW = _pool.empty(cache.W.shape, dt)
    db = np.empty(4 * H, dt)
    return _c(dhs), dh, dc, dzs, dW, db


def lstm_backward(dhs, dhT, dcT, cache):
    """BPTT through one layer.

    dhs (T,B,H) dL/dh_t from the layer above; dhT, dcT (B,H) from the next window (or zeros)
    -> dx (T,B,I), dW (H+I,G), db (G,), dh0 (B,H), dc0 (B,H)
    """
    x = cache.x
    dhs, dh, dc, dzs, dW, db = _backward_buffers(dhs, dhT, dcT, cache)
    dx = _pool.empty(x.shape, x.dtype)
    T, B, H = cache.hs.shape
    I, dt = x.shape[2], dW.dtype
    prod, rows, units = _threads(T, B, H)
    fns = _tuned(_layer_products(T, B, I, H, False)[1:], dt, prod) if T else None
    pad = bool(T) and _pads_dz(min(H, I), H, dt)
    if pad and fns is None:
        fns = _own_products(3)                     # the fused kernel would copy dz into fresh memory
    if fns is not None:                            # the time loop, then the chosen products
        _backward_loop(dhs, cache, dzs, dh, dc, rows, units, _NO_TOKENS, db, np.empty((0, 4 * H), dt))
        dz2 = dzs.reshape(T * B, 4 * H)                                                     # (N,G)
        _weight_grads(fns, cache, _padded_rows(dz2) if pad else dz2, dW, prod)
        fns[2](dz2, cache.W[H:], dx.reshape(T * B, I), False, True, 1.0, 0.0, prod)        # dx = dz W_x^T
    elif T:
        _kernels().lstm.lstm_backward_kernel(dhs, x, cache.W, cache.h0, cache.c0, cache.hs, cache.cs, cache.acts,
                                             dzs, dh, dc, dx, dW, db, *_threads(T, B, H, dt))
    else:
        dW[...], db[...] = 0, 0
    return dx, dW, db, dh, dc


def embed_lstm_forward(tokens, Emb, W, b, h0, c0):
    """Layer 0: embedding then lstm_forward.  tokens (T,B) int, Emb (V,E).

    With a small vocabulary (V <= T*B) the input projections are rows of the table
    Emb @ W_x (V,G), computed once per call and gathered - exact, since no dropout acts
    on the embedding.  Otherwise the embeddings are gathered and projected as usual.
    """
    dt = _dtype_of(Emb, W, b, h0, c0)
    V, E = Emb.shape
    tokens = _check_tokens(tokens, V)
    T, B = tokens.shape
    if B != h0.shape[0]:
        raise UserError(f"tokens must be (T,B) with B = {h0.shape[0]}; got {tokens.shape}")
    _check_layer(W, b, h0, c0, E)
    if V > T * B:                                  # the table would cost more than it saves
        x = _pool.empty((T, B, E), dt)
        _kernels().lstm.gather_rows(tokens.reshape(-1), _c(Emb), x.reshape(T * B, E))
        hs, hT, cT, cache = lstm_forward(x, W, b, h0, c0)
        cache.tokens, cache.Emb = tokens, Emb
        return hs, hT, cT, cache
    Emb, W, b, h0, c0 = _c(Emb), _c(W), _c(b), _c(h0), _c(c0)
    H = h0.shape[1]
    hs = _pool.empty((T, B, H), dt)
    cs = _pool.empty((T, B, H), dt)
    acts = _pool.empty((T, B, 4 * H), dt)
    table = _pool.empty((V, 4 * H), dt)            # Emb @ W_x
    if T and _bf16_loops(dt):                      # the table exact, the recurrent products in bfloat16
        prod, rows, units = _threads(T, B, H)
        _kernels().lstm.mm(Emb, W[H:], table, False, False, 1.0, 0.0, prod)
        _forward_loop(W, b, h0, c0, hs, cs, acts, rows, units, tokens, table)
    elif T:
        _kernels().lstm.embed_lstm_forward_kernel(tokens, Emb, W, b, h0, c0, hs, cs, acts, table,
                                                  *_threads(T, B, H))
    hT, cT = (hs[-1], cs[-1]) if T else (h0, c0)
    return hs, hT, cT, LayerCache(None, tokens, Emb, W, h0, c0, hs, cs, acts)


def embed_lstm_backward(dhs, dhT, dcT, cache):
    """-> dEmb (V,E), dW, db, dh0, dc0 (the embedding gradient is a scatter-add over tokens)."""
    Emb, tokens = cache.Emb, cache.tokens
    if cache.x is not None:                        # gathered path: scatter dx into dEmb
        dx, dW, db, dh, dc = lstm_backward(dhs, dhT, dcT, cache)
        dEmb = _pool.empty(Emb.shape, Emb.dtype)
        _kernels().lstm.scatter_add_rows(tokens.reshape(-1), dx.reshape(-1, Emb.shape[1]), dEmb)
        return dEmb, dW, db, dh, dc
    dhs, dh, dc, dzs, dW, db = _backward_buffers(dhs, dhT, dcT, cache)
    dEmb = _pool.empty(Emb.shape, Emb.dtype)
    dtable = _pool.empty((Emb.shape[0], dW.shape[1]), dW.dtype)   # (V,G) gate gradients per symbol
    T, B, H = cache.hs.shape
    prod, rows, units = _threads(T, B, H)
    fns = _tuned(_layer_products(T, B, Emb.shape[1], H, True), dW.dtype, prod) if T else None
    pad = bool(T) and _pads_dz(H, H, dW.dtype)
    if pad and fns is None:
        fns = _own_products(1)                     # the fused kernel would copy dz into fresh memory
    if fns is not None:                            # the time loop, then dW_h by the chosen product
        K = _kernels()
        _backward_loop(dhs, cache, dzs, dh, dc, rows, units, tokens, db, dtable)
        dz2 = dzs.reshape(T * B, 4 * H)                                                     # (N,G)
        _weight_grads(fns, cache, _padded_rows(dz2) if pad else dz2, dW, prod)
        K.lstm.mm(Emb, dtable, dW[H:], True, False, 1.0, 0.0, prod)                         # dW_x (E,G)
        K.lstm.mm(dtable, cache.W[H:], dEmb, False, True, 1.0, 0.0, prod)                   # dEmb (V,E)
    elif T:
        _kernels().lstm.embed_lstm_backward_kernel(dhs, tokens, Emb, cache.W, cache.h0, cache.c0, cache.hs,
                                                   cache.cs, cache.acts, dzs, dh, dc, dEmb, dW, db, dtable,
                                                   prod, rows, units)
    else:
        dEmb[...], dW[...], db[...] = 0, 0, 0
    return dEmb, dW, db, dh, dc


# ----------------------------------------------------------------------------
# Any cell (the interface's cell_*): p holds the layer's parameters by short name;
# the cache carries the cell so the backward knows which to run
# ----------------------------------------------------------------------------

def _cells():
    """-> (numba_cells, this module): the variants' wrappers, handed this backend (its pool,
    thread plan and checks) so that they do not import it back."""
    from . import numba_cells
    return numba_cells, sys.modules[__name__]


def cell_forward(cell, x, p, h0, c0):
    """One layer of `cell` over a window (as numpy_backend.cell_forward)."""
    if cell != "lstm":
        cells, nb = _cells()
        return cells.cell_forward(nb, cell, x, p, h0, c0)
    hs, hT, cT, cache = lstm_forward(x, p["W"], p["b"], h0, c0)
    return hs, hT, cT, ("lstm", cache)


def cell_backward(dhs, dhT, dcT, cache):
    """-> dx (T,B,I), dp (dict by short name), dh0, dc0"""
    if not isinstance(cache, tuple):               # a variant's numba_cells.CellCache
        cells, nb = _cells()
        return cells.cell_backward(nb, dhs, dhT, dcT, cache)
    dx, dW, db, dh0, dc0 = lstm_backward(dhs, dhT, dcT, cache[1])
    return dx, {"W": dW, "b": db}, dh0, dc0


def embed_cell_forward(cell, tokens, Emb, p, h0, c0):
    """Layer 0 of `cell` with the embedding gather (as numpy_backend.embed_cell_forward)."""
    if cell != "lstm":
        cells, nb = _cells()
        return cells.embed_cell_forward(nb, cell, tokens, Emb, p, h0, c0)
    hs, hT, cT, cache = embed_lstm_forward(tokens, Emb, p["W"], p["b"], h0, c0)
    return hs, hT, cT, ("lstm", cache)


def embed_cell_backward(dhs, dhT, dcT, cache):
    """-> dEmb (V,E), dp (dict by short name), dh0, dc0"""
    if not isinstance(cache, tuple):               # a variant's numba_cells.CellCache
        cells, nb = _cells()
        return cells.embed_cell_backward(nb, dhs, dhT, dcT, cache)
    dEmb, dW, db, dh0, dc0 = embed_lstm_backward(dhs, dhT, dcT, cache[1])
    return dEmb, {"W": dW, "b": db}, dh0, dc0


# ----------------------------------------------------------------------------
# Output, optimiser
# ----------------------------------------------------------------------------

def _linear_threads(N, H, V):
    """Threads for the output layer's products (None: the calling thread)."""
    import numba
    nt = numba.get_num_threads()
    if nt < 2 or N * H * V < PARALLEL_MIN_MACS:
        return None
    if PIN_BLAS:
        _blas_one_thread()
    return nt


def _softmax_threads(N, V):
    """Threads for the softmax cross-entropy (None: the calling thread)."""
    import numba
    nt = numba.get_num_threads()
    return nt if nt >= 2 and N * V >= SOFTMAX_PARALLEL_MIN else None


def _check_linear(x, W, b=None):
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[0] or (b is not None and b.shape != (W.shape[1],)):
        raise UserError(f"the output layer needs x (N,H), W (H,V), b (V,); got {x.shape}, {W.shape}"
                        + (f", {b.shape}" if b is not None else ""))


def linear_forward(x, W, b):
    """x (N,H) @ W (H,V) + b (V,) -> logits (N,V)."""
    _dtype_of(x, W, b)
    _check_linear(x, W, b)
    y = _pool.empty((x.shape[0], W.shape[1]), x.dtype)
    nt = _linear_threads(*x.shape, W.shape[1])
    fns = _tuned(_output_products(*x.shape, W.shape[1])[:1], x.dtype, nt)
    if fns is None:
        _kernels().out.linear_forward_kernel(_c(x), _c(W), _c(b), y, nt)
    else:
        fns[0](_c(x), _c(W), y, False, False, 1.0, 0.0, nt)
        _kernels().out.add_bias(y, _c(b), nt)
    return y


def _output_products(N, H, V):
    from .numba_tune import output_products
    return output_products(N, H, V)


def linear_backward(x, dy, W):
    """dL/dy (N,V) -> dx (N,H) = dy W^T, dW (H,V) = x^T dy, db (V,)."""
    _dtype_of(x, dy, W)
    _check_linear(x, W)
    if dy.shape != (x.shape[0], W.shape[1]):
        raise UserError(f"dy must be (N,V) = {(x.shape[0], W.shape[1])}; got {dy.shape}")
    numba_ahead.join()                 # a helper compiling the rest of a first step: wait, then load its code
    dx, dW, db = _pool.empty(x.shape, x.dtype), np.empty(W.shape, x.dtype), np.empty(W.shape[1], x.dtype)
    nt = _linear_threads(*x.shape, W.shape[1])
    fns = _tuned(_output_products(*x.shape, W.shape[1])[1:], x.dtype, nt)
    if fns is None:
        _kernels().out.linear_backward_kernel(_c(x), _c(dy), _c(W), dx, dW, db, nt)
    else:
        x, dy = _c(x), _c(dy)
        if _is_blas(fns[0]):                       # BLAS packs op(B) = W^T itself
            fns[0](dy, _c(W), dx, False, True, 1.0, 0.0, nt)                     # dx = dy W^T
        else:
            fns[0](dy, np.ascontiguousarray(W.T), dx, False, False, 1.0, 0.0, nt)  # dx = dy W^T (W^T copied once)
        fns[1](x, dy, dW, True, False, 1.0, 0.0, nt)                             # dW = x^T dy
        _kernels().out.bias_grad(dy, db, nt)
    return dx, dW, db


def _is_blas(fn):
    """True for numba_tune's BLAS candidate (it takes a transposed op(B) at no extra cost)."""
    from ..kernels.numba import blas
    return fn is blas.mm_blas


def softmax_xent(logits, targets, need_grad=True):
    """Mean cross-entropy of logits (N,V) against targets (N,) int.

    -> loss (Python float, nats per row), dlogits (N,V) = (softmax - onehot) / N, or None
    """
    _dtype_of(logits)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise UserError(f"softmax_xent needs logits (N,V) with N >= 1 and targets (N,); "
                        f"got {logits.shape} and {targets.shape}")
    targets = _check_tokens(targets.reshape(-1, 1), logits.shape[1]).reshape(-1)
    logits = _c(logits)
    nt = _softmax_threads(*logits.shape)
    d = _pool.empty(logits.shape if need_grad else (nt or 1, logits.shape[1]), logits.dtype)
    loss = _kernels().out.softmax_xent_kernel(logits, targets, d, bool(need_grad), nt)
    return float(loss), (d if need_grad else None)


def _flat(arrays):
    return tuple(a.reshape(-1) for a in arrays)


def global_norm(grads):
    """sqrt(sum of squares) over every gradient array in the dict -> float."""
    gs = [_c(g) for g in grads.values()]
    if not gs:
        return 0.0
    _dtype_of(*gs)
    return float(np.sqrt(_kernels().adam.sum_squares_kernel(_flat(gs))))


def adam_update(params, grads, m, v, step, lr, beta1, beta2, eps, grad_scale=1.0):
    """Adam with bias correction, in place, over every array in the dicts.

    grad_scale multiplies each gradient first (global-norm clipping passes its factor here).
    step is the 1-based step count after this update.
    """
    names = list(params)
    ps, ms, vs = [params[n] for n in names], [m[n] for n in names], [v[n] for n in names]
    gs = [_c(grads[n]) for n in names]
    dt = _dtype_of(*ps, *gs, *ms, *vs)
    for n, p, g, mm, vv in zip(names, ps, gs, ms, vs):
        if not (p.shape == g.shape == mm.shape == vv.shape) or not (
                p.flags.c_contiguous and mm.flags.c_contiguous and vv.flags.c_contiguous):
            raise UserError(f"adam_update: {n} needs contiguous param, grad and moments of one shape")
    f = dt.type
    _kernels().adam.adam_kernel(_flat(ps), _flat(gs), _flat(ms), _flat(vs), f(lr), f(beta1), f(1.0 - beta1),
                                f(beta2), f(1.0 - beta2), f(eps), f(1.0 - beta1 ** step), f(1.0 - beta2 ** step),
                                f(grad_scale))


# ----------------------------------------------------------------------------
# Sampling (numba_generate.py)
# ----------------------------------------------------------------------------

def generate(weights, state, token, n, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rng=None, cache=None,
             cell="lstm"):
    """Sample n tokens after `token`, one at a time; state is carried and updated.

    rng: a numpy.random.Generator (one uniform draw per sampled token, drawn up front).
    cache: a dict the caller keeps across calls while the weights stay unchanged (generate_text keeps
    one per text, {"chars": how many characters it will serve}); the layer-0 table Emb @ W_x + b0
    (V,G) is kept in it, so that each character reads one row of it instead of an E x 4H product.
    The table is built only when the characters it serves (cache["chars"], else n) pay for V rows.
    From H = 2 * SAMPLE_ROWS_PER_THREAD with two or more numba threads the characters are sampled
    by a team of threads (numba_team.py), also kept in the cache; each thread sums its units' columns
    as the one-thread kernel does, yet float32 states may differ from its in the last bits.
    -> ids (n,) int64
    """
    if cell != "lstm":                             # the variants: numba_cells.generate
        cells, nb = _cells()
        return cells.generate(nb, weights, state, token, n, temperature, top_k, top_p, greedy, rng, cache, cell)
    from . import numba_generate
    return numba_generate.generate(sys.modules[__name__], weights, state, token, n, temperature, top_k, top_p,
                                   greedy, rng, cache)
