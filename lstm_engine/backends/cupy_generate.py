"""Generation on the GPU: the whole sampling loop stays on the device.

Per token and sequence batch, L + 2 kernel launches and no host round trip:
    gen_lstm_step   (layer l)  z = b + [h_{t-1}, x_t] W, gates, cell   (x_t = Emb[token] for l = 0)
                               (the other cells: gen_{cell}_step of kernels/cuda/cells.cu)
    gen_logits                 logits = h_{L-1} Wy + by
    sample_tokens              greedy argmax, or temperature / top-k / top-p + inverse-CDF draw
The uniforms are drawn on the host up front (rng.random((n, S)): the same numbers, in the same
order, as n calls of rng.random() for S = 1, as the reference draws them), so a seeded run
samples the reference's text.  A call of n tokens is one CUDA graph once its shape repeats;
the host only copies the ids back at the end (generation.py streams text in chunks of these).

Dimension legend: S sequences, L layers, H hidden, E embedding, V vocab, n tokens per call,
Vp the power of two >= V used by the sort of the top-k / top-p filter.
"""
from __future__ import annotations

import collections

import numpy as np

from . import cupy_cells
from . import cupy_kernels as ck

try:
    import cupy as cp
except Exception:
    cp = None


def _contiguous(name, a):
    """The plan reads the weights in place (training updates them between samples): no copies."""
    if not a.flags.c_contiguous:
        raise ValueError(f"weight {name} must be a C-contiguous device array")
    return a


def _layers(weights):
    L = 0
    while f"W{L}" in weights:
        L += 1
    if L == 0:
        raise ValueError("weights hold no LSTM layer (W0 missing)")
    return L


class GenPlan:
    """Device buffers and launch sequence of one generation shape (weights, S, n, greedy, cell)."""

    def __init__(self, weights, S, n, greedy, cell="lstm"):
        self.L = L = _layers(weights)
        self.dtype = dt = weights["W0"].dtype
        w = {k: _contiguous(k, a) for k, a in weights.items()}
        self.Emb = w["Emb"]                                  # (V,E)
        # per layer the step kernel's arguments before h_prev: W (H+I_l,G), then b / b, wc / bx, bh
        self.layer_args = [tuple(cupy_cells.gen_layer_params(cell, w, l)) for l in range(L)]
        self.Wy, self.by = w["Wy"], w["by"]                  # (H,V), (V,)
        self.V, self.E = self.Emb.shape
        self.H = H = self.Wy.shape[0]
        self.S, self.n, self.greedy = S, n, greedy
        self.Vp = 1 << max(0, (self.V - 1).bit_length())
        self.h = cp.zeros((2, L, S, H), dt)      # ping-pong: step k reads [k%2], writes [(k+1)%2]
        self.c = cp.zeros((2, L, S, H), dt)
        self.tok = cp.zeros(S, cp.int32)         # next input token of each sequence
        self.ids = cp.zeros((n, S), cp.int32)    # sampled tokens, row k = step k
        self.logits = cp.empty((S, self.V), dt)
        self.u = cp.zeros((n, S), cp.float64)    # uniforms, row k = step k
        self.params = cp.zeros(3, cp.float64)    # temperature, top_p, top_k
        self.key = cp.empty((S, self.Vp), cp.float64)   # sort scratch
        self.idx = cp.empty((S, self.Vp), cp.int32)
        self.p = cp.zeros((S, self.V), cp.float64)      # filtered probabilities
        self.tile = ck.choose_tile(S, H, gen=True)
        if cell == "lstm":
            self.step_kern = ck.get("gen_lstm_step", dt, self.tile)
            self.grid_h = ck.tile_grid(self.tile, S, H)
        else:
            self.step_kern, self.grid_h = cupy_cells.gen_step_kernel(cell, dt, S, H)
        self.logit_kern = ck.get("gen_logits", dt, self.tile)
        self.sample_kern = ck.get("sample_tokens", dt)

    def enqueue(self):
        """Launch the n steps on the current stream (eagerly, or into a capture)."""
        L, S, H, V, E = self.L, self.S, self.H, self.V, self.E
        i32, blk = ck.i32, (ck.THREADS,)
        grid_v = ck.tile_grid(self.tile, S, V)
        for k in range(self.n):
            src, dst = self.h[k % 2], self.h[(k + 1) % 2]
            csrc, cdst = self.c[k % 2], self.c[(k + 1) % 2]
            for l in range(L):
                if l == 0:
                    x, rows, I = self.Emb, self.tok, E
                else:
                    x, rows, I = dst[l - 1], ck.NULL, H
                self.step_kern(self.grid_h, blk, self.layer_args[l] + (src[l], csrc[l], x, rows, i32(I),
                                                                      dst[l], cdst[l], i32(S), i32(H)))
            self.logit_kern(grid_v, blk, (dst[L - 1], self.Wy, self.by, self.logits, i32(S), i32(H), i32(V)))
            u = ck.NULL if self.greedy else self.u[k]
            self.sample_kern((S,), blk, (self.logits, i32(S), i32(V), i32(self.Vp), u, self.params,
                                         i32(self.greedy), self.key, self.idx, self.p, self.tok, self.ids[k]))

    def final_state(self):
        """(h, c) slot holding the state after the n steps."""
        return self.h[self.n % 2], self.c[self.n % 2]


