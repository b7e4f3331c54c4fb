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


@numba.njit(nogil=True, cache=True)
def fold_range_(z, out, n0, n1, sh, sw, dh, dw):
    """col2im of images n0:n1: out [N, C, Hp, Wp] (zeroed, padded grid) += z [N, C, kh, kw,
    Ho, Wo] at (i dh + oh sh, j dw + ow sw), kernel positions in (i, j) order as
    `AnalogConv2d.fold`'s strided adds (the same sums in the same order)."""
    _, nc, kh, kw, ho, wo = z.shape
    for n in range(n0, n1):
        for c in range(nc):
            o = out[n, c]
            for i in range(kh):
                for j in range(kw):
                    zz = z[n, c, i, j]
                    for oh in range(ho):
                        r = i * dh + oh * sh
                        for ow in range(wo):
                            o[r, j * dw + ow * sw] += zz[oh, ow]


@numba.njit(nogil=True, cache=True)
def im2col_dac_range_(x, factor, out, n0, n1, sh, sw, ph, pw, dh, dw, rnd, level):
    """The DAC levels of every conv patch of images n0:n1, written as columns:
    out [N, C, kh, kw, Ho, Wo] = clip(round?(x_pad[n, c, i dh + oh sh, j dw + ow sw] *
    factor[n, oh, ow])), x [N, C, H, W] unpadded (zero padding ph, pw read as 0); rnd: round
    half to even; level > 0: clip to +-level. As `torch.mul(patches, factor)`, `round_()`,
    `clamp_()` compute it."""
    _, nc, kh, kw, ho, wo = out.shape
    h, w = x.shape[2], x.shape[3]
    for n in range(n0, n1):
        f = factor[n]
        for c in range(nc):
            xc = x[n, c]
            for i in range(kh):
                for j in range(kw):
                    o = out[n, c, i, j]
                    col0 = j * dw - pw
                    # output columns whose input column is inside [0, w)
                    lo = 0 if col0 >= 0 else min(wo, (-col0 + sw - 1) // sw)
                    hi = max(lo, min(wo, (w - 1 - col0) // sw + 1)) if w - 1 - col0 >= 0 else lo
                    for oh in range(ho):
                        r = i * dh + oh * sh - ph
                        if r < 0 or r >= h:
                            for ow in range(wo):
                                o[oh, ow] = 0.0
                            continue
                        xr = xc[r]
                        fr = f[oh]
                        for ow in range(lo):
                            o[oh, ow] = 0.0
                        for ow in range(lo, hi):
                            v = xr[col0 + ow * sw] * fr[ow]
                            if rnd:
                                v = np.rint(v)
                            if level > 0:
                                v = level if v > level else v
                                v = -level if v < -level else v
                            o[oh, ow] = v
                        for ow in range(hi, wo):
                            o[oh, ow] = 0.0
