"""Loading the compiled CPU kernels where numba cannot cache them next to the source."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import analogpipe

SNIPPET = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from analogpipe.tiles import jit
    kernels = jit.load("_pulsekernel_jit")
print("loaded", kernels is not None)
print("warnings", [str(w.message) for w in caught])
"""


def test_kernels_compile_into_a_temporary_cache_when_no_location_is_writable(tmp_path):
    """A copy of the package whose `tiles/__pycache__` cannot be a folder (a plain file there)
    and no usable home cache: the kernels still load, cached in a temporary folder, and a
    RuntimeWarning says so (instead of a traceback or a silent slow route)."""
    src = Path(analogpipe.__file__).parent
    pkg = tmp_path / "analogpipe"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "tiles" / "__pycache__").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(tmp_path), HOME="/proc/nonexistent",
               XDG_CACHE_HOME="/proc/nonexistent", PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "loaded True" in out.stdout, out.stdout
    assert "compiled for this process" in out.stdout and "NUMBA_CACHE_DIR" in out.stdout
