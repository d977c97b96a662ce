"""Batch-1 generation on several cores: a team of threads that outlives one generate() call.

Dimension legend: L layers, H hidden, G gate columns (ng H), Hu = ceil(H / nt) units a thread,
V vocabulary, nt threads, cap characters a job.

One character reads every weight once, so batch-1 sampling is bound by how fast one core
streams its weights from its own L2 cache.  A team of nt threads splits each layer by its
hidden units (kernels/numba/sample_team.py): thread t keeps a packed copy of the gate columns
of its Hu units (pack_units, in panels whose sums stay in registers), so each core streams 1/nt
of the weights, and the threads meet
at one spin barrier per layer and character to share h, far cheaper than opening a numba
prange region.  A large output layer (H x V of at least OUT_SPLIT_MIN_MACS: a big vocabulary)
is split by its columns too, with one more barrier a character.

generate_text asks for 32 to 1,024 characters a call, too little work to start threads for, so the
workers are Python threads (the kernels release the GIL) that stay in jitted code between
calls, polling the job counter for SPIN_SECONDS, then park on an Event (the caller wakes
them), and end after IDLE_EXIT_SECONDS without a job.  A
team is bound to one set of weight arrays and is kept in the caller's generation cache, so
a model whose weights are replaced gets a new team and the old one's threads end on their
own.  The calling thread is thread 0: it writes the job's inputs, publishes the job, wakes
parked workers, and runs its share.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

OUT_SPLIT_MIN_MACS = 1 << 16   # from this output layer size (H x V) its columns are split over the team too
SPIN_SECONDS = 0.002        # a worker polls this long for the next job before it parks
IDLE_EXIT_SECONDS = 0.5     # a parked worker ends after this long without a job
_POLLS_PER_SECOND = None    # measured once: polls of team_worker's idle loop per second


def as_panels(M, panel):
    """M (K,C) -> (nb,K,panel), nb = ceil(C / panel): its columns cut into panels of `panel`
    (zeros past C), each panel's rows contiguous: the stream kernels/numba/sample.panel_acc reads."""
    K, C = M.shape
    nb = -(-C // panel)
    padded = np.zeros((K, nb * panel), M.dtype)                       # (K,nb panel)
    padded[:, :C] = M
    return np.ascontiguousarray(padded.reshape(K, nb, panel).transpose(1, 0, 2))   # (nb,K,panel)


def bf16_bits(M):
    """M float32 -> its values rounded to bfloat16 (to nearest, ties to even), as uint16 bit
    patterns of M's shape: the high half of each float32's bits after rounding."""
    u = np.ascontiguousarray(M, np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def bf16_values(M):
    """M float32 -> the float32 values bf16_bits(M) stands for (M rounded to bfloat16)."""
    return (bf16_bits(M).astype(np.uint32) << np.uint32(16)).view(np.float32)


def bf16_pairs(P):
    """Panels P (...,PANEL) float32 -> (...,PANEL/2) uint32: word j holds bf16_bits of column j
    in its low half and of column PANEL/2 + j in its high half (kernels/numba/sample.panel_acc)."""
    b = bf16_bits(P).astype(np.uint32)
    half = P.shape[-1] // 2
    return np.ascontiguousarray(b[..., :half] | (b[..., half:] << np.uint32(16)))


INT8_SCALE_ROWS = 4         # kernels/numba/sample.SCALE_ROWS: a float32 scale a column, a byte a row


def int8_scales(M):
    """M (...,K,C) float32 -> (...,C) float32: each column's scale, its largest magnitude over
    127 (0 for a column of zeros), so that M / scale rounds into [-127, 127]."""
    return (np.abs(M).max(axis=-2) / np.float32(127)).astype(np.float32)


def int8_codes(M, scales):
    """M (...,K,C) float32 and its int8_scales -> (...,K,C) int8: M / scale to nearest (ties to
    even), 0 in a column of zeros."""
    safe = np.where(scales > 0, scales, np.float32(1))[..., None, :]
    return np.rint(M / safe).astype(np.int8)


def int8_values(M):
    """M (K,C) float32 -> the float32 values its int8 codes stand for, code x scale, column by
    column over its K rows (what the sampler multiplies by with int8 weights)."""
    s = int8_scales(M)
    return int8_codes(M, s).astype(np.float32) * s


def int8_panels(P):
    """Panels P (...,K,PANEL) float32 -> (...,K+INT8_SCALE_ROWS,PANEL) int8: rows 0..K-1 the
    codes of each column over the panel's K rows, rows K..K+3 the bytes of its float32 scale, low
    byte first (kernels/numba/sample.panel_acc: z += scale * sum of v times the codes)."""
    s = int8_scales(P)                                                # (...,PANEL)
    planes = [((s.view(np.uint32) >> np.uint32(8 * r)) & np.uint32(0xFF)).astype(np.uint8).view(np.int8)
              for r in range(INT8_SCALE_ROWS)]                        # INT8_SCALE_ROWS x (...,PANEL)
    return np.ascontiguousarray(np.concatenate([int8_codes(P, s)] + [p[..., None, :] for p in planes], axis=-2))


def sampler_weights(P, weights):
    """The packed panels P as the sampler streams them: bf16_pairs(P) for 'bf16', int8_panels(P)
    for 'int8', else P."""
    if weights == "bf16":
        return bf16_pairs(P)
    return int8_panels(P) if weights == "int8" else P


def pack_units(W, H, nt, panel):
    """W (H+I,G) -> (W_h (nt,nb,H,panel), W_x (nt,nb,I,panel)): thread t's blocks hold column
    g H + t Hu + j of W at column g Hu + j of its pack (zeros past H), as_panels of its h rows and
    of its x rows apart, so that each side streams without gaps."""
    K, G = W.shape
    ng, Hu = G // H, -(-H // nt)
    packed = np.zeros((nt, K, ng * Hu), W.dtype)                      # (nt,K,ng Hu)
    for t in range(nt):
        u0, u1 = min(H, t * Hu), min(H, (t + 1) * Hu)
        for g in range(ng):
            packed[t, :, g * Hu:g * Hu + u1 - u0] = W[:, g * H + u0:g * H + u1]
    return (np.stack([as_panels(p[:H], panel) for p in packed]),     # (nt,nb,H,panel)
            np.stack([as_panels(p[H:], panel) for p in packed]))     # (nt,nb,I,panel)


def _polls_per_second(kernels):
    global _POLLS_PER_SECOND
    if _POLLS_PER_SECOND is None:
        kernels.spin_polls(1000)                                  # compile / load
        t0 = time.perf_counter()
        kernels.spin_polls(200_000)
        _POLLS_PER_SECOND = 200_000 / max(time.perf_counter() - t0, 1e-6)
    return _POLLS_PER_SECOND


class Team:
    """nt threads generating from one model's arrays (Emb, X0, Ws, bs, Wy, by, extras, cell
    code as kernels/numba/sample_team.py takes them, with each W (H+I,G) packed here by units and
    Wy (H,V) cut into panels; weights: what the packs hold, sampler_weights).
    run() is called from one thread at a time."""

    def __init__(self, kernels, nt, arrays, L, H, cap, weights="float32"):
        self.k, self.nt, self.cap = kernels, nt, cap
        Emb, X0, Ws, bs, Wy, by, extras, code = arrays
        Wyp = sampler_weights(as_panels(Wy, kernels.PANEL), weights)      # (nbV,H,PANEL) (+ scale rows)
        Wps = tuple(tuple(sampler_weights(p, weights) for p in pack_units(W, H, nt, kernels.PANEL)) for W in Ws)
        self.arrays = (Emb, X0, Wps, bs, Wyp, by, extras, code)
        dt = Wy.dtype
        V = by.shape[0]
        self.split = H * V >= OUT_SPLIT_MIN_MACS
        width = max(H, Wyp.shape[0] * kernels.PANEL) if self.split else H   # the shared h; the split logits
        self.h = np.zeros((nt, L, H), dt)                             # each thread's own state copy
        self.c = np.zeros((nt, L, H), dt)
        self.h_in = np.zeros((2, L, H), dt)                           # job inputs by job parity
        self.c_in = np.zeros((2, L, H), dt)
        self.params = np.zeros((2, 7))                                # token n temperature top_k top_p greedy split
        self.params[:, 6] = self.split
        self.us = np.zeros((2, cap))                                  # uniforms
        self.out = np.zeros(cap, np.int64)
        self.parts = np.zeros((2, 1, width), dt)                      # shared rows, by barrier parity
        nblk = -(-Wyp.shape[0] * kernels.PANEL // kernels.CDF_BLOCK) if self.split else 0
        row = 2 + max(nblk, kernels.SELECT_MAX) if self.split else 2
        self.sums = np.zeros((2, nt, row))                            # each thread's exps' sums or top-k, by parity
        self.flags = np.zeros((2 + 2 * nt) * kernels.FLAG_STRIDE, np.int64)
        self.job = 0
        self.spin_limit = int(SPIN_SECONDS * _polls_per_second(kernels))
        self.lock = threading.Lock()
        self.wake = [threading.Event() for _ in range(nt)]
        self.alive = [False] * nt
        self.done = [0] * nt                                          # last job each worker finished
        self.failed = None
        self.closed = False
        self.pid = os.getpid()          # a forked child has none of these threads: it needs its own team

    def _args(self):
        return (*self.arrays, self.h, self.c, self.h_in, self.c_in, self.params, self.us, self.out,
                self.parts, self.sums, self.flags)

    def _worker(self, tid):
        try:
            while True:
                done = self.k.team_worker(tid, self.nt, *self._args(), self.done[tid], self.spin_limit)
                if done < 0:                                              # stopped
                    break
                self.done[tid] = done
                if self.wake[tid].wait(IDLE_EXIT_SECONDS):
                    self.wake[tid].clear()
                    continue
                with self.lock:                                           # idle: end, unless woken just now
                    if not self.wake[tid].is_set():
                        self.alive[tid] = False
                        return
                self.wake[tid].clear()
        except BaseException as e:          # pragma: no cover - a kernel does not raise
            self.failed = e
            self.flags[self.k.STOP] = 1                # release thread 0's barrier
        with self.lock:
            self.alive[tid] = False

    def _wake(self, asleep):
        """Start or wake the workers that are not polling (bit t-1 of asleep: worker t parked)."""
        with self.lock:
            for t in range(1, self.nt):
                if not self.alive[t]:
                    self.alive[t] = True
                    threading.Thread(target=self._worker, args=(t,), daemon=True,
                                     name=f"lstm-engine-sampler-{t}").start()
                elif asleep >> (t - 1) & 1:
                    self.wake[t].set()

    def run(self, h, c, token, n, temperature, top_k, top_p, greedy, us):
        """Sample n <= cap ids from state h, c (L,H), updated in place -> ids (n,) int64 (a copy)."""
        assert 1 <= n <= self.cap and not self.closed
        self.job += 1
        p = self.job & 1
        self.h_in[p], self.c_in[p] = h, c
        self.params[p, :6] = (token, n, temperature, top_k, top_p, 1.0 if greedy else 0.0)
        self.us[p, :len(us)] = us
        finished = False
        try:            # once published, thread 0 must take part, or the workers wait for it
            asleep = self.k.team_publish(self.flags, self.job, self.nt)
            if asleep or not all(self.alive[1:]):
                self._wake(asleep)
            finished = self.k.team_share(0, self.nt, *self._args(), self.job) == 0
        finally:
            if not finished:        # a worker failed, a thread did not start, or Ctrl-C
                self.close()
        if not finished:
            why = f"failed: {self.failed!r}" if self.failed else "was stopped"
            raise RuntimeError(f"a sampling thread {why}; the next call starts a new team")
        h[:], c[:] = self.h[0], self.c[0]
        return self.out[:n].copy()

    def generate(self, h, c, token, out, temperature, top_k, top_p, greedy, us, close=False):
        """out (n,) <- n ids from state h, c (L,H), updated in place, in jobs of at most cap
        characters; close: end the team afterwards (a call without a cache)."""
        n = len(out)
        for k0 in range(0, n, self.cap):
            k1 = min(n, k0 + self.cap)
            out[k0:k1] = self.run(h, c, token if k0 == 0 else out[k0 - 1], k1 - k0, temperature,
                                  top_k, top_p, greedy, us[k0:k1])
        if close:
            self.close()

    def usable(self):
        """False once closed, or in a child process forked after the team was made."""
        return not self.closed and self.pid == os.getpid()

    def close(self):
        """Tell the workers to end (they return from their loop at the next poll)."""
        self.closed = True
        self.flags[self.k.STOP] = 1
        for e in self.wake:
            e.set()
