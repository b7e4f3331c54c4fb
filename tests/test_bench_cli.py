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