class _Plans:
    """Generation plans (and their CUDA graphs) by weight pointers and shape."""

    def __init__(self, capacity=8):
        self.plans = collections.OrderedDict()    # key -> [plan, graph or None, uses]
        self.capacity = capacity
        self.graphs = ck.LoopGraphs()             # only for its capture stream

    def get(self, weights, S, n, greedy, cell="lstm"):
        key = (tuple((k, a.data.ptr, a.shape, a.dtype.name) for k, a in sorted(weights.items())),
               S, n, bool(greedy), cell)
        entry = self.plans.get(key)
        if entry is None:
            entry = self.plans[key] = [GenPlan(weights, S, n, greedy, cell), None, 0]
            if len(self.plans) > self.capacity:
                self.plans.popitem(last=False)
        self.plans.move_to_end(key)
        return entry

    def run(self, entry, use_graph):
        plan, graph, uses = entry
        entry[2] = uses + 1
        stream = cp.cuda.get_current_stream()
        if use_graph and graph is None and uses >= 1 and ck.GRAPH_STATUS["error"] is None:
            graph = entry[1] = ck.capture(plan.enqueue, self.graphs)
        if use_graph and graph is not None:
            graph.launch(stream=stream)
            ck.GRAPH_STATUS["replayed"] += 1
        else:
            plan.enqueue()


_PLANS = _Plans()


def check_request(weights, tokens, n, temperature, top_k, top_p, greedy):
    """Host-side validation -> token ids (S,) int32.  ValueError with the reason otherwise."""
    V = weights["Emb"].shape[0]
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if tokens.size < 1:
        raise ValueError("need at least one start token")
    if tokens.min() < 0 or tokens.max() >= V:
        raise ValueError(f"start tokens must be in [0, {V}), got {tokens.min()}..{tokens.max()}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not greedy:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
    return tokens.astype(np.int32)


def generate_batch(weights, state, tokens, n, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rng=None,
                   cell="lstm"):
    """Sample n tokens for each of S sequences after tokens (S,) with the layers of `cell`.

    state: list over layers of [h (S,H), c (S,H)] on the GPU; replaced by the new state.
    rng: numpy Generator; draws rng.random((n, S)) unless greedy.  -> ids (S, n) int64 on the host.
    """
    tok = check_request(weights, tokens, n, temperature, top_k or 0, top_p, greedy)
    S = tok.size
    if n == 0:
        return np.empty((S, 0), np.int64)
    entry = _PLANS.get(weights, S, n, greedy, cell)
    plan = entry[0]
    if len(state) != plan.L:
        raise ValueError(f"state has {len(state)} layers, the weights {plan.L}")
    stream = cp.cuda.get_current_stream()
    for l, (h, c) in enumerate(state):
        plan.h[0, l] = h.reshape(S, plan.H)
        plan.c[0, l] = c.reshape(S, plan.H)
    plan.tok.set(tok, stream=stream)
    if not greedy:
        rng = rng if rng is not None else np.random.default_rng()
        plan.u.set(rng.random((n, S)), stream=stream)
        plan.params.set(np.array([temperature, top_p, float(top_k or 0)]), stream=stream)
    _PLANS.run(entry, ck.OPTIONS["graphs"])
    ids = plan.ids.get()                          # (n,S): the one copy back (waits for the GPU)
    h_fin, c_fin = plan.final_state()
    for l in range(plan.L):
        state[l][0] = h_fin[l].copy()
        state[l][1] = c_fin[l].copy()
    return np.ascontiguousarray(ids.T, dtype=np.int64)


def filtered_probs(logits, temperature=1.0, top_k=0, top_p=1.0, u=None):
    """Run the sampling kernel once on logits (S,V) -> (probabilities (S,V), tokens (S,)) on the host.

    The probabilities are what the kernel sampled from (as numpy_backend.filter_probs); u (S,)
    are the uniforms (default 0.5).  For tests and for checking the filter semantics.
    """
    logits = cp.ascontiguousarray(logits)
    S, V = logits.shape
    Vp = 1 << max(0, (V - 1).bit_length())
    u = np.full(S, 0.5) if u is None else np.asarray(u, np.float64).reshape(S)
    du = cp.asarray(u)
    params = cp.asarray(np.array([temperature, top_p, float(top_k or 0)]))
    key = cp.empty((S, Vp), cp.float64)
    idx = cp.empty((S, Vp), cp.int32)
    p = cp.zeros((S, V), cp.float64)
    tok = cp.zeros(S, cp.int32)
    ck.get("sample_tokens", logits.dtype)((S,), (ck.THREADS,),
                                          (logits, ck.i32(S), ck.i32(V), ck.i32(Vp), du, params, ck.i32(0),
                                           key, idx, p, tok, ck.NULL))
    return p.get(), tok.get().astype(np.int64)
