"""Gantt views of a ``Timeline``: Chrome trace JSON and a PNG (matplotlib, imported lazily).

Chrome trace (open in chrome://tracing or https://ui.perfetto.dev): one complete event
(``ph: "X"``) per action, ``pid`` 0, ``tid`` = stage, ``name`` = the compact action text.
Time unit: 1 cycle = 1000 trace microseconds (``US_PER_CYCLE``), so cycles read as
milliseconds in the viewer.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from analogpipe.pipeline.schedule import Kind
from analogpipe.timing.cycles import Timeline

__all__ = ["KIND_COLORS", "US_PER_CYCLE", "save_png", "save_trace", "to_chrome_trace"]

US_PER_CYCLE = 1000.0

KIND_COLORS = {
    Kind.FORWARD: "#4C72B0",
    Kind.BACKWARD: "#DD8452",
    Kind.UPDATE: "#C44E52",
    Kind.SEND_F: "#8C8C8C",
    Kind.RECV_F: "#8C8C8C",
    Kind.SEND_B: "#B0B0B0",
    Kind.RECV_B: "#B0B0B0",
}


def to_chrome_trace(timeline: Timeline) -> dict[str, Any]:
    """Chrome trace event dict: one "X" event per action, one named thread per stage."""
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 0, "tid": 0,
         "args": {"name": f"{timeline.schedule.scheme} pipeline"}},
    ]
    for s in range(timeline.schedule.num_stages):
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": s,
                       "args": {"name": f"stage {s}"}})
    for e in timeline.events:
        a = e.action
        events.append({
            "name": str(a),
            "cat": a.kind.value,
            "ph": "X",
            "pid": 0,
            "tid": a.stage,
            "ts": e.start * US_PER_CYCLE,
            "dur": (e.end - e.start) * US_PER_CYCLE,
            "args": {"microbatch": a.mb, "microbatches": list(a.mbs),
                     "start_cycle": e.start, "end_cycle": e.end},
        })
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"us_per_cycle": US_PER_CYCLE, **timeline.to_dict()}}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike, write) -> Path:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain file gets 0644
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_trace(timeline: Timeline, path: str | os.PathLike) -> Path:
    """Write ``to_chrome_trace(timeline)`` as JSON, atomically."""
    data = json.dumps(to_chrome_trace(timeline)).encode()
    return _atomic_write(path, lambda fh: fh.write(data))


def save_png(timeline: Timeline, path: str | os.PathLike, title: str | None = None) -> Path:
    """Gantt chart (rows = stages, bars coloured by kind), written atomically as PNG.

    Uses matplotlib's object API with the Agg canvas, so it never touches pyplot's global
    backend. Zero-time actions (updates with t_u = 0, messages) are drawn as thin ticks.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    sched = timeline.schedule
    M = sched.num_stages
    span = max(timeline.makespan, 1e-9)
    fig = Figure(figsize=(min(4 + 0.35 * span, 24), 1 + 0.5 * M))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    label_room = span / 60
    for e in timeline.events:
        a = e.action
        y = M - 1 - a.stage
        color = KIND_COLORS[a.kind]
        width = e.end - e.start
        if width > 0:
            ax.broken_barh([(e.start, width)], (y - 0.4, 0.8), facecolors=color,
                           edgecolors="white", linewidth=0.5)
            if width >= label_room * len(str(a.mb)):
                ax.text(e.start + width / 2, y, str(a.mb), ha="center", va="center",
                        fontsize=7, color="white")
        elif a.kind is Kind.UPDATE:
            ax.plot([e.start, e.start], [y - 0.45, y + 0.45], color=color, linewidth=1.2)
    ax.set_yticks(range(M), [f"stage {M - 1 - y}" for y in range(M)])
    ax.set_xlim(0, span)
    ax.set_ylim(-0.6, M - 0.4)
    ax.set_xlabel("cycles")
    ax.set_title(title or (f"{sched.scheme}: M={M}, K={sched.num_microbatches}, "
                           f"makespan {timeline.makespan:g}, density {timeline.density:.3f}"))
    kinds = [k for k in KIND_COLORS if any(e.action.kind is k for e in timeline.events)]
    ax.legend(handles=[Patch(color=KIND_COLORS[k], label=k.name.lower()) for k in kinds],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    return _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
