"""Keep Numba's on-disk cache of these kernels honest across edits.

Numba stamps each cached function with its own source file only, so editing a helper in
fastmath.py would leave the cached machine code of lstm_layer.py (which inlines it)
stale.  This locator stamps every function defined in kernels/numba/*.py with one hash
over all of those files, so any edit recompiles them all.  It must be installed before
any @njit(cache=True) in this package: jit.py imports it, and every kernel module takes
its options from jit.py.  Functions defined elsewhere (benchmarks/dev) keep numba's own
locators.

The hash is taken when this module is imported, before the kernels are compiled: a file
edited while a process runs then gives that process an older stamp than its code (a
cache entry no later process loads), never a newer one (stale code that they would load).

Importing this module also starts numba's thread pool.  A cached function whose threaded loops
came from another cached function (a kernel compiled in a process that loaded `pgemm` from the
cache, say) does not start the pool when it is loaded, and its first call jumps to a null
pointer; numba starts the pool itself only for the libraries that compiled the loops (numba
issues 8578 and 4807).  tests/backends/test_numba_cache.py shows it on three small functions.
"""
from __future__ import annotations

import glob
import hashlib
import os

import numba
from numba.core import caching

_DIR = os.path.dirname(os.path.abspath(__file__))


def _hash_sources():
    """sha256 over the .py sources of this directory."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(_DIR, "*.py"))):
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read())
    return h.hexdigest()


_STAMP = _hash_sources()


def kernels_stamp():
    """The hash of this directory's sources as they were when this process imported them."""
    return _STAMP


def _ours(py_file):
    return os.path.dirname(os.path.abspath(py_file)) == _DIR


class _UserProvided(caching.UserProvidedCacheLocator):
    """$NUMBA_CACHE_DIR when the user set one."""

    def get_source_stamp(self):
        return kernels_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        return super().from_function(py_func, py_file) if _ours(py_file) else None


class _InTree(caching.InTreeCacheLocator):
    """kernels/__pycache__ when writable (an editable or user install)."""

    def get_source_stamp(self):
        return kernels_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        return super().from_function(py_func, py_file) if _ours(py_file) else None


class _UserWide(caching.UserWideCacheLocator):
    """The user's cache directory when the package directory is read-only."""

    def get_source_stamp(self):
        return kernels_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        return super().from_function(py_func, py_file) if _ours(py_file) else None


def _install():
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if impl is None or not hasattr(impl, "_locator_classes"):   # unknown numba layout: keep its default
        return
    if _InTree not in impl._locator_classes:
        impl._locator_classes = [_UserProvided, _InTree, _UserWide] + list(impl._locator_classes)


_install()
numba.get_num_threads()     # starts the thread pool (see the module's docstring)
