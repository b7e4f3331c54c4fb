"""The numba kernels of `analogpipe.tiles.pulsekernel` (imported on first use: numba's import
and the kernels' compilation, cached on disk, cost a second or two once)."""

import numba
import numpy as np
from numba import carray
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic

from analogpipe.tiles._splitmix_jit import GOLD
from analogpipe.tiles._splitmix_jit import mix as _mix
from analogpipe.tiles._team_jit import BODY, claim, f32_at, f64_at, i32_at, i64_at
from analogpipe.tiles.pulsekernel import BLOCK, MAX_SLOTS

LO = np.uint64(0xFFFFFFFF)
SCALE = 4294967296.0  # 2^32


@_intrinsic
def _popcount32(typingctx, x):
    sig = _types.uint32(_types.uint32)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(inline="always")
def _thresholds(v, f, thr, idx, jg):
    """For p_j = min(|v_j| f, 1) (in v's dtype): thr[k] = floor(p_j 2^32), idx[k] = j and
    jg[k] = j * GOLD (mod 2^64) for the elements that can fire (thr > 0), in order; returns
    their number."""
    nnz = 0
    for j in range(v.shape[0]):  # branch-free compaction (zeros come in random order)
        t = np.uint64(min(abs(v[j]) * f, 1.0) * SCALE)
        thr[nnz] = t
        idx[nnz] = j
        jg[nnz] = np.uint64(j) * GOLD
        nnz += t > 0
    return nnz


