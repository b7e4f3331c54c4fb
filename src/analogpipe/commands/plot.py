"""`analogpipe plot RUN_DIR...`: loss and accuracy of training runs against epoch and cycles.

Reads each run's metrics.jsonl (written by `analogpipe train` or `reproduce`) and draws one
PNG with four panels: train / test loss and test accuracy, against epoch and against the
cycle-model clock. Torch-free.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from analogpipe.commands._files import output_file_problem


def add_parser(p: argparse.ArgumentParser) -> None:
    """Flags of `analogpipe plot`."""
    p.description = ("Draw train / test loss and test accuracy of one or several runs against "
                     "epoch and against clock cycles into one PNG.")
    p.epilog = ("example:\n  analogpipe plot runs/ap runs/sp --png curves.png\n")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders holding metrics.jsonl (one or more)")
    p.add_argument("--png", default="plot.png", metavar="FILE",
                   help="the PNG to write, a .png path")
    p.add_argument("--labels", default=None, metavar="A,B",
                   help="comma-separated legend labels, one per run (default: folder names)")
    p.add_argument("--title", default=None, help="figure title (default: none)")


def _fail(msg: str) -> int:
    print(f"analogpipe plot: error: {msg}", file=sys.stderr)
    return 2


def read_metrics(run: str) -> list[dict[str, Any]]:
    """The epochs of a run; ValueError naming the folder / file if there are none."""
    d = Path(run)
    f = d / "metrics.jsonl"
    if not d.is_dir():
        raise ValueError(f"{run}: no such run folder")
    if not f.is_file():
        raise ValueError(f"{run}: no metrics.jsonl in this folder (is it a run folder?)")
    try:
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    except ValueError as exc:
        raise ValueError(f"{f}: not valid JSON lines ({exc})") from None
    if not rows:
        raise ValueError(f"{f}: no finished epoch yet")
    missing = [k for k in ("epoch", "cycles", "train_loss", "test_loss", "test_acc")
               if k not in rows[0]]
    if missing:
        raise ValueError(f"{f}: lacks {', '.join(missing)}; not written by analogpipe train")
    return rows


def draw(runs: dict[str, list[dict[str, Any]]], title: str | None = None) -> bytes:
    """The four-panel figure as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for i, (label, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for col, xkey in enumerate(("epoch", "cycles")):
            x = [r[xkey] for r in rows]
            ax = axes[0, col]
            ax.plot(x, [r["train_loss"] for r in rows], color=color, ls="--", marker=".",
                    label=f"{label} (train)")
            ax.plot(x, [r["test_loss"] for r in rows], color=color, marker="o", ms=3,
                    label=f"{label} (test)")
            axes[1, col].plot(x, [r["test_acc"] for r in rows], color=color, marker="o", ms=3,
                              label=label)
    from matplotlib.ticker import MaxNLocator

    for row in (0, 1):
        axes[row, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    for col, xlabel in enumerate(("epoch", "clock cycles (cycle model)")):
        axes[0, col].set_ylabel("loss")
        axes[1, col].set_ylabel("test accuracy")
        for row in (0, 1):
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(args: argparse.Namespace) -> int:
    problem = output_file_problem(args.png, "--png", ".png")
    if problem:
        return _fail(problem)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels is not None and len(labels) != len(args.runs):
        return _fail(f"--labels gives {len(labels)} labels for {len(args.runs)} runs: give one "
                     "per run")
    runs: dict[str, list[dict[str, Any]]] = {}
    for i, run in enumerate(args.runs):
        try:
            rows = read_metrics(run)
        except ValueError as exc:
            return _fail(str(exc))
        label = labels[i] if labels else (Path(run).resolve().name or run)
        while label in runs:
            label += "'"
        runs[label] = rows
    data = draw(runs, args.title)
    out = Path(args.png)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {out}: {len(runs)} run(s), loss and accuracy vs epoch and vs cycles")
    return 0
