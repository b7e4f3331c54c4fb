"""The crossbar periphery: DAC/ADC quantization, noise management, output noise and bounds.

Conventions follow aihwkit's `IOParameters` (docs/physics.md lists where analogpipe differs):
a resolution r in (0, 1) gives a quantization step r * 2 * bound, r <= 0 disables it; Q rounds
half to even; output noise is added in normalized units before the ADC, then the output is
quantized and clipped. Differences from aihwkit: no iterative bound management (outputs that hit
`out_bound` stay clipped, as in aihwkit's backward pass), and no input noise / IR drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from analogpipe.errors import check
from analogpipe.tiles import rng

NOISE_MANAGEMENT = ("abs_max", "none")


def res_for_bits(bits: int) -> float:
    """aihwkit's resolution for an n-bit converter: 1/(2^n - 2), i.e. 2^n - 1 levels."""
    check(isinstance(bits, int) and bits >= 2, "bits", bits, "an integer >= 2")
    return 1.0 / (2**bits - 2)


@dataclass(frozen=True, kw_only=True)
class IOConfig:
    """One MVM direction's periphery (forward or backward).

    is_perfect: exact floating-point MVM (reproduces torch.nn.functional.linear bit for bit).
    noise_management: "abs_max" divides each input vector by its abs-max before the DAC.
    inp_bound / inp_res: DAC range and resolution; out_bound / out_res: ADC range, resolution.
    out_noise: std of additive Gaussian output noise in normalized units (0.005 = 0.5%).
    """

    is_perfect: bool = False
    noise_management: str = "abs_max"
    inp_bound: float = 1.0
    inp_res: float = 1 / 254
    out_bound: float = 12.0
    out_res: float = 1 / 254
    out_noise: float = 0.005

    def __post_init__(self) -> None:
        check(self.noise_management in NOISE_MANAGEMENT, "io.noise_management",
              self.noise_management, f"one of {NOISE_MANAGEMENT}")
        check(self.inp_bound > 0 and math.isfinite(self.inp_bound), "io.inp_bound",
              self.inp_bound, "a finite value > 0")
        check(self.out_bound > 0, "io.out_bound", self.out_bound, "a value > 0 (inf allowed)")
        for f in ("inp_res", "out_res"):
            v = getattr(self, f)
            check(v < 1 and math.isfinite(v), f"io.{f}", v,
                  "a resolution below 1 (1/(2^bits-2)), or <= 0 for no quantization")
        check(self.out_noise >= 0 and math.isfinite(self.out_noise), "io.out_noise",
              self.out_noise, "a finite value >= 0")

    @classmethod
    def bits(cls, inp_bits: int = 8, out_bits: int = 8, **kw: float) -> IOConfig:
        """Periphery with n-bit DAC and ADC."""
        return cls(inp_res=res_for_bits(inp_bits), out_res=res_for_bits(out_bits), **kw)

    @classmethod
    def perfect(cls) -> IOConfig:
        return cls(is_perfect=True, noise_management="none", inp_res=0, out_res=0, out_noise=0,
                   out_bound=math.inf)

    @property
    def inp_step(self) -> float:
        return self.inp_res * 2 * self.inp_bound if self.inp_res > 0 else 0.0

    @property
    def out_step(self) -> float:
        return self.out_res * 2 * self.out_bound if self.out_res > 0 else 0.0


def analog_mvm(
    inp: Tensor, weight: Tensor, io: IOConfig, generator: torch.Generator | None,
    transposed: bool = False, columns: bool = False,
) -> Tensor:
    """One MVM per input vector through the periphery.

    inp: [S, in] rows (batch rows or conv patches); weight: [out, in] conductances.
    Forward: y = W x; transposed (backward): z = W^T d, with inp = d of shape [S, out].
    Returns [S, out] (or [S, in] when transposed).
    columns: the vectors are the columns of a batch of matrices instead, inp [N, in, L] ->
    [N, out, L] (conv patches as `F.unfold` lays them out, and conv errors as [N, C, H*W]):
    the same per-vector periphery, without transposing to rows and back.
    Output noise is drawn with `analogpipe.tiles.rng.normal_` (large fills split over threads).
    """
    if columns:
        w = weight.t() if transposed else weight  # batched left operand: w @ x

        def mvm(x: Tensor) -> Tensor:
            return torch.bmm(w.expand(x.shape[0], *w.shape), x)
    else:
        w = weight.t() if not transposed else weight  # matmul operand: rows @ w

        def mvm(x: Tensor) -> Tensor:
            return x @ w
    if io.is_perfect:
        return mvm(inp)
    # The steps are folded into per-vector factors so that each pass over the inputs is one
    # in-place op: x_int = round(x / (alpha * step)) holds DAC levels, y = (x_int W) * step.
    i_step, o_step = io.inp_step, io.out_step
    if io.noise_management == "abs_max":
        alpha = inp.abs().amax(dim=-2 if columns else -1, keepdim=True)
        # a zero vector stays exactly zero (aihwkit: alpha = 0 gives output 0)
        inv = torch.where(alpha > 0, alpha, torch.ones_like(alpha)).reciprocal_()
        x = inp * (inv / i_step if i_step > 0 else inv)
    else:
        alpha = None
        x = inp * (1 / i_step) if i_step > 0 else inp.clone()
    if i_step > 0:
        x.round_()
        level = io.inp_bound / i_step
        if alpha is None or io.inp_bound < 1:  # abs-max scaled inputs are within [-1, 1]
            x.clamp_(-level, level)
    elif alpha is None or io.inp_bound < 1:
        x.clamp_(-io.inp_bound, io.inp_bound)
    y = mvm(x)
    if i_step > 0:
        y.mul_(i_step)
    if io.out_noise > 0:
        y.add_(rng.normal_(torch.empty_like(y), generator), alpha=io.out_noise)
    if o_step > 0:
        y.mul_(1 / o_step).round_()
        if math.isfinite(io.out_bound):
            level = io.out_bound / o_step
            y.clamp_(-level, level)
        return y.mul_(alpha * o_step if alpha is not None else o_step)
    if math.isfinite(io.out_bound):
        y.clamp_(-io.out_bound, io.out_bound)
    return y.mul_(alpha) if alpha is not None else y
