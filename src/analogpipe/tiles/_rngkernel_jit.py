"""The numba kernels of `analogpipe.tiles.rng.normal_` and of the periphery's output side
(`analogpipe.tiles.io._adc`) for float32 CPU tensors (imported on first use through
`analogpipe.tiles.jit`; compiled once and cached on disk)."""

import numba
import numpy as np
from numba import carray

from analogpipe.tiles._splitmix_jit import GOLD
from analogpipe.tiles._splitmix_jit import mix as _mix
from analogpipe.tiles._team_jit import BODY, claim, f32_arg, f32_at, wide_vectors
from analogpipe.tiles._team_jit import f32_bits as _f32_bits
from analogpipe.tiles._team_jit import f32_from_bits as _f32_from_bits

_LOW24 = np.uint64(0xFFFFFF)
BLOCK = 1024  # pairs per block: a block of 2 BLOCK values holds the cosines, then the sines


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


@numba.njit(inline="always", error_model="numpy")
def _noisy(v, z, i_step, std):
    for k in range(v.shape[0]):
        v[k] = v[k] * i_step + std * z[k]


@numba.njit(inline="always", error_model="numpy")
def _quantize(v, inv_o, level):
    for k in range(v.shape[0]):
        q = np.rint(v[k] * inv_o)
        q = -level if q < -level else q  # NaN stays NaN, as in torch.clamp
        v[k] = level if q > level else q


@numba.njit(inline="always", error_model="numpy")
def _clip(v, level):
    for k in range(v.shape[0]):
        q = v[k]
        q = -level if q < -level else q  # NaN stays NaN, as in torch.clamp
        v[k] = level if q > level else q


@numba.njit(nogil=True, cache=True, error_model="numpy")
def normals_range_(out, seed, b0, b1, scale, add):
    """Normals of standard deviation `scale` (float32) into blocks b0:b1 of out (float32,
    flat), added to its values if `add`, else written: block b is
    out[2 B b : 2 B (b + 1)], B = BLOCK; pair k = B b + j gives its elements j (r cos a) and
    B + j (r sin a), by Box-Muller from the SplitMix64 output of seed + k * GOLD:
    u1 = (high 24 bits + 1) / 2^24 in (0, 1], u2 = low 24 bits / 2^24, r = sqrt(-2 ln u1),
    a = 2 pi u2, in float32 arithmetic. A last, partial block keeps its first elements of
    the same layout. The values are formed in a scratch block and then written / added."""
    wide_vectors()
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


@numba.njit(nogil=True, cache=True, error_model="numpy")
def adc_range_(y, seed, b0, b1, std, i_step, inv_o, level, mult, alpha, seg, per_a):
    """The periphery's output side (`analogpipe.tiles.io._adc`) in place on blocks b0:b1
    (of 2 BLOCK values) of the flat float32 MVM result y; see `_adc_span`."""
    wide_vectors()
    z = np.zeros(2 * BLOCK, np.float32)
    hi = np.empty(BLOCK, np.int32)
    lo = np.empty(BLOCK, np.int32)
    _adc_span(y, 2 * BLOCK * b0, min(2 * BLOCK * b1, y.shape[0]), seed, std, i_step, inv_o,
              level, mult, alpha, seg, per_a, z, hi, lo)


