"""Run a pool of independent training runs in worker processes, resumably.

Each run trains into ``root/runs/<name>-<key>/`` with ``analogpipe.train.train``, where
``key`` is a hash of its full resolved settings (every TrainConfig field and the init): runs
with other settings never share a folder, so a call with other settings (``--epochs 2`` after
10) trains new runs beside the old ones and never touches them. When a run ends, a
``reproduce.json`` beside its metrics records the settings, status and times; a run whose
record matches its settings exactly is reused, and a run cut mid-way continues from its
checkpoint. Workers use one torch thread each: tiny matmuls are far slower with two threads
when the other core is busy.

Stopping: Ctrl-C (SIGINT) or SIGTERM to the parent ends every worker within seconds (they
ignore SIGINT themselves, the parent terminates them, and each exits on its own if the parent
disappears). Checkpoints are written atomically, so finished runs and the last epoch of cut
runs are kept, and the next call resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analogpipe.experiments.plan import RunSpec
from analogpipe.pipeline.launch import terminate_processes
from analogpipe.train.config import TrainConfig

STATUS_FILE = "reproduce.json"


@dataclass
class RunResult:
    name: str
    status: str  # "done", "diverged", "skipped" (already complete), "failed"
    wall_s: float
    cpu_s: float
    final_acc: float
    message: str = ""


def _canonical(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def run_key(spec: RunSpec) -> str:
    """Folder name of a run: its name plus a hash of its full resolved settings."""
    blob = json.dumps({"config": _canonical(spec.config), "init": spec.init}, sort_keys=True)
    return f"{spec.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def run_dir(root: str | Path, spec: RunSpec | str) -> Path:
    """Folder of a run: ``root/runs/<name>-<settings hash>`` for a RunSpec (a plain string is
    taken as the folder name itself)."""
    return Path(root) / "runs" / (run_key(spec) if isinstance(spec, RunSpec) else spec)


def read_history(path: Path) -> list[dict[str, Any]]:
    f = path / "metrics.jsonl"
    if not f.exists():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def completed(spec: RunSpec, root: str | Path) -> dict[str, Any] | None:
    """The run's status record if it finished (or diverged) with exactly these settings."""
    f = run_dir(root, spec) / STATUS_FILE
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("config") != _canonical(spec.config) or rec.get("init") != spec.init:
        return None
    if rec.get("status") not in ("done", "diverged"):
        return None
    return rec


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _quiet(_: str) -> None:
    pass


def execute(spec: RunSpec, root: str) -> RunResult:
    """Train one run (in a worker); never raises for a diverged or failed run."""
    import torch

    from analogpipe.errors import ConfigError
    from analogpipe.train import TrainingDiverged, train

    torch.set_num_threads(1)
    rec = completed(spec, root)
    if rec is not None:
        return RunResult(spec.name, "skipped", 0.0, 0.0, float(rec.get("final_acc", math.nan)))
    out = run_dir(root, spec)
    t0, c0 = time.perf_counter(), time.process_time()
    status, message = "done", ""
    try:
        resumed = False
        if (out / "checkpoint.pt").exists():
            try:
                train(spec.config, out, resume=True, progress=False, log=_quiet)
                resumed = True
            except ConfigError:
                resumed = False  # an unreadable checkpoint: start this run again
        if not resumed:
            # the folder is keyed by these exact settings: whatever is in it (a run cut
            # before its first checkpoint) is this run's own, so it may be replaced
            train(spec.config, out, overwrite=True, progress=False, log=_quiet)
    except TrainingDiverged as exc:
        status, message = "diverged", str(exc).split(";")[0]
    except Exception as exc:  # one failed run must not stop the others
        status, message = "failed", f"{type(exc).__name__}: {exc}"
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = read_history(out)
    final = float(hist[-1]["test_acc"]) if hist else math.nan
    if status != "failed":
        out.mkdir(parents=True, exist_ok=True)
        _atomic_json(out / STATUS_FILE, {
            "name": spec.name, "config": _canonical(spec.config), "init": spec.init,
            "experiments": spec.groups, "status": status, "message": message,
            "wall_s": wall, "cpu_s": cpu, "final_acc": final, "epochs_done": len(hist)})
    return RunResult(spec.name, status, wall, cpu, final, message)


