"""Reading finished runs and turning them into the numbers the verdicts use.

Nothing here trains or draws: ``load_results`` reads each run folder (``reproduce.json``,
``metrics.jsonl``), ``results_csv`` flattens them into ``results.csv`` (one row per run and
evaluated epoch), and the helpers compute per-seed quantities (final accuracy, samples to a
target, saturation over training) that the groups of ``analogpipe.experiments.paper`` compare
with ``analogpipe.experiments.stats``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analogpipe.experiments.plan import RunSpec, Settings
from analogpipe.experiments.runner import read_history, run_dir


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and os.replace: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


@dataclass
class RunData:
    """One finished (or diverged / failed / missing) run."""

    name: str
    config: dict[str, Any]
    groups: list[str]
    status: str
    curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def complete(self) -> bool:
        return (self.status == "done" and bool(self.curve)
                and self.curve[-1]["epoch"] >= self.config["epochs"])


class Results:
    """The runs of a reproduction, selectable by their resolved settings."""

    def __init__(self, runs: list[RunData]) -> None:
        self.runs = runs

    def select(self, **fields: Any) -> dict[int, RunData]:
        """{seed: run} of the runs whose config has all of ``fields`` (e.g. scheme="ap")."""
        out: dict[int, RunData] = {}
        for r in self.runs:
            if all(r.config.get(k) == v for k, v in fields.items()):
                if r.seed in out:
                    raise RuntimeError(f"select({fields}) is ambiguous: {out[r.seed].name} and "
                                       f"{r.name}")
                out[r.seed] = r
        return out


def load_results(specs: list[RunSpec], root: str | Path) -> Results:
    runs = []
    for spec in specs:
        d = run_dir(root, spec)
        status = "missing"
        try:
            status = json.loads((d / "reproduce.json").read_text()).get("status", "missing")
        except (OSError, ValueError):
            pass
        cfg = json.loads(json.dumps(spec.config.to_dict(), default=str))
        runs.append(RunData(spec.name, cfg, list(spec.groups), status, read_history(d)))
    return Results(runs)


# ------------------------------------------------------------------------------ per run
def final_acc(run: RunData, chance: float) -> float:
    """Last epoch's test accuracy; a diverged or unfinished run counts as chance."""
    if not run.complete:
        return chance
    return float(run.curve[-1]["test_acc"])


def final_loss(run: RunData) -> float:
    """Last epoch's test loss; NaN for a diverged or unfinished run."""
    return float(run.curve[-1]["test_loss"]) if run.complete else math.nan


def samples_to_target(run: RunData, target: float, chance: float) -> float:
    """Training samples at which the test accuracy first reaches ``target``.

    Linear interpolation between consecutive end-of-epoch evaluations, starting from chance
    accuracy at 0 samples; NaN if never reached (or the run diverged).
    """
    prev = (0.0, chance)
    for r in run.curve:
        s, a = float(r["samples"]), float(r["test_acc"])
        if not math.isfinite(a):
            continue
        if a >= target:
            s0, a0 = prev
            frac = 1.0 if a <= a0 else min(max((target - a0) / (a - a0), 0.0), 1.0)
            return s0 + frac * (s - s0)
        prev = (s, a)
    return math.nan


def max_saturation(run: RunData) -> float:
    """max |W| / tau over training: the largest per-layer max over all end-of-epoch
    snapshots (the theory's W_max / tau); NaN without snapshots."""
    vals = [v["max"] for r in run.curve for v in (r.get("saturation") or {}).values()]
    return max(vals) if vals else math.nan


def per_seed(runs: dict[int, RunData], fn: Any) -> dict[int, float]:
    return {seed: float(fn(r)) for seed, r in sorted(runs.items())}


# ------------------------------------------------------------------------------ csv
RESULT_COLUMNS = (
    "run", "groups", "status", "scheme", "model", "stages", "microbatches",
    "micro_batch_size", "lr", "device_model", "tau", "omega", "seed", "partition_metric",
    "algorithm", "delay_compensation", "epoch", "samples", "cycles_balanced", "updates",
    "lr_epoch", "test_acc", "test_loss", "train_loss", "train_acc", "sat_max",
)


def results_csv(results: Results) -> str:
    """One row per run and evaluated epoch (a run without any epoch gets one empty row)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(RESULT_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in results.runs:
        c = r.config
        base = {"run": r.name, "groups": ";".join(r.groups), "status": r.status,
                **{k: c.get(k) for k in ("scheme", "model", "stages", "microbatches",
                                          "micro_batch_size", "lr", "device_model", "tau",
                                          "omega", "seed", "partition_metric",
                                          "algorithm", "delay_compensation")}}
        for h in r.curve or [{}]:
            sat = h.get("saturation") or {}
            w.writerow({**base, "epoch": h.get("epoch", 0), "samples": h.get("samples", 0),
                        "cycles_balanced": h.get("cycles"), "updates": h.get("updates"),
                        "lr_epoch": h.get("lr"), "test_acc": h.get("test_acc"),
                        "test_loss": h.get("test_loss"), "train_loss": h.get("train_loss"),
                        "train_acc": h.get("train_acc"),
                        "sat_max": max((v["max"] for v in sat.values()), default=None)})
    return buf.getvalue()


def settings_line(s: Settings) -> str:
    return (f"{s.dataset}, {s.epochs} epochs, lr {s.lr:g}, mini-batch "
            f"{s.microbatches} x {s.micro_batch_size}, n = {s.seeds} seeds")
