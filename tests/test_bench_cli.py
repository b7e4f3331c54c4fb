"""`analogpipe bench`: CLI surface and JSON schema (no timing assertions)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from analogpipe import cli
from analogpipe.bench import Row, harness, register

ROW_KEYS = {"group", "case", "baseline_name", "baseline_s", "subject_name", "subject_s",
            "ratio", "target", "meets_target", "notes", "repeats"}
MACHINE_KEYS = {"cpu", "cores", "torch_threads", "python", "torch", "numpy", "analogpipe",
                "git_commit", "date"}


@register("_test_tiny")
def _tiny(quick: bool) -> list[Row]:
    base, subj = harness.time_pair(lambda: sum(range(10)), lambda: sum(range(20)), 1, 3)
    return [Row(group="_test_tiny", case="sum quick" if quick else "sum",
                baseline_name="a", baseline_s=harness.median(base),
                subject_name="b", subject_s=harness.median(subj), target=None)]


def test_row_ratio_and_dict():
    r = Row(group="g", case="c", baseline_name="x", baseline_s=2.0, subject_name="y",
            subject_s=3.0, target=1.5)
    assert r.ratio == 1.5 and r.meets_target is True
    assert ROW_KEYS <= set(r.to_dict())


def test_register_rejects_a_second_function_under_a_taken_name():
    with pytest.raises(ValueError):
        register("_test_tiny")(lambda quick: [])


def test_bench_tiny_group_json(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    rc = cli.main(["bench", "--quick", "--only", "_test_tiny", "--json", str(out),
                   "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ratio" in text and "sum quick" in text
    data = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(data["machine"]) and data["machine"]["torch_threads"] == 1
    assert [r["case"] for r in data["rows"]] == ["sum quick"]
    assert ROW_KEYS <= set(data["rows"][0])
    assert not list(out.parent.glob("*.tmp"))  # atomic write left no temp file


def test_bench_unknown_group_is_an_error(capsys):
    assert cli.main(["bench", "--only", "no-such-group"]) == 2
    assert "no-such-group" in capsys.readouterr().err


def test_core_group_registered_and_optional_groups_skipped():
    from analogpipe.commands.bench import load_groups

    assert "core" in load_groups()


@pytest.mark.slow
def test_bench_quick_core_json(tmp_path, monkeypatch):
    from analogpipe.bench import core

    # one tiny case per mode keeps this test short; the schema is what is checked
    case = core.Case("linear512 b1", lambda: torch.nn.Sequential(torch.nn.Linear(512, 512)),
                     (512,), 512, 1, 1, 2, 1.0)
    monkeypatch.setattr(core, "cases", lambda quick: [case])
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--only", "core", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in rows] == ["linear512 b1 expected", "linear512 b1 pulsed"]
    assert [r["target"] for r in rows] == [1.5, 3.0]
    assert all(r["baseline_s"] > 0 and r["subject_s"] > 0 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_bench_device_cuda_without_cuda_is_an_error(capsys):
    assert cli.main(["bench", "--quick", "--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_cpu_only_groups_are_refused_on_cuda():
    from analogpipe.bench import harness
    from analogpipe.commands.bench import load_groups

    load_groups()
    assert harness.supports_device("core") and not harness.supports_device("dist")
    with pytest.raises(ValueError, match="dist"):
        harness.run(["dist"], quick=True, device="cuda")


def test_floor_group_rows_configs_and_the_digital_equivalent_tile_is_sgd(monkeypatch):
    """The floor group times three analog models per linear case and mode (the paper tile,
    exact MVMs, a digital-equivalent tile once per case) against one digital model, with the
    resolved tile configs in the rows; the digital-equivalent tile's weights after the run
    equal torch.optim.SGD's after as many steps (it is exactly SGD)."""
    from analogpipe.bench import core
    from analogpipe.presets import ideal_config, paper_config

    case = core.Case("linear16 b2", lambda: torch.nn.Sequential(torch.nn.Linear(16, 8)),
                     (16,), 8, 2, 1, 3, 1.0)
    monkeypatch.setattr(core, "cases", lambda quick: [case])
    built = []
    real_build = core.build_steppers

    def spy(*args, **kw):
        out = real_build(*args, **kw)
        built.append(out)
        return out

    monkeypatch.setattr(core, "build_steppers", spy)
    rows = core.bench_floor(quick=True)
    assert [r.case for r in rows] == [
        "linear16 b2 expected paper tile", "linear16 b2 expected exact MVMs",
        "linear16 b2 digital-equivalent tile", "linear16 b2 pulsed paper tile",
        "linear16 b2 pulsed exact MVMs"]
    assert all(r.target is None and r.baseline_s > 0 and r.subject_s > 0 for r in rows)
    cfg = {r.case: r.details["tile_config"] for r in rows}
    for mode in ("expected", "pulsed"):
        paper = cfg[f"linear16 b2 {mode} paper tile"]
        exact = cfg[f"linear16 b2 {mode} exact MVMs"]
        assert paper == paper_config(update=mode).to_dict()
        # exact MVMs: one change set against the paper tile, the periphery and the mapping
        assert {k for k in paper if paper[k] != exact[k]} == {"forward", "backward", "mapping"}
        assert exact["forward"]["is_perfect"] and exact["backward"]["is_perfect"]
        assert exact["mapping"]["weight_scaling_omega"] is None
        assert not exact["mapping"]["learn_out_scaling"]
    assert cfg["linear16 b2 digital-equivalent tile"] == ideal_config().to_dict()
    # the oracle: the digital-equivalent model trained like torch.optim.SGD, bit for bit
    d, analogs = built[0]
    ideal = analogs[2]
    torch.manual_seed(0)
    ref = case.build().train()
    opt = torch.optim.SGD(ref.parameters(), lr=core.LR)
    for _ in range(ideal.steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(ideal.x), ideal.y).backward()
        opt.step()
    layer = ideal.model[0]
    assert ideal.steps >= 4 and ideal.restarts == 0
    assert torch.equal(layer.weight, ref[0].weight.detach())
    assert torch.equal(layer.bias.detach(), ref[0].bias.detach())


