"""Numba's on-disk cache and threaded loops: a cached function whose threaded loop it took from
another cached function must run in a later process (kernels/numba/cache.py starts the pool).

Each step runs in a fresh process on a cache of its own, so the order of compiling and loading
is the one that breaks: P has a threaded loop, F calls P, G calls F; one process compiles F (and
P), the next compiles G with F loaded from the cache, a third loads G and calls it.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

MODULE = textwrap.dedent('''
    import numba
    import numpy as np

    @numba.njit(cache=True, parallel=True)
    def P(a, nt):
        for k in numba.prange(nt):
            a[k] += k + 1.0

    @numba.njit(cache=True)
    def F(a, nt):
        P(a, nt)

    @numba.njit(cache=True)
    def G(a, nt):
        F(a, nt)
''')

CALL = textwrap.dedent('''
    import sys
    import numpy as np
    if sys.argv[2] == "guard":
        import lstm_engine.kernels.numba.cache   # noqa: F401  (what every kernel module imports)
    import toy
    a = np.zeros(4)
    getattr(toy, sys.argv[1])(a, 4)
    print(a.tolist())
''')


def _steps(tmp_path, guard):
    """F, then G, then G again, each in a fresh process on the cache tmp_path/guard: F compiled
    with P, G compiled with F loaded from the cache, G loaded -> the three CompletedProcess."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / guard), NUMBA_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    return [subprocess.run([sys.executable, str(tmp_path / "call.py"), fn, guard], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300) for fn in ("F", "G", "G")]


def test_a_cached_caller_of_cached_threaded_code_runs_in_a_later_process(tmp_path):
    (tmp_path / "toy.py").write_text(MODULE)
    (tmp_path / "call.py").write_text(CALL)
    for step, done in zip(("F compiled", "G compiled", "G loaded"), _steps(tmp_path, "guard")):
        assert done.returncode == 0, f"{step}, the kernels' cache module imported: rc {done.returncode}\n" \
                                     f"{done.stderr[-2000:]}"
        assert done.stdout.strip() == "[1.0, 2.0, 3.0, 4.0]"
    bare = [done.returncode for done in _steps(tmp_path, "bare")]
    if bare == [0, 0, 0]:
        pytest.skip("this numba starts the pool for such a function itself: the kernels' guard is not needed")
    assert bare[0] == 0 and min(bare) < 0, f"without the guard: return codes {bare}"
