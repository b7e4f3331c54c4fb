"""The numba kernel of `analogpipe.tiles.io`'s ADC (imported on first use; compiled once and
cached on disk)."""

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic as _intrinsic


@_intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma), as torch's vectorized `add_(n, alpha=s)`."""
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        name = "llvm.fma.f32" if ty == ir.FloatType() else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)
        return builder.call(fn, args)

    return sig, codegen


@numba.njit(inline="always")
def _level(v, i_step, sigma, n, o_inv, level, bound, zero):
    if i_step > zero:
        v = v * i_step
    if sigma > zero:
        v = _fma(n, sigma, v)
    if o_inv > zero:
        v = np.rint(v * o_inv)
        hi = level
    else:
        hi = bound
    v = hi if v > hi else v
    return -hi if v < -hi else v


@numba.njit(nogil=True, cache=True)
def adc_range_(y, noise, scale, a0, a1, i_step, sigma, o_inv, level, bound):
    """In place on y [A, B, C] (rows a0:a1): v = y * i_step (if i_step > 0), + sigma * noise
    (if sigma > 0; noise [A, B, C]), then with an ADC step (o_inv > 0): round(v * o_inv)
    half to even, clipped to +-level; without one: clipped to +-bound; then times
    scale [A, C]. All in y's dtype."""
    _, nb, nc = y.shape
    zero = y.dtype.type(0)
    for a in range(a0, a1):
        if nc == 1:
            sc = scale[a, 0]
            for b in range(nb):
                y[a, b, 0] = _level(y[a, b, 0], i_step, sigma, noise[a, b, 0], o_inv, level,
                                    bound, zero) * sc
        else:
            for b in range(nb):
                for c in range(nc):
                    y[a, b, c] = _level(y[a, b, c], i_step, sigma, noise[a, b, c], o_inv,
                                        level, bound, zero) * scale[a, c]
