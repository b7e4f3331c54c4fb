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
Slots beyond a sample's own BL_s are masked, so the train length adapts per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from analogpipe.errors import check

UPDATE_MODES = ("expected", "pulsed")
GRANULARITIES = ("sample", "microbatch")


@dataclass(frozen=True, kw_only=True)
class UpdateConfig:
    """How stashed (x, d) pairs change the conductances.

    mode:        "expected" (deterministic, the SPEC's formula) or "pulsed" (stochastic trains).
    granularity: for "expected": "sample" (bias term from sum_b |d_b| (x) |x_b|, hardware's
                 granularity) or "microbatch" (bias from |sum_b d_b (x) x_b|, the theory's model).
    desired_bl, update_bl_management, update_management: aihwkit's pulse-train settings.
    chunk_elements: memory budget (elements) for the bit tensors of one chunk of samples.
    """

    mode: str = "expected"
    granularity: str = "sample"
    desired_bl: int = 31
    update_bl_management: bool = True
    update_management: bool = True
    chunk_elements: int = 1 << 24

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
    """
    x_max = x.abs().amax(dim=1)
    d_max = d.abs().amax(dim=1)
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
    p_x = (b[:, None] * x.abs()).clamp_max(1.0)
    p_d = (a[:, None] * d.abs()).clamp_max(1.0)
    return p_x, p_d, bl.to(torch.int64)


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


def pulse_counts(
    x: Tensor, d: Tensor, lr: float, dw_min: float, cfg: UpdateConfig,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Coincidence counts of all samples, in chunks that keep the bit tensors in budget.

    Chunks are sized from the trains' actual length (usually 1 with a batch-mean loss), so
    most updates are a single draw and two matmuls.
    """
    check(lr >= 0, "lr", lr, "a value >= 0")
    n_up = torch.zeros(d.shape[1], x.shape[1], device=x.device, dtype=x.dtype)
    n_down = torch.zeros_like(n_up)
    if lr == 0 or x.shape[0] == 0:
        return n_up, n_down
    p_x, p_d, bl = pulse_probabilities(x, d, lr, dw_min, cfg)
    s_x, s_d = torch.sign(x), torch.sign(d)
    per_sample = int(bl.max()) * (x.shape[1] + d.shape[1])
    chunk = max(1, cfg.chunk_elements // per_sample)
    for start in range(0, x.shape[0], chunk):
        sl = slice(start, start + chunk)
        xb, db = _draw(p_x[sl], p_d[sl], bl[sl], s_x[sl], s_d[sl], generator)
        up, down = coincidence_counts(xb, db)
        n_up += up
        n_down += down
    return n_up, n_down


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
]
