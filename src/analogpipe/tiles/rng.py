"""Large random fills split over the intra-op threads, reproducibly.

torch's CPU generator fills a tensor serially (one Mersenne Twister stream), so on a
multi-core CPU the output noise of a conv layer's backward MVM (millions of values) leaves
every core but one idle. Large CPU fills are therefore cut
into parts of a fixed size; each part is filled from its own generator, seeded from one draw
of the caller's generator, and the parts run on up to `torch.get_num_threads()` threads.

The parts and their seeds depend only on the tensor's size and the caller's generator state,
never on the thread count: the same seed gives the same numbers with 1 thread or 16. Small
fills and other devices (CUDA generators are parallel) draw directly from the caller's
generator.

Large float32 fills on the CPU use a compiled counter-based generator instead
(`_rngkernel_jit`, numba, where available): Box-Muller pairs from SplitMix64 outputs keyed by
one 64-bit draw of the caller's generator, u1 in (0, 1] and the angle on 24-bit grids, log and
sin / cos by Cephes' float32 polynomials (relative error ~1e-7), so |z| <= sqrt(2 ln 2^24)
= 5.77 (torch's float32 Box-Muller truncates likewise). About four times faster than the
split torch fill here; a value depends only on the key and its position, so the thread count
does not matter either.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from analogpipe.tiles import jit

PART = 1 << 20  # elements per part of a normal fill
KERNEL_MIN = 1 << 15  # float32 fills from this size take the compiled generator
KERNEL_PART = 1 << 15  # and are split over threads in parts of at least this many values
_MIX = 0x9E3779B97F4A7C15  # golden-ratio increment: distinct, well-spread part seeds
_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads, kept between calls (one per process)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != workers:
            _pool = (os.getpid(), workers,
                     ThreadPoolExecutor(workers, thread_name_prefix="analogpipe-pool"))
        return _pool[2]


def run_parts(fn: Callable[[int], object], parts: int, workers: int) -> None:
    """fn(0), ..., fn(parts - 1) on `workers` pool threads (in this thread when workers <= 1).
    The parts must not depend on each other's order."""
    if workers <= 1:
        for i in range(parts):
            fn(i)
    else:
        list(thread_pool(workers).map(fn, range(parts)))


TEAM = True  # compiled kernels run on torch's OpenMP threads where torch uses libgomp


def team() -> Callable[[int, int, int], None] | None:
    """libgomp's `GOMP_parallel(fn, data, num_threads, flags)` of the OpenMP runtime torch
    runs on, or None: then the callers run their kernels on a thread pool of our own.

    The runtime is the libgomp in torch's own lib folder when that one is loaded, else the
    only libgomp loaded (a torch built against the system's libgomp; should that not be
    torch's runtime after all, the kernels still run correctly on its threads). None where
    no libgomp (or more than one and none of torch's) is loaded, where /proc/self/maps cannot
    be read, and in any process forked after this module was imported (libgomp's threads do
    not survive a fork: a parallel region there would hang). A process forked before this
    module is imported, from a parent that ran torch on several threads, is not recognised;
    torch's own parallel ops hang there too (start such workers with "spawn").

    Why: after each parallel op torch's OpenMP worker threads spin for a while waiting for
    the next one (libgomp's GOMP_SPINCOUNT). A compiled kernel run on threads of our own
    right after a torch op shares the cores with those spinning threads: on 2 cores the
    noise kernel took 3.7 ms instead of 2.1 ms for 2M values. Run as a parallel region of
    torch's own team, the spinning threads do the work instead (1.6 ms).
    """
    if not _team_found:
        _team_found.append(_find_team())
    return _team_found[0]


_team_found: list = []  # [GOMP_parallel or None] once looked up


def _no_team_after_fork() -> None:
    _team_found[:] = [None]  # a forked child never uses the parent's team


os.register_at_fork(after_in_child=_no_team_after_fork)


def _find_team() -> Callable[[int, int, int], None] | None:
    paths = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                # address perms offset dev inode path (the path may hold spaces)
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                if "libgomp" in os.path.basename(path) and os.path.isfile(path):
                    paths.add(path)
    except OSError:
        return None
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    own = [p for p in paths if os.path.dirname(p) == torch_lib]
    if len(own) != 1 and len(paths) != 1:
        return None
    try:
        lib = ctypes.CDLL((own or list(paths))[0])
        fn = lib.GOMP_parallel
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    fn.restype = None
    return fn