def test_time_pairs_steps_the_digital_model_before_every_analog_step():
    """The floor group's timing: each analog step follows a digital step (as in the core
    rows), warm-up rounds included, and only the timed rounds stay in the phases."""
    from analogpipe.bench import core

    log: list[str] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name, self.phases = name, {p: [] for p in core.PHASES}

        def __call__(self) -> None:
            log.append(self.name)
            for p in core.PHASES:
                self.phases[p].append(1.0)

    case = core.Case("c", lambda: None, (1,), 1, 1, 2, 3, 60.0)
    d, analogs = Fake("d"), [Fake("a0"), Fake("a1"), Fake("a2")]
    core.time_pairs(d, analogs, case)
    assert log == ["d", "a0", "d", "a1", "d", "a2"] * (2 + 3)
    assert [len(s.phases["forward"]) for s in (d, *analogs)] == [9, 3, 3, 3]


def test_output_files_that_cannot_be_written_exit_2_before_the_run(tmp_path, capsys,
                                                                   monkeypatch):
    """bench --json, schedule --png / --trace and plot --png refuse, before anything runs or
    is written: an empty path, a folder, a path under a file, something that is not a
    regular file (a FIFO here; /dev/null is such a file: the atomic write would replace
    it), a folder that refuses new files (/proc). bench makes missing folders."""

    ran = []
    monkeypatch.setattr(harness, "run", lambda *a, **k: ran.append(1) or [])
    a_file = tmp_path / "file"
    a_file.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    bad = [("", "empty"), (str(tmp_path), "is a folder"),
           (str(a_file / "b.json"), "is not a folder"), (str(fifo), "not a regular file"),
           (str(a_file) + "/", "ends in '/'"), (str(dangling), "not a regular file"),
           (str(dangling / "b.json"), "is not a folder"),
           (str(tmp_path / ("n" * 250 + ".json")), "too long"),
           (str(tmp_path / ("n" * 300) / "b.json"), "too long"),
           ("/proc/analogpipe-test.json", "/proc"), ("/proc/analogpipe-new/b.json", "/proc")]
    for path, needle in bad:
        assert cli.main(["bench", "--only", "_test_tiny", "--json", path]) == 2, path
        err = capsys.readouterr().err
        assert "--json" in err and needle in err, (path, err)
    assert ran == [] and a_file.read_text() == "x" and fifo.exists()
    for path, needle in bad[:9]:
        png = path[:-5] + ".png" if path.endswith(".json") else path
        for cmd in (["schedule", "--png", png], ["schedule", "--trace", path]):
            assert cli.main(cmd) == 2, cmd
            err = capsys.readouterr().err
            assert needle in err and "Traceback" not in err, (cmd, err)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["dangling", "fifo", "file"]
    monkeypatch.undo()
    out = tmp_path / "new" / "deeper" / "bench.json"  # missing folders are made
    assert cli.main(["bench", "--only", "_test_tiny", "--json", str(out), "--threads", "1"]) == 0
    assert json.loads(out.read_text())["rows"]
    up = tmp_path / "q" / ".." / "up.json"  # made lexically: no folder q is left
    assert cli.main(["bench", "--only", "_test_tiny", "--json", str(up), "--threads", "1"]) == 0
    assert (tmp_path / "up.json").is_file() and not (tmp_path / "q").exists()


@pytest.mark.slow
def test_gpu_check_script_dry_run_on_the_cpu(tmp_path):
    """bench/gpu-check.sh's CPU dry run (the same code as on CUDA, tiny sizes): exit 0, one
    JSON with the bench rows, both AP runs and the parity tests' result, at an --out relative
    to the caller's folder; a bad --out exits 2 before the run."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "bench" / "gpu-check.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    bad = subprocess.run(["bash", str(script), "--device", "cpu", "--smoke", "--out",
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--out" in bad.stderr and "is a folder" in bad.stderr
    out = tmp_path / "sub" / "gpu-check.json"  # given relative to the folder it runs from
    r = subprocess.run(["bash", str(script), "--device", "cpu", "--smoke", "--out",
                        "sub/gpu-check.json"], capture_output=True, text=True, env=env,
                       timeout=400, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["rows"] and all(row["subject_s"] > 0 for row in data["rows"])
    assert [ap["update"] for ap in data["ap"]] == ["expected", "pulsed"]
    assert all("error" not in ap for ap in data["ap"])
    assert data["tests"]["rc"] == 0, data["tests"]
