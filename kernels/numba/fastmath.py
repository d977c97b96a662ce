"""Scalar activation functions for Numba kernels that LLVM can vectorise.

Numba lowers np.exp / np.tanh to scalar libm calls, which blocks vectorisation of the fused
gate loops.  The functions below use only arithmetic, floor, select and one bit-cast, so a
loop over them compiles to vector code (docs/numba.md has their cost per element).

    fexp(x)      Cephes-style exp: x = n ln2 + r, polynomial (float32) or Pade (float64)
                 for e^r, then 2^n built from its exponent bits.  About 1 ulp.
    fexp_nonpos(x)  fexp for x <= 0 (a softmax's shifted logits): float32 builds 2^n with one
                 factor and gives 0 where e^x is below the normal range (x < -87.3), so it
                 skips fexp's upper clamp and second factor
    fsigmoid(x)  1/(1+e^-x) split by sign like the reference (e = exp(-|x|) <= 1); float32
                 builds e with one 2^n factor (e below float32's normal range is 0)
    ftanh(x)     float32: Eigen's [13/6] rational polynomial, one division and no exp;
                 float64: odd polynomial (|x| <= 0.625), (1-e)/(1+e), e = exp(-2|x|) beyond

    one_minus(x) 1 - x (the gates' derivatives); like(x, v): v in x's type

Each is overloaded for float32 and float64 with constants of the same type, so float32
code never widens to float64 (an integer or float64 literal would widen it, and the loop then
runs at half the vector width with conversions).  Accuracy against NumPy is checked in the tests.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from .jit import JIT

F32, F64 = np.float32, np.float64


@intrinsic
def _pow2(typingctx, n):
    """2**n for a float holding an integer n in the normal exponent range, from its bits."""
    if n == types.float32:
        ity, bias, shift = ir.IntType(32), 127, 23
    elif n == types.float64:
        ity, bias, shift = ir.IntType(64), 1023, 52
    else:
        raise TypingError("_pow2 takes float32 or float64")

    def codegen(context, builder, sig, args):
        k = builder.fptosi(args[0], ity)
        k = builder.shl(builder.add(k, ir.Constant(ity, bias)), ir.Constant(ity, shift))
        return builder.bitcast(k, context.get_value_type(sig.return_type))

    return n(n), codegen


def fexp(x):
    """exp(x) that vectorises (see module docstring)."""
    return np.exp(x)


def fexp_nonpos(x):
    """exp(x) for x <= 0 (see module docstring)."""
    return np.exp(x)


def fsigmoid(x):
    """1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + np.exp(-x))


def ftanh(x):
    """tanh(x)."""
    return np.tanh(x)


def one_minus(x):
    """1 - x."""
    return 1 - x


@overload(one_minus, inline="always", jit_options=JIT)
def _one_minus(x):
    one = F32(1.0) if x == types.float32 else 1.0
    return lambda x: one - x


def like(x, v):
    """v converted to x's type."""
    return type(x)(v)


@overload(like, inline="always", jit_options=JIT)
def _like(x, v):
    if x == types.float32:
        return lambda x, v: F32(v)
    return lambda x, v: np.float64(v)


# --- float32 -----------------------------------------------------------------

@numba.njit(inline="always", **JIT)
def _exp32_parts(y):
    """y = n ln2 + r -> (n, e^r) by the polynomial, float32 (y already clamped)."""
    n = np.floor(y * F32(1.44269504088896341) + F32(0.5))
    r = y - n * F32(0.693359375) - n * F32(-2.12194440e-4)
    p = F32(1.9875691500e-4)
    p = p * r + F32(1.3981999507e-3)
    p = p * r + F32(8.3334519073e-3)
    p = p * r + F32(4.1665795894e-2)
    p = p * r + F32(1.6666665459e-1)
    p = p * r + F32(5.0000001201e-1)
    return n, p * r * r + r + F32(1.0)


