"""Runs a user cannot lose, through the command line in a subprocess (issue: data safety).

Every test starts `python -m analogpipe.cli` as a user would and checks exit codes, messages
and the bytes on disk. Sizes are tiny (192 digits samples, a 32-wide MLP).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TINY = ["--subset", "192", "--micro-batch-size", "16", "--microbatches", "2", "--model", "mlp",
        "--width", "32", "--no-progress"]


def cli(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analogpipe.cli", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(path: Path) -> dict[str, torch.Tensor]:
    ck = torch.load(path, weights_only=False)
    return {k: v for k, v in ck["model"].items() if isinstance(v, torch.Tensor)}


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a / "checkpoint.pt"), weights(b / "checkpoint.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in m.items() if k != "wall_s"} for m in ma]
    assert strip == [{k: v for k, v in m.items() if k != "wall_s"} for m in mb]


# ------------------------------------------------------------------------- never overwrite
def test_existing_run_is_byte_identical_after_a_refused_rerun(tmp_path):
    out = tmp_path / "run"
    first = cli("train", *TINY, "--epochs", "2", "--out", str(out))
    assert first.returncode == 0, first.stderr
    before = snapshot(out)
    assert set(before) == {"run.json", "metrics.jsonl", "checkpoint.pt"}
    again = cli("train", *TINY, "--epochs", "1", "--tau", "0.4", "--out", str(out))
    assert again.returncode == 2
    assert str(out) in again.stderr and "--resume" in again.stderr
    assert "--overwrite" in again.stderr
    assert snapshot(out) == before
    # --overwrite replaces it on request
    over = cli("train", *TINY, "--epochs", "1", "--out", str(out), "--overwrite")
    assert over.returncode == 0, over.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_to_a_longer_horizon_equals_the_straight_run(tmp_path):
    common = [*TINY, "--scheme", "ap", "--stages", "2", "--momentum", "0.5"]
    straight, short = tmp_path / "straight", tmp_path / "short"
    r = cli("train", *common, "--epochs", "3", "--lr-milestones", "2", "--out", str(straight))
    assert r.returncode == 0, r.stderr
    r = cli("train", *common, "--epochs", "1", "--out", str(short))
    assert r.returncode == 0, r.stderr
    # epoch 0 ran at lr 0.1 under both milestone lists, so the new milestones are accepted
    r = cli("train", *common, "--epochs", "3", "--lr-milestones", "2", "--out", str(short),
            "--resume")
    assert r.returncode == 0, r.stderr
    assert_same_run(straight, short)
    assert json.loads((short / "run.json").read_text())["resumed_at_epoch"] == 1


@pytest.mark.parametrize("change,flag", [
    (["--tau", "0.4"], "--tau"),
    (["--lr-milestones", "1"], "--lr-milestones"),  # would change the lr of epoch 1, done
    (["--epochs", "1"], "--epochs"),  # below the epochs already done
])
def test_resume_refuses_settings_that_change_what_already_ran(tmp_path, change, flag):
    out = tmp_path / "run"
    assert cli("train", *TINY, "--epochs", "2", "--out", str(out)).returncode == 0
    before = snapshot(out)
    r = cli("train", *TINY, "--epochs", "3", *change, "--out", str(out), "--resume")
    assert r.returncode == 2
    assert flag in r.stderr and "another --out" in r.stderr, r.stderr
    assert snapshot(out) == before


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.1)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_train_interrupted_exits_with_one_line_and_a_valid_checkpoint(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "analogpipe.cli", "train", *TINY,
                             "--epochs", "100000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"analogpipe train: interrupted ({sig.name})") and "--resume" in last
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert ck["epoch"] + 1 == done == len(ck["metrics"])
    assert not list(out.glob(".*"))  # no half-written temporary file
    # the next call continues it
    r = cli("train", *TINY, "--epochs", str(done + 1), "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == done + 1


# -------------------------------------------------------------------- file-system mistakes
def test_file_system_mistakes_exit_2_before_writing(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for out, needle in ((a_file, "is a file"), (a_file / "run", "is a file")):
        r = cli("train", *TINY, "--out", str(out))
        assert r.returncode == 2 and str(out) in r.stderr and needle in r.stderr, r.stderr
    assert a_file.read_text() == "not a folder"
    # a truncated checkpoint given to --resume
    run = tmp_path / "run"
    assert cli("train", *TINY, "--epochs", "1", "--out", str(run)).returncode == 0
    ck = run / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:200])
    before = snapshot(run)
    r = cli("train", *TINY, "--epochs", "2", "--out", str(run), "--resume")
    assert r.returncode == 2 and str(ck) in r.stderr and "corrupt" in r.stderr, r.stderr
    assert snapshot(run) == before
    # a folder that cannot be written (a read-only file system, even for root)
    r = cli("train", *TINY, "--out", "/proc/analogpipe-test-run")
    assert r.returncode == 2 and "/proc/analogpipe-test-run" in r.stderr, r.stderr
    r = cli("reproduce", "--quick", "--subset", "320", "--out", str(a_file))
    assert r.returncode == 2 and str(a_file) in r.stderr and "is a file" in r.stderr, r.stderr
    # --png: a folder, or not .png
    for cmd in (["schedule"], ["plot", str(run)]):
        for png, needle in ((tmp_path, "is a folder"), (tmp_path / "g.jpg", ".png")):
            r = cli(*cmd, "--png", str(png))
            assert r.returncode == 2 and str(png) in r.stderr and needle in r.stderr, r.stderr
    assert not (tmp_path / "g.jpg").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_unwritable_folder_exits_2(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    r = cli("train", *TINY, "--out", str(locked / "run"))
    assert r.returncode == 2 and "not writable" in r.stderr
    assert list(locked.iterdir()) == []


def test_settings_the_model_cannot_run_are_refused_before_writing(tmp_path):
    out = tmp_path / "bn"
    r = cli("train", "--subset", "64", "--model", "resnet10", "--width", "4",
            "--micro-batch-size", "1", "--no-progress", "--out", str(out))
    assert r.returncode == 2
    assert "micro_batch_size=1" in r.stderr and "BatchNorm" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("bits", ["25", "200", "2000"])
def test_converter_bits_beyond_float32_are_refused_before_writing(tmp_path, bits):
    """More than 24 bits: levels beyond float32 (an overflow at the first ADC, or a float
    overflow in the resolution itself); refused with the setting named, exit 2, nothing
    written."""
    out = tmp_path / "bits"
    r = cli("train", "--subset", "64", "--io-bits", bits, "--no-progress", "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert "io_bits" in r.stderr and "[2, 24]" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------ reproduce
REPRO = ["reproduce", "--quick", "--subset", "320", "--seeds", "1", "--taus", "0.8",
         "--stage-list", "1,2", "--convergence-steps", "40", "--workers", "2"]


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_reproduce_keys_runs_by_settings_and_sigint_ends_every_child(tmp_path):
    out = tmp_path / "repro"
    r = cli(*REPRO, "--epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "report.md" in r.stdout and " done " in r.stderr  # results on stdout, progress not
    runs_before = snapshot(out / "runs")
    n_runs = len(list((out / "runs").iterdir()))
    # other settings: new run folders beside the old ones; Ctrl-C ends every worker
    proc = subprocess.Popen([sys.executable, "-m", "analogpipe.cli", *REPRO, "--epochs",
                             "100000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 180
    while not list((out / "runs").glob("*/checkpoint.pt")) or \
            len(list((out / "runs").glob("*/checkpoint.pt"))) <= n_runs:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no run of the second call started"
        time.sleep(0.2)
    kids = _descendants(proc.pid)
    assert len(kids) >= 2  # the pool's workers
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    while any(_alive(k) for k in kids) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "workers outlived the interrupted reproduce"
    assert "interrupted (SIGINT)" in err and "Traceback" not in err
    # the first call's runs are untouched, and calling it again reuses every one of them
    assert {k: v for k, v in snapshot(out / "runs").items() if k in runs_before} == runs_before
    r = cli(*REPRO, "--epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(" skipped ") == n_runs and " done " not in r.stderr
    assert {k: v for k, v in snapshot(out / "runs").items() if k in runs_before} == runs_before
    # --overwrite trains this call's runs again from scratch (same settings, same results)
    r = cli(*REPRO, "--epochs", "1", "--overwrite", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(" done ") == n_runs and " skipped " not in r.stderr
    after = snapshot(out / "runs")
    for name, data in runs_before.items():
        if name.endswith("metrics.jsonl"):
            strip = [{k: v for k, v in json.loads(x).items() if k != "wall_s"}
                     for x in data.decode().splitlines()]
            assert strip == [{k: v for k, v in json.loads(x).items() if k != "wall_s"}
                             for x in after[name].decode().splitlines()], name


# --------------------------------------------------------------------- streams and modes
def test_streams_progress_unit_and_file_modes(tmp_path):
    out = tmp_path / "run"
    r = cli("train", *[a for a in TINY if a != "--no-progress"], "--epochs", "1",
            "--out", str(out), preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [r.stdout.strip()]  # one result line
    assert r.stdout.startswith(f"{out}: 1 epochs, test_acc ")
    assert "epoch 1: train_loss" in r.stderr and "micro-batches/s" in r.stderr
    png = tmp_path / "curves.png"
    r = cli("plot", str(out), "--png", str(png), preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gantt = tmp_path / "g.png"
    r = cli("schedule", "--png", str(gantt), "--trace", str(tmp_path / "t.json"),
            preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    for f in [*out.iterdir(), png, gantt, tmp_path / "t.json"]:
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_signals_are_held_while_a_checkpoint_and_its_metrics_are_written():
    """The pair of files of an epoch is written with SIGINT / SIGTERM held: a signal that
    arrives inside the block is delivered after it, not between the two writes."""
    import os

    from analogpipe.train.loop import signals_deferred

    if not hasattr(signal, "pthread_sigmask"):
        pytest.skip("no signal masks on this platform")
    seen = []
    old = signal.signal(signal.SIGTERM, lambda *_: seen.append("delivered"))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            seen.append("block end")
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == ["block end", "delivered"]


def test_type_errors_and_late_setting_errors_are_one_line_naming_the_flag(tmp_path):
    """A flag of the wrong type (argparse's error) is one line like the value errors, not
    argparse's usage block; errors about a setting found after the settings are read (a
    negative seed, more stages than the model has blocks) name the flag too. Exit 2, nothing
    written."""
    out = tmp_path / "r"
    for flags, flag in [(["--lr", "abc"], "--lr"), (["--seed", "-1"], "--seed:"),
                        (["--stages", "99"], "--stages:"), (["--dw-min", "0.9"], "--dw-min:")]:
        r = cli("train", "--subset", "64", "--epochs", "1", "--no-progress", *flags,
                "--out", str(out))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and flag in lines[0], r.stderr
        assert not out.exists()
