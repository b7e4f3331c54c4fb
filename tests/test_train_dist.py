"""`analogpipe train --processes M` equals the single-process run (weights and metrics)."""

import pytest
import torch

from analogpipe.cli import main

ARGS = ["train", "--subset", "192", "--micro-batch-size", "16", "--microbatches", "2",
        "--model", "mlp", "--width", "32", "--epochs", "2", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["ap", "sp"])
def test_two_processes_equal_one_process_bit_for_bit(tmp_path, scheme):
    common = [*ARGS, "--scheme", scheme, "--stages", "2"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--processes", "2", "--out", str(tmp_path / "dist")]) == 0
    a = torch.load(tmp_path / "local" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "dist" / "checkpoint.pt", weights_only=False)
    for key, t in a["model"].items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(t, b["model"][key]), key
    strip = [{k: v for k, v in m.items() if k != "wall_s"} for m in a["metrics"]]
    assert strip == [{k: v for k, v in m.items() if k != "wall_s"} for m in b["metrics"]]
    assert not [p for p in (tmp_path / "dist").iterdir() if p.name.startswith(".")]


def test_processes_must_match_stages(tmp_path, capsys):
    code = main([*ARGS, "--stages", "2", "--processes", "3", "--out", str(tmp_path / "x")])
    assert code == 2 and "--processes 3" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
