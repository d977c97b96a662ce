"""The sampler team's barrier primitives (kernels/numba/sync.py): spin_yield hands the CPU over.

A team waiting at a barrier spins, then yields (sample.wait_for_team): with more runnable threads
than cores a descheduled partner gets its CPU back at the next yield instead of after the
spinner's whole time slice.  Checked where that matters, one CPU shared by two threads: a
partner thread counting in a jitted loop advances while the main thread's jitted loop yields
100 times, and does not while the same loop only issues the spin hint.
"""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

SCRIPT = textwrap.dedent("""
    import os, sys, threading
    import numba, numpy as np
    from lstm_engine.kernels.numba.sync import load_acquire, spin_pause, spin_yield, store_release
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})       # this process, and its threads: one CPU

    @numba.njit(nogil=True)
    def count(flags):                     # the partner: count until told to stop
        n = 0
        while load_acquire(flags, 16) == 0:
            n += 1
            store_release(flags, 0, n)
        return n

    @numba.njit(nogil=True)
    def progress(flags, calls, yielding):  # the partner's progress over `calls` yields (or spin hints)
        while load_acquire(flags, 0) == 0:
            spin_yield()                   # wait until the partner has run at all
        start = load_acquire(flags, 0)
        for _ in range(calls):
            if yielding:
                spin_yield()
            else:
                spin_pause()
        return load_acquire(flags, 0) - start

    mode = sys.argv[1] == "yield"
    flags = np.zeros(32, np.int64)
    progress(np.ones(32, np.int64), 1, mode)                         # compile before the partner runs
    count(np.ones(32, np.int64))                                     # compile too
    t = threading.Thread(target=count, args=(flags,), daemon=True)
    t.start()
    moved = progress(flags, 100, mode)
    flags[16] = 1
    t.join()
    print(moved)
""")


def partner_progress(mode):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="spin_yield calls sched_yield on Linux only")
def test_spin_yield_lets_a_thread_on_the_same_cpu_run():
    assert partner_progress("yield") > 0
    assert partner_progress("pause") == 0        # the check can tell: spin hints alone leave it waiting
