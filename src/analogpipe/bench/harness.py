"""A tiny benchmark framework: timing, result rows, a group registry, table and JSON output.

A *group* is a function `(quick: bool) -> list[Row]` registered under a name with
`@register("name")`; `run()` calls the selected groups in the order given (all of them: in
registration order). Each `Row` compares
a subject (e.g. the analog step) with a baseline (e.g. plain PyTorch) by their median times.
This module does not import torch at import time.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GroupFn = Callable[[bool], "list[Row]"]

_REGISTRY: dict[str, GroupFn] = {}


@dataclass
class Row:
    """One comparison: subject median vs baseline median (seconds); ratio = subject / baseline.

    target: the ratio the subject should stay at or below (None: informational row).
    """

    group: str
    case: str
    baseline_name: str
    baseline_s: float
    subject_name: str
    subject_s: float
    target: float | None = None
    notes: str = ""
    repeats: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # per-case extras (JSON only)
    ratio: float = field(init=False)

    def __post_init__(self) -> None:
        self.ratio = self.subject_s / self.baseline_s if self.baseline_s > 0 else math.inf

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["meets_target"] = self.meets_target
        return d


# --- registry -------------------------------------------------------------------------------
def register(group: str) -> Callable[[GroupFn], GroupFn]:
    """Decorator: register `fn(quick) -> list[Row]` as benchmark group `group`.

    Re-registering the same function (module reloaded) replaces it; a different function under a
    taken name is an error.
    """

    def deco(fn: GroupFn) -> GroupFn:
        old = _REGISTRY.get(group)
        if old is not None and (old.__module__, old.__qualname__) != (
                fn.__module__, fn.__qualname__):
            raise ValueError(f"benchmark group {group!r} is already registered by "
                             f"{old.__module__}.{old.__qualname__}")
        _REGISTRY[group] = fn
        return fn

    return deco


def groups() -> list[str]:
    """Names of the registered groups, in registration order."""
    return list(_REGISTRY)


def supports_device(group: str) -> bool:
    """Whether a group takes a `device` keyword (the others run on the CPU only)."""
    import inspect

    return "device" in inspect.signature(_REGISTRY[group]).parameters


def run(groups: list[str] | None = None, quick: bool = False,
        progress: Callable[[str], None] | None = None, device: str = "cpu") -> list[Row]:
    """Run the named groups (all if None) and return their rows; unknown names: KeyError.

    device: "cpu" or "cuda"; on "cuda" the default selection is the groups that support it,
    and naming a CPU-only group is a ValueError.
    """
    if device != "cpu" and groups is None:
        groups = [g for g in _REGISTRY if supports_device(g)]
    names = list(_REGISTRY) if groups is None else list(dict.fromkeys(groups))
    unknown = [g for g in names if g not in _REGISTRY]
    if unknown:
        raise KeyError(f"unknown benchmark group(s) {', '.join(unknown)}; "
                       f"available: {', '.join(_REGISTRY) or 'none'}")
    if device != "cpu":
        cpu_only = [g for g in names if not supports_device(g)]
        if cpu_only:
            raise ValueError(f"benchmark group(s) {', '.join(cpu_only)} run on the CPU only")
    rows: list[Row] = []
    for name in names:
        if progress is not None:
            progress(name)
        fn = _REGISTRY[name]
        rows.extend(fn(quick) if device == "cpu" else fn(quick, device=device))
    return rows


# --- timing ---------------------------------------------------------------------------------
def time_fn(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Call `fn` `warmup` times untimed, then `repeats` times; the wall times (perf_counter)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def time_pair(baseline: Callable[[], object], subject: Callable[[], object], warmup: int,
              repeats: int, budget_s: float | None = None) -> tuple[list[float], list[float]]:
    """Time two functions alternately (so load drift hits both): `repeats` samples of each.

    budget_s: stop early once the timed part has run this long (at least 3 samples each).
    """
    for _ in range(warmup):
        baseline()
        subject()
    b: list[float] = []
    s: list[float] = []
    start = time.perf_counter()
    for i in range(repeats):
        b += time_fn(baseline, 0, 1)
        s += time_fn(subject, 0, 1)
        if budget_s is not None and i >= 2 and time.perf_counter() - start > budget_s:
            break
    return b, s


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else math.nan


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n` (default: the CPUs this process may use)."""
    import torch

    n = n or _cores()
    torch.set_num_threads(n)
    return torch.get_num_threads()


# --- machine stamp --------------------------------------------------------------------------
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5, check=True)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5)
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_stamp() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import numpy
    import torch

    import analogpipe
    from analogpipe.runtime import malloc_setting

    return {
        "cpu": _cpu_model(),
        "cores": _cores(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "analogpipe": analogpipe.__version__,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
        "loadavg_1m": _loadavg(),
        "malloc": malloc_setting(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda_version": torch.version.cuda,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


# --- output ---------------------------------------------------------------------------------
def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return str(s)
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def format_table(rows: list[Row], machine: dict[str, Any] | None = None) -> str:
    """A plain-text table of the rows, headed by the machine stamp."""
    lines = []
    if machine and machine.get("cuda_device"):
        lines.append(f"cuda: {machine['cuda_device']} | CUDA {machine.get('cuda_version')}")
    if machine:
        lines.append(f"machine: {machine.get('cpu')} | cores {machine.get('cores')} | "
                     f"torch threads {machine.get('torch_threads')} | load(1m) "
                     f"{machine.get('loadavg_1m')} | malloc: {machine.get('malloc')}")
        lines.append(f"python {machine.get('python')} | torch {machine.get('torch')} | numpy "
                     f"{machine.get('numpy')} | analogpipe {machine.get('analogpipe')} "
                     f"({machine.get('git_commit')}) | {machine.get('date')}")
    header = ["group", "case", "baseline", "subject", "ratio", "target", "ok"]
    body = []
    for r in rows:
        ok = {None: "", True: "yes", False: "NO"}[r.meets_target]
        body.append([r.group, r.case, f"{r.baseline_name} {_fmt_s(r.baseline_s)}",
                     f"{r.subject_name} {_fmt_s(r.subject_s)}", f"{r.ratio:.2f}x",
                     "" if r.target is None else f"<= {r.target:g}x", ok])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    notes: dict[str, None] = {}
    for g in dict.fromkeys(r.group for r in rows):
        texts = [r for r in rows if r.group == g and r.notes]
        if len({r.notes for r in texts}) == 1:  # one note for the whole group
            notes[f"[{g}] {texts[0].notes}"] = None
        else:
            notes.update({f"[{g}] {r.case}: {r.notes}": None for r in texts})
    if notes:
        lines.append("notes:")
        lines += [f"  {n}" for n in notes]
    return "\n".join(lines)


def write_json(path: str | os.PathLike[str], machine: dict[str, Any], rows: list[Row]) -> None:
    """Write {"machine": ..., "rows": [...]} atomically (temp file in the same folder, replace)."""
    path = Path(os.path.abspath(path))  # "a/../x.json" makes no folder a
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "rows": [r.to_dict() for r in rows]}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600; a plain file gets 0644
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, allow_nan=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
