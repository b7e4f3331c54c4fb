"""The numba kernels of `analogpipe.tiles.pulsekernel` (imported on first use: numba's import
and the kernels' compilation, cached on disk, cost a second or two once)."""

import numba
import numpy as np
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic

from analogpipe.tiles.pulsekernel import BLOCK, GOLD, LO, M1, M2, MAX_SLOTS, SCALE


@_intrinsic
def _popcount32(typingctx, x):
    sig = _types.uint32(_types.uint32)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen

@numba.njit(inline="always")
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))

@numba.njit(inline="always")
def _fire(thr, t0, nslots, seed, base, pair_stride, out):
    """out[j] bit k = slot t0 + k of element j fires (k < nslots; t0 even). The trial's
    counter is base + ((t0 + k) // 2) * pair_stride + j."""
    n = thr.shape[0]
    for j in range(n):
        out[j] = np.uint32(0)
    k = 0
    while k + 1 < nslots:
        c0 = base + np.uint64((t0 + k) // 2) * pair_stride
        s0, s1 = np.uint32(k), np.uint32(k + 1)
        for j in range(n):
            h = _mix(seed + (c0 + np.uint64(j)) * GOLD)
            th = thr[j]
            out[j] |= ((np.uint32((h & LO) < th) << s0)
                       | (np.uint32((h >> np.uint64(32)) < th) << s1))
        k += 2
    if k < nslots:
        c0 = base + np.uint64((t0 + k) // 2) * pair_stride
        s0 = np.uint32(k)
        for j in range(n):
            h = _mix(seed + (c0 + np.uint64(j)) * GOLD)
            out[j] |= np.uint32((h & LO) < thr[j]) << s0

@numba.njit(inline="always")
def _thresholds(p, out):
    for j in range(p.shape[0]):
        out[j] = np.uint64(p[j] * SCALE)

@numba.njit(nogil=True, cache=True)
def count_range_(p_x, p_d, neg_x, neg_d, bl, seed, s0, s1, acc):
    """Add the coincidences of samples s0:s1 to acc [2, out, in] (int32): acc[0] the down
    pulses (d_i x_j > 0), acc[1] the up pulses. neg_x [S, in] / neg_d [S, out]: True where
    the value is negative (neg_x may have zero rows: no negative inputs)."""
    n_in, n_out = p_x.shape[1], p_d.shape[1]
    x_signed = neg_x.shape[0] > 0
    thx = np.empty(n_in, np.uint64)
    thd = np.empty(n_out, np.uint64)
    xm = np.empty(n_in, np.uint32)
    xpos = np.empty(n_in, np.uint32)
    xneg = np.empty(n_in, np.uint32)
    dm = np.empty(n_out, np.uint32)
    pair_stride = np.uint64(n_in + n_out)
    sample_stride = np.uint64(MAX_SLOTS // 2) * pair_stride
    down, up = acc[0], acc[1]
    for s in range(s0, s1):
        nbl = bl[s]
        if nbl <= 0:
            continue
        _thresholds(p_x[s], thx)
        _thresholds(p_d[s], thd)
        base = np.uint64(s) * sample_stride
        for t0 in range(0, nbl, BLOCK):
            ns = min(BLOCK, nbl - t0)
            _fire(thx, t0, ns, seed, base, pair_stride, xm)
            _fire(thd, t0, ns, seed, base + np.uint64(n_in), pair_stride, dm)
            if x_signed:
                for j in range(n_in):
                    if neg_x[s, j]:
                        xpos[j], xneg[j] = np.uint32(0), xm[j]
                    else:
                        xpos[j], xneg[j] = xm[j], np.uint32(0)
            for i in range(n_out):
                m = dm[i]
                if m == 0:
                    continue
                same, other = (up, down) if neg_d[s, i] else (down, up)
                if x_signed:
                    for j in range(n_in):
                        same[i, j] += np.int32(_popcount32(m & xpos[j]))
                        other[i, j] += np.int32(_popcount32(m & xneg[j]))
                else:
                    for j in range(n_in):
                        same[i, j] += np.int32(_popcount32(m & xm[j]))

@numba.njit(nogil=True, cache=True)
def masks_range_(p, bl, seed, side_offset, pair_stride, out):
    """The fire masks of one side, out [S, words, n] (uint32), with the counters of
    `count_range_` (side_offset: 0 for x, n_in for d; pair_stride: n_in + n_out)."""
    n = p.shape[1]
    th = np.empty(n, np.uint64)
    m = np.empty(n, np.uint32)
    sample_stride = np.uint64(MAX_SLOTS // 2) * np.uint64(pair_stride)
    for s in range(p.shape[0]):
        _thresholds(p[s], th)
        base = np.uint64(s) * sample_stride + np.uint64(side_offset)
        for t0 in range(0, bl[s], BLOCK):
            _fire(th, t0, min(BLOCK, bl[s] - t0), seed, base, np.uint64(pair_stride), m)
            out[s, t0 // BLOCK, :] = m
