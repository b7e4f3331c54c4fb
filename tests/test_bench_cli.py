"""`analogpipe bench`: CLI surface and JSON schema (no timing assertions)."""

from __future__ import annotations

import json

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
