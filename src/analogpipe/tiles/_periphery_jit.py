"""The numba kernels of small row operations: the periphery's DAC of rows and output side of
results below `rng.KERNEL_MIN` values (`analogpipe.tiles.io`), and the pulse probabilities of
rows (`analogpipe.tiles.pulses.pulse_probabilities`), each one compiled pass instead of eight
to twenty small torch ops (imported on first use through `analogpipe.tiles.jit`; compiled once
and cached on disk).

The periphery's values are computed as the torch passes of `io._dac` and `io._adc` compute
them in float32, so the routes agree bit for bit (`tests/test_io.py`); the output noise is
drawn by the caller from its torch generator, as those passes draw it.
"""

import numba
import numpy as np
from numba import carray

from analogpipe.tiles._team_jit import BODY, claim, f32_arg, f32_at
from analogpipe.tiles._team_jit import f32_bits as _f32_bits
from analogpipe.tiles._team_jit import f32_from_bits as _f32_from_bits
from analogpipe.tiles._team_jit import fma as _fma

_F = np.float32


@numba.njit(nogil=True, cache=True, error_model="numpy")
def dac_rows_(x, out, alpha, i_step, level, floor):
    """The abs-max DAC of every row of x [S, n] (float32, C-contiguous) into out [S, n]:
    alpha[s] = max |x[s, :]| (a NaN when the row holds one, as torch.amax), a = alpha if
    alpha > 0 else 1, where an alpha in (0, floor) is replaced by floor (`io.alpha_floor`;
    alpha reports it), f = (1 / a) / i_step (i_step > 0; else f = 1 / a), then
    out = rint(x * f) (round half to even; only with i_step > 0), clipped to +-level when
    level > 0. As `io._dac`'s torch ops compute it."""
    mask = np.int32(0x7FFFFFFF)
    for s in range(x.shape[0]):
        xs = x[s]
        m = np.int32(0)
        for k in range(xs.shape[0]):  # |x| bits: ordered as the values, NaN above inf
            b = _f32_bits(xs[k]) & mask
            m = b if b > m else m
        a, f = _dac_factor(_f32_from_bits(m), i_step, floor)
        alpha[s] = a
        os_ = out[s]
        for k in range(xs.shape[0]):
            os_[k] = _dac_level(xs[k] * f, i_step, level)


@numba.njit(inline="always", error_model="numpy")
def _dac_factor(a, i_step, floor):
    """(alpha, f) of a vector whose abs-max is a, as `io._dac`'s torch ops form them: an a in
    (0, floor) is replaced by floor (`io.alpha_floor`), a NaN or 0 stays; f = (1 / a) / i_step
    for a > 0, else 1 / i_step (without i_step > 0: no division)."""
    one = _F(1.0)
    if a > 0 and a < floor:
        a = floor
    f = one / (a if a > 0 else one)
    if i_step > 0:
        f = f / i_step
    return a, f


@numba.njit(inline="always", error_model="numpy")
def _dac_level(v, i_step, level):
    """A scaled input v as a DAC level: rint (half to even; only with i_step > 0), clipped to
    +-level where level > 0 (NaN stays NaN, as in torch.clamp)."""
    if i_step > 0:
        v = np.rint(v)
    if level > 0:
        v = -level if v < -level else v
        v = level if v > level else v
    return v


@numba.njit(nogil=True, cache=True, error_model="numpy")
def dac_columns_(d, x, alpha, n0, n1, i_step, level, floor):
    """The abs-max DAC of every column of images n0:n1 of d [N, C, L] (float32, C-contiguous;
    a column: the C values of one pixel, as `io._dac(d, io, -2)` takes them) into x [N, C, L]
    and alpha [N, L]: per column, alpha and f from its abs-max as in `dac_rows_`, then
    x = the DAC level of d * f. The same values as the torch ops."""
    nc, n_l = d.shape[1], d.shape[2]
    mask = np.int32(0x7FFFFFFF)
    m = np.empty(n_l, np.int32)
    f = np.empty(n_l, np.float32)
    for n in range(n0, n1):
        dn, xn, an = d[n], x[n], alpha[n]
        for q in range(n_l):
            m[q] = np.int32(0)
        for c in range(nc):
            row = dn[c]
            for q in range(n_l):
                b = _f32_bits(row[q]) & mask
                m[q] = b if b > m[q] else m[q]
        for q in range(n_l):
            an[q], f[q] = _dac_factor(_f32_from_bits(m[q]), i_step, floor)
        for c in range(nc):
            row, out = dn[c], xn[c]
            for q in range(n_l):
                out[q] = _dac_level(row[q] * f[q], i_step, level)


