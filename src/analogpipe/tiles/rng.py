"""Large random fills split over the intra-op threads, reproducibly.

torch's CPU generator fills a tensor serially (one Mersenne Twister stream), so on a
multi-core CPU the output noise of a conv layer's backward MVM (millions of values) and the
pulse trains' random bytes leave every core but one idle. Large CPU fills are therefore cut
into parts of a fixed size; each part is filled from its own generator, seeded from one draw
of the caller's generator, and the parts run on up to `torch.get_num_threads()` threads.

The parts and their seeds depend only on the tensor's size and the caller's generator state,
never on the thread count: the same seed gives the same numbers with 1 thread or 16. Small
fills and other devices (CUDA generators are parallel) draw directly from the caller's
generator.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

PART = 1 << 20  # elements per part of a normal fill
BITS_PART = 1 << 17  # int64 words per part of a bit fill (1 MiB)
_MIX = 0x9E3779B97F4A7C15  # golden-ratio increment: distinct, well-spread part seeds
_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != workers:
            _pool = (os.getpid(), workers,
                     ThreadPoolExecutor(workers, thread_name_prefix="analogpipe-rng"))
        return _pool[2]


def _split_fill(t: Tensor, generator: torch.Generator | None,
                fill: Callable[[Tensor, torch.Generator | None], object], part: int) -> Tensor:
    if t.device.type != "cpu" or t.numel() < 2 * part or not t.is_contiguous():
        fill(t, generator)
        return t
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    parts = t.view(-1).split(part)
    gens = [torch.Generator().manual_seed((base + _MIX * (i + 1)) % 2**63)
            for i in range(len(parts))]
    workers = min(torch.get_num_threads(), len(parts))
    if workers <= 1:
        for p, g in zip(parts, gens):
            fill(p, g)
    else:
        list(_executor(workers).map(fill, parts, gens))
    return t


def normal_(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """Fill t with standard normal values in place (see the module docstring)."""
    return _split_fill(t, generator, lambda p, g: p.normal_(generator=g), PART)


def random_bits_(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """Fill an int64 tensor with 64 uniformly random bits per element, in place."""
    return _split_fill(t, generator, lambda p, g: p.random_(-(2**63), None, generator=g),
                       BITS_PART)


__all__ = ["BITS_PART", "PART", "normal_", "random_bits_"]
