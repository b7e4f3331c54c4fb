"""Start pipeline workers: `launch_local` (spawned processes on 127.0.0.1) and torchrun.

Why a launcher of our own: a pipeline rank that dies leaves its peers blocked in a receive
(up to the process-group timeout), and `torch.multiprocessing.spawn` reports only the first
exit it happens to see. `launch_local` monitors every child (result pipe + process sentinel),
and on the first failure waits a short grace period, picks the *root cause* (an exception or
a signal, preferred over the "connection closed by peer" errors it provokes in the other
ranks), terminates the rest (SIGTERM, then SIGKILL), reaps every child and raises
`WorkerFailed` naming the rank and the cause. Children also exit on their own if the parent
disappears. Only 127.0.0.1 is used.

Workers are plain functions `worker(rank, world_size, args) -> result`, importable by name
(module level), since the start method is "spawn". Results travel back pickled by value.
"""

from __future__ import annotations

import datetime
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as _mp_wait
from typing import Any

__all__ = ["WorkerFailed", "free_port", "init_from_torchrun", "launch_local"]

Worker = Callable[[int, int, Any], Any]

# errors a rank reports *because* another rank died: never the root cause if there is another
_SECONDARY = re.compile(
    r"connection closed by peer|connection reset|broken pipe|econnreset|epipe|"
    r"socket timeout|timed out|timeout|connection refused|terminated by the launcher|"
    r"read error|recv.*closed|communicator was aborted", re.IGNORECASE)


class WorkerFailed(RuntimeError):
    """A pipeline worker raised, was killed or timed out; the others were ended.

    rank: the rank held to be the root cause; cause: one line; details: its traceback (or
    exit status); others: {rank: one line} for the other ranks that failed; pids: the pids of
    every child (all reaped when this is raised); cleanup_s: seconds from the launcher noticing
    the first failure until every child was ended and reaped.
    """

    def __init__(self, rank: int, cause: str, details: str = "",
                 others: dict[int, str] | None = None, pids: list[int] | None = None,
                 cleanup_s: float = 0.0) -> None:
        self.rank, self.cause, self.details = rank, cause, details
        self.cleanup_s = cleanup_s
        self.others = dict(others or {})
        self.pids = list(pids or [])
        msg = f"pipeline worker rank {rank} failed: {cause}"
        if details and details.strip() != cause.strip():
            msg += f"\n--- rank {rank} ---\n{details.rstrip()}"
        if self.others:
            msg += "\nother ranks: " + "; ".join(f"rank {r}: {c}"
                                                 for r, c in sorted(self.others.items()))
        super().__init__(msg)


@dataclass
class _Failure:
    rank: int
    when: float  # time.time() of the failure (child clock for exceptions)
    cause: str
    details: str
    secondary: bool


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _default_threads(world_size: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // world_size)


# --- child side -----------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    """Exit if the launcher dies (re-parenting changes our ppid), so no orphan lingers."""

    def loop() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=loop, name="analogpipe-parent-watch", daemon=True).start()


def _child(rank: int, world_size: int, worker: Worker, args: Any, port: int, conn: Any,
           threads: int, op_timeout_s: float, parent_pid: int) -> None:
    _watch_parent(parent_pid)
    code = 0
    try:
        import torch
        import torch.distributed as dist

        from analogpipe.pipeline.dist import _prefer_loopback_for_local_runs

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                          LOCAL_WORLD_SIZE=str(world_size))
        _prefer_loopback_for_local_runs()
        torch.set_num_threads(threads)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=op_timeout_s))
        result = worker(rank, world_size, args)
        payload = pickle.dumps(("ok", rank, result))
    except BaseException as exc:  # noqa: BLE001 - report everything, including SystemExit
        code = 1
        cause = f"{type(exc).__name__}: {exc}".strip()
        payload = pickle.dumps(("error", rank, time.time(), cause, traceback.format_exc()))
    try:
        conn.send_bytes(payload)
    except Exception:  # noqa: BLE001 - e.g. the parent already gave up
        code = code or 1
    try:
        conn.close()
    except OSError:
        pass
    if code == 0:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the result is delivered already
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: gloo threads must not hold the exit


