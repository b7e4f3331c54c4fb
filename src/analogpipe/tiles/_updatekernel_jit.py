"""The numba kernels of `analogpipe.tiles.updatekernel`: the expected update of symmetric soft
bounds in one pass over the float32 weights (imported on first use through
`analogpipe.tiles.jit`; compiled once and cached on disk).

Every element is computed as torch's three in-place passes compute it on the CPU
(`addcmul_`, `add_(alpha)`, `clamp_`), their products contracted into fused multiply-adds:

    v = fma(c * b, w, w)      c = -lr / b_max,  b = |dW| / lr = |g|
    v = fma(g, -lr, v)
    w = min(max(v, b_min), b_max)          (NaN stays NaN, as in torch.clamp)
"""

import numba
import numpy as np
from numba import carray

from analogpipe.tiles._team_jit import BODY, claim, f32_arg, f32_at
from analogpipe.tiles._team_jit import fma as _fma


@numba.njit(inline="always", error_model="numpy")
def _scalars(a, i):
    """(c, -lr, b_min, b_max): the float32 values whose bits are a[i:i + 4]."""
    return f32_arg(a, i), f32_arg(a, i + 1), f32_arg(a, i + 2), f32_arg(a, i + 3)


@numba.njit(inline="always", error_model="numpy")
def _step(v, g, b, c, mlr, lo, hi):
    v = _fma(c * b, v, v)
    v = _fma(g, mlr, v)
    v = lo if v < lo else v
    return hi if v > hi else v


@numba.njit(nogil=True, cache=True, error_model="numpy")
def softbounds_range_(w, g, k0, k1, c, mlr, lo, hi):
    """Elements k0:k1 of the flat float32 weights w and gradient g, in place, with b = |g|
    (see the module docstring)."""
    ws = w[k0:k1]
    gs = g[k0:k1]
    for k in range(ws.shape[0]):
        ws[k] = _step(ws[k], gs[k], np.abs(gs[k]), c, mlr, lo, hi)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def softbounds_outer_range_(w, d, x, r0, r1, c, mlr, lo, hi):
    """Rows r0:r1 of the float32 weights w [out, in] (flat), in place, for the rank-one
    gradient g = d x^T of one sample (d [out], x [in]): g[i, j] = d[i] * x[j] (the value of
    `d[:, None].mm(x[None])`), b = |g|."""
    cols = x.shape[0]
    for r in range(r1 - r0):
        row = r0 + r
        ws = w[row * cols:(row + 1) * cols]
        di = d[row]
        for j in range(cols):
            g = di * x[j]
            ws[j] = _step(ws[j], g, np.abs(g), c, mlr, lo, hi)


@numba.cfunc(BODY, nogil=True, cache=True, error_model="numpy")
def softbounds_team(data):
    """`softbounds_range_` as the body of an OpenMP parallel region (`rng.run_team`). data
    (int64; float32 values as their bits): [address of w, of g, n, c, -lr, b_min, b_max,
    block, parts, counter]."""
    a = carray(data, 10)
    n = a[2]
    w = carray(f32_at(a[0]), (n,))
    g = carray(f32_at(a[1]), (n,))
    c, mlr, lo, hi = _scalars(a, 3)
    blocks = (n + a[7] - 1) // a[7]
    parts = a[8]
    counter = a[9:]
    while True:
        i = claim(counter)
        if i >= parts:
            break
        k0 = min(n, a[7] * (blocks * i // parts))
        k1 = min(n, a[7] * (blocks * (i + 1) // parts))
        softbounds_range_(w, g, k0, k1, c, mlr, lo, hi)


@numba.cfunc(BODY, nogil=True, cache=True, error_model="numpy")
def softbounds_outer_team(data):
    """`softbounds_outer_range_` as the body of an OpenMP parallel region. data (int64;
    float32 values as their bits): [address of w, of d, of x, rows, cols, c, -lr, b_min,
    b_max, parts, counter]."""
    a = carray(data, 11)
    rows, cols = a[3], a[4]
    w = carray(f32_at(a[0]), (rows * cols,))
    d = carray(f32_at(a[1]), (rows,))
    x = carray(f32_at(a[2]), (cols,))
    c, mlr, lo, hi = _scalars(a, 5)
    parts = a[9]
    counter = a[10:]
    while True:
        i = claim(counter)
        if i >= parts:
            break
        softbounds_outer_range_(w, d, x, rows * i // parts, rows * (i + 1) // parts, c, mlr,
                                lo, hi)


def warm_up() -> None:
    """Compile (or load) the kernels now, so that a build failure shows at loading."""
    w = np.zeros(4, np.float32)
    f = np.float32
    softbounds_range_(w, w.copy(), 0, 4, f(-1), f(-1), f(-1), f(1))
    softbounds_outer_range_(w, w[:2].copy(), w[:2].copy(), 0, 2, f(-1), f(-1), f(-1), f(1))
