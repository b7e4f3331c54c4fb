"""Device physics as pure tensor functions.

Notation (SPEC section 2): one up pulse changes w by `dw_min * q_+(w)`, one down pulse by
`-dw_min * q_-(w)`. The response factors include the device-to-device gain of each element,
`q_+ = (delta_up / dw_min) * shape_+(w)`. The expected update for a desired increment dW is

    W <- W + dW * F(W) - |dW| * G(W),   F = (q_- + q_+) / 2,   G = (q_- - q_+) / 2

which equals `W + dW * q_+(W)` where dW > 0 and `W + dW * q_-(W)` where dW < 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from analogpipe.devices.config import DeviceConfig

Scalarish = Tensor | float


@dataclass
class DeviceState:
    """Per-element device parameters drawn once (device-to-device spread).

    Each field is a [out, in] tensor when the config has device-to-device spread, else a float
    (so the hot path does scalar arithmetic). Bounds: b_min < 0 < b_max.
    """

    b_max: Scalarish
    b_min: Scalarish
    delta_up: Scalarish  # magnitude of one up pulse at the symmetric point (weight units)
    delta_down: Scalarish  # magnitude of one down pulse

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)}


def sample_device_state(
    cfg: DeviceConfig, shape: tuple[int, int], generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> DeviceState:
    """Draw the device-to-device parameters once per cross-point (aihwkit's formulas).

    gain g = 1 + dw_min_dtod*xi, r = up_down_dtod*xi, (beta_up, beta_down) from up_down,
    delta_up = (beta_up + g + r) dw_min, delta_down = (beta_down + g - r) dw_min (magnitudes),
    b_max = w_max (1 + w_max_dtod xi), b_min = w_min (1 + w_min_dtod xi); then consistency:
    magnitudes are made positive and bounds straddle zero.
    """
    beta_up, beta_down = (0.0, -cfg.up_down) if cfg.up_down > 0 else (cfg.up_down, 0.0)
    if cfg.name == "ideal":
        return DeviceState(math.inf, -math.inf, cfg.dw_min, cfg.dw_min)
    if not cfg.has_dtod:
        return DeviceState(
            cfg.w_max, cfg.w_min, (1 + beta_up) * cfg.dw_min, (1 + beta_down) * cfg.dw_min
        )

    def normal() -> Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    g = 1 + cfg.dw_min_dtod * normal()
    r = cfg.up_down_dtod * normal()
    delta_up = ((beta_up + g + r) * cfg.dw_min).abs()
    delta_down = ((beta_down + g - r) * cfg.dw_min).abs()
    b_max = cfg.w_max * (1 + cfg.w_max_dtod * normal())
    b_min = cfg.w_min * (1 + cfg.w_min_dtod * normal())
    hi, lo = torch.maximum(b_max, b_min), torch.minimum(b_max, b_min)
    # enforce_consistency: b_max > 0 > b_min (a tiny floor keeps slopes finite)
    eps = 1e-6 * cfg.w_max
    b_max, b_min = hi.abs().clamp_min(eps), -lo.abs().clamp_min(eps)
    if cfg.name == "softbounds":
        # a drawn step at least as large as its bound (gain tail, or a bound drawn near 0) would
        # overshoot the bound in one pulse, where aihwkit clips: cap it just below the bound, so
        # one pulse still saturates the device and the n-pulse closed form stays finite
        delta_up = torch.minimum(delta_up, b_max * (1 - 1e-6))
        delta_down = torch.minimum(delta_down, -b_min * (1 - 1e-6))
    return DeviceState(b_max, b_min, delta_up, delta_down)


def response(w: Tensor, state: DeviceState, cfg: DeviceConfig) -> tuple[Scalarish, Scalarish]:
    """(q_+(w), q_-(w)): one pulse's change in units of dw_min, per element."""
    g_up = state.delta_up / cfg.dw_min
    g_down = state.delta_down / cfg.dw_min
    if cfg.name in ("ideal", "constantstep"):
        return g_up, g_down
    if cfg.name == "softbounds":
        return g_up * (1 - w / state.b_max), g_down * (1 - w / state.b_min)
    # powstep (aihwkit's PowStep): ((distance to the bound) / (full range)) ** gamma; at
    # gamma = 1 this is soft bounds with half the step (q = 0.5 at w = 0 of a symmetric device)
    span = state.b_max - state.b_min
    up = ((state.b_max - w) / span).clamp_min(0) ** cfg.pow_gamma
    down = ((w - state.b_min) / span).clamp_min(0) ** cfg.pow_gamma
    return g_up * up, g_down * down


def clip_to_bounds(w: Tensor, state: DeviceState, cfg: DeviceConfig) -> Tensor:
    """Weights never leave [b_min, b_max] (in place; ideal devices have no bounds)."""
    if cfg.name == "ideal":
        return w
    if isinstance(state.b_max, Tensor):
        return torch.clamp(w, state.b_min, state.b_max, out=w)
    return w.clamp_(state.b_min, state.b_max)


def is_symmetric_soft_bounds(state: DeviceState, cfg: DeviceConfig) -> bool:
    """Soft bounds without spread or asymmetry: F = 1, G = W / tau (scalar fast paths)."""
    return (cfg.name == "softbounds" and not isinstance(state.b_max, Tensor)
            and state.delta_up == state.delta_down == cfg.dw_min and state.b_max == -state.b_min)


def expected_update_(
    w: Tensor, grad: Tensor, abs_product: Tensor | None, lr: float, state: DeviceState,
    cfg: DeviceConfig,
) -> Tensor:
    """In-place `expected_update` with dW = -lr * grad and |dW| = lr * abs_product (or
    lr * |grad| when abs_product is None): the tile's hot path, three passes over W for
    symmetric soft bounds."""
    if is_symmetric_soft_bounds(state, cfg):
        bias = abs_product if abs_product is not None else grad.abs()
        w.addcmul_(bias, w, value=-lr / state.b_max)  # - |dW| * W / tau, with the old W
        w.add_(grad, alpha=-lr)
        return clip_to_bounds(w, state, cfg)
    dw = grad * -lr
    dw_abs = abs_product * lr if abs_product is not None else dw.abs()
    return w.copy_(expected_update(w, dw, dw_abs, state, cfg))


def expected_update(
    w: Tensor, dw: Tensor, dw_abs: Tensor, state: DeviceState, cfg: DeviceConfig
) -> Tensor:
    """W + dW * F(W) - |dW| * G(W), clipped to the bounds. Returns a new tensor.

    dw:     desired increment, -lr * gradient (summed over the micro-batch).
    dw_abs: |dw| for the per-micro-batch granularity, or lr * sum_b |d_b| (x) |x_b| for the
            per-sample granularity (each sample is its own rank-one pulse cycle).
    """
    if is_symmetric_soft_bounds(state, cfg):
        # symmetric soft bounds: F = 1, G = W / tau (the paper's update, 3 elementwise ops)
        out = w + dw - dw_abs * w / state.b_max
    else:
        q_up, q_down = response(w, state, cfg)
        f = (q_up + q_down) / 2
        g = (q_down - q_up) / 2
        out = w + dw * f - dw_abs * g
    return clip_to_bounds(out, state, cfg)


def apply_pulses(
    w: Tensor,
    n_up: Tensor,
    n_down: Tensor,
    state: DeviceState,
    cfg: DeviceConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply `n_up` up pulses and `n_down` down pulses to every element (returns a new tensor).

    Within one sample all coincidences at an element have the same sign, so a sample's pulses
    are n pulses in one direction. Soft bounds: n pulses in one direction have the closed form
    `w_n - b = (w - b) (1 - delta/|b|)^n` (exact, no ctoc noise). Up and down counts gathered over
    several samples are applied from the same starting w and added: this drops the order of the
    samples, an error of order delta_up*delta_down*n_up*n_down/|b| per element (second order in
    dw_min). Cycle-to-cycle noise: n pulses of size delta*(1 + std*xi) sum to
    n*delta*(1 + std*xi'/sqrt(n)) in distribution; for soft bounds this is first order.
    Constant step and pow step use first order `delta * n * q(w)`, then the hard clip.
    """
    if is_symmetric_soft_bounds(state, cfg) and cfg.dw_min_std == 0:
        # w + (b - w)(1 - a^n_up) - (w + b)(1 - a^n_down), a = 1 - dw_min / b, written with
        # expm1 so that zero counts leave w exactly unchanged; every op is one in-place pass
        b = state.b_max
        log_a = math.log1p(-cfg.dw_min / b)
        e_up = torch.mul(n_up, log_a).expm1_()  # a^n_up - 1
        e_down = torch.mul(n_down, log_a).expm1_()
        inc = torch.sub(w, b).mul_(e_up)
        inc.addcmul_(torch.add(w, b), e_down)
        return inc.add_(w)
    if cfg.name == "softbounds":
        inc_up = (state.b_max - w) * -torch.expm1(n_up * _log1m(state.delta_up / state.b_max))
        log_down = _log1m(state.delta_down / -state.b_min)
        inc_down = (w - state.b_min) * -torch.expm1(n_down * log_down)
    else:
        q_up, q_down = response(w, state, cfg)
        inc_up = n_up * q_up * cfg.dw_min
        inc_down = n_down * q_down * cfg.dw_min
    if cfg.dw_min_std > 0:
        inc_up = inc_up * _ctoc(n_up, cfg.dw_min_std, generator)
        inc_down = inc_down * _ctoc(n_down, cfg.dw_min_std, generator)
    return clip_to_bounds(w + inc_up - inc_down, state, cfg)


PAIR_TABLE_MAX = 255  # largest count for the (n_up, n_down) pair table (65536 entries)


def pair_tables(n_max: int, b: float, dw_min: float, dtype: torch.dtype,
                device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Symmetric soft bounds' factors for n_up, n_down <= n_max pulses, flat
    [(n_max + 1)^2] at index n_up (n_max + 1) + n_down: w_new = w f_mul + f_add with
    f_mul = 1 + e_up + e_down, f_add = b (e_down - e_up), e_n = a^n - 1 = expm1(n log a),
    a = 1 - dw_min / b, formed in float64 and rounded once to dtype. A pair's factors do not
    depend on n_max; zero counts give (1, 0)."""
    e = torch.arange(n_max + 1, device=device, dtype=torch.float64)
    e.mul_(math.log1p(-dw_min / b)).expm1_()
    f_mul = (1 + e[:, None] + e[None, :]).to(dtype).view(-1)
    f_add = (e[None, :] - e[:, None]).mul_(b).to(dtype).view(-1)
    return f_mul, f_add


def apply_pulse_counts_(
    w: Tensor,
    signed: Tensor,
    total: Tensor,
    state: DeviceState,
    cfg: DeviceConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """In-place `apply_pulses` from `signed = n_down - n_up` and `total = n_down + n_up`
    (the two coincidence matmuls), the same closed forms; both count buffers are consumed
    (overwritten). The tile's hot path: no copy of W. Any shape (the tile passes
    the touched elements only, as 1-d tensors with matching state elements).
    """
    if is_symmetric_soft_bounds(state, cfg) and cfg.dw_min_std == 0 and total.numel():
        # n pulses scale (w -/+ b) by a^n, a = 1 - dw_min / b: a^n - 1 = expm1(n log a) is
        # looked up in a table over the counts that occur (expm1 per element is slow on CPU)
        b = state.b_max
        n_max = int(total.max())
        log_a = math.log1p(-cfg.dw_min / b)
        if n_max <= PAIR_TABLE_MAX:
            # w_new = w (1 + e_up + e_down) + b (e_down - e_up): one lookup per factor over
            # the (n_up, n_down) pairs, index n_up (n_max + 1) + n_down, factors rounded once
            # from float64; zero counts give factors (1, 0): w exactly unchanged
            f_mul, f_add = pair_tables(n_max, b, cfg.dw_min, w.dtype, w.device)
            idx = total.mul_((n_max + 2) / 2).add_(signed, alpha=-n_max / 2)
            idx = idx.view(-1).to(torch.int32)
            w.mul_(f_mul.index_select(0, idx).view(w.shape))
            return w.add_(f_add.index_select(0, idx).view(w.shape))
        table = torch.arange(n_max + 1, device=w.device, dtype=w.dtype)
        table.mul_(log_a).expm1_()
        # (total -/+ signed) / 2 are the integer counts n_up / n_down, exact in floating point
        def lookup(n: Tensor) -> Tensor:
            return table.index_select(0, n.reshape(-1).to(torch.int32)).view(n.shape)

        e_up = lookup(torch.sub(total, signed).mul_(0.5))
        e_down = lookup(total.add_(signed).mul_(0.5))
        inc = torch.sub(w, b).mul_(e_up)
        inc.addcmul_(e_up.copy_(w).add_(b), e_down)  # e_up's buffer now holds w + b
        return w.add_(inc)
    n_up = torch.sub(total, signed).mul_(0.5)
    n_down = total.add_(signed).mul_(0.5)
    return w.copy_(apply_pulses(w, n_up, n_down, state, cfg, generator))


def _log1m(x: Scalarish) -> Scalarish:
    return torch.log1p(-x) if isinstance(x, Tensor) else math.log1p(-x)


def _ctoc(n: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    xi = torch.randn(n.shape, generator=generator, device=n.device, dtype=n.dtype)
    return 1 + std * xi * torch.rsqrt(n.clamp_min(1))
