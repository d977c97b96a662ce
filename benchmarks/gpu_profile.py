"""Where the time of one cupy training step goes, per config and step path.

    python benchmarks/gpu_profile.py [--configs seed,karpathy,medium,large] [--variants auto,persist,cublas,cublas-matmul]
                                     [--out FILE.jsonl] [--steps 5]

One step = Model.forward_backward + clipping + Adam, written out phase by phase (the same calls).
Each phase gets three numbers (ms, mean over --steps steps):
  host     time the Python thread spends in the phase (enqueueing, plus waiting in a sync)
  gpu      CUDA-event time of the phase in a normal run (what the trainer sees: includes the idle
           gaps when the GPU waits for the host)
  busy     CUDA-event time of the phase when the whole step is queued behind a spin kernel, with the
           two syncs (loss float(), norm get()) left out: pure device time, no launch gaps
Per variant: wall ms/step of back-to-back steps, busy ms (sum), idle = wall - busy (launch gaps,
host work and syncs), chars/s.  "queued_ok" false means the spin ended before the host finished
enqueueing (busy then holds some gaps).  Writes one JSON line per phase and per variant summary.

Dimension legend: V vocab, E embedding, H hidden, L layers, B batch, T seq-len, N = T*B.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gpu_bench import CONFIGS, device_info  # noqa: E402

SPIN_SRC = r'''extern "C" __global__ void spin(long long cycles) {
    const long long s = clock64();
    while (clock64() - s < cycles) { }
}'''


class Phases:
    """Events and host timers at phase boundaries of one step on the current stream."""

    def __init__(self, cp):
        self.cp, self.names, self.events, self.host = cp, [], [], []

    def begin(self):
        self.names, self.host = [], []
        self.events = [self._event()]
        self.t = time.perf_counter()

    def _event(self):
        e = self.cp.cuda.Event()
        e.record(self.cp.cuda.get_current_stream())
        return e

    def mark(self, name):
        now = time.perf_counter()
        self.host.append(now - self.t)
        self.events.append(self._event())
        self.names.append(name)
        self.t = time.perf_counter()

    def gpu_ms(self):
        ev = self.events
        return [self.cp.cuda.get_elapsed_time(ev[k], ev[k + 1]) for k in range(len(ev) - 1)]


def run_step(model, opt, be, ck, cp, x, y, state, ph, syncs):
    """The trainer's step, phase by phase; syncs=False leaves out the two host reads."""
    P, L = model.params, model.cfg.layers
    T, B = x.shape
    ph.begin()
    hs, hT, cT, cache = be.embed_lstm_forward(x, P["Emb"], P["W0"], P["b0"], state[0][0], state[0][1])
    caches, new_state = [cache], [[hT, cT]]
    ph.mark("fwd L0 (embed+lstm)")
    for l in range(1, L):
        hs, hT, cT, cache = be.lstm_forward(hs, P[f"W{l}"], P[f"b{l}"], state[l][0], state[l][1])
        caches.append(cache)
        new_state.append([hT, cT])
        ph.mark(f"fwd L{l}")
    x2 = hs.reshape(T * B, -1)                                   # (N,H)
    logits = cp.ascontiguousarray(x2 @ P["Wy"] + P["by"])        # (N,V)
    N, V = logits.shape
    tgt = cp.ascontiguousarray(y.reshape(-1), dtype=cp.int32)
    loss_rows, dlogits = cp.empty(N, logits.dtype), cp.empty_like(logits)
    ck.get("softmax_xent", logits.dtype)((N,), (ck.THREADS,),
                                         (logits, tgt, loss_rows, dlogits, ck.i32(N), ck.i32(V)))
    loss_sum = loss_rows.sum()
    ph.mark("out proj + softmax-xent")
    if syncs:
        float(loss_sum)
        ph.mark("sync: loss float()")
    grads = {"Wy": x2.T @ dlogits, "by": dlogits.sum(axis=0)}
    dx = (dlogits @ P["Wy"].T).reshape(T, B, -1)
    zeros = cp.zeros_like(state[0][0])
    ph.mark("bwd out proj")
    for l in reversed(range(L)):
        if l > 0:
            dx, grads[f"W{l}"], grads[f"b{l}"], _, _ = be.lstm_backward(dx, zeros, zeros, caches[l])
            ph.mark(f"bwd L{l}")
        else:
            grads["Emb"], grads["W0"], grads["b0"], _, _ = be.embed_lstm_backward(dx, zeros, zeros, caches[0])
            ph.mark("bwd L0 (lstm+embed)")
    arrays = [cp.ascontiguousarray(g) for g in grads.values()]
    table = np.concatenate([be.pointer_table(arrays), np.array([a.size for a in arrays], np.uint64)])
    partials = cp.empty(128, cp.float64)
    ck.get("sumsq_multi", arrays[0].dtype)((128,), (ck.THREADS,), (be.asarray(table), ck.i32(len(arrays)), partials))
    ph.mark("grad norm")
    scale = 1.0
    if syncs:
        norm = math.sqrt(math.fsum(partials.get().tolist()))
        scale = 5.0 / (norm + 1e-6) if norm > 5.0 else 1.0
        ph.mark("sync: norm get()")
    opt.update(P, grads, 2e-3, scale)
    ph.mark("adam")
    return new_state