def team_workers(n: int) -> int:
    """Threads for a compiled pass over n values: up to `torch.get_num_threads()`, at least
    KERNEL_PART values each."""
    return max(1, min(torch.get_num_threads(), n // KERNEL_PART))


def run_team_parts(body: int, n: int, block: int, *values: object) -> bool:
    """Run a compiled team body (`_rngkernel_jit.*_team`) over n values in blocks of `block`
    on torch's OpenMP threads, its args being `values` then the number of parts and the
    shared counter (see `team_args`). False (nothing run): the caller runs `run_blocks`."""
    workers = team_workers(n)
    parts = min(-(-n // block), 4 * workers)
    return run_team(body, team_args(*values, parts, 0), workers)


def run_team_images(body: int, images: int, n: int, *values: object) -> bool:
    """`run_team_parts` for a body that takes one image at a time off its counter (args:
    `values`, then the counter): n values in all. False: the caller runs `run_images`."""
    return run_team(body, team_args(*values, 0), min(team_workers(n), images))


def run_blocks(fn: Callable[[int, int], object], n: int, block: int) -> None:
    """fn(b0, b1) over the blocks of `block` values covering n values, cut into one range
    per thread (pool route; `team_workers` threads)."""
    _run_ranges(fn, -(-n // block), team_workers(n))


def run_images(fn: Callable[[int, int], object], images: int, n: int) -> None:
    """fn(i0, i1) over the images, cut into one range per thread (pool route)."""
    _run_ranges(fn, images, min(team_workers(n), images))


def _run_ranges(fn: Callable[[int, int], object], count: int, workers: int) -> None:
    workers = max(1, workers)
    cuts = [count * i // workers for i in range(workers + 1)]
    run_parts(lambda i: fn(cuts[i], cuts[i + 1]), workers, workers)


def team_args(*values: object) -> np.ndarray:
    """The int64 argument array of a team body (see `run_team_parts`)."""
    out = []
    for v in values:
        if isinstance(v, np.floating):
            out.append(int(np.float32(v).view(np.int32)))
        else:
            v = int(v)  # type: ignore[call-overload]
            out.append(v - 2**64 if v >= 2**63 else v)
    return np.array(out, np.int64)


def run_team(body: int, args: np.ndarray, threads: int) -> bool:
    """Run the compiled C function at address `body` (void body(int64 *args)) as an OpenMP
    parallel region of `threads` threads of torch's team, the GIL released meanwhile; the
    body shares out its own work (a counter in args). Returns False, running nothing, where
    one thread is enough, TEAM is off or `team()` is None: the caller runs its pool route."""
    fn = team() if threads > 1 and TEAM else None
    if fn is None:
        return False
    fn(body, args.ctypes.data, threads, 0)
    return True


def _split_fill(t: Tensor, generator: torch.Generator | None,
                fill: Callable[[Tensor, torch.Generator | None], object], part: int) -> Tensor:
    if t.device.type != "cpu" or t.numel() < 2 * part or not t.is_contiguous():
        fill(t, generator)
        return t
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    parts = t.view(-1).split(part)
    gens = [torch.Generator().manual_seed((base + _MIX * (i + 1)) % 2**63)
            for i in range(len(parts))]
    run_parts(lambda i: fill(parts[i], gens[i]), len(parts),
              min(torch.get_num_threads(), len(parts)))
    return t


def normal_(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """Fill t with standard normal values in place (see the module docstring)."""
    kernels = _kernels_for(t)
    if kernels is not None:
        return _kernel_normal_(kernels, t, generator, 1.0, False)
    return _split_fill(t, generator, lambda p, g: p.normal_(generator=g), PART)


def add_normal_(t: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """t += std * (standard normal values), in place: `t.add_(normal_(empty_like(t)),
    alpha=std)`, in one pass without the noise tensor where the compiled generator runs
    (the same values as `normal_` would draw, scaled in float32)."""
    kernels = _kernels_for(t)
    if kernels is not None:
        return _kernel_normal_(kernels, t, generator, std, True)
    return t.add_(normal_(torch.empty_like(t), generator), alpha=std)


def kernels():
    """The compiled kernel module `_rngkernel_jit`, or None where numba cannot run."""
    return jit.load("_rngkernel_jit")


def _kernels_for(t: Tensor):
    if (t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() >= KERNEL_MIN
            and t.is_contiguous() and not t.requires_grad):
        return kernels()
    return None


def draw_key(generator: torch.Generator | None) -> int:
    """One 64-bit key for the counter-based kernels, drawn from the caller's generator."""
    return int(torch.randint(-(2**63), 2**63 - 1, (1,), generator=generator,
                             dtype=torch.int64)) % 2**64


def _kernel_normal_(kernels, t: Tensor, generator: torch.Generator | None, std: float,
                    add: bool) -> Tensor:
    """Large float32 fills on the CPU: counter-based Box-Muller (`_rngkernel_jit`), keyed by
    one 64-bit draw of the caller's generator; blocks of 2048 values split over the threads
    (a value depends only on the key and its position), on torch's own OpenMP threads where
    it can (`run_team`), else on the pool."""
    key = draw_key(generator)
    flat = t.view(-1).numpy()
    scale = np.float32(std)
    if not run_team_parts(kernels.normals_team.address, flat.shape[0],
                          2 * kernels.BLOCK, t.data_ptr(), flat.shape[0], key, scale,
                          int(add)):
        seed = np.uint64(key)
        run_blocks(lambda b0, b1: kernels.normals_range_(flat, seed, b0, b1, scale, add),
                   flat.shape[0], 2 * kernels.BLOCK)
    # written through numpy: tell autograd, as an in-place torch op would (a tensor saved for
    # a backward and then noised makes that backward raise instead of using the new values)
    torch.autograd.graph.increment_version(t)
    return t


__all__ = ["PART", "add_normal_", "draw_key", "kernels", "normal_", "run_blocks", "run_parts",
           "run_team", "run_team_parts", "team", "thread_pool"]
