"""Loading the numba-compiled CPU kernels (`_pulsekernel_jit`, `_iokernel_jit`).

numba is imported on the first use of a kernel, not with analogpipe; the kernels are compiled
once and cached on disk by numba (about two seconds the first time). Without numba, or when a
kernel cannot be built (for example no writable cache location), `load` returns None (with a
RuntimeWarning in the second case) and the callers run their torch route: same physics,
slower.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType


@functools.cache
def load(name: str) -> ModuleType | None:
    """The kernel module `analogpipe.tiles.<name>`, or None where it cannot run."""
    try:
        return importlib.import_module(f"analogpipe.tiles.{name}")
    except ImportError:
        return None
    except Exception as err:  # noqa: BLE001 - any build failure: fall back, say why
        warnings.warn(f"analogpipe: the CPU kernels in {name} could not be built ({err}); "
                      "the slower torch route runs instead", RuntimeWarning, stacklevel=2)
        return None


__all__ = ["load"]