@numba.cfunc(BODY, nogil=True, cache=True, error_model="numpy")
def dac_columns_team(data):
    """`dac_columns_` as the body of an OpenMP parallel region (`rng.run_team_images`), one
    image at a time. data (int64; float32 values as their bits): [address of d, N, C, L,
    address of x, address of alpha, i_step, level, floor, counter]."""
    a = carray(data, 10)
    shape = (a[1], a[2], a[3])
    d = carray(f32_at(a[0]), shape)
    x = carray(f32_at(a[4]), shape)
    alpha = carray(f32_at(a[5]), (a[1], a[3]))
    counter = a[9:]
    while True:
        i = claim(counter)
        if i >= a[1]:
            break
        dac_columns_(d, x, alpha, i, i + 1, f32_arg(a, 6), f32_arg(a, 7), f32_arg(a, 8))


@numba.njit(nogil=True, cache=True, error_model="numpy")
def scale_products_(grad, prod, s, out_grad, out_prod):
    """`AnalogTile.stash_products`' compensation of float32 products grad, prod [out, in]
    (prod may be empty [0, 0]) by c[i] = 1 / (s_i s_i) where s_i s_i > 0 else 1 (s: the output
    scales [out]) into out_grad, out_prod, as its torch ops form them. Returns whether every
    element of out_grad is finite."""
    one = _F(1.0)
    has_prod = prod.shape[0] > 0
    inf_bits = np.int32(0x7F800000)
    bad = False
    for i in range(grad.shape[0]):
        s2 = s[i] * s[i]
        c = one / s2 if s2 > 0 else one
        g, og = grad[i], out_grad[i]
        for j in range(g.shape[0]):
            v = g[j] * c
            og[j] = v
            bad = bad | ((_f32_bits(v) & inf_bits) == inf_bits)  # NaN or inf
        if has_prod:
            p, op = prod[i], out_prod[i]
            for j in range(p.shape[0]):
                op[j] = p[j] * c
    return not bad


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
    dac_rows_(x, np.empty_like(x), np.empty(2, np.float32), _F(0.1), _F(0), _F(1e-36))
    adc_rows_(x.reshape(-1), x.reshape(-1).copy(), _F(0.1), _F(0.1), _F(0.5), _F(10),
              _F(2), np.ones(2, np.float32), 3)
    scale_products_(x, x, np.ones(2, np.float32), np.empty_like(x), np.empty_like(x))


@numba.njit(inline="always", error_model="numpy")
def _abs_max(v):
    """max |v| of a float32 row (a NaN when it holds one, as torch.amax of abs)."""
    mask = np.int32(0x7FFFFFFF)
    m = np.int32(0)
    for k in range(v.shape[0]):
        b = _f32_bits(v[k]) & mask
        m = b if b > m else m
    return _f32_from_bits(m)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def pulse_probabilities_(x, d, p_x, p_d, bl, lr, dw_min, desired, bl_management,
                         management):
    """`analogpipe.tiles.pulses.pulse_probabilities` of float32 rows x [S, in], d [S, out]
    into p_x, p_d (float32, same shapes) and bl [S] (int64), with the float32 arithmetic of
    its torch ops (lr, dw_min, desired: float32; `s / t` of a Python number s by a tensor t
    is torch's `reciprocal(t) * s`) and IEEE square roots (torch's CPU sqrt may differ by
    one unit in the last place)."""
    one = _F(1.0)
    for s in range(x.shape[0]):
        x_max = _abs_max(x[s])
        d_max = _abs_max(d[s])
        k = lr * x_max * d_max / dw_min
        if bl_management:
            c = np.ceil(k)
            c = one if c < one else c  # clamp(1, desired): NaN stays NaN
            blf = desired if c > desired else c
        else:
            blf = desired
        a = np.sqrt((one / (dw_min * blf)) * lr)
        b = a
        if management:
            kc = k if k > _F(1e-30) else _F(1e-30)  # clamp_min: NaN stays NaN
            d_tilde = d_max * (((one / kc) * desired) if k > desired else one)
            ok = (x_max > 0) and (d_tilde > 0)
            ratio = x_max / d_tilde if ok else one
            r = np.sqrt(ratio)
            a = a * r
            b = b / r
        bl[s] = np.int64(blf)
        xs, ds = x[s], d[s]
        px, pd = p_x[s], p_d[s]
        for j in range(xs.shape[0]):
            v = abs(xs[j]) * b
            px[j] = one if v > one else v  # clamp_max: NaN stays NaN
        for i in range(ds.shape[0]):
            v = abs(ds[i]) * a
            pd[i] = one if v > one else v