def _exp32(x):
    y = min(max(x, F32(-103.9)), F32(88.72))
    n, er = _exp32_parts(y)
    m = np.floor(n * F32(0.5))                 # 2^n = 2^m 2^(n-m): both factors stay normal
    e = er * _pow2(m) * _pow2(n - m)
    e = F32(0.0) if x < F32(-103.9) else e     # written so that NaN stays NaN
    return F32(np.inf) if x > F32(88.72) else e


def _tanh32(x):
    # Eigen's float tanh (generic_fast_tanh_float): a [13/6] rational in x on |x| <= 7.9988,
    # where tanh rounds to +-1 in float32; one division, no exp.  About 2 eps relative.
    y = min(max(x, F32(-7.99881172180175781)), F32(7.99881172180175781))   # x first: NaN stays NaN
    s = y * y
    p = F32(-2.76076847742355e-16)
    p = p * s + F32(2.00018790482477e-13)
    p = p * s + F32(-8.60467152213735e-11)
    p = p * s + F32(5.12229709037114e-08)
    p = p * s + F32(1.48572235717979e-05)
    p = p * s + F32(6.37261928875436e-04)
    p = p * s + F32(4.89352455891786e-03)
    q = F32(1.19825839466702e-06)
    q = q * s + F32(1.18534705686654e-04)
    q = q * s + F32(2.26843463243900e-03)
    q = q * s + F32(4.89352518554385e-03)
    r = y * p / q
    r = F32(1.0) if x >= F32(7.99881172180175781) else r    # exactly +-1 out there, with or without FMA
    r = F32(-1.0) if x <= F32(-7.99881172180175781) else r
    return x if abs(x) < F32(0.0004) else r     # tanh x = x to rounding there (and -0.0 stays -0.0)


@numba.njit(inline="always", **JIT)
def _exp_nonpos32(a):
    """e^a for a <= 0 (or NaN): fexp's polynomial with one 2^n factor; below -87.3, where e^a is
    no longer a normal float, 0."""
    n, er = _exp32_parts(max(a, F32(-87.3)))   # a first: NaN stays NaN
    e = er * _pow2(n)                           # n >= -126
    return F32(0.0) if a < F32(-87.3) else e


def _fexp_nonpos32(x):
    return _exp_nonpos32(x)


def _sigmoid32(x):
    # the sigmoid of x < -87.3 is e^x ~ 0 to float32 anyway
    e = _exp_nonpos32(-abs(x))
    s = F32(1.0) / (F32(1.0) + e)
    return s if x >= F32(0.0) else e * s


# --- float64 -----------------------------------------------------------------

def _exp64(x):
    y = min(max(x, -745.0), 709.78)
    n = np.floor(y * 1.4426950408889634 + 0.5)
    r = y - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6
    rr = r * r
    p = ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1) * r
    q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr \
        + 2.00000000000000000009e0
    m = np.floor(n * 0.5)                      # 2^n = 2^m 2^(n-m): both factors stay normal
    e = (1.0 + 2.0 * p / (q - p)) * _pow2(m) * _pow2(n - m)
    e = 0.0 if x < -745.0 else e               # written so that NaN stays NaN
    return np.inf if x > 709.78 else e


def _tanh64(x):
    a = abs(x)
    s = x * x
    p = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s - 1.61468768441708447952e3
    q = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s + 4.84406305325125486048e3
    small = x + x * s * p / q
    e = fexp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    big = big if x >= 0.0 else -big
    return small if a <= 0.625 else big


def _sigmoid64(x):
    e = fexp(-abs(x))
    s = 1.0 / (1.0 + e)
    return s if x >= 0.0 else e * s


def _pick(f32, f64, name):
    def typer(x):
        if x == types.float32:
            return f32
        if x == types.float64:
            return f64
        raise TypingError(f"{name} takes float32 or float64, got {x}")
    return typer


overload(fexp)(_pick(_exp32, _exp64, "fexp"))
overload(fexp_nonpos)(_pick(_fexp_nonpos32, _exp64, "fexp_nonpos"))
overload(ftanh)(_pick(_tanh32, _tanh64, "ftanh"))
overload(fsigmoid)(_pick(_sigmoid32, _sigmoid64, "fsigmoid"))