@numba.njit(inline="always")
def _fire(thr, idx, jg, nnz, need, t0, nslots, seed, base, pair_stride, packed, out):
    """out[j] bit k = slot t0 + k of element j fires (k < nslots, t0 even), for the nnz
    elements idx[:nnz] with thresholds thr[:nnz] (the others never fire: 0). The trial's
    counter is c = base + ((t0 + k) // 2) * pair_stride + j, its number the SplitMix64 output
    of seed + c * GOLD, formed as (seed + c0 * GOLD) + j * GOLD (jg) without a multiply.
    Slot pairs without a bit in `need` are not drawn (left 0): their trials cannot coincide
    with anything."""
    for j in range(out.shape[0]):
        out[j] = np.uint32(0)
    for k in range(nnz):
        packed[k] = np.uint32(0)
    k = 0
    while k + 1 < nslots:
        if (need >> np.uint32(k)) & np.uint32(3):
            z0 = seed + (base + np.uint64((t0 + k) // 2) * pair_stride) * GOLD
            s0, s1 = np.uint32(k), np.uint32(k + 1)
            for q in range(nnz):
                h = _mix(z0 + jg[q])
                th = thr[q]
                packed[q] |= ((np.uint32((h & LO) < th) << s0)
                              | (np.uint32((h >> np.uint64(32)) < th) << s1))
        k += 2
    if k < nslots and (need >> np.uint32(k)) & np.uint32(1):
        z0 = seed + (base + np.uint64((t0 + k) // 2) * pair_stride) * GOLD
        s0 = np.uint32(k)
        for q in range(nnz):
            h = _mix(z0 + jg[q])
            packed[q] |= np.uint32((h & LO) < thr[q]) << s0
    for q in range(nnz):
        out[idx[q]] = packed[q]


@numba.njit(inline="always")
def _side_scratch(n):
    """One side's scratch: thresholds, indices and counters of the elements that can fire
    (`_thresholds`), then the fire masks and the packed masks (`_fire`)."""
    return (np.empty(n, np.uint64), np.empty(n, np.int64), np.empty(n, np.uint64),
            np.empty(n, np.uint32), np.empty(n, np.uint32))


@numba.njit(nogil=True, cache=True)
def count_range_(x, d, a, b, bl, x_signed, seed, s0, s1, acc):
    """Add the coincidences of samples s0:s1 to acc [2, out, in] (int32): acc[0] the down
    pulses (d_i x_j > 0), acc[1] the up pulses. p_x = min(b_s |x|, 1), p_d = min(a_s |d|, 1);
    x_signed: False when no x is negative."""
    n_in, n_out = x.shape[1], d.shape[1]
    thx, ix, gx, xm, xpk = _side_scratch(n_in)
    thd, jd, gd, dm, dpk = _side_scratch(n_out)
    xpos = np.empty(n_in, np.uint32)
    xneg = np.empty(n_in, np.uint32)
    pair_stride = np.uint64(n_in + n_out)
    sample_stride = np.uint64(MAX_SLOTS // 2) * pair_stride
    full = np.uint32(0xFFFFFFFF)
    for s in range(s0, s1):
        nbl = bl[s]
        if nbl <= 0:
            continue
        nx = _thresholds(x[s], b[s], thx, ix, gx)
        nd = _thresholds(d[s], a[s], thd, jd, gd)
        if nx == 0 or nd == 0:
            continue
        base = np.uint64(s) * sample_stride
        for t0 in range(0, nbl, BLOCK):
            ns = min(BLOCK, nbl - t0)
            _fire(thd, jd, gd, nd, full, t0, ns, seed, base + np.uint64(n_in), pair_stride, dpk,
                  dm)
            fired = np.uint32(0)  # slots where some d fires: only those x trials matter
            for i in range(n_out):
                fired |= dm[i]
            if fired == 0:
                continue
            _fire(thx, ix, gx, nx, fired, t0, ns, seed, base, pair_stride, xpk, xm)
            if x_signed:  # branch-free: the signs come in random order
                for j in range(n_in):
                    neg = np.uint32(0) - np.uint32(x[s, j] < 0)  # all ones where x < 0
                    xneg[j] = xm[j] & neg
                    xpos[j] = xm[j] & ~neg
            for i in range(n_out):
                m = dm[i]
                if m == 0:
                    continue
                k = np.int64(d[s, i] < 0)  # 0: d > 0 (x > 0 coincidences are down pulses)
                same, other = acc[k, i], acc[1 - k, i]
                if x_signed:
                    for j in range(n_in):
                        same[j] += np.int32(_popcount32(m & xpos[j]))
                        other[j] += np.int32(_popcount32(m & xneg[j]))
                else:
                    for j in range(n_in):
                        same[j] += np.int32(_popcount32(m & xm[j]))


@numba.njit(inline="always")
def _count_body(data, x, d, a, b, bl, acc):
    """The team body of `count_range_`: parts (sample ranges) taken off the counter, part i
    adding to acc[i]. data (int64): [.., x_signed, seed, address of ends, parts, counter]."""
    args = carray(data, 14)
    ends = carray(i64_at(args[11]), (args[12] + 1,))
    counter = args[13:]
    while True:
        i = claim(counter)
        if i >= args[12]:
            break
        count_range_(x, d, a, b, bl, args[9] != 0, np.uint64(args[10]), ends[i], ends[i + 1],
                     acc[i])


@numba.cfunc(BODY, nogil=True, cache=True)
def count_team_f32(data):
    """`count_range_` (float32 samples) as the body of an OpenMP parallel region
    (`rng.run_team`). data (int64): [S, n_in, n_out, address of x [S, n_in], of d [S, n_out],
    of a [S], of b [S], of bl [S] (int64), of acc [parts, 2, n_out, n_in] (int32), x_signed,
    seed, address of ends [parts + 1] (int64), parts, counter]."""
    g = carray(data, 14)
    s, n_in, n_out = g[0], g[1], g[2]
    _count_body(data, carray(f32_at(g[3]), (s, n_in)), carray(f32_at(g[4]), (s, n_out)),
                carray(f32_at(g[5]), (s,)), carray(f32_at(g[6]), (s,)),
                carray(i64_at(g[7]), (s,)), carray(i32_at(g[8]), (g[12], 2, n_out, n_in)))


@numba.cfunc(BODY, nogil=True, cache=True)
def count_team_f64(data):
    """`count_team_f32` for float64 samples."""
    g = carray(data, 14)
    s, n_in, n_out = g[0], g[1], g[2]
    _count_body(data, carray(f64_at(g[3]), (s, n_in)), carray(f64_at(g[4]), (s, n_out)),
                carray(f64_at(g[5]), (s,)), carray(f64_at(g[6]), (s,)),
                carray(i64_at(g[7]), (s,)), carray(i32_at(g[8]), (g[12], 2, n_out, n_in)))


def warm_up() -> None:
    """Compile (or load) the float32 kernel now, so that a build failure shows at loading."""
    one = np.ones((1, 1), np.float32)
    acc = np.zeros((2, 1, 1), np.int32)
    count_range_(one, one, one[0], one[0], np.ones(1, np.int64), False, np.uint64(1), 0, 1, acc)


@numba.njit(nogil=True, cache=True)
def masks_range_(p, bl, seed, side_offset, pair_stride, out):
    """The fire masks of one side, every slot drawn, out [S, words, n] (uint32), with the
    counters of `count_range_` (p [S, n]: probabilities; side_offset: 0 for x, n_in for d;
    pair_stride: n_in + n_out)."""
    n = p.shape[1]
    th = np.empty(n, np.uint64)
    idx = np.empty(n, np.int64)
    jg = np.empty(n, np.uint64)
    pk = np.empty(n, np.uint32)
    m = np.empty(n, np.uint32)
    one = p.dtype.type(1.0)
    sample_stride = np.uint64(MAX_SLOTS // 2) * np.uint64(pair_stride)
    for s in range(p.shape[0]):
        nz = _thresholds(p[s], one, th, idx, jg)
        base = np.uint64(s) * sample_stride + np.uint64(side_offset)
        for t0 in range(0, bl[s], BLOCK):
            _fire(th, idx, jg, nz, np.uint32(0xFFFFFFFF), t0, min(BLOCK, bl[s] - t0), seed, base,
                  np.uint64(pair_stride), pk, m)
            out[s, t0 // BLOCK, :] = m
