"""`analogpipe schedule`: JSON fields, text output, files, exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest

from analogpipe.cli import main


def run_json(capsys, *argv: str) -> dict:
    assert main(["schedule", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # one JSON object
    return json.loads(out)


@pytest.mark.parametrize("scheme", ["wop", "sp", "ap", "pipedream"])
def test_json_has_the_fields_and_matches_closed_form(capsys, scheme) -> None:
    d = run_json(capsys, "--scheme", scheme, "--stages", "4", "--microbatches", "4",
                 "--steps", "3")
    for key in ("makespan_cycles", "density", "bubble_fraction", "staleness", "peak_in_flight",
                "scheme", "stages", "microbatches", "steps"):
        assert key in d, key
    assert (d["scheme"], d["stages"], d["microbatches"], d["steps"]) == (scheme, 4, 4, 3)
    assert d["makespan_cycles"] == d["closed_form"]["makespan"]
    assert d["density"] == pytest.approx(d["closed_form"]["density"])
    assert d["bubble_fraction"] == pytest.approx(1 - d["density"])
    if scheme in ("ap", "pipedream"):
        assert d["staleness"] == [3, 2, 1, 0] and d["peak_in_flight"] == [4, 3, 2, 1]
    else:
        assert d["staleness"] == [0, 0, 0, 0]


def test_json_with_costs(capsys) -> None:
    d = run_json(capsys, "--scheme", "sp", "--stages", "2", "--microbatches", "2", "--steps",
                 "1", "--t-f", "1", "--t-b", "2")
    assert d["makespan_cycles"] == 9.0  # (B + M - 1)(t_f + t_b)


def test_text_output_has_grid_and_figures(capsys) -> None:
    assert main(["schedule", "--scheme", "ap", "--stages", "2", "--microbatches", "2",
                 "--steps", "1", "--lowered"]) == 0
    out = capsys.readouterr().out
    assert "stage 1      .    1F0 1B0+U0    1F1 1B1+U1      ." in out
    assert "makespan        6 cycles" in out
    assert "staleness       [1, 0]" in out
    assert "closed form     makespan 6" in out
    assert "1RF0 1F0" in out  # lowered lists


def test_png_and_trace_files(capsys, tmp_path) -> None:
    png, trace = tmp_path / "g.png", tmp_path / "t.json"
    d = run_json(capsys, "--scheme", "sp", "--png", str(png), "--trace", str(trace))
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(trace.read_text())["traceEvents"]
    assert d["files"] == {"png": str(png), "trace": str(trace)}


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--scheme", "zz"], "--scheme"),
        (["--stages", "0"], "--stages"),
        (["--microbatches", "x"], "--microbatches"),
        (["--steps", "-1"], "--steps"),
        (["--t-f", "-1"], "--t-f"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(capsys, argv, flag) -> None:
    with pytest.raises(SystemExit) as info:
        main(["schedule", *argv])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err.splitlines()[-1]


def test_semantic_errors_return_2(capsys, tmp_path) -> None:
    assert main(["schedule", "--scheme", "ap", "--update-per-microbatch"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--update-per-microbatch" in err
    assert main(["schedule", "--png", str(tmp_path / "no" / "g.png")]) == 2
    assert "--png" in capsys.readouterr().err
