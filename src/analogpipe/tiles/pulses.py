"""Stochastic pulse trains: how a rank-one update d (x) x becomes device pulses.

As in aihwkit's `PulsedRPUWeightUpdater` with StochasticCompressed trains, per sample s
(every batch row, every conv patch is its own pulse cycle with the full learning rate):

    k_s   = lr * max|x_s| * max|d_s| / dw_min        (largest expected pulse count)
    BL_s  = clamp(ceil(k_s), 1, desired_bl)            (update BL management)
    A = B = sqrt(lr / (dw_min * BL_s)), then update management balances the two sides:
            A *= sqrt(max|x| / dmax~), B *= sqrt(dmax~ / max|x|), dmax~ = max|d| * min(1, BL/k)
    p_x = B |x|, p_d = A |d|  (clipped at 1)

In each of BL_s slots every x_j and every d_i fires independently; a coincidence at (i, j)
fires one pulse in direction -sign(d_i x_j). Expected coincidences BL p_x p_d =
lr |x_j| |d_i| / dw_min, so the mean update is the per-sample expected update.

Vectorised over samples and slots: with signed bit tensors X_b [S*T, in] and D_b [S*T, out],
two matmuls give the counts, `D_b^T X_b = n_down - n_up` and `|D_b|^T |X_b| = n_down + n_up`.
Slots beyond a sample's own BL_s are never drawn, so the cost follows sum_s BL_s. Large
draws on the CPU run `analogpipe.tiles.pulsekernel` instead: the same trials packed into bit
masks per sample, counted by AND and popcount (same distribution, other random numbers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from analogpipe.devices import (
    DeviceConfig,
    DeviceState,
    apply_pulse_counts_,
    is_symmetric_soft_bounds,
)
from analogpipe.devices.response import pair_tables
from analogpipe.errors import FLOAT32_MAX, check
from analogpipe.tiles import jit, pulsekernel
from analogpipe.tiles.rng import run_parts

UPDATE_MODES = ("expected", "pulsed")
GRANULARITIES = ("sample", "microbatch")


@dataclass(frozen=True, kw_only=True)
class UpdateConfig:
    """How stashed (x, d) pairs change the conductances.

    mode:        "expected" (deterministic, the SPEC's formula) or "pulsed" (stochastic trains).
    granularity: for "expected": "sample" (bias term from sum_b |d_b| (x) |x_b|, hardware's
                 granularity) or "microbatch" (bias from |sum_b d_b (x) x_b|, the theory's model).
    desired_bl, update_bl_management, update_management: aihwkit's pulse-train settings.
    chunk_elements: elements of the bit tensors drawn at once (a chunk of samples); small
                 chunks stay in cache (1 << 18: 1 MiB per float tensor). Large draws on the
                 CPU run the bit-mask kernel instead, which holds no bit tensors.
    """

    mode: str = "expected"
    granularity: str = "sample"
    desired_bl: int = 31
    update_bl_management: bool = True
    update_management: bool = True
    chunk_elements: int = 1 << 18

    def __post_init__(self) -> None:
        check(self.mode in UPDATE_MODES, "update.mode", self.mode, f"one of {UPDATE_MODES}")
        check(self.granularity in GRANULARITIES, "update.granularity", self.granularity,
              f"one of {GRANULARITIES}")
        check(isinstance(self.desired_bl, int) and 1 <= self.desired_bl <= 255,
              "update.desired_bl", self.desired_bl, "an integer in [1, 255]")
        check(self.chunk_elements >= 1024, "update.chunk_elements", self.chunk_elements,
              "an integer >= 1024")


def pulse_probabilities(
    x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample bit probabilities and train lengths.

    x: [S, in], d: [S, out]. Returns p_x [S, in], p_d [S, out] (in [0, 1]) and BL [S] (int64).
    Float32 CPU rows of up to COMPILED_MAX values take one compiled pass
    (`_periphery_jit.pulse_probabilities_`): the same float32 arithmetic as these torch ops,
    except that its square roots are IEEE's (torch's CPU sqrt can be one unit in the last
    place off), so BL is the same and p_x, p_d agree to 2 ulp (tests/test_pulsed.py).
    """
    compiled = _compiled_probabilities(x, d, lr, dw_min, cfg)
    if compiled is not None:
        return compiled
    x_abs, d_abs = x.abs(), d.abs()
    a, b, bl = _row_factors(x_abs.amax(dim=1), d_abs.amax(dim=1), lr, dw_min, cfg)
    return _fire_probability_(x_abs, b), _fire_probability_(d_abs, a), bl.to(torch.int64)


COMPILED_MAX = 1 << 17  # pulse_probabilities of rows up to this many values: compiled
ONE_SAMPLE_KERNEL = True  # one float32 sample's pulsed update in one compiled pass


def _compiled_probabilities(x: Tensor, d: Tensor, lr: float, dw_min: float,
                            cfg: UpdateConfig) -> tuple[Tensor, Tensor, Tensor] | None:
    def rows(t: Tensor) -> bool:
        return (t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2
                and t.is_contiguous())

    if not (rows(x) and rows(d) and x.shape[0] == d.shape[0] and x.shape[0] > 0
            and x.numel() + d.numel() <= COMPILED_MAX
            and abs(lr) <= FLOAT32_MAX and abs(dw_min) <= FLOAT32_MAX):
        return None  # (settings beyond float32: torch's ops raise their overflow error)
    kernels = jit.load("_periphery_jit")
    if kernels is None:
        return None
    p_x, p_d = torch.empty_like(x), torch.empty_like(d)
    bl = torch.empty(x.shape[0], dtype=torch.int64)
    f = np.float32
    kernels.pulse_probabilities_(x.detach().numpy(), d.detach().numpy(), p_x.numpy(),
                                 p_d.numpy(), bl.numpy(), f(lr), f(dw_min), f(cfg.desired_bl),
                                 cfg.update_bl_management, cfg.update_management)
    return p_x, p_d, bl


def _fire_probability_(v_abs: Tensor, factor: Tensor) -> Tensor:
    """min(factor_s |v|, 1), in place on |v| [S, n], with per-row factors [S]."""
    return v_abs.mul_(factor[:, None]).clamp_max_(1.0)


def _row_factors(x_max: Tensor, d_max: Tensor, lr: float, dw_min: float,
                 cfg: UpdateConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(A, B, BL) per sample [S] from the row maxima: p_d = min(A |d|, 1), p_x = min(B |x|, 1)
    (BL as floats)."""
    k = lr * x_max * d_max / dw_min  # [S]
    if cfg.update_bl_management:
        bl = torch.ceil(k).clamp(1, cfg.desired_bl)
    else:
        bl = torch.full_like(k, float(cfg.desired_bl))
    a = torch.sqrt(lr / (dw_min * bl))
    b = a.clone()
    if cfg.update_management:
        d_tilde = d_max * torch.where(k > cfg.desired_bl, cfg.desired_bl / k.clamp_min(1e-30), 1.0)
        ok = (x_max > 0) & (d_tilde > 0)
        ratio = torch.where(ok, x_max / torch.where(ok, d_tilde, 1.0), 1.0)
        a = a * torch.sqrt(ratio)
        b = b / torch.sqrt(ratio)
    return a, b, bl


def _draw(p_x: Tensor, p_d: Tensor, bl: Tensor, s_x: Tensor, s_d: Tensor,
          generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Unsigned bits times signs: [S, T, in] and [S, T, out], T = the longest train."""
    s, n_in, n_out = p_x.shape[0], p_x.shape[1], p_d.shape[1]
    t_max = int(bl.max()) if bl.numel() else 1
    u_x = torch.rand((s, t_max, n_in), generator=generator, device=p_x.device, dtype=p_x.dtype)
    u_d = torch.rand((s, t_max, n_out), generator=generator, device=p_x.device, dtype=p_x.dtype)
    x_bits = u_x < p_x[:, None, :]
    d_bits = u_d < p_d[:, None, :]
    if t_max > 1 and bool((bl < t_max).any()):  # slots beyond a sample's own BL stay silent
        live = (torch.arange(t_max, device=p_x.device)[None, :] < bl[:, None])[..., None]
        x_bits &= live
        d_bits &= live
    return (x_bits.to(p_x.dtype).mul_(s_x[:, None, :]),
            d_bits.to(p_x.dtype).mul_(s_d[:, None, :]))


def draw_pulse_trains(
    x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Signed bit trains: X_b [S, T, in] and D_b [S, T, out] in {-1, 0, 1}, T = max BL_s."""
    p_x, p_d, bl = pulse_probabilities(x, d, lr, dw_min, cfg)
    return _draw(p_x, p_d, bl, torch.sign(x), torch.sign(d), generator)


def coincidence_counts(x_bits: Tensor, d_bits: Tensor) -> tuple[Tensor, Tensor]:
    """(n_up, n_down) [out, in] from signed trains; a positive d*x coincidence is a down pulse."""
    xb = x_bits.reshape(-1, x_bits.shape[-1])
    db = d_bits.reshape(-1, d_bits.shape[-1])
    signed = db.t() @ xb  # n_down - n_up
    total = db.abs().t() @ xb.abs()  # n_down + n_up
    n_down = total.add(signed).mul_(0.5)
    return total.sub_(signed).mul_(0.5), n_down


class _Trains:
    """The samples that can fire, ordered so that samples with the same train length are
    contiguous: blocks of (first row, last row, BL). Slots beyond a sample's BL are never drawn
    (the old masked slots were silent), so the cost follows sum_s BL_s, not S * max BL."""

    def __init__(self, x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig) -> None:
        # the same probabilities as `pulse_probabilities`, formed after the samples are
        # selected and ordered (one gather of x and of d instead of four of p and signs)
        x_min, x_top = torch.aminmax(x, dim=1)
        d_min, d_top = torch.aminmax(d, dim=1)
        x_max, d_max = torch.maximum(x_top, -x_min), torch.maximum(d_top, -d_min)  # max |.|
        a, b, bl_f = _row_factors(x_max, d_max, lr, dw_min, cfg)
        bl = bl_f.to(torch.int64)
        # max_j min(B |x_j|, 1) = min(B max|x|, 1): a sample can fire iff B max|x| > 0 and
        # A max|d| > 0
        active = (b * x_max > 0) & (a * d_max > 0)
        self.n_in, self.n_out = x.shape[1], d.shape[1]
        self.blocks: list[tuple[int, int, int]] = []
        # large draws on the CPU: the bit-mask kernel (`pulsekernel`), in sample order; its
        # int32 counts are exact below 2^31 slots in all
        slots = int(bl[active].sum())
        self.kernel = (x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES
                       and d.dtype == x.dtype and slots < 2**31
                       and slots * (self.n_in + self.n_out) >= KERNEL_MIN_ELEMENTS
                       and pulsekernel.available())
        if self.kernel:  # the kernel forms p_x, p_d and the signs from x, d, a, b itself
            self.bl = bl.masked_fill_(~active, 0)
            self.rows = slots
            self.x, self.d, self.a, self.b = x, d, a, b
            self.x_signed = bool(x_min.min() < 0)
            return
        order: Tensor | None = None
        if not bool(active.all()):
            order = active.nonzero().squeeze(1)
        bl_a = bl if order is None else bl[order]
        self.rows = 0  # sum of BL over the samples that fire
        if bl_a.numel() == 0:
            return
        lo, hi = int(bl_a.min()), int(bl_a.max())
        if lo == hi:
            self.blocks.append((0, bl_a.numel(), lo))
        else:
            bl_a, perm = torch.sort(bl_a, stable=True)
            order = perm if order is None else order[perm]
            values, counts = torch.unique_consecutive(bl_a, return_counts=True)
            start = 0
            for v, c in zip(values.tolist(), counts.tolist()):
                self.blocks.append((start, start + c, v))
                start += c
        if order is not None:
            x, d, a, b = x[order], d[order], a[order], b[order]
        self.rows = sum((b1 - b0) * t for b0, b1, t in self.blocks)
        self.p_x, self.p_d = _fire_probability_(x.abs(), b), _fire_probability_(d.abs(), a)
        self.s_x, self.s_d = torch.sign(x), torch.sign(d)

    def kernel_counts(self, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(signed, total) [out, in] (int32) from `pulsekernel`: the samples are cut into
        ranges of about equal sum_s BL_s, one per intra-op thread; each range adds to its own
        int32 counts. The trials' random numbers come from one 64-bit key drawn from
        `generator`, so the counts do not depend on the thread count."""
        key = int(torch.randint(-(2**63), 2**63 - 1, (1,), generator=generator,
                                dtype=torch.int64))
        s = self.bl.numel()
        bits = self.rows * (self.n_in + self.n_out)
        workers = max(1, min(torch.get_num_threads(), bits // KERNEL_PART_ELEMENTS, s))
        ends = [0, s]
        if workers > 1:
            cum = torch.cumsum(self.bl, 0)
            cuts = torch.searchsorted(cum, torch.arange(1, workers) * (self.rows / workers))
            ends = sorted({0, s, *cuts.add_(1).clamp_(max=s).tolist()})
        x, d, a, b, bl = (t.contiguous().numpy() for t in (self.x, self.d, self.a, self.b,
                                                            self.bl))
        parts = len(ends) - 1
        accs = np.zeros((parts, 2, self.n_out, self.n_in), np.int32)
        if not pulsekernel.count_on_team(x, d, a, b, bl, self.x_signed, key, ends, accs):
            run_parts(lambda i: pulsekernel.count_range(x, d, a, b, bl, self.x_signed, key,
                                                        ends[i], ends[i + 1], accs[i]),
                      parts, parts)
        # int32 is exact: every element's count is at most sum_s BL_s < 2^31 (`kernel`)
        acc = torch.from_numpy(accs[0])
        for extra in accs[1:]:
            acc += torch.from_numpy(extra)
        down, up = acc[0], acc[1]
        return down - up, down + up

    @property
    def d_density(self) -> float:
        """Expected fraction of d bits that fire: sum_s BL_s sum_i p_d / (rows * out)."""
        if self.rows == 0:
            return 0.0
        p_d = self.p_d
        if len(self.blocks) == 1:
            return float(p_d.mean())
        bl_rows = torch.cat([torch.full((b1 - b0,), float(t), device=p_d.device,
                                        dtype=p_d.dtype)
                             for b0, b1, t in self.blocks])
        return float(bl_rows @ p_d.sum(dim=1)) / (self.rows * p_d.shape[1])

    def draw(self, budget: int, generator: torch.Generator | None):
        """Yield chunks (X [K, in] unsigned, X signed, D [K, out] unsigned, D signed) of at
        most `budget` elements (or one sample): one pair of matmuls per chunk, however many
        train lengths it holds."""
        if self.rows == 0:  # no sample can fire
            return
        n_in, n_out = self.n_in, self.n_out
        chunk: list[tuple[int, int, int]] = []
        rows = 0
        for b0, b1, t in self.blocks:
            per = max(1, budget // (t * (n_in + n_out)))
            r0 = b0
            while r0 < b1:
                room = (budget // (n_in + n_out) - rows) // t
                if chunk and room < 1:
                    yield self._fill(chunk, rows, generator)
                    chunk, rows = [], 0
                    continue
                r1 = min(b1, r0 + max(1, min(per, room)))
                chunk.append((r0, r1, t))
                rows += (r1 - r0) * t
                r0 = r1
        if chunk:
            yield self._fill(chunk, rows, generator)

    def _fill(self, pieces: list[tuple[int, int, int]], rows: int,
              generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n_in, n_out = self.p_x.shape[1], self.p_d.shape[1]
        like = dict(device=self.p_x.device, dtype=self.p_x.dtype)
        xa, da = torch.empty((rows, n_in), **like), torch.empty((rows, n_out), **like)
        xs, ds = torch.empty_like(xa), torch.empty_like(da)
        k = 0
        for r0, r1, t in pieces:
            n = (r1 - r0) * t
            for bits, signed, p, sign in ((xa, xs, self.p_x, self.s_x),
                                          (da, ds, self.p_d, self.s_d)):
                u = bits[k:k + n].view(r1 - r0, t, -1).uniform_(generator=generator)
                u.lt_(p[r0:r1, None, :])  # 1.0 where u < p, in place
                torch.mul(u, sign[r0:r1, None, :], out=signed[k:k + n].view(u.shape))
            k += n
        return xa, xs, da, ds


# Below this expected density of d bits, the coincidence counts are a sparse (COO) times
# dense product over the fired d bits only: exact, and several times cheaper than the dense
# matmuls when few outputs fire per slot (typical with large output scales).
SPARSE_D_DENSITY = 0.05
# On the CPU, a call that draws at least this many trials (x and d sides together) runs the
# bit-mask kernel (`pulsekernel`), split over the intra-op threads in parts of at least this
# size; below it the float path's few torch calls win.
KERNEL_MIN_ELEMENTS = 1 << 18
_KERNEL_DTYPES = (torch.float32, torch.float64)  # others (bfloat16, float16): float route
KERNEL_PART_ELEMENTS = 1 << 18


def _chunk_counts(xa: Tensor, xs: Tensor, da: Tensor, ds: Tensor,
                  sparse_d: bool) -> tuple[Tensor, Tensor]:
    """(signed, total) [out, in] of one chunk of bit rows."""
    if not sparse_d:
        return ds.t() @ xs, da.t() @ xa
    slot, out = da.nonzero(as_tuple=True)
    idx, shape = torch.stack([out, slot]), (da.shape[1], da.shape[0])
    signs = ds[slot, out]
    def coo(values: Tensor) -> Tensor:  # indices from nonzero(): valid by construction
        return torch.sparse_coo_tensor(idx, values, shape, check_invariants=False)

    signed = torch.sparse.mm(coo(signs), xs)
    total = torch.sparse.mm(coo(signs.abs_()), xa)
    return signed, total


def signed_counts(
    x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig,
    generator: torch.Generator | None, sparse: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Coincidences of all samples as (signed, total, rows, cols).

    signed = n_down - n_up and total = n_down + n_up (two matmuls of the bit trains). When
    few slots are drawn and they fire on few rows / columns (`sparse`), the counts cover only
    the submatrix W[rows][:, cols] (index tensors) and are zero elsewhere; otherwise rows and
    cols are None and the counts are [out, in].
    """
    check(lr >= 0, "lr", lr, "a value >= 0")
    x, d = x.detach(), d.detach()  # counts are data, never part of an autograd graph
    n_in, n_out = x.shape[1], d.shape[1]
    like = dict(device=x.device, dtype=x.dtype)
    if lr == 0 or x.shape[0] == 0:
        return torch.zeros(n_out, n_in, **like), torch.zeros(n_out, n_in, **like), None, None
    if x.shape[0] == 1:  # one sample (batch 1): a lean path without the chunk machinery
        return _one_sample_counts(x, d, lr, dw_min, cfg, generator, sparse)
    trains = _Trains(x, d, lr, dw_min, cfg)
    if trains.kernel:
        signed, total = (c.to(x.dtype) for c in trains.kernel_counts(generator))
        if sparse:  # few rows / columns with pulses: count and update only that submatrix
            rows = total.any(dim=1).nonzero().squeeze(1)
            cols = total.any(dim=0).nonzero().squeeze(1)
            if rows.numel() * cols.numel() * 2 <= n_in * n_out:
                sub = (rows[:, None], cols[None, :])
                return signed[sub], total[sub], rows, cols
        return signed, total, None, None
    # each chunk adds [out, in] counts: chunks of at least 4x that many bits amortize it
    budget = max(cfg.chunk_elements, 4 * n_in * n_out)
    if sparse and 0 < trains.rows * (n_in + n_out) <= n_in * n_out:
        parts = trains.draw(budget, generator)
        # one chunk: if the trains fire on few rows / columns, count (and later update)
        # only that submatrix
        xa, xs, da, ds = next(parts)
        rows = da.amax(dim=0).nonzero().squeeze(1)
        cols = xa.amax(dim=0).nonzero().squeeze(1)
        if rows.numel() * cols.numel() * 2 <= n_in * n_out:
            if cols.numel() < n_in:
                xa, xs = xa.index_select(1, cols), xs.index_select(1, cols)
            if rows.numel() < n_out:
                da, ds = da.index_select(1, rows), ds.index_select(1, rows)
            sparse_d = trains.d_density < SPARSE_D_DENSITY
            signed, total = _chunk_counts(xa, xs, da, ds, sparse_d)
            return signed.to(x.dtype), total.to(x.dtype), rows, cols
        parts = iter([(xa, xs, da, ds)])
    else:
        parts = trains.draw(budget, generator)
    signed = total = None
    sparse_d = trains.d_density < SPARSE_D_DENSITY
    for xa, xs, da, ds in parts:
        if sparse_d:
            sg, tt = _chunk_counts(xa, xs, da, ds, True)
            signed, total = (sg, tt) if signed is None else (signed.add_(sg), total.add_(tt))
        elif signed is None:
            signed, total = ds.t() @ xs, da.t() @ xa
        else:
            signed.addmm_(ds.t(), xs)
            total.addmm_(da.t(), xa)
    if signed is None:  # nothing can fire
        return torch.zeros(n_out, n_in, **like), torch.zeros(n_out, n_in, **like), None, None
    return signed.to(x.dtype), total.to(x.dtype), None, None


def _one_sample_counts(
    x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig,
    generator: torch.Generator | None, sparse: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """`signed_counts` of a single sample (x [1, in], d [1, out]) in a few small ops: its BL
    slots are drawn at once ([BL, in] and [BL, out] uniforms, as the float route draws them),
    and the counts are formed on the fired rows and columns only. Within one sample every
    coincidence at (i, j) has the sign of d_i x_j, so signed = sign(d_i x_j) * total."""
    n_in, n_out = x.shape[1], d.shape[1]
    like = dict(device=x.device, dtype=x.dtype)
    p_x, p_d, bl_t = pulse_probabilities(x, d, lr, dw_min, cfg)
    bl = int(bl_t[0])
    fire_x = torch.rand((bl, n_in), generator=generator, **like) < p_x
    fire_d = torch.rand((bl, n_out), generator=generator, **like) < p_d
    cols = fire_x.any(0).nonzero().squeeze(1)
    rows = fire_d.any(0).nonzero().squeeze(1)
    sign = torch.sign(d[0].index_select(0, rows))[:, None] * \
        torch.sign(x[0].index_select(0, cols))[None, :]
    if bl > 1:
        total = fire_d.index_select(1, rows).to(x.dtype).t() @ \
            fire_x.index_select(1, cols).to(x.dtype)
        signed = total * sign
    else:  # one slot: every fired pair coincides once
        total, signed = torch.ones_like(sign), sign
    if sparse and rows.numel() * cols.numel() * 2 <= n_in * n_out:
        return signed, total, rows, cols
    dense_s, dense_t = torch.zeros(n_out, n_in, **like), torch.zeros(n_out, n_in, **like)
    if rows.numel() and cols.numel():
        idx = (rows[:, None] * n_in + cols[None, :]).view(-1)
        dense_s.view(-1).index_copy_(0, idx, signed.reshape(-1))
        dense_t.view(-1).index_copy_(0, idx, total.reshape(-1))
    return dense_s, dense_t, None, None


def pulse_counts(
    x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """(n_up, n_down) [out, in]: coincidence counts of all samples.

    Samples are drawn by train length (only the slots of each sample's own BL) in chunks
    that keep the bit tensors within `cfg.chunk_elements`.
    """
    signed, total, _, _ = signed_counts(x, d, lr, dw_min, cfg, generator, sparse=False)
    n_down = total.add(signed).mul_(0.5)
    return total.sub_(signed).mul_(0.5), n_down


def pulsed_update_(
    w: Tensor, x: Tensor, d: Tensor, lr: float, state: DeviceState, device: DeviceConfig,
    cfg: UpdateConfig, generator: torch.Generator | None,
) -> Tensor:
    """Apply the pulse trains of rows x [S, in], d [S, out] to the conductances w [out, in]
    in place (same physics as `apply_pulses(w, *pulse_counts(...))`).

    When the pulses touch only a submatrix, only that submatrix is read and written:
    elements without coincidences are left exactly unchanged either way. One float32 CPU
    sample on a symmetric soft-bounds device takes one compiled pass
    (`_periphery_jit.one_sample_update_`) after the same draws: the same weights.
    """
    if x.shape[0] == 1 and ONE_SAMPLE_KERNEL and \
            _one_sample_compiled_(w, x, d, lr, state, device, cfg, generator):
        return w
    signed, total, rows, cols = signed_counts(x, d, lr, device.dw_min, cfg, generator)
    if rows is None:
        return apply_pulse_counts_(w, signed, total, state, device, generator)
    if rows.numel() == 0 or cols.numel() == 0:
        return w
    n_out, n_in = w.shape
    if cols.numel() == n_in:  # whole rows: row gathers are the cheap ones
        def pick(v: Tensor) -> Tensor:
            return v.index_select(0, rows)

        def put(block: Tensor) -> None:
            w.index_copy_(0, rows, block)
    elif rows.numel() == n_out:
        def pick(v: Tensor) -> Tensor:
            return v.index_select(1, cols)

        def put(block: Tensor) -> None:
            w.index_copy_(1, cols, block)
    else:
        flat = (rows[:, None] * n_in + cols[None, :]).view(-1)

        def pick(v: Tensor) -> Tensor:
            return v.reshape(-1).take(flat).view(rows.numel(), cols.numel())

        def put(block: Tensor) -> None:
            w.view(-1).index_copy_(0, flat, block.view(-1))
    sub_state = DeviceState(**{f: (pick(v) if isinstance(v, Tensor) else v)
                               for f, v in vars(state).items()})
    put(apply_pulse_counts_(pick(w), signed, total, sub_state, device, generator))
    return w


@functools.lru_cache(maxsize=32)
def _pair_tables_np(bl: int, b: float, dw_min: float) -> tuple[np.ndarray, np.ndarray]:
    return tuple(t.numpy() for t in pair_tables(bl, b, dw_min, torch.float32))  # type: ignore


def _one_sample_compiled_(w: Tensor, x: Tensor, d: Tensor, lr: float, state: DeviceState,
                          device: DeviceConfig, cfg: UpdateConfig,
                          generator: torch.Generator | None) -> bool:
    """`pulsed_update_` of one sample (x [1, in], d [1, out]) in one compiled pass, with the
    draws of `_one_sample_counts` (the same uniforms from the generator, the same fired
    slots) and the pair tables of `apply_pulse_counts_`: the same weights. False (nothing
    drawn, nothing written) where it does not apply: not float32 contiguous on the CPU, not
    symmetric soft bounds without cycle-to-cycle noise, lr not > 0, numba unavailable."""
    if not (lr > 0 and w.dtype == x.dtype == d.dtype == torch.float32
            and w.device.type == "cpu" and w.dim() == 2 and w.is_contiguous()
            and x.is_contiguous() and d.is_contiguous()
            and tuple(w.shape) == (d.shape[1], x.shape[1])
            and is_symmetric_soft_bounds(state, device) and device.dw_min_std == 0
            and x.numel() + d.numel() <= COMPILED_MAX):
        return False
    kernels = jit.load("_periphery_jit")
    if kernels is None:
        return False
    x, d = x.detach(), d.detach()
    p_x, p_d, bl_t = pulse_probabilities(x, d, lr, device.dw_min, cfg)
    bl = int(bl_t[0])
    like = dict(device=x.device, dtype=x.dtype)
    u_x = torch.rand((bl, x.shape[1]), generator=generator, **like)
    u_d = torch.rand((bl, d.shape[1]), generator=generator, **like)
    f_mul, f_add = _pair_tables_np(bl, float(state.b_max), float(device.dw_min))
    if kernels.one_sample_update_(w.detach().numpy(), x[0].numpy(), d[0].numpy(),
                                  p_x[0].numpy(), p_d[0].numpy(), u_x.numpy(), u_d.numpy(),
                                  f_mul, f_add):
        torch.autograd.graph.increment_version(w)
    return True


def expected_pulse_count(x: Tensor, d: Tensor, lr: float, dw_min: float) -> Tensor:
    """lr * sum_s |d_s| (x) |x_s| / dw_min: the mean total coincidences per element."""
    return lr * (d.abs().t() @ x.abs()) / dw_min


__all__ = [
    "GRANULARITIES",
    "UPDATE_MODES",
    "UpdateConfig",
    "coincidence_counts",
    "draw_pulse_trains",
    "expected_pulse_count",
    "pulse_counts",
    "pulse_probabilities",
    "pulsed_update_",
    "signed_counts",
]
