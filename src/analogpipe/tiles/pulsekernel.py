"""CPU kernel for the pulse trains of many samples: fire masks and coincidence counts (numba).

The physics is that of `analogpipe.tiles.pulses` (aihwkit's StochasticCompressed trains): in
each of a sample's BL_s slots every x_j fires with probability p_x[s, j] and every d_i with
p_d[s, i], independently; a coincidence at (i, j) is one pulse, down when d_i x_j > 0.

Per sample, the kernel packs each element's train into bit masks of 32 slots (bit k of
`x_mask[j]` is slot k of x_j's train), so the coincidences of a block of 32 slots at (i, j)
are `popcount(d_mask[i] & x_mask[j])`: one AND and one popcount instead of 32 multiply-adds,
and an output whose d train is silent costs nothing. The counts are exact integers.

Random numbers are counter based (SplitMix64's output function applied to
seed + c * 0x9E3779B97F4A7C15, Steele, Lea and Flood, OOPSLA 2014): the number of a trial
depends only on the seed and the trial's (sample, slot, element), so a sample range can run on
any thread and the counts do not depend on the thread count. Each 64-bit output gives two
trials (slots 2k and 2k + 1) from its two 32-bit halves; a trial fires iff its 32-bit uniform
U < floor(p * 2^32), so P(fire) = p to within 2^-32 (torch's float32 uniforms resolve 2^-24).

`available()` is False when numba cannot be imported or the kernels cannot be built
(`analogpipe.tiles.jit`); callers then use the torch route.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from analogpipe.tiles import jit

BLOCK = 32  # slots per mask word
MAX_SLOTS = 256  # counter layout: up to 128 slot pairs per sample (desired_bl <= 255)


def _kernels() -> ModuleType:
    kernels = jit.load("_pulsekernel_jit")
    if kernels is None:
        raise RuntimeError("the pulse kernel is not available (see available())")
    return kernels


def available() -> bool:
    """Whether the kernels can run here (`analogpipe.tiles.jit.load`: numba importable and
    the kernels built); imports numba on the first call."""
    return jit.load("_pulsekernel_jit") is not None


def count_range(x: np.ndarray, d: np.ndarray, a: np.ndarray, b: np.ndarray, bl: np.ndarray,
                x_signed: bool, seed: int, s0: int, s1: int, acc: np.ndarray) -> None:
    """Add the (down, up) coincidences of samples s0:s1 to acc [2, out, in] (int32), in place.

    x [S, in], d [S, out]: the samples (float32 or float64); a, b [S] (same dtype): the
    update-management factors, p_d = min(a_s |d|, 1) and p_x = min(b_s |x|, 1) in that
    dtype; bl [S] int64: train lengths in [0, 256) (0: the sample does not fire); x_signed:
    False promises no negative x; seed: the call's 64-bit key. Releases the GIL.
    """
    _kernels().count_range_(x, d, a, b, bl, x_signed, np.uint64(seed % 2**64), s0, s1, acc)


def count_on_team(x: np.ndarray, d: np.ndarray, a: np.ndarray, b: np.ndarray, bl: np.ndarray,
                  x_signed: bool, seed: int, ends: list[int], accs: np.ndarray) -> bool:
    """`count_range` of the sample ranges ends[i]:ends[i + 1] into accs[i] ([parts, 2, out,
    in], int32), run as a parallel region of torch's OpenMP threads (`rng.run_team`); all
    arrays C-contiguous. Returns False (nothing run) where that cannot run or one part is
    all: the caller runs the ranges itself."""
    from analogpipe.tiles import rng

    parts = len(ends) - 1
    body = _kernels().count_team_f32 if x.dtype == np.float32 else _kernels().count_team_f64
    cuts = np.asarray(ends, np.int64)
    return rng.run_team(body.address, rng.team_args(
        x.shape[0], x.shape[1], d.shape[1], x.ctypes.data, d.ctypes.data, a.ctypes.data,
        b.ctypes.data, bl.ctypes.data, accs.ctypes.data, int(x_signed), seed % 2**64,
        cuts.ctypes.data, parts, 0), parts)


def fire_masks(p: np.ndarray, bl: np.ndarray, seed: int, side: str, n_in: int,
               n_out: int) -> np.ndarray:
    """The trains of one side with the random numbers `count_range` uses, every slot drawn,
    as masks [S, ceil(max BL / 32), n] uint32 (bit k of word w: slot 32 w + k fires). p: p_x
    [S, n_in] (side "x") or p_d [S, n_out] (side "d"). (`count_range` leaves out x slots
    where no d fires; the counts are the same.) For tests and inspection."""
    words = max(1, -(-int(bl.max(initial=0)) // BLOCK))
    out = np.zeros((p.shape[0], words, p.shape[1]), np.uint32)
    _kernels().masks_range_(p, bl, np.uint64(seed % 2**64), 0 if side == "x" else n_in,
                           n_in + n_out, out)
    return out


__all__ = ["BLOCK", "MAX_SLOTS", "available", "count_on_team", "count_range", "fire_masks"]