def _cost(spec: RunSpec) -> float:
    """Rough relative cost, to start the longest runs first (better packing on few cores)."""
    c = spec.config
    return c.epochs * (0.2 if c.scheme == "digital" else 1.0) * (1 + 0.05 * c.stages)


def _worker_init(parent_pid: int) -> None:
    """In a pool worker: leave Ctrl-C to the parent (which ends the workers), and exit if the
    parent disappears, so no worker outlives an interrupted reproduce."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="analogpipe-parent-watch", daemon=True).start()


def _stop_pool(pool: ProcessPoolExecutor, grace_s: float = 3.0) -> None:
    """End every worker now: SIGTERM, then SIGKILL after `grace_s`; reap them all."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    if not procs:  # fallback if the executor's internals change
        procs = multiprocessing.active_children()
    pool.shutdown(wait=False, cancel_futures=True)
    terminate_processes(procs, grace_s, close=False)  # the pool still owns them


def discard_runs(specs: Iterable[RunSpec], root: str | Path) -> int:
    """`reproduce --overwrite`: delete the folders of these runs (same settings); their count."""
    n = 0
    for s in specs:
        d = run_dir(root, s)
        if d.is_dir():
            shutil.rmtree(d)
            n += 1
    return n


def run_all(specs: Iterable[RunSpec], root: str | Path, workers: int,
            log: Callable[[str], None] = print,
            while_waiting: Callable[[], Any] | None = None) -> tuple[list[RunResult], Any]:
    """Run every spec (skipping complete ones) on `workers` processes; one line per run.

    `while_waiting` runs in this process once the runs are submitted (a small side job such
    as the convergence check); its result is returned with the runs' results. A
    KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the CLI) ends every worker
    before it propagates; finished runs stay complete and cut runs keep their checkpoints.
    """
    specs = sorted(specs, key=_cost, reverse=True)
    root = str(root)
    total = len(specs)
    results: list[RunResult] = []
    t0 = time.perf_counter()

    def report(r: RunResult) -> None:
        results.append(r)
        acc = "-" if math.isnan(r.final_acc) else f"{r.final_acc:.3f}"
        extra = f"  ({r.message})" if r.message else ""
        log(f"[{len(results):>{len(str(total))}}/{total}] {r.name:<34} {r.status:<8} "
            f"acc {acc}  {r.wall_s:5.1f}s (cpu {r.cpu_s:5.1f}s)  "
            f"elapsed {time.perf_counter() - t0:6.1f}s{extra}")

    todo = []
    for s in specs:
        rec = completed(s, root)
        if rec is not None:
            report(RunResult(s.name, "skipped", 0.0, 0.0, float(rec.get("final_acc", math.nan))))
        else:
            todo.append(s)
    if workers <= 1 or len(todo) <= 1:
        import torch

        threads = torch.get_num_threads()
        try:
            for s in todo:
                report(execute(s, root))
        finally:
            torch.set_num_threads(threads)
        return results, while_waiting() if while_waiting is not None else None
    ctx = multiprocessing.get_context("spawn")  # no fork after torch has started threads
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                               initializer=_worker_init, initargs=(os.getpid(),))
    try:
        pending: dict[Future, RunSpec] = {pool.submit(execute, s, root): s for s in todo}
        side = while_waiting() if while_waiting is not None else None
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                s = pending.pop(fut)
                try:
                    report(fut.result())
                except Exception as exc:  # a crashed worker
                    report(RunResult(s.name, "failed", 0.0, 0.0, math.nan,
                                     f"{type(exc).__name__}: {exc}"))
    except BaseException:  # Ctrl-C / SIGTERM: no worker may go on training
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)
    sys.stdout.flush()
    return results, side
