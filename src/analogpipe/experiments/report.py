"""Build a reproduction's outputs from its finished runs: results.csv, measurements,
analysis.json, figures and report.md (each written atomically).

Order: results (run folders) -> measurements (groups' in-process work, cached in
measurements.json) -> analysis (per group, statistics) -> analysis.json -> figures and
report.md, which read only the analysis data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from analogpipe.experiments.analysis import atomic_write, load_results, results_csv
from analogpipe.experiments.plan import RunSpec, Settings, groups
from analogpipe.experiments.render import render


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def measure(specs: list[RunSpec], s: Settings, out: Path, log: Any = print,
            independent_only: bool = False) -> dict[str, Any]:
    """Each group's measurement (cached by the settings in measurements.json); with
    `independent_only`, only those that read no run (they can go while the runs train)."""
    import time

    f = out / "measurements.json"
    key = json.dumps(s.to_dict(), sort_keys=True, default=str)
    try:
        cached = json.loads(f.read_text())
        if cached.get("settings") != key:
            cached = {}
    except (OSError, ValueError):
        cached = {}
    res = None if independent_only else load_results(specs, out)
    extras = dict(cached.get("extras", {}))
    for g in groups(s):
        if g.measure is None or g.key in extras or (independent_only and g.measure_needs_runs):
            continue
        t = time.perf_counter()
        extras[g.key] = g.measure(res, s, out)
        log(f"measured {g.key}: {time.perf_counter() - t:.1f}s")
        atomic_write(f, json.dumps({"settings": key, "extras": extras}, default=str) + "\n")
    return extras


def write_report(out: str | Path, specs: list[RunSpec], s: Settings, header: dict[str, Any],
                 extras: dict[str, Any]) -> dict[str, Any]:
    """results.csv, analysis.json, the figures and report.md into `out`."""
    out = Path(out)
    res = load_results(specs, out)
    atomic_write(out / "results.csv", results_csv(res))
    gs = groups(s)
    analyses = {g.key: g.analyse(res, s, extras) for g in gs}
    atomic_write(out / "analysis.json", json.dumps(_json_safe(
        {"settings": s.to_dict(), "header": header, "analyses": analyses}), indent=1,
        default=str) + "\n")
    # figures and text read the analysis back from the file: nothing else
    data = json.loads((out / "analysis.json").read_text(), parse_constant=float)
    data = _restore(data)
    figures = {g.key: (g.figures(data["analyses"][g.key], s, out) if g.figures else {})
               for g in gs}
    atomic_write(out / "report.md", render(header, s, gs, data["analyses"], figures))
    return {"analyses": data["analyses"], "figures": figures}


def _restore(obj: Any) -> Any:
    """None -> NaN and "inf" -> inf (the inverse of _json_safe for numbers)."""
    if obj is None:
        return math.nan
    if obj == "inf":
        return math.inf
    if obj == "-inf":
        return -math.inf
    if isinstance(obj, dict):
        return {k: _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    return obj