@numba.njit(inline="always", error_model="numpy")
def _fires(u, p, n, words):
    """Per element j < n, the slots s < BL where u[s, j] < p[j], as bits of `words` uint64
    words [n, words] (u: [BL, n] uniforms)."""
    out = np.zeros((n, words), np.uint64)
    for s in range(u.shape[0]):
        us = u[s]
        wd = s // 64
        bit = np.uint64(1) << np.uint64(s % 64)
        for j in range(n):
            if us[j] < p[j]:
                out[j, wd] |= bit
    return out


@numba.njit(inline="always", error_model="numpy")
def _fired(f):
    """(indices, count): the elements of f [n, words] whose train fires in some slot."""
    idx = np.empty(f.shape[0], np.int64)
    count = 0
    for j in range(f.shape[0]):
        hit = np.uint64(0)
        for k in range(f.shape[1]):
            hit |= f[j, k]
        if hit != 0:
            idx[count] = j
            count += 1
    return idx, count


@numba.njit(inline="always", error_model="numpy")
def _popcount(v):
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((v * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(nogil=True, cache=True, error_model="numpy")
def one_sample_update_(w, x, d, p_x, p_d, u_x, u_d, f_mul, f_add):
    """The pulsed update of one sample, in place on the float32 conductances w [out, in]
    (symmetric soft bounds, pair tables f_mul, f_add of `devices.response.pair_tables` for
    n_max = BL), as `pulses._one_sample_counts` then `pulsed_update_` apply it: x_j fires in
    slot s when u_x[s, j] < p_x[j], d_i when u_d[s, i] < p_d[i] (u: the torch uniforms
    [BL, in], [BL, out]); an element's coincidences are pulses down when d_i x_j > 0, else
    up; w = w f_mul[idx] + f_add[idx], idx = n_up (BL + 1) + n_down, over the submatrix of
    fired rows and columns when it holds at most half of W, else over all of W (zero counts:
    factors 1 and 0). Returns the number of elements written."""
    n_out, n_in = w.shape
    bl = u_x.shape[0]
    words = (bl + 63) // 64
    fx = _fires(u_x, p_x, n_in, words)
    fd = _fires(u_d, p_d, n_out, words)
    cols, nc = _fired(fx)
    rows, nr = _fired(fd)
    if nr * nc * 2 <= n_in * n_out:
        if nr == 0 or nc == 0:
            return 0
    else:  # dense: every element, the unfired ones with zero counts
        for i in range(n_out):
            rows[i] = i
        for j in range(n_in):
            cols[j] = j
        nr, nc = n_out, n_in
    m1 = np.int64(bl + 1)
    for a in range(nr):
        i = rows[a]
        wi = w[i]
        di = d[i]
        fdi = fd[i]
        for c in range(nc):
            j = cols[c]
            n = np.int64(0)
            for k in range(words):
                n += _popcount(fdi[k] & fx[j, k])
            if (di > 0) == (x[j] > 0):  # d_i x_j > 0 (where both fire, neither is 0)
                idx = n
            else:
                idx = n * m1
            v = wi[j] * f_mul[idx]
            wi[j] = v + f_add[idx]
    return nr * nc


@numba.njit(nogil=True, cache=True, error_model="numpy")
def stash_rows_(x, d, s, rows):
    """A tile's stash of float32 rows x [S, in], d [S, out]: rows = d * c with c[i] =
    1 / (s_i s_i) where s_i s_i > 0 else 1 (s: the output scales [out]; empty: c = 1, rows a
    copy of d), as `AnalogTile.stash_rows`' torch ops form them. Returns (max |x|, max |rows|)
    as float32 (inf or NaN when an element is; NaN before inf)."""
    one = _F(1.0)
    scaled = s.shape[0] > 0
    n_out = d.shape[1]
    c = np.empty(n_out, np.float32)
    for i in range(n_out):
        if scaled:
            s2 = s[i] * s[i]
            c[i] = one / s2 if s2 > 0 else one
        else:
            c[i] = one
    x_max = _F(0.0)
    for r in range(x.shape[0]):
        m = _abs_max(x[r])
        x_max = m if (m > x_max or m != m) and x_max == x_max else x_max
    d_max = _F(0.0)
    for r in range(d.shape[0]):
        dr, out = d[r], rows[r]
        if scaled:
            for i in range(n_out):
                out[i] = dr[i] * c[i]
        else:
            for i in range(n_out):
                out[i] = dr[i]
        m = _abs_max(out)
        d_max = m if (m > d_max or m != m) and d_max == d_max else d_max
    return x_max, d_max


@numba.njit(nogil=True, cache=True, error_model="numpy")
def patch_absmax_(x, out, n0, n1, kh, kw, sh, sw, ph, pw, dh, dw, fac, i_step, floor, xp):
    """`PatchGeometry.patch_absmax` of images n0:n1: out[n, oh, ow] (float32 [N, Ho, Wo]) =
    max |x[n, c, i dh + oh sh - ph, j dw + ow sw - pw]| over the channels and the kernel
    positions, padding counting as 0 (x: float32 [N, C, H, W]); a NaN when one is there, as
    the max-pool of the channel maxima gives (maxima of |x| as their IEEE bits: ordered as
    the values, NaN above inf). The window maximum is taken over columns, then rows.
    With a non-empty fac [N, Ho, Wo]: out holds the DAC's alpha and fac its factor f of every
    patch instead (`_dac_factor` with i_step, floor), as `io._dac` forms them. With a
    non-empty xp [N, C, H + 2 ph, W + 2 pw]: the zero-padded copy of x is written there too
    (what torch.nn.functional.pad gives)."""
    nc, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = out.shape[1], out.shape[2]
    mask = np.int32(0x7FFFFFFF)
    m = np.empty((h, w), np.int32)
    cm = np.empty((h, wo), np.int32)
    padded = xp.shape[0] > 0
    zero = _F(0.0)
    for n in range(n0, n1):
        xn = x[n]
        if padded:
            xpn = xp[n]
            for c in range(nc):  # the borders
                for r in range(ph):
                    xpn[c, r, :] = zero
                    xpn[c, h + ph + r, :] = zero
                for r in range(ph, h + ph):
                    xpn[c, r, :pw] = zero
                    xpn[c, r, w + pw:] = zero
        for r in range(h):
            mr = m[r]
            for q in range(w):
                mr[q] = np.int32(0)
            for c in range(nc):
                xr = xn[c, r]
                for q in range(w):
                    b = _f32_bits(xr[q]) & mask
                    mr[q] = b if b > mr[q] else mr[q]
                if padded:
                    xpr = xpn[c, r + ph]
                    for q in range(w):
                        xpr[pw + q] = xr[q]
            cr = cm[r]
            for ow in range(wo):
                best = np.int32(0)  # the zero padding
                for j in range(kw):
                    q = j * dw + ow * sw - pw
                    if q >= 0 and q < w:
                        b = mr[q]
                        best = b if b > best else best
                cr[ow] = best
        on = out[n]
        for oh in range(ho):
            row = on[oh]
            for ow in range(wo):
                row[ow] = _f32_from_bits(np.int32(0))
            for i in range(kh):
                r = i * dh + oh * sh - ph
                if r < 0 or r >= h:
                    continue
                cr = cm[r]
                for ow in range(wo):
                    b = cr[ow]
                    if b > _f32_bits(row[ow]):
                        row[ow] = _f32_from_bits(b)
            if fac.shape[0] > 0:
                fr = fac[n, oh]
                for ow in range(wo):
                    row[ow], fr[ow] = _dac_factor(row[ow], i_step, floor)


@numba.cfunc(BODY, nogil=True, cache=True, error_model="numpy")
def patch_absmax_team(data):
    """`patch_absmax_` as the body of an OpenMP parallel region (`rng.run_team_images`), one
    image at a time. data (int64; float32 values as their bits): [address of x, N, C, H, W,
    address of out, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, address of fac, fac's images (0:
    no factors), i_step, floor, address of xp, xp's images (0: no padded copy), counter]."""
    a = carray(data, 23)
    x = carray(f32_at(a[0]), (a[1], a[2], a[3], a[4]))
    out = carray(f32_at(a[5]), (a[1], a[6], a[7]))
    fac = carray(f32_at(a[16]), (a[17], a[6], a[7]))
    xp = carray(f32_at(a[20]), (a[21], a[2], a[3] + 2 * a[12], a[4] + 2 * a[13]))
    counter = a[22:]
    while True:
        i = claim(counter)
        if i >= a[1]:
            break
        patch_absmax_(x, out, i, i + 1, a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15],
                      fac, f32_arg(a, 18), f32_arg(a, 19), xp)
