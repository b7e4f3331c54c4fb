"""The expected update of symmetric soft bounds in one compiled pass (CPU, float32).

`analogpipe.devices.expected_update_` updates W in torch passes (symmetric soft bounds, the
paper's update with F = 1 and G = W / tau; b = |dW| / lr):

    b = grad.abs();  W.addcmul_(b, W, value=-lr / b_max);  W.add_(grad, alpha=-lr);
    W.clamp_(b_min, b_max)

The kernels here (`_updatekernel_jit`, numba) compute every element in one pass with the
roundings of those passes as torch runs them on the CPU (the products contracted into fused
multiply-adds): the same weights, bit for bit on the machines tested (`tests/test_updatekernel.py`
compares them and allows one unit in the last place, should a build of torch not contract).
They serve the updates where b is |grad| (one sample, or the per-micro-batch granularity):
`softbounds_update_` from the gradient, `softbounds_outer_update_` from one sample's (d, x),
whose product d x^T is then never written. With a separate abs product (the per-sample
granularity of several samples) torch's three passes stay: on 2 cores they run from each
core's cache and were faster than one compiled pass over the four arrays (73 against 103 us
for 512 x 512).

Both return False, running nothing, where they do not apply (not float32 on the CPU, not
contiguous, fewer than `KERNEL_MIN` weights, numba unavailable): the caller runs the torch
passes.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from analogpipe.errors import FLOAT32_MAX
from analogpipe.tiles import jit, rng

KERNEL_MIN = 1 << 12  # weights from this count take the compiled pass (below: torch's ops)
BLOCK = 64  # parts of the gradient form are multiples of this many elements


def _scalars_fit(lr: float, b_max: float) -> bool:
    """Whether -lr / b_max and -lr fit float32 (else torch's passes raise their overflow
    error, and the kernels must not run on an inf factor instead)."""
    return abs(lr) <= FLOAT32_MAX and abs(lr / b_max) <= FLOAT32_MAX


def _kernels_for(*tensors: Tensor) -> ModuleType | None:
    w = tensors[0]
    if w.numel() < KERNEL_MIN:
        return None
    for t in tensors:
        if not (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()):
            return None
    return jit.load("_updatekernel_jit")


def _scalars(lr: float, b_max: float, b_min: float) -> tuple[np.float32, ...]:
    """(c, -lr, b_min, b_max) as float32, as torch converts the passes' scalars."""
    f = np.float32
    return f(-lr / b_max), f(-lr), f(b_min), f(b_max)


def softbounds_update_(w: Tensor, grad: Tensor, lr: float, b_max: float, b_min: float) -> bool:
    """W updated in place by -lr * grad with |dW| = lr * |grad|, clipped to [b_min, b_max].
    w, grad: [out, in]. False: not run."""
    kernels = _kernels_for(w, grad)
    if kernels is None or grad.shape != w.shape or not _scalars_fit(lr, b_max):
        return False
    wf, gf = w.detach().view(-1).numpy(), grad.detach().view(-1).numpy()
    scalars = _scalars(lr, b_max, b_min)
    n = wf.shape[0]
    # one contiguous part per thread, as torch's elementwise ops split a tensor
    block = -(-n // (rng.team_workers(n) * BLOCK)) * BLOCK
    if not rng.run_team_parts(kernels.softbounds_team.address, n, block, w.data_ptr(),
                              grad.data_ptr(), n, *scalars, block):
        rng.run_blocks(lambda b0, b1: kernels.softbounds_range_(
            wf, gf, b0 * block, min(n, b1 * block), *scalars), n, block)
    torch.autograd.graph.increment_version(w)
    return True


def softbounds_outer_update_(w: Tensor, d: Tensor, x: Tensor, lr: float, b_max: float,
                             b_min: float) -> bool:
    """`softbounds_update_` for the gradient d x^T of one sample (d [out], x [in]; w
    [out, in]), without forming it. False: not run."""
    kernels = _kernels_for(w, d, x)
    if kernels is None or w.dim() != 2 or tuple(w.shape) != (d.numel(), x.numel()) or \
            not _scalars_fit(lr, b_max):
        return False
    wf = w.detach().view(-1).numpy()
    df, xf = d.detach().reshape(-1).numpy(), x.detach().reshape(-1).numpy()
    scalars = _scalars(lr, b_max, b_min)
    rows = df.shape[0]
    workers = min(rng.team_workers(wf.shape[0]), rows)
    if not rng.run_team(kernels.softbounds_outer_team.address, rng.team_args(
            w.data_ptr(), d.data_ptr(), x.data_ptr(), rows, xf.shape[0], *scalars,
            workers, 0), workers):
        rng.run_images(lambda r0, r1: kernels.softbounds_outer_range_(
            wf, df, xf, r0, r1, *scalars), rows, wf.shape[0])
    torch.autograd.graph.increment_version(w)
    return True


__all__ = ["KERNEL_MIN", "softbounds_outer_update_", "softbounds_update_"]
