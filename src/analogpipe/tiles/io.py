"""The crossbar periphery: DAC/ADC quantization, noise management, output noise and bounds.

Conventions follow aihwkit's `IOParameters` (docs/physics.md lists where analogpipe differs):
a resolution r in (0, 1) gives a quantization step r * 2 * bound, r <= 0 disables it; Q rounds
half to even; output noise is added in normalized units before the ADC, then the output is
quantized and clipped. Differences from aihwkit: no iterative bound management (outputs that hit
`out_bound` stay clipped, as in aihwkit's backward pass), and no input noise / IR drop.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from analogpipe.errors import FLOAT32_MAX, ConfigError, check
from analogpipe.tiles import jit, rng

NOISE_MANAGEMENT = ("abs_max", "none")


MAX_BITS = 24  # float32 holds every level of a 24-bit converter exactly; more would overflow


def res_for_bits(bits: int) -> float:
    """aihwkit's resolution for an n-bit converter: 1/(2^n - 2), i.e. 2^n - 1 levels.

    bits: 2 .. MAX_BITS (24: float32 holds every level exactly; raises ConfigError else)."""
    check(isinstance(bits, int) and 2 <= bits <= MAX_BITS, "bits", bits,
          f"an integer in [2, {MAX_BITS}]")
    return 1.0 / (2**bits - 2)


@dataclass(frozen=True, kw_only=True)
class IOConfig:
    """One MVM direction's periphery (forward or backward).

    is_perfect: exact floating-point MVM (reproduces torch.nn.functional.linear bit for bit).
    noise_management: "abs_max" divides each input vector by its abs-max before the DAC.
    inp_bound / inp_res: DAC range and resolution; out_bound / out_res: ADC range, resolution.
    out_noise: std of additive Gaussian output noise in normalized units (0.005 = 0.5%).
    Raises ConfigError (naming the setting) for values outside these ranges, and where a
    converter step res * 2 * bound (res > 0) or its inverse leaves float32's range (the
    periphery divides by it in float32).
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
        check(0 < self.inp_bound <= FLOAT32_MAX, "io.inp_bound", self.inp_bound,
              f"a finite value > 0 within float32's range (<= {FLOAT32_MAX:.4g})")
        check(self.out_bound > 0 and (self.out_bound <= FLOAT32_MAX
                                      or self.out_bound == math.inf), "io.out_bound",
              self.out_bound, f"a value > 0, at most {FLOAT32_MAX:.4g} (float32's range) or inf")
        for f in ("inp_res", "out_res"):
            v = getattr(self, f)
            check(v < 1 and math.isfinite(v) and (v <= 0 or v >= res_for_bits(MAX_BITS)),
                  f"io.{f}", v, "a resolution in [1/(2^24-2), 1) (1/(2^bits-2), at most 24 "
                  "bits: finer levels overflow float32), or <= 0 for no quantization")
        check(self.out_res <= 0 or math.isfinite(self.out_bound), "io.out_bound",
              self.out_bound, "a finite value when out_res > 0 (the ADC step is out_res * 2 * "
              "out_bound); set out_res <= 0 for an unquantized, unbounded output")
        check(0 <= self.out_noise <= FLOAT32_MAX, "io.out_noise", self.out_noise,
              f"a finite value >= 0 within float32's range (<= {FLOAT32_MAX:.4g})")
        for side, step in (("inp", self.inp_step), ("out", self.out_step)):
            # the periphery divides by the step in float32 (DAC levels x / (alpha step), the
            # ADC's 1 / out_step): the step and its inverse must both be float32 numbers
            check(step == 0 or 1 / FLOAT32_MAX <= step <= FLOAT32_MAX, f"io.{side}_bound",
                  getattr(self, f"{side}_bound"),
                  f"a value whose converter step {side}_res * 2 * {side}_bound "
                  f"(= {step:.4g} with io.{side}_res {getattr(self, f'{side}_res'):.4g}) and "
                  f"its inverse fit float32: a step in [{1 / FLOAT32_MAX:.4g}, "
                  f"{FLOAT32_MAX:.4g}]")

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
    Output noise is added with `analogpipe.tiles.rng.add_normal_` (large CPU fills: a compiled
    counter-based generator, or torch fills split over threads).
    Not differentiable unless io.is_perfect (the converters round): raises ConfigError for an
    input that requires grad while grad mode is on (the analog layers define the backward and
    pass the periphery detached errors, also under create_graph), as do `analog_mvm_patches`
    and `analog_mvm_fold`.
    """
    w = (weight.t() if transposed else weight) if columns else \
        (weight if transposed else weight.t())
    if io.is_perfect:
        return _columns_mvm(w, inp) if columns else inp @ w
    _refuse_grad(inp, "analog_mvm")
    x, alpha = _dac(inp, io, -2 if columns else -1)
    return _adc(_columns_mvm(w, x) if columns else x @ w, io, alpha, generator, columns)


@dataclass(frozen=True)
class PatchGeometry:
    """A 2-d convolution's patch geometry (kernel_size, stride, padding, dilation: (h, w)
    pairs, as nn.Conv2d's attributes)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """(H_out, W_out) for an input of H x W, as nn.Conv2d computes them."""
        out = []
        for size, k, s, p, dl in zip((h, w), self.kernel_size, self.stride, self.padding,
                                     self.dilation):
            out.append((size + 2 * p - dl * (k - 1) - 1) // s + 1)
        return out[0], out[1]

    def patches(self, x: Tensor, padded: Tensor | None = None) -> Tensor:
        """Every patch of x [N, C, H, W] as a strided view [N, C, kh, kw, H_out, W_out] of the
        zero-padded input (no copy beyond the padding; padded: that copy where the caller
        has it)."""
        ph, pw = self.padding
        if padded is not None:
            xp = padded
        else:
            xp = torch.nn.functional.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        n, c = x.shape[:2]
        ho, wo = self.output_hw(x.shape[2], x.shape[3])
        s0, s1, s2, s3 = xp.stride()
        return xp.as_strided((n, c, kh, kw, ho, wo),
                             (s0, s1, dh * s2, dw * s3, sh * s2, sw * s3), xp.storage_offset())

    def fold(self, cols: Tensor, hw: tuple[int, int] | torch.Size) -> Tensor:
        """`F.fold(cols, hw)`: sum the patch columns [N, C*kh*kw, L] back onto the input grid
        [N, C, H, W], one strided add per kernel position (col2im's sum, several times faster
        on the CPU); the terms of an element are added in the order of the kernel positions."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        (ph, pw), (h, w) = self.padding, tuple(hw)
        n, c = cols.shape[0], cols.shape[1] // (kh * kw)
        ho, wo = self.output_hw(h, w)
        out = cols.new_zeros(n, c, h + 2 * ph, w + 2 * pw)
        z = cols.view(n, c, kh, kw, ho, wo)
        for i in range(kh):
            for j in range(kw):
                out[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                    j * dw:j * dw + sw * (wo - 1) + 1:sw] += z[:, :, i, j]
        return self._unpad(out)

    def patch_absmax(self, x: Tensor) -> Tensor:
        """max |x| over every patch [N, 1, 1, 1, H_out, W_out] (zero padding counts as 0): a
        max-pool of the per-pixel channel maxima, exact (max is exact) and 9x less to read
        than the patches for a 3x3 kernel. Contiguous float32 CPU inputs take one compiled
        pass (`_periphery_jit.patch_absmax_`, the same values)."""
        compiled = self._patch_absmax_compiled(x)
        if compiled is not None:
            return compiled
        m = x.abs().amax(dim=1, keepdim=True)
        ph, pw = self.padding
        if ph or pw:
            m = torch.nn.functional.pad(m, (pw, pw, ph, ph))  # zeros, as the conv pads
        a = torch.nn.functional.max_pool2d(m, self.kernel_size, self.stride, 0, self.dilation)
        return a[:, :, None, None]

    def _patch_absmax_compiled(self, x: Tensor) -> Tensor | None:
        found = self._patch_kernel(x, None)
        return None if found is None else found[0]

    def dac_factors(self, x: Tensor, io: IOConfig
                    ) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """The abs-max DAC's (alpha, f, xp) of every patch of x [N, C, H, W] from the patch
        maxima in one compiled pass: alpha [N, 1, 1, 1, H_out, W_out] as `_dac` floors it,
        f = (1 / alpha) / inp_step its factor (same shape; the same values as `_dac`'s torch
        ops) and xp the zero-padded copy of x that `patches` reads (None without padding);
        None where the compiled pass does not apply."""
        if not (DAC_FACTOR_KERNELS and io.noise_management == "abs_max"):
            return None
        return self._patch_kernel(x, io)

    def _patch_kernel(self, x: Tensor, io: IOConfig | None
                      ) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
        """(maxima, None, None), or with io (alpha, f, xp) (`_periphery_jit.patch_absmax_`)."""
        if not (SMALL_KERNELS and x.dim() == 4 and _rows_ok(x) and x.numel() > 0):
            return None
        kernels = jit.load("_periphery_jit")
        if kernels is None:
            return None
        n = x.shape[0]
        ho, wo = self.output_hw(x.shape[2], x.shape[3])
        if ho < 1 or wo < 1:
            return None
        out = torch.empty((n, ho, wo), dtype=x.dtype)
        fac = torch.empty((n if io is not None else 0, ho, wo), dtype=x.dtype)
        (ph, pw), (c, h, w) = self.padding, x.shape[1:]
        xp = torch.empty((n if io is not None and (ph or pw) else 0, c, h + 2 * ph,
                          w + 2 * pw), dtype=x.dtype)
        f32 = np.float32
        i_step, _, floor = _dac_scalars(io) if io is not None else (f32(0), f32(0), f32(0))
        geo = (*self.kernel_size, *self.stride, *self.padding, *self.dilation)
        if not rng.run_team_images(kernels.patch_absmax_team.address, n, x.numel(),
                                   x.data_ptr(), *x.shape, out.data_ptr(), ho, wo, *geo,
                                   fac.data_ptr(), fac.shape[0], i_step, floor,
                                   xp.data_ptr(), xp.shape[0]):
            xf, of, ff, pf = x.detach().numpy(), out.numpy(), fac.numpy(), xp.numpy()
            rng.run_images(lambda n0, n1: kernels.patch_absmax_(
                xf, of, n0, n1, *geo, ff, i_step, floor, pf), n, x.numel())
        shape = (n, 1, 1, 1, ho, wo)
        if io is None:
            return out.view(shape), None, None
        return out.view(shape), fac.view(shape), (xp if xp.shape[0] else None)

    def _unpad(self, grid: Tensor) -> Tensor:
        (ph, pw) = self.padding
        return grid[:, :, ph:grid.shape[2] - ph, pw:grid.shape[3] - pw] if ph or pw else grid


def analog_mvm_patches(
    x: Tensor, geometry: PatchGeometry, alpha: Tensor | None, weight: Tensor, io: IOConfig,
    generator: torch.Generator | None,
) -> Tensor:
    """The forward MVM of every conv patch: y = W x per patch, as `analog_mvm(F.unfold(x),
    columns=True)` computes it, with the im2col copy and the DAC in one pass.

    x: [N, C, H, W]; alpha: the abs-max of every patch [N, 1, 1, 1, H_out, W_out] (None:
    computed here; ignored without abs-max noise management); weight: [out, C*kh*kw].
    Returns [N, out, H_out * W_out].
    """
    n, c = x.shape[:2]
    (kh, kw) = geometry.kernel_size
    ho, wo = geometry.output_hw(x.shape[2], x.shape[3])
    cols = torch.empty((n, c * kh * kw, ho * wo), dtype=x.dtype, device=x.device)
    shape6 = (n, c, kh, kw, ho, wo)
    if io.is_perfect:
        cols.view(shape6).copy_(geometry.patches(x))
        return _columns_mvm(weight, cols)
    _refuse_grad(x, "analog_mvm_patches")
    factor = padded = None
    if alpha is None and io.noise_management == "abs_max":
        # alpha, the factors and the padded input in the maxima's pass
        found = geometry.dac_factors(x, io)
        alpha, factor, padded = found if found is not None else \
            (geometry.patch_absmax(x), None, None)
    _, alpha = _dac(geometry.patches(x, padded), io, (1, 2, 3), alpha=alpha,
                    out=cols.view(shape6), factor=factor)
    if alpha is not None:
        alpha = alpha.reshape(n, 1, ho * wo)
    return _adc(_columns_mvm(weight, cols), io, alpha, generator, True)


def analog_mvm_fold(
    d: Tensor, geometry: PatchGeometry, hw: tuple[int, int] | torch.Size, weight: Tensor,
    io: IOConfig, generator: torch.Generator | None, alpha: Tensor | None = None,
) -> Tensor:
    """The conv backward: z = W^T d per output pixel through the periphery, summed back onto
    the input grid, as `geometry.fold(analog_mvm(d, weight, io, generator, transposed=True,
    columns=True), hw)` computes it (float32 CPU errors: the ADC and the sum in one compiled
    pass, the same values bit for bit).

    d: [N, out, L] (the output errors as columns); weight: [out, C*kh*kw]; hw: the input's
    (H, W); alpha: the abs-max of every column of d [N, 1, L] where the caller has it (None:
    computed here; ignored without abs-max noise management). Returns [N, C, H, W] (a view
    into the zero-padded grid when padded). Raises
    ConfigError (on every route) when the kernel does not fit an (H, W) input or d does not
    hold the errors of its output pixels."""
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    (ph, pw), (h, wd) = geometry.padding, tuple(hw)
    ho, wo = geometry.output_hw(h, wd)
    check(ho >= 1 and wo >= 1, "conv backward input size", (h, wd),
          "a size the padded, dilated kernel fits in (at least one output pixel)")
    check(d.dim() == 3 and d.shape[1] == weight.shape[0] and d.shape[2] == ho * wo
          and weight.shape[1] % (kh * kw) == 0, "conv backward errors", tuple(d.shape),
          f"[N, {weight.shape[0]}, {ho * wo}] (the output pixels of a {h}x{wd} input) with "
          f"weights [out, C*{kh}*{kw}]")
    w = weight.t()
    if io.is_perfect:
        return geometry.fold(_columns_mvm(w, d), hw)
    _refuse_grad(d, "analog_mvm_fold")
    compiled = _dac_columns(d, io) if alpha is None else None
    x, alpha = compiled if compiled is not None else _dac(d, io, -2, alpha=alpha)
    z = _columns_mvm(w, x)
    kernels = _adc_kernels(z, alpha, io, True)
    if kernels is None:
        return geometry.fold(_adc(z, io, alpha, generator, True), hw)
    n, c = z.shape[0], z.shape[1] // (kh * kw)
    grid = torch.empty((n, c, h + 2 * ph, wd + 2 * pw), dtype=z.dtype)
    size = z.numel()
    a_ptr, a_len = (0, 0) if alpha is None else (alpha.data_ptr(), alpha.numel())
    seed, *args = _adc_args(io, generator)
    geo = (kh, kw, ho, wo, sh, sw, dh, dw)
    if not rng.run_team_images(kernels.adc_fold_team.address, n, size, z.data_ptr(), size,
                               grid.data_ptr(), *grid.shape, seed, *args, a_ptr, a_len,
                               *geo):
        flat, out = z.view(-1).numpy(), grid.numpy()
        a = _EMPTY if alpha is None else alpha.view(-1).numpy()
        rng.run_images(lambda n0, n1: kernels.adc_fold_range_(flat, out, seed, n0, n1, *args,
                                                              a, geo), n, size)
    return geometry._unpad(grid)


def compiled_column_dac(d: Tensor, io: IOConfig) -> bool:
    """Whether `analog_mvm_fold` takes the DAC of errors d [N, out, L] (given no alpha) in one
    compiled pass (`_dac_columns`): float32 contiguous CPU errors under abs-max noise
    management, with numba. Callers that would compute alpha only for it can skip that."""
    return (SMALL_KERNELS and DAC_FACTOR_KERNELS and io.noise_management == "abs_max"
            and not io.is_perfect and d.dim() == 3 and _rows_ok(d) and d.numel() > 0
            and jit.load("_periphery_jit") is not None)


def _dac_columns(d: Tensor, io: IOConfig) -> tuple[Tensor, Tensor] | None:
    """`_dac(d, io, -2)` of errors as columns [N, out, L] in one compiled pass
    (`_periphery_jit.dac_columns_`: the column abs-maxima, the factors and the levels; the
    same values as the torch ops) -> (levels [N, out, L], alpha [N, 1, L]), or None where
    `compiled_column_dac` is False."""
    if not compiled_column_dac(d, io):
        return None
    kernels = jit.load("_periphery_jit")
    n, _, n_l = d.shape
    x = torch.empty_like(d)
    alpha = torch.empty((n, 1, n_l), dtype=d.dtype)
    args = _dac_scalars(io)
    if not rng.run_team_images(kernels.dac_columns_team.address, n, d.numel(), d.data_ptr(),
                               *d.shape, x.data_ptr(), alpha.data_ptr(), *args):
        df, xf, af = d.detach().numpy(), x.numpy(), alpha.view(n, n_l).numpy()
        rng.run_images(lambda n0, n1: kernels.dac_columns_(df, xf, af, n0, n1, *args), n,
                       d.numel())
    return x, alpha


@functools.lru_cache(maxsize=64)
def _dac_scalars(io: IOConfig) -> tuple[np.float32, np.float32, np.float32]:
    """(i_step, level, floor) of the compiled float32 DACs (`_periphery_jit`): the input step
    (0 without quantization), the clip level inp_bound / inp_step where inp_bound < 1
    (abs-max scaled inputs are within [-1, 1] otherwise; 0: no clip) and `alpha_floor`."""
    f32, i_step = np.float32, io.inp_step
    if io.inp_bound < 1:
        level = f32(io.inp_bound / i_step if i_step > 0 else io.inp_bound)
    else:
        level = f32(0)
    return (f32(i_step if i_step > 0 else 0), level,
            f32(alpha_floor(i_step, torch.float32)))


def _refuse_grad(t: Tensor, fn: str) -> None:
    """ConfigError where t requires grad with grad mode on: the periphery is not
    differentiable (its converters round), and its routes would disagree on what to track."""
    if t.requires_grad and torch.is_grad_enabled():
        raise ConfigError(
            f"{fn}: the input requires grad, but the periphery is not differentiable (its DAC "
            "and ADC round). Use the analog layers (AnalogLinear, AnalogConv1d, "
            "AnalogConv2d), whose backward is defined, or call it under torch.no_grad() (or on "
            "x.detach())")


def _columns_mvm(w: Tensor, x: Tensor) -> Tensor:
    """w [m, n] times every matrix of x [N, n, L] -> [N, m, L]."""
    return torch.bmm(w.expand(x.shape[0], *w.shape), x)


def alpha_floor(i_step: float, dtype: torch.dtype) -> float:
    """The smallest abs-max the DAC scales by: the dtype's smallest normal number divided by
    the input step where that is below 1 (else the smallest normal itself), so that the
    factor (1 / alpha) / i_step stays finite. Vectors with a smaller, nonzero abs-max are
    scaled by this floor instead (fewer DAC levels, a finite output): 1.5e-36 for float32
    and 8-bit DACs."""
    tiny = torch.finfo(dtype).tiny  # 1 / floor is finite, and so is (1 / floor) / i_step
    return tiny / min(i_step, 1.0) if i_step > 0 else tiny


def _dac(inp: Tensor, io: IOConfig, dim: int | tuple[int, ...], alpha: Tensor | None = None,
         out: Tensor | None = None, factor: Tensor | None = None
         ) -> tuple[Tensor, Tensor | None]:
    """Input side: (DAC levels x_int = round(x / (alpha * step)), clipped; alpha) with alpha
    the abs-max of every vector along `dim` (or given) under abs-max noise management, else
    None. Written to `out` if given. The steps are folded into per-vector factors so that
    each pass over the inputs is one op; y = (x_int W) * step later. 2-d float32 CPU rows
    under abs-max take `_dac_rows` (one compiled pass, the same values). factor: with alpha,
    the factors as formed here from it (`PatchGeometry.dac_factors`), alpha already floored."""
    i_step = io.inp_step
    if alpha is None and out is None and dim in (-1, 1) and io.noise_management == "abs_max":
        compiled = _dac_rows(inp, io)
        if compiled is not None:
            return compiled
    if factor is not None:  # with alpha, under abs-max (PatchGeometry.dac_factors)
        x = torch.mul(inp, factor, out=out)
    elif io.noise_management == "abs_max":
        if alpha is None:
            alpha = inp.abs().amax(dim=dim, keepdim=True)
        # a vector whose abs-max is below alpha_floor is scaled as if it were the floor (its
        # factor (1 / alpha) / i_step would overflow, a NaN output); a zero vector keeps
        # alpha 0 and stays exactly zero (aihwkit: alpha = 0 gives output 0)
        scaled = alpha.clamp_min(alpha_floor(i_step, inp.dtype))
        inv = torch.where(alpha > 0, scaled, 1.0).reciprocal_()
        alpha = torch.where(alpha > 0, scaled, alpha)
        x = torch.mul(inp, inv / i_step if i_step > 0 else inv, out=out)
    else:
        alpha = None
        if i_step > 0:
            x = torch.mul(inp, 1 / i_step, out=out)
        else:
            x = inp.clone() if out is None else out.copy_(inp)
    if i_step > 0:
        x.round_()
    if alpha is None or io.inp_bound < 1:  # abs-max scaled inputs are within [-1, 1]
        level = io.inp_bound / i_step if i_step > 0 else io.inp_bound
        x.clamp_(-level, level)
    return x, alpha


def _adc(y: Tensor, io: IOConfig, alpha: Tensor | None, generator: torch.Generator | None,
         columns: bool = False) -> Tensor:
    """Output side, in place on the MVM result y of DAC levels: the input step, output noise,
    ADC quantization and clip, and the abs-max scale back.

    y: rows [..., out] with alpha [..., 1], or (columns) [N, out, L] with alpha [N, 1, L].
    Contiguous float32 CPU results that do not require grad take one compiled pass
    (`_rngkernel_jit.adc_range_`, where numba runs) from max(ADC_KERNEL_MIN, rng.KERNEL_MIN)
    values on (the sizes whose noise `rng.add_normal_` draws from the compiled generator),
    with the other conditions of `_adc_kernels` (a contiguous float32 alpha of the layout's
    shape; an out_noise that is not 0 in float32 unless it is 0): the same values as these
    torch passes, bit for bit. Rows below rng.KERNEL_MIN values take `_adc_small` (one
    compiled pass, the noise from the generator as before), the same values too."""
    kernels = _adc_kernels(y, alpha, io, columns)
    if kernels is not None:
        return _adc_compiled(kernels, y, io, alpha, generator, columns)
    if not columns and _small_rows(y, alpha):
        small = jit.load("_periphery_jit")
        if small is not None:
            return _adc_small(small, y, io, alpha, generator)
    i_step, o_step = io.inp_step, io.out_step
    if i_step > 0:
        y.mul_(i_step)
    if io.out_noise > 0:
        rng.add_normal_(y, io.out_noise, generator)
    if o_step > 0:
        y.mul_(1 / o_step).round_()
        if math.isfinite(io.out_bound):
            level = io.out_bound / o_step
            y.clamp_(-level, level)
        return y.mul_(alpha * o_step if alpha is not None else o_step)
    if math.isfinite(io.out_bound):
        y.clamp_(-io.out_bound, io.out_bound)
    return y.mul_(alpha) if alpha is not None else y


ADC_KERNEL_MIN = rng.KERNEL_MIN  # results from this size (and rng.KERNEL_MIN): compiled pass
SMALL_KERNELS = True  # rows below that size (and DACs of rows): one compiled pass each
DAC_KERNEL_MAX = 1 << 17  # rows DAC'd by the compiled (one-thread) pass up to this many values
DAC_FACTOR_KERNELS = True  # conv DACs: factors with the patch maxima; errors' DAC in one pass


def _rows_ok(t: Tensor) -> bool:
    return (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
            and t.dim() >= 1)


def _small_rows(y: Tensor, alpha: Tensor | None) -> bool:
    """Whether `_adc_small` serves y: rows [..., out] of fewer than rng.KERNEL_MIN values
    (whose noise `rng.add_normal_` adds as torch's `add_(z, alpha=std)`)."""
    if not (SMALL_KERNELS and _rows_ok(y) and not y.requires_grad
            and 0 < y.numel() < rng.KERNEL_MIN):
        return False
    return alpha is None or (alpha.dtype == torch.float32 and alpha.is_contiguous()
                             and tuple(alpha.shape) == (*y.shape[:-1], 1))


def _adc_small(kernels, y: Tensor, io: IOConfig, alpha: Tensor | None,
               generator: torch.Generator | None) -> Tensor:
    """`_adc`'s torch passes on rows in one compiled pass (`_periphery_jit.adc_rows_`), the
    noise drawn from the generator as `rng.add_normal_` draws it for such sizes: the same
    values, bit for bit."""
    z = rng.normal_(torch.empty_like(y), generator).view(-1).numpy() if io.out_noise > 0 \
        else _EMPTY
    a = _EMPTY if alpha is None else alpha.detach().view(-1).numpy()
    kernels.adc_rows_(y.detach().view(-1).numpy(), z, *_small_adc_args(io), a, y.shape[-1])
    torch.autograd.graph.increment_version(y)
    return y


_EMPTY = np.empty(0, np.float32)


@functools.lru_cache(maxsize=64)
def _small_adc_args(io: IOConfig) -> tuple[np.float32, ...]:
    """(std, i_step, inv_o, level, o_step) of `_periphery_jit.adc_rows_` as float32, the
    scalars of the torch passes (0 for a step or bound that is not there)."""
    f32 = np.float32
    i_step, o_step, bounded = io.inp_step, io.out_step, math.isfinite(io.out_bound)
    if o_step > 0:
        inv_o, level = f32(1 / o_step), f32(io.out_bound / o_step if bounded else 0)
    else:
        inv_o, level = f32(0), f32(io.out_bound if bounded else 0)
    return (f32(io.out_noise), f32(i_step if i_step > 0 else 0), inv_o, level,
            f32(o_step if o_step > 0 else 1))


def _dac_rows(inp: Tensor, io: IOConfig) -> tuple[Tensor, Tensor] | None:
    """`_dac` of rows [S, in] under abs-max noise management in one compiled pass
    (`_periphery_jit.dac_rows_`; the same values as the torch ops), or None where it does
    not apply (not 2-d float32 contiguous CPU rows of at most DAC_KERNEL_MAX values, or
    numba unavailable)."""
    if not (SMALL_KERNELS and inp.dim() == 2 and _rows_ok(inp)
            and 0 < inp.numel() <= DAC_KERNEL_MAX):
        return None
    kernels = jit.load("_periphery_jit")
    if kernels is None:
        return None
    x = torch.empty_like(inp)
    alpha = torch.empty((inp.shape[0], 1), dtype=inp.dtype)
    kernels.dac_rows_(inp.detach().numpy(), x.numpy(), alpha.view(-1).numpy(),
                      *_dac_scalars(io))
    return x, alpha


def _adc_kernels(y: Tensor, alpha: Tensor | None, io: IOConfig, columns: bool):
    """The compiled kernels for `_adc`'s one pass, or None where the torch passes run."""
    if not (y.dtype == torch.float32 and y.device.type == "cpu" and y.is_contiguous()
            and y.numel() >= max(ADC_KERNEL_MIN, rng.KERNEL_MIN) and not y.requires_grad):
        return None
    if 0 < io.out_noise <= 2.0**-150:  # 0 in float32: the torch passes add 0 * z (turning
        return None  # -0 into +0); keep their bits
    if columns and y.dim() != 3:
        return None
    if alpha is not None:
        shape = (y.shape[0], 1, y.shape[2]) if columns else (*y.shape[:-1], 1)
        if tuple(alpha.shape) != shape or alpha.dtype != torch.float32 or \
                not alpha.is_contiguous():
            return None
    return rng.kernels()


def _adc_compiled(kernels, y: Tensor, io: IOConfig, alpha: Tensor | None,
                  generator: torch.Generator | None, columns: bool) -> Tensor:
    """`_adc` in one compiled pass (see `_rngkernel_jit.adc_range_`); the noise key is drawn
    as `rng.add_normal_` draws it, so the values are those of the torch passes."""
    # columns [N, out, L] with alpha [N, 1, L]; else rows [..., out] (alpha [..., 1] or none)
    seg, per_a = (y.shape[2], y.shape[1]) if columns and alpha is not None else (y.shape[-1], 0)
    size = y.numel()
    a_ptr, a_len = (0, 0) if alpha is None else (alpha.data_ptr(), alpha.numel())
    seed, *args = _adc_args(io, generator)
    if not rng.run_team_parts(kernels.adc_team.address, size, 2 * kernels.BLOCK,
                              y.data_ptr(), size, seed, *args, a_ptr, a_len, seg, per_a):
        flat = y.view(-1).numpy()
        a = _EMPTY if alpha is None else alpha.view(-1).numpy()
        rng.run_blocks(lambda b0, b1: kernels.adc_range_(flat, seed, b0, b1, *args, a, seg,
                                                         per_a), size, 2 * kernels.BLOCK)
    torch.autograd.graph.increment_version(y)
    return y


def _adc_args(io: IOConfig, generator: torch.Generator | None) -> tuple:
    """(noise key, std, i_step, inv_o, level, mult) for the compiled output side, as float32
    the torch passes use them (the key drawn only with output noise, as `rng.add_normal_`)."""
    f32 = np.float32
    i_step, o_step, std = io.inp_step, io.out_step, io.out_noise
    seed = np.uint64(rng.draw_key(generator)) if std > 0 else np.uint64(0)
    if o_step > 0:
        inv_o, level, mult = 1 / o_step, io.out_bound / o_step, o_step
    else:
        inv_o, level, mult = 0.0, io.out_bound, 1.0
    return (seed, f32(std), f32(i_step) if i_step > 0 else f32(1), f32(inv_o), f32(level),
            f32(mult))