@numba.njit(inline="always", error_model="numpy")
def _adc_span(y, s0, s1, seed, std, i_step, inv_o, level, mult, alpha, seg, per_a, z, hi, lo):
    """y[s0:s1] through the output side, in place, each element as the torch passes compute
    it in float32 (no contraction into FMAs):
        v = v * i_step                       (i_step: the DAC step, or 1)
        v = v + std * z                      (std > 0: z at v's position of y, as
                                              `normals_range_` lays the values out)
        v = rint(v * inv_o)                  (inv_o > 0: the ADC, 1 / out_step; else skipped)
        v = min(max(v, -level), level)       (the out bound in output units; inf: none)
        v = v * (a * mult)                   (a: the vector's abs-max, or 1; mult: out_step
                                              or 1)
    alpha (float32, flat): per row of `seg` elements (per_a = 0: y as [S, seg] with alpha
    [S]), per column (per_a > 0: y as [A, per_a, seg] with alpha [A, seg]), or none (empty
    alpha). z, hi, lo: scratch of 2 BLOCK, BLOCK, BLOCK values."""
    scaled = alpha.shape[0] > 0
    b = s0 // (2 * BLOCK)
    while 2 * BLOCK * b < s1:
        start = max(s0, 2 * BLOCK * b)
        end = min(s1, 2 * BLOCK * (b + 1))
        v = y[start:end]
        if std > 0:
            _block(seed, BLOCK * b, z[:BLOCK], z[BLOCK:], BLOCK, hi, lo)
            _noisy(v, z[start - 2 * BLOCK * b:], i_step, std)
        elif i_step != 1:
            for k in range(end - start):
                v[k] = v[k] * i_step
        if inv_o > 0:
            _quantize(v, inv_o, level)
        else:
            _clip(v, level)
        b += 1
        if not scaled:
            if mult != 1:
                for k in range(end - start):
                    v[k] = v[k] * mult
            continue
        p = start
        while p < end:  # runs of one row (one scale) or of one alpha row (a vector)
            r = p // seg
            c0 = p - r * seg
            run = min(seg - c0, end - p)
            w = y[p:p + run]
            if per_a > 0:
                a = alpha[(r // per_a) * seg + c0:]
                for k in range(run):
                    w[k] = w[k] * (a[k] * mult)
            else:
                s = alpha[r] * mult
                for k in range(run):
                    w[k] = w[k] * s
            p += run


@numba.njit(nogil=True, cache=True, error_model="numpy")
def adc_fold_range_(z, out, seed, n0, n1, std, i_step, inv_o, level, mult, alpha, geo):
    """The conv backward's output side and col2im, for images n0:n1: z (flat float32
    [N, C kh kw, ho wo], the patch errors, noise laid out over the whole of it) goes
    through `_adc_span` in place (alpha: [N, ho wo] flat, or empty), then is summed onto
    the zero-padded grid out [N, C, Hp, Wp] (zeroed here):
    out[n, c, i dh + h sh, j dw + w sw] += z[n, c, i, j, h, w], the terms of every element
    added in the order of (i, j), as `PatchGeometry.fold` adds them.
    geo = (kh, kw, ho, wo, sh, sw, dh, dw)."""
    wide_vectors()
    kh, kw, ho, wo, sh, sw, dh, dw = geo
    c_all = out.shape[1]
    plane = ho * wo
    per_n = c_all * kh * kw * plane
    zb = np.zeros(2 * BLOCK, np.float32)
    hi = np.empty(BLOCK, np.int32)
    lo = np.empty(BLOCK, np.int32)
    for n in range(n0, n1):
        _adc_span(z, n * per_n, (n + 1) * per_n, seed, std, i_step, inv_o, level, mult,
                  alpha, plane, c_all * kh * kw, zb, hi, lo)
        grid = out[n]
        grid[:] = 0
        src = z[n * per_n:(n + 1) * per_n]
        for c in range(c_all):
            for i in range(kh):
                for j in range(kw):
                    base = ((c * kh + i) * kw + j) * plane
                    for h in range(ho):
                        row = grid[c, i * dh + h * sh]
                        q = base + h * wo
                        col = j * dw
                        if sw == 1:  # unit stride: slices the loop vectorizes (2.3x faster)
                            dst, terms = row[col:col + wo], src[q:q + wo]
                            for w in range(wo):
                                dst[w] += terms[w]
                        else:
                            for w in range(wo):
                                row[col + w * sw] += src[q + w]


@numba.cfunc(BODY, nogil=True, cache=True, error_model="numpy")
def normals_team(data):
    """`normals_range_` as the body of an OpenMP parallel region (`rng.run_team`): every
    thread of the team takes parts off a shared counter until none is left. data (int64):
    [address of out (float32), n, seed, scale (float32 bits), add, parts, counter]."""
    wide_vectors()
    a = carray(data, 7)
    n = a[1]
    out = carray(f32_at(a[0]), (n,))
    scale = f32_arg(a, 3)
    blocks = (n + 2 * BLOCK - 1) // (2 * BLOCK)
    parts = a[5]
    counter = a[6:]
    while True:
        i = claim(counter)
        if i >= parts:
            break
        normals_range_(out, np.uint64(a[2]), blocks * i // parts, blocks * (i + 1) // parts,
                       scale, a[4] != 0)


@numba.cfunc(BODY, nogil=True, cache=True, error_model="numpy")
def adc_team(data):
    """`adc_range_` as the body of an OpenMP parallel region (`rng.run_team`). data (int64;
    float32 values as their bits): [address of y, n, seed, std, i_step, inv_o, level, mult,
    address of alpha, alpha's length, seg, per_a, parts, counter]."""
    wide_vectors()
    a = carray(data, 14)
    n = a[1]
    y = carray(f32_at(a[0]), (n,))
    alpha = carray(f32_at(a[8]), (a[9],))
    blocks = (n + 2 * BLOCK - 1) // (2 * BLOCK)
    parts = a[12]
    counter = a[13:]
    while True:
        i = claim(counter)
        if i >= parts:
            break
        adc_range_(y, np.uint64(a[2]), blocks * i // parts, blocks * (i + 1) // parts,
                   f32_arg(a, 3), f32_arg(a, 4), f32_arg(a, 5), f32_arg(a, 6), f32_arg(a, 7),
                   alpha, a[10], a[11])


@numba.cfunc(BODY, nogil=True, cache=True, error_model="numpy")
def adc_fold_team(data):
    """`adc_fold_range_` as the body of an OpenMP parallel region, one image at a time.
    data (int64; float32 values as their bits): [address of z, z's length, address of out,
    N, C, Hp, Wp, seed, std, i_step, inv_o, level, mult, address of alpha, alpha's length,
    kh, kw, ho, wo, sh, sw, dh, dw, counter]."""
    wide_vectors()
    a = carray(data, 24)
    z = carray(f32_at(a[0]), (a[1],))
    out = carray(f32_at(a[2]), (a[3], a[4], a[5], a[6]))
    alpha = carray(f32_at(a[13]), (a[14],))
    geo = (a[15], a[16], a[17], a[18], a[19], a[20], a[21], a[22])
    counter = a[23:]
    while True:
        i = claim(counter)
        if i >= a[3]:
            break
        adc_fold_range_(z, out, np.uint64(a[7]), i, i + 1, f32_arg(a, 8), f32_arg(a, 9),
                        f32_arg(a, 10), f32_arg(a, 11), f32_arg(a, 12), alpha, geo)


def warm_up() -> None:
    """Compile (or load) the kernels now, so that a build failure shows at loading."""
    normals_range_(np.zeros(2 * BLOCK, np.float32), np.uint64(1), 0, 1, np.float32(1), True)
    f = np.float32
    adc_range_(np.zeros(2 * BLOCK, np.float32), np.uint64(1), 0, 1, f(0.1), f(1), f(1),
               f(np.inf), f(1), np.ones(2, np.float32), 1024, 0)
    adc_fold_range_(np.zeros(36, np.float32), np.zeros((1, 1, 4, 4), np.float32),
                    np.uint64(1), 0, 1, f(0.1), f(1), f(1), f(np.inf), f(1),
                    np.ones(4, np.float32), (3, 3, 2, 2, 1, 1, 1, 1))