# --- parent side ----------------------------------------------------------------------------
def launch_local(worker: Worker, world_size: int, args: Any = None, *, timeout_s: float = 120,
                 port: int | None = None, op_timeout_s: float = 30.0,
                 threads_per_worker: int | None = None, grace_s: float = 2.0) -> list[Any]:
    """Run `worker(rank, world_size, args)` in `world_size` spawned processes; gloo on 127.0.0.1.

    Returns every rank's result (index = rank). Each child gets torch threads
    `threads_per_worker` (default: cores // world_size, so ranks do not oversubscribe the CPU)
    and a process group with `op_timeout_s` on every blocking operation. If a worker raises,
    is killed or the whole job exceeds `timeout_s`, the remaining workers are terminated and
    reaped and `WorkerFailed` names the responsible rank and its cause.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size} is invalid: use an integer >= 1")
    if timeout_s <= 0 or op_timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s}, op_timeout_s={op_timeout_s}: both must be > 0")
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port() if port is None else int(port)
    threads = threads_per_worker or _default_threads(world_size)
    procs: list[Any] = []
    readers: list[Any] = []
    results: dict[int, Any] = {}
    failures: dict[int, _Failure] = {}
    reader_rank: dict[Any, int] = {}
    pids: list[int] = []
    first_failure: float | None = None
    try:
        for rank in range(world_size):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, name=f"analogpipe-rank{rank}",
                            args=(rank, world_size, worker, args, port, w, threads,
                                  op_timeout_s, os.getpid()))
            p.start()
            w.close()
            procs.append(p)
            pids.append(p.pid)
            readers.append(r)
            reader_rank[r] = rank
        deadline = time.monotonic() + timeout_s
        open_readers = set(readers)
        exited: set[int] = set()

        def read(r: Any) -> None:
            rank = reader_rank[r]
            try:
                msg = pickle.loads(r.recv_bytes())
            except (EOFError, OSError):
                open_readers.discard(r)
                return
            except Exception as exc:  # noqa: BLE001 - unpicklable result
                open_readers.discard(r)
                failures[rank] = _Failure(rank, time.time(), f"its result could not be read "
                                          f"back: {type(exc).__name__}: {exc}", "", False)
                return
            open_readers.discard(r)
            if msg[0] == "ok":
                results[rank] = msg[2]
            else:
                _, _, when, cause, tb = msg
                failures[rank] = _Failure(rank, when, cause, tb,
                                          bool(_SECONDARY.search(cause)))

        while True:
            now = time.monotonic()
            if len(results) == world_size:
                break
            if first_failure is not None and (now - first_failure >= grace_s
                                              or len(exited) == world_size):
                break
            if now >= deadline:
                first_failure = now if first_failure is None else first_failure
                running = [i for i in range(world_size) if i not in exited]
                for i in running:
                    if i not in failures:
                        failures[i] = _Failure(
                            i, time.time(), f"timed out: still running after {timeout_s:g} s "
                            "(launch_local timeout_s)", "", True)
                break
            sentinels = {procs[i].sentinel: i for i in range(world_size) if i not in exited}
            waitables = list(open_readers) + list(sentinels)
            limit = deadline - now
            if first_failure is not None:
                limit = min(limit, first_failure + grace_s - now)
            ready = _mp_wait(waitables, timeout=max(0.0, min(limit, 1.0)))
            for obj in ready:
                if obj in reader_rank and obj in open_readers:
                    read(obj)
            for obj in ready:
                if obj in sentinels:
                    i = sentinels[obj]
                    procs[i].join()
                    exited.add(i)
                    r = readers[i]
                    while r in open_readers and r.poll():  # a message sent just before exit
                        read(r)
                    open_readers.discard(r)
                    if i not in results and i not in failures:
                        code = procs[i].exitcode
                        if code is not None and code < 0:
                            cause = f"killed by signal {-code} ({_signal_name(-code)})"
                        else:
                            cause = f"exited with code {code} without returning a result"
                        failures[i] = _Failure(i, time.time(), cause, "", False)
            if failures and first_failure is None:
                first_failure = time.monotonic()
    finally:
        terminate_processes(procs)
        for r in readers:
            r.close()

    if len(results) == world_size and not failures:
        return [results[i] for i in range(world_size)]
    cleanup_s = time.monotonic() - first_failure if first_failure is not None else 0.0
    if not failures:  # pragma: no cover - loop exits only with all results or a failure
        raise WorkerFailed(-1, "unknown failure", pids=pids, cleanup_s=cleanup_s)
    root = min(failures.values(), key=lambda f: (f.secondary, f.when, f.rank))
    others = {f.rank: f.cause for f in failures.values() if f.rank != root.rank}
    raise WorkerFailed(root.rank, root.cause, root.details, others, pids, cleanup_s)


def terminate_processes(procs: list[Any], grace_s: float = 3.0, close: bool = True) -> None:
    """SIGTERM the living children, SIGKILL what is left after `grace_s`, reap all (and
    release their resources with `close`)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + grace_s
    for p in procs:
        p.join(timeout=max(0.0, end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=5.0)
    for p in procs:
        if close and p.exitcode is not None:
            p.close()


# --- torchrun ---------------------------------------------------------------------------------
def init_from_torchrun(device: str | None = None, timeout_s: float = 30.0) -> tuple[int, int, int]:
    """Initialise the process group under torchrun; returns (rank, world_size, local_rank).

    gloo for CPU stages; nccl when `device` is "cuda" (or None and CUDA is available), after
    selecting GPU LOCAL_RANK. Reads RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun).
    """
    import torch

    from analogpipe.pipeline.dist import init_process_group_from_env

    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k not in os.environ]
    if missing:
        raise RuntimeError(f"init_from_torchrun: {', '.join(missing)} not set; start with "
                           "`torchrun --nproc-per-node=M ...`")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"rank {rank}: device={device!r} but CUDA is not available")
        torch.cuda.set_device(local)
    init_process_group_from_env("nccl" if use_cuda else "gloo", timeout_s=timeout_s)
    return rank, world, local
