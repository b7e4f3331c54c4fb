"""Loading the numba-compiled CPU kernels (`_pulsekernel_jit`: pulse trains; `_rngkernel_jit`:
output noise).

numba is imported on the first use of a kernel, not with analogpipe; the kernels are compiled
once and cached on disk by numba (about two seconds the first time). Without numba, or when a
kernel cannot be built, `load` returns None (with a RuntimeWarning in the second case) and the
callers run their torch route: same physics, slower.

For developers: numba keys each cached kernel by the file that defines it, so after editing
only a helper module the kernels use (`_splitmix_jit.py`, `_team_jit.py`), delete the
`__pycache__/*.nbi` / `*.nbc` files of `analogpipe/tiles` (or the NUMBA_CACHE_DIR folder):
otherwise the old compiled code keeps running.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import tempfile
import warnings
from types import ModuleType


@functools.cache
def load(name: str) -> ModuleType | None:
    """The kernel module `analogpipe.tiles.<name>` with its main kernel compiled (its
    `warm_up()`), or None where it cannot run.

    Where numba finds no writable cache location, the kernels are cached in a fresh temporary
    folder for this process instead (compiled again by the next one): `NUMBA_CACHE_DIR` is set
    to it for the rest of the process (and its children), with a RuntimeWarning.
    """
    module = f"analogpipe.tiles.{name}"
    try:
        return _compiled(module)
    except ImportError:
        return None
    except Exception as err:  # noqa: BLE001 - any build failure: fall back, say why
        if "cannot cache" not in str(err):
            return _give_up(name, err)
        first = err
    sys.modules.pop(module, None)
    import numba

    folder = tempfile.mkdtemp(prefix="analogpipe-numba-")
    os.environ["NUMBA_CACHE_DIR"] = folder
    numba.config.reload_config()
    try:
        kernels = _compiled(module)
    except Exception as err:  # noqa: BLE001
        return _give_up(name, err)
    warnings.warn(f"analogpipe: numba cannot cache the CPU kernels in {name} ({first}); "
                  f"they are compiled for this process and cached in {folder} (set "
                  "NUMBA_CACHE_DIR to a writable folder to keep them)", RuntimeWarning,
                  stacklevel=2)
    return kernels


def _compiled(module: str) -> ModuleType:
    kernels = importlib.import_module(module)
    kernels.warm_up()
    return kernels


def _give_up(name: str, err: Exception) -> None:
    warnings.warn(f"analogpipe: the CPU kernels in {name} could not be built ({err}); the "
                  "slower torch route runs instead", RuntimeWarning, stacklevel=3)
    return None


__all__ = ["load"]
