"""The numba kernel of `analogpipe.tiles.rng.normal_` for float32 CPU tensors (imported on
first use through `analogpipe.tiles.jit`; compiled once and cached on disk)."""

import numba
import numpy as np
from llvmlite import ir
from numba import carray
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic

from analogpipe.tiles._splitmix_jit import GOLD
from analogpipe.tiles._splitmix_jit import mix as _mix

_LOW24 = np.uint64(0xFFFFFF)
BLOCK = 1024  # pairs per block: a block of 2 BLOCK values holds the cosines, then the sines


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


_F = np.float32
_SQRTH = _F(0.70710678118654752440)


@numba.njit(inline="always", error_model="numpy")
def _logf(x):
    """ln x for a normal float32 x > 0 (Cephes' logf: x = 2^e m, m in [sqrt(1/2), sqrt(2)),
    a degree-8 polynomial in m - 1; relative error ~1e-7)."""
    b = _f32_bits(x)
    e = (b >> np.int32(23)) - np.int32(126)
    m = _f32_from_bits((b & np.int32(0x007FFFFF)) | np.int32(0x3F000000))  # [0.5, 1)
    small = m < _SQRTH
    e = e - np.int32(small)
    m = m + m * _F(small) - _F(1.0)
    ef = _F(e)
    z = m * m
    y = _F(7.0376836292e-2)
    y = y * m - _F(1.1514610310e-1)
    y = y * m + _F(1.1676998740e-1)
    y = y * m - _F(1.2420140846e-1)
    y = y * m + _F(1.4249322787e-1)
    y = y * m - _F(1.6668057665e-1)
    y = y * m + _F(2.0000714765e-1)
    y = y * m - _F(2.4999993993e-1)
    y = y * m + _F(3.3333331174e-1)
    y = y * m * z
    y = y + _F(-2.12194440e-4) * ef
    y = y - _F(0.5) * z
    return m + y + _F(0.693359375) * ef


@numba.njit(inline="always", error_model="numpy")
def _sincos_turns(v):
    """(sin, cos) of the angle 2 pi v / 4 for v in [0, 4) quarter turns: k = nearest quarter,
    phi = (v - k) pi / 2 in [-pi/4, pi/4] (v - k exact for v on a 2^-22 grid), Cephes'
    sinf / cosf polynomials (error ~1e-7), then rotated by k quarter turns."""
    k = np.floor(v + _F(0.5))
    phi = (v - k) * _F(1.5707963267948966)
    p2 = phi * phi
    s = _F(-1.9515295891e-4)
    s = s * p2 + _F(8.3321608736e-3)
    s = s * p2 - _F(1.6666654611e-1)
    s = s * p2 * phi + phi
    c = _F(2.443315711809948e-5)
    c = c * p2 - _F(1.388731625493765e-3)
    c = c * p2 + _F(4.166664568298827e-2)
    c = c * p2 * p2 - _F(0.5) * p2 + _F(1.0)
    q = np.int32(k) & np.int32(3)
    odd = (q & np.int32(1)) != 0
    sign = _F(1.0) - _F(2.0) * _F((q & np.int32(2)) != 0)
    sin_a = (c if odd else s) * sign
    cos_a = (-s if odd else c) * sign
    return sin_a, cos_a


@numba.njit(inline="always", error_model="numpy")
def _block(seed, k0, zc, zs, m, hi, lo):
    """Pairs k0 .. k0 + m - 1: zc[j] = r cos a, zs[j] = r sin a (Box-Muller). The hashes
    (64-bit lanes) and the float32 math (32-bit lanes, twice as many per vector) run as
    separate loops over the int32 scratch arrays hi, lo."""
    for j in range(m):
        h = _mix(seed + np.uint64(k0 + j) * GOLD)
        hi[j] = np.int32(h >> np.uint64(40))
        lo[j] = np.int32(h & _LOW24)
    for j in range(m):
        u1 = _F(hi[j] + np.int32(1)) * _F(2.0**-24)  # (0, 1]
        r = np.sqrt(_F(-2.0) * _logf(u1))
        v = _F(lo[j]) * _F(2.0**-22)  # [0, 4) quarter turns
        s, c = _sincos_turns(v)
        zc[j] = r * c
        zs[j] = r * s


@numba.njit(nogil=True, cache=True, error_model="numpy")
def normals_range_(out, seed, b0, b1, scale, add):
    """Normals of standard deviation `scale` (float32) into blocks b0:b1 of out (float32,
    flat), added to its values if `add`, else written: block b is
    out[2 B b : 2 B (b + 1)], B = BLOCK; pair k = B b + j gives its elements j (r cos a) and
    B + j (r sin a), by Box-Muller from the SplitMix64 output of seed + k * GOLD:
    u1 = (high 24 bits + 1) / 2^24 in (0, 1], u2 = low 24 bits / 2^24, r = sqrt(-2 ln u1),
    a = 2 pi u2, in float32 arithmetic. A last, partial block keeps its first elements of
    the same layout. The values are formed in a scratch block and then written / added."""
    z = np.empty(2 * BLOCK, np.float32)
    hi = np.empty(BLOCK, np.int32)
    lo = np.empty(BLOCK, np.int32)
    for b in range(b0, b1):
        start = 2 * BLOCK * b
        dst = out[start:start + 2 * BLOCK]
        if not add and scale == 1 and dst.shape[0] == 2 * BLOCK:  # straight into out
            _block(seed, BLOCK * b, dst[:BLOCK], dst[BLOCK:], BLOCK, hi, lo)
            continue
        _block(seed, BLOCK * b, z[:BLOCK], z[BLOCK:], BLOCK, hi, lo)
        if add:
            for i in range(dst.shape[0]):
                dst[i] += scale * z[i]
        elif scale == 1:
            dst[:] = z[:dst.shape[0]]
        else:
            for i in range(dst.shape[0]):
                dst[i] = scale * z[i]


@_intrinsic
def _claim(typingctx, counter):
    """Atomically take the next value of counter[0] (int64 array): fetch-and-add 1."""
    sig = _types.int64(counter)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", arr.data, ir.Constant(ir.IntType(64), 1), "seq_cst")

    return sig, codegen


@_intrinsic
def _f32_at(typingctx, addr):
    """The float32 pointer at an address (int64)."""
    sig = _types.CPointer(_types.float32)(_types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.FloatType()))

    return sig, codegen


@numba.cfunc(_types.void(_types.CPointer(_types.int64)), nogil=True, cache=True,
             error_model="numpy")
def normals_team(data):
    """`normals_range_` as the body of an OpenMP parallel region (`rng.run_team`): every
    thread of the team takes parts off a shared counter until none is left. data (int64):
    [address of out (float32), n, seed, scale (float32 bits), add, parts, counter]."""
    a = carray(data, 7)
    n = a[1]
    out = carray(_f32_at(a[0]), (n,))
    scale = _f32_from_bits(np.int32(a[3]))
    blocks = (n + 2 * BLOCK - 1) // (2 * BLOCK)
    parts = a[5]
    counter = carray(data, 7)[6:]
    while True:
        i = _claim(counter)
        if i >= parts:
            break
        normals_range_(out, np.uint64(a[2]), blocks * i // parts, blocks * (i + 1) // parts,
                       scale, a[4] != 0)


def warm_up() -> None:
    """Compile (or load) the kernel now, so that a build failure shows at loading."""
    normals_range_(np.zeros(2 * BLOCK, np.float32), np.uint64(1), 0, 1, np.float32(1), True)
