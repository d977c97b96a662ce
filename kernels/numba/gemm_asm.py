"""The 6 x 16 float32 register block for AVX2 targets, in inline assembly.

On 16 ymm registers a 6 x 16 block needs 12 registers of sums, 2 for the row of op(B) and 2 for
broadcasts of op(A).  Written in Python (gemm.block_source), LLVM loads all six broadcasts
before the FMAs and its register allocator then shuffles and spills sums at every k, so gemm.py
would have to fall back to 5 x 16 (10 sums, fewer FMAs per load).  Here the loop over k is one
assembly block that broadcasts two rows at a time, as BLIS's Haswell kernel does; its sums go
to a stack buffer that gemm._store adds into C (docs/numba.md, "AVX2-only CPUs").

Dimension legend: op(A) (m,k) with element (i, k) at A[i*sai + k*sak]; op(B) rows of NR = 16
floats, row k at B[k*ldb + boff:]; kc the length of the sum; acc (6*16,) the block's sums.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

llvm.initialize_native_asmparser()      # numba's LLVM parses no inline assembly without it

ROWS, COLS = 6, 16

# The assembly's operands, by LLVM's numbering: the four values the loop moves are outputs ($0-$3,
# each tied to the input of the same value), then the inputs ($4-$7 those tied ones, $8-$11 the rest).
A0, A3, B, K = "$0", "$1", "$2", "$3"          # op(A) row 0, op(A) row 3, op(B) row k, k left
ROW, KSTEP, BSTEP, ACC = "$8", "$9", "$10", "$11"   # bytes between op(A) rows, between k, between op(B) rows; sums
# Rows 0-5 of op(A): x86 addressing scales an index by 1, 2, 4 or 8 only, hence a second base at row 3.
_ROWS = [f"({A0})", f"({A0},{ROW})", f"({A0},{ROW},2)", f"({A3})", f"({A0},{ROW},4)", f"({A3},{ROW},2)"]


def _source():
    """The assembly: zero the sums (row r in ymm 2r and 2r+1), then per k load the op(B) row into
    ymm12-13 and, two rows at a time, broadcast op(A) into ymm14-15 and issue their four FMAs."""
    lines = [f"vxorps %ymm{i}, %ymm{i}, %ymm{i}" for i in range(2 * ROWS)]
    lines += ["1:", f"vmovups ({B}), %ymm12", f"vmovups 32({B}), %ymm13"]
    for r in range(0, ROWS, 2):
        lines += [f"vbroadcastss {_ROWS[r]}, %ymm14", f"vbroadcastss {_ROWS[r + 1]}, %ymm15",
                  f"vfmadd231ps %ymm12, %ymm14, %ymm{2 * r}", f"vfmadd231ps %ymm13, %ymm14, %ymm{2 * r + 1}",
                  f"vfmadd231ps %ymm12, %ymm15, %ymm{2 * r + 2}", f"vfmadd231ps %ymm13, %ymm15, %ymm{2 * r + 3}"]
    lines += [f"add {KSTEP}, {A0}", f"add {KSTEP}, {A3}", f"add {BSTEP}, {B}", f"dec {K}", "jnz 1b"]
    lines += [f"vmovups %ymm{i}, {32 * i}({ACC})" for i in range(2 * ROWS)]
    lines += ["vzeroupper"]                      # no AVX-SSE transition penalty in the code after it
    return "\n".join(lines)


ASM = _source()
_CONSTRAINTS = ",".join(["=r"] * 4 + ["0", "1", "2", "3"] + ["r"] * 4
                        + [f"~{{xmm{i}}}" for i in range(16)] + ["~{memory}", "~{dirflag}", "~{fpsr}", "~{flags}"])


@intrinsic
def block6x16(typingctx, A, aoff, sai, sak, B, boff, ldb, kc, acc):
    """acc[16*r + j] = sum_{k < kc} op(A)[r, k] * op(B)[k, j] for r < 6, j < 16, with op(A)[r, k]
    = A[aoff + r*sai + k*sak] and op(B)[k, j] = B[boff + k*ldb + j]; kc >= 1; float32 only."""
    for arr in (A, B, acc):
        if not isinstance(arr, types.Array) or arr.dtype != types.float32:
            raise TypingError("block6x16 takes float32 arrays")

    def codegen(context, builder, sig, args):
        Aa, ao, sai_, sak_, Ba, bo, ldb_, kc_, acca = args
        i64 = ir.IntType(64)
        tys = sig.args

        def address(ty, arr, off):                      # the byte address of arr[off]
            data = context.make_array(ty)(context, builder, arr).data
            return builder.ptrtoint(builder.gep(data, [off]), i64)

        def as_i64(ty, val):
            return context.cast(builder, val, ty, types.int64)

        four = ir.Constant(i64, 4)
        a = address(tys[0], Aa, as_i64(tys[1], ao))
        row_bytes = builder.mul(as_i64(tys[2], sai_), four)
        a3 = builder.add(a, builder.mul(row_bytes, ir.Constant(i64, 3)))
        b = address(tys[4], Ba, as_i64(tys[5], bo))
        out = address(tys[8], acca, ir.Constant(i64, 0))
        operands = [a, a3, b, as_i64(tys[7], kc_),                                   # $4-$7 (tied)
                    row_bytes, builder.mul(as_i64(tys[3], sak_), four), builder.mul(as_i64(tys[6], ldb_), four), out]
        fnty = ir.FunctionType(ir.LiteralStructType([i64] * 4), [i64] * 8)
        builder.call(ir.InlineAsm(fnty, ASM, _CONSTRAINTS, side_effect=True), operands)
        return context.get_dummy_value()

    return types.void(A, aoff, sai, sak, B, boff, ldb, kc, acc), codegen

