"""Cross-thread flags for jitted code: atomic loads and stores on int64 array slots, a spin hint.

Numba's jitted code has no atomics of its own, and a plain `while flags[i] < s: pass` may be
compiled into a loop that never reads memory again.  These intrinsics emit LLVM atomic
instructions on one element of a C-contiguous int64 array:

    load_acquire(a, i)      a[i], and no later read of this thread moves before it
    store_release(a, i, v)  a[i] = v, after every earlier write of this thread is visible
    load_seq(a, i), store_seq(a, i, v)
                            the same, sequentially consistent (a store then a load of another
                            slot are not reordered: what two threads need to agree who parks)
    spin_pause()            the CPU's spin-wait hint (x86 `pause`; nothing elsewhere)
    spin_yield()            hand the CPU to another runnable thread: libc's sched_yield on Linux
                            (a symbol the linker resolves when the cached code loads, no
                            address baked in), spin_pause elsewhere -> its result (0 when it ran)

Each flag should sit on its own cache line (FLAG_STRIDE slots apart), so that one thread's
writes do not invalidate the line another thread is polling for a different flag.
"""
from __future__ import annotations

import platform
import sys

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

FLAG_STRIDE = 16        # int64 slots between two flags: 128 bytes, two cache lines
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_LINUX = sys.platform.startswith("linux")


def _slot(context, builder, aryty, ary, idx):
    """Pointer to ary[idx] of a 1-D array."""
    arr = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, arr, [idx])


def _check(arr):
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64):
        raise numba.errors.TypingError("flags must be a 1-D int64 array")


def _load(ordering):
    @intrinsic
    def load(typingctx, arr, i):
        _check(arr)
        sig = types.int64(arr, types.intp)

        def codegen(context, builder, sig, args):
            ptr = _slot(context, builder, sig.args[0], args[0], args[1])
            return builder.load_atomic(ptr, ordering, 8)
        return sig, codegen
    return load


def _store(ordering):
    @intrinsic
    def store(typingctx, arr, i, v):
        _check(arr)
        sig = types.void(arr, types.intp, types.int64)

        def codegen(context, builder, sig, args):
            ptr = _slot(context, builder, sig.args[0], args[0], args[1])
            builder.store_atomic(args[2], ptr, ordering, 8)
            return context.get_dummy_value()
        return sig, codegen
    return store


load_acquire = _load("acquire")
load_seq = _load("seq_cst")
store_release = _store("release")
store_seq = _store("seq_cst")


@intrinsic
def spin_pause(typingctx):
    sig = types.void()

    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def spin_yield(typingctx):
    sig = types.int64()

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        if _LINUX:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                "sched_yield")
            return builder.sext(builder.call(fn, []), i64)
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return ir.Constant(i64, 0)
    return sig, codegen
