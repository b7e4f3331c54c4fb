"""Process-level settings for speed that do not change any result.

`keep_freed_memory()`: glibc returns large freed blocks (over 128 KiB-32 MiB) to the kernel
and maps fresh, zeroed pages for the next allocation, so every large temporary of a step (the
conv patches, the periphery's passes, the pulse bytes) pays page faults on first touch: about a
third of an elementwise pass over a tensor of tens of MB. Serving large blocks from the heap
and never trimming it keeps them in the process for reuse, as PyTorch's CUDA caching allocator
does. The cost is memory: the resident size stays at the heap's high-water mark between steps
instead of dropping, and heap fragmentation can put that mark above the step's true peak (a
third above it for two pulsed 64-channel convs at batch 128: 2.9 GB against 2.2 GB). The same
remedy as linking jemalloc or tcmalloc, which PyTorch's CPU performance guide suggests; it is
applied by the `analogpipe` command and is opt-in for library use.
`ANALOGPIPE_MALLOC=system` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_state = {"applied": False}


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (see the module docstring).

    Returns True if the setting is in effect (glibc on Linux, not opted out with
    ANALOGPIPE_MALLOC=system), False otherwise; never raises. Idempotent.
    """
    if _state["applied"]:
        return True
    if os.environ.get("ANALOGPIPE_MALLOC", "").lower() == "system" or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _state["applied"] = ok
    return ok


def malloc_setting() -> str:
    """How this process allocates (stamped on benchmark results)."""
    return "glibc, freed memory kept (analogpipe.runtime)" if _state["applied"] else "default"


__all__ = ["keep_freed_memory", "malloc_setting"]
