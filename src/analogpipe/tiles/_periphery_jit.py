"""The numba kernels of the periphery's small row MVMs (`analogpipe.tiles.io`): the DAC of rows
and the output side of results below `rng.KERNEL_MIN` values, each one compiled pass instead
of about eight small torch ops (imported on first use through `analogpipe.tiles.jit`; compiled
once and cached on disk).

Every value is computed as the torch passes of `io._dac` and `io._adc` compute it in float32,
so the routes agree bit for bit (`tests/test_io.py`); the output noise is drawn by the caller
from its torch generator, as those passes draw it.
"""

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic

_F = np.float32


@_intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma), as torch's vectorized `add_(z, alpha=s)`."""
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3),
                                            "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@_intrinsic
def _f32_bits(typingctx, x):
    """The IEEE bits of a float32 as int32."""
    sig = _types.int32(_types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@_intrinsic
def _f32_from_bits(typingctx, x):
    """The float32 with the given IEEE bits."""
    sig = _types.float32(_types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@numba.njit(nogil=True, cache=True, error_model="numpy")
def dac_rows_(x, out, alpha, i_step, level):
    """The abs-max DAC of every row of x [S, n] (float32, C-contiguous) into out [S, n]:
    alpha[s] = max |x[s, :]| (a NaN when the row holds one, as torch.amax), a = alpha if
    alpha > 0 else 1, f = (1 / a) / i_step (i_step > 0; else f = 1 / a), then
    out = rint(x * f) (round half to even; only with i_step > 0), clipped to +-level when
    level > 0. As `io._dac`'s torch ops compute it."""
    one = _F(1.0)
    mask = np.int32(0x7FFFFFFF)
    for s in range(x.shape[0]):
        xs = x[s]
        m = np.int32(0)
        for k in range(xs.shape[0]):  # |x| bits: ordered as the values, NaN above inf
            b = _f32_bits(xs[k]) & mask
            m = b if b > m else m
        a = _f32_from_bits(m)
        alpha[s] = a
        f = one / (a if a > 0 else one)
        if i_step > 0:
            f = f / i_step
        os_ = out[s]
        for k in range(xs.shape[0]):
            v = xs[k] * f
            if i_step > 0:
                v = np.rint(v)
            if level > 0:
                v = -level if v < -level else v
                v = level if v > level else v
            os_[k] = v


@numba.njit(nogil=True, cache=True, error_model="numpy")
def adc_rows_(y, z, std, i_step, inv_o, level, o_step, alpha, seg):
    """The output side of `io._adc`'s torch passes, in place on the flat float32 MVM result y
    (rows of `seg` values): v = v * i_step (i_step > 0); v = fma(z, std, v) (z: the noise,
    empty without); with an ADC (inv_o > 0): v = rint(v * inv_o), clipped to +-level (level
    > 0; else unbounded), v = v * (a * o_step); without: clipped to +-level (level > 0),
    v = v * a. a: the row's alpha (float32 [S]), or 1 (empty alpha; then v * o_step)."""
    noisy = z.shape[0] > 0
    scaled = alpha.shape[0] > 0
    for r in range(y.shape[0] // seg):
        v = y[r * seg:(r + 1) * seg]
        if inv_o > 0:
            s = alpha[r] * o_step if scaled else o_step
        else:
            s = alpha[r] if scaled else _F(1.0)
        zr = z[r * seg:(r + 1) * seg] if noisy else z
        for k in range(seg):
            q = v[k]
            if i_step > 0:
                q = q * i_step
            if noisy:
                q = _fma(zr[k], std, q)
            if inv_o > 0:
                q = np.rint(q * inv_o)
            if level > 0:
                q = -level if q < -level else q  # NaN stays NaN, as in torch.clamp
                q = level if q > level else q
            if scaled or inv_o > 0:
                q = q * s
            v[k] = q


def warm_up() -> None:
    """Compile (or load) the kernels now, so that a build failure shows at loading."""
    x = np.ones((2, 3), np.float32)
    dac_rows_(x, np.empty_like(x), np.empty(2, np.float32), _F(0.1), _F(0))
    adc_rows_(x.reshape(-1), x.reshape(-1).copy(), _F(0.1), _F(0.1), _F(0.5), _F(10),
              _F(2), np.ones(2, np.float32), 3)
