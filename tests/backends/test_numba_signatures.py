"""The kernels the fused loops call compile once per dtype and layout.

Numba compiles a jitted callee once per argument-type signature.  A prange index is typed
int64 when numba first types the loop and uint64 in the parallel body, and a literal argument
(0, 1, True, False) is a type of its own, so a callee passed either would compile twice or
more: seconds each, paid inside the first run's time budget.  A fresh process with an empty
cache runs the unit-split time loops, the loss on one and on two threads and the big products
(`lstm_layer.mm`, literal flags from numba code and plain ones from Python), then counts each
callee's signatures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

_SCRIPT = r"""
import json
import numpy as np
from lstm_engine.kernels.numba import lstm_layer, lstm_layer_columns as cols, output_layer, gemm
import numba
from lstm_engine.kernels.numba.jit import JIT

T, B, H, V, nt = 3, 4, 16, 11, 2
rng = np.random.default_rng(0)
f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
Wh, b, h0, c0 = f(H, 4 * H), f(4 * H), f(B, H), f(B, H)
hs, cs, acts = f(T, B, H), f(T, B, H), f(T, B, 4 * H)
cols.forward_steps_cols(Wh, b, h0, c0, hs, cs, acts, nt)
cols.backward_steps_cols(f(T, B, H), Wh, c0, cs, acts, f(T, B, 4 * H), f(B, H), f(B, H), nt)

logits, targets = f(T * B, V), rng.integers(0, V, T * B)
output_layer.softmax_xent_kernel(logits, targets, f(T * B, V), True, None)
output_layer.softmax_xent_kernel(logits, targets, f(T * B, V), True, nt)


@numba.njit(**dict(JIT, cache=False))             # code from -c has no file to cache beside
def literal_flags(A, Bm, C):
    lstm_layer.mm(A, Bm, C, False, False, 1.0, 0.0, 2)
    lstm_layer.mm(A, Bm, C, True, False, 1.0, 0.0, None)


A, Bm, C = f(8, 8), f(8, 8), f(8, 8)
literal_flags(A, Bm, C)
lstm_layer.mm(A, Bm, C, False, False, 1.0, 0.0, 2)
lstm_layer.mm(A, Bm, C, True, False, 1.0, 0.0, None)
output_layer.mm_rows(A, Bm, C, False, False, None)
output_layer.mm_rows(A, Bm, C, True, False, 2)

# the time loops on a batch-row split (int rows) and on the calling thread (None)
no_tok, no_table = np.empty((0, 0), np.int64), np.empty((0, 4 * H), np.float32)
dhs, dzs, db = f(T, B, H), f(T, B, 4 * H), f(4 * H)
for rows in (np.int64(nt), None):
    lstm_layer.run_forward_steps(Wh, b, h0, c0, hs, cs, acts, rows, None, no_tok, no_table)
    lstm_layer.run_backward_steps(dhs, Wh, c0, cs, acts, dzs, f(B, H), f(B, H), rows, None, no_tok, db, no_table)

fns = {"forward_setup": cols.forward_setup, "forward_unit_step": cols.forward_unit_step,
       "backward_setup": cols.backward_setup, "backward_unit_step": cols.backward_unit_step,
       "backward_finish": cols.backward_finish, "softmax_xent_rows": output_layer.softmax_xent_rows,
       "pgemm": lstm_layer.pgemm, "gemm": gemm.gemm, "forward_steps": lstm_layer.forward_steps,
       "backward_steps": lstm_layer.backward_steps}
print(json.dumps({name: [str(s) for s in fn.signatures] for name, fn in fns.items()}))
"""


@pytest.fixture(scope="module")
def signatures(tmp_path_factory):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path_factory.mktemp("numba")), NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", ["forward_setup", "forward_unit_step", "backward_setup", "backward_unit_step",
                                  "backward_finish", "softmax_xent_rows", "pgemm"])
def test_one_signature(signatures, name):
    """Called from a prange body and (softmax_xent_rows) from the calling thread with 0 for
    its row and scratch index: one compiled copy."""
    assert len(signatures[name]) == 1, signatures[name]


@pytest.mark.parametrize("name", ["gemm", "forward_steps", "backward_steps"])
def test_both_branches_of_a_thread_plan_share_the_callee(signatures, name):
    """Numba compiles every branch of `if prod is None` for an int prod (it prunes only on a None or
    literal argument): the calling-thread branch passes gemm (from lstm_layer.mm and output_layer.mm_rows)
    and the row loops (from run_forward_steps and run_backward_steps) the types the threaded branch
    passes, so one compile serves both."""
    assert len(signatures[name]) == 1, signatures[name]


def test_gemm_takes_no_literal_flags(signatures):
    """mm passes its transpose flags on as plain bools: gemm compiles per layout, never per
    literal True/False of a caller."""
    sigs = signatures["gemm"]
    assert sigs, "gemm never compiled"
    assert not [s for s in sigs if "Literal" in s], sigs