def profile(cfg_name, variant, steps):
    import cupy as cp
    from lstm_engine.backends import cupy_backend as be
    from lstm_engine.backends import cupy_kernels as ck
    from lstm_engine.core.model import Model, ModelConfig
    from lstm_engine.core.optim import Adam, AdamConfig
    cfg = CONFIGS[cfg_name]
    step, _, blas = variant.partition("-")          # e.g. "cublas-matmul": the cuBLAS path via cp.matmul
    old = be.set_options(step=step, graphs=True, blas=blas or "direct")
    try:
        mc = ModelConfig(cfg["V"], cfg["E"], cfg["H"], cfg["L"], 0.0, "float32")
        model = Model(mc, be, seed=0)
        opt = Adam(model.params, be, AdamConfig())
        rng = np.random.default_rng(0)
        T, B = cfg["T"], cfg["B"]
        x = be.asarray(rng.integers(0, cfg["V"], (T, B)).astype(np.int32))
        y = be.asarray(rng.integers(0, cfg["V"], (T, B)).astype(np.int32))
        state = model.zero_state(B)
        ph = Phases(cp)
        for _ in range(3):                                        # warm-up: compile, capture graphs
            state = run_step(model, opt, be, ck, cp, x, y, state, ph, True)
        be.synchronize()
        host = []
        t0 = time.perf_counter()
        for _ in range(steps):                                    # normal: as the trainer runs
            state = run_step(model, opt, be, ck, cp, x, y, state, ph, True)
            host.append(ph.host)
        be.synchronize()
        wall = (time.perf_counter() - t0) / steps
        names_sync = list(ph.names)
        gpu_normal = ph.gpu_ms()                                  # the last step's events
        spin = cp.RawKernel(SPIN_SRC, "spin")
        try:   # kHz; cudaDeviceProp.clockRate is gone in CUDA 13, the attribute (13) stays
            clock_hz = 1e3 * cp.cuda.runtime.deviceGetAttribute(13, cp.cuda.Device().id)
        except Exception:
            clock_hz = 2.0e9
        host_enqueue = sum(np.mean(host, axis=0)) * 1.5 + 5e-3
        busy, queued_ok = [], True
        for _ in range(steps):                                    # queued behind a spin: device time only
            spin((1,), (1,), (np.int64(host_enqueue * clock_hz),))
            done_spin = cp.cuda.Event()
            done_spin.record()
            state = run_step(model, opt, be, ck, cp, x, y, state, ph, False)
            queued_ok &= not done_spin.done
            be.synchronize()
            busy.append(ph.gpu_ms())
        names_q = list(ph.names)
        busy_by = dict(zip(names_q, np.mean(busy, axis=0)))
        rows = []
        for k, name in enumerate(names_sync):
            rows.append(dict(config=cfg_name, variant=variant, phase=name,
                             host_ms=1e3 * float(np.mean([h[k] for h in host])), gpu_ms=float(gpu_normal[k]),
                             busy_ms=float(busy_by.get(name, 0.0))))
        busy_total = float(sum(busy_by.values()))
        paths = sorted({be.step_mode(B, cfg["H"], "float32")})
        summary = dict(config=cfg_name, variant=variant, phase="TOTAL", path=",".join(paths),
                       wall_ms=1e3 * wall, busy_ms=busy_total, idle_ms=1e3 * wall - busy_total,
                       idle_pct=100 * (1 - busy_total / (1e3 * wall)), chars_per_s=B * T / wall,
                       host_ms=1e3 * float(sum(np.mean(host, axis=0))), queued_ok=bool(queued_ok),
                       graph_status=dict(ck.GRAPH_STATUS), blas_graph_status=dict(ck.BLAS_GRAPH_STATUS),
                       persist_plan=be.persist_plan(B, cfg["H"], "float32"),
                       persist_barrier_timeouts=[int(b.get()[1]) for b in be.PERSIST_BARS])
        return rows + [summary]
    finally:
        be.set_options(**old)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="seed,karpathy,medium,large")
    ap.add_argument("--variants", default="auto,persist")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "gpu-out"), "gpu_profile.jsonl"))
    args = ap.parse_args(argv)
    info = device_info()
    print(f"# {json.dumps(info)}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    print(f"{'config':<9} {'variant':<8} {'phase':<26} {'host ms':>8} {'gpu ms':>8} {'busy ms':>8}")
    for name in args.configs.split(","):
        for variant in args.variants.split(","):
            try:
                rows = profile(name, variant, args.steps)
            except Exception as e:   # one failing profile must not stop the others
                rows = [dict(config=name, variant=variant, phase="TOTAL",
                             error=" ".join(f"{type(e).__name__}: {e}".split())[:400])]
            with open(args.out, "a") as f:
                for r in rows:
                    f.write(json.dumps(dict(r, **info)) + "\n")
            for r in rows:
                if "error" in r:
                    print(f"{name:<9} {variant:<13} ERROR {r['error']}", flush=True)
                elif r["phase"] == "TOTAL":
                    print(f"{name:<9} {variant:<13} {'= wall/step (path ' + r['path'] + ')':<26} {r['host_ms']:8.3f} "
                          f"{r['wall_ms']:8.3f} {r['busy_ms']:8.3f}  idle {r['idle_ms']:.3f} ms "
                          f"({r['idle_pct']:.0f}%)  {r['chars_per_s']:,.0f} chars/s"
                          f"{'' if r['queued_ok'] else '  (spin too short: busy includes gaps)'}"
                          f"  barrier timeouts {sum(r['persist_barrier_timeouts'])}"
                          f"  cuBLAS graphs {r['blas_graph_status']}", flush=True)
                else:
                    print(f"{name:<9} {variant:<13} {r['phase']:<26} {r['host_ms']:8.3f} {r['gpu_ms']:8.3f} "
                          f"{r['busy_ms']:8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
