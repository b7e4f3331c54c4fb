"""`analogpipe train`: CLI surface, run records, exact resume, bad input, divergence."""

import json

import pytest
import torch

from analogpipe.cli import main
from analogpipe.train import TrainConfig, train

TINY = ["--subset", "192", "--micro-batch-size", "16", "--microbatches", "2",
        "--no-progress", "--model", "mlp", "--width", "32"]


def _run(args):
    return main(["train", *TINY, *args])


def test_train_writes_run_record_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert _run(["--scheme", "ap", "--stages", "2", "--epochs", "2", "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["scheme"] == "ap" and record["seed"] == 0
    assert {"torch", "numpy", "python", "analogpipe"} <= set(record["versions"])
    assert "machine" in record and "git_commit" in record and len(record["stages"]) == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("train_loss", "test_acc", "cycles", "samples", "wall_s", "saturation"):
        assert key in lines[0]
    # AP clock: K micro-batches of 2 stages take (K + M - 1)(t_f + t_b) cycles per epoch
    k = 192 // 32 * 2
    assert lines[0]["cycles"] == (k + 1) * 2 and lines[1]["cycles"] == 2 * (k + 1) * 2
    assert lines[1]["samples"] == 2 * 192
    sat = next(iter(lines[0]["saturation"].values()))
    assert 0 < sat["mean"] <= sat["max"] <= 1
    assert (out / "checkpoint.pt").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("scheme", ["ap", "sp"])
def test_resume_ends_with_exactly_the_same_weights_and_metrics(tmp_path, scheme):
    base = ["--scheme", scheme, "--stages", "2", "--lr-milestones", "2", "--momentum", "0.5"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert _run([*base, "--epochs", "3", "--out", str(full)]) == 0
    assert _run([*base, "--epochs", "3", "--out", str(part)]) == 0
    # interrupt: roll `part` back to its epoch-1 state, then resume
    cfg = TrainConfig(subset=192, micro_batch_size=16, microbatches=2, model="mlp", width=32,
                      scheme=scheme, stages=2, epochs=1, lr_milestones=(2,), momentum=0.5)
    short = tmp_path / "short"
    train(cfg, short, progress=False)
    ck = torch.load(short / "checkpoint.pt", weights_only=False)
    ck["config"]["epochs"] = 3
    torch.save(ck, part / "checkpoint.pt")
    assert _run([*base, "--epochs", "3", "--out", str(part), "--resume"]) == 0
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(part / "checkpoint.pt", weights_only=False)
    for key, t in a["model"].items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(t, b["model"][key]), key
    strip = [{k: v for k, v in m.items() if k != "wall_s"} for m in a["metrics"]]
    assert strip == [{k: v for k, v in m.items() if k != "wall_s"} for m in b["metrics"]]
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


@pytest.mark.parametrize("args,needle", [
    (["--model", "resnet99"], "--model"),
    (["--scheme", "async"], "--scheme"),
    (["--stages", "9"], "stages=9"),
    (["--batch-size", "40"], "batch_size"),
    (["--lr", "0"], "lr"),
    (["--lr", "-1"], "lr"),
    (["--tau", "-0.5"], "tau"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
])
def test_bad_arguments_exit_2_before_writing(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        code = _run([*args, "--out", str(out)])
        raise SystemExit(code)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_divergence_stops_with_a_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch,
                                                                        capsys):
    import analogpipe.train.loop as loop
    from analogpipe.train import TrainingDiverged

    real = loop.epoch_batches

    def poisoned(setup, epoch):
        batch, steps = real(setup, epoch)
        if epoch == 1:  # the second epoch's data turns the loss into NaN
            return (lambda k: (batch(k)[0] * float("nan"), batch(k)[1])), steps
        return batch, steps

    monkeypatch.setattr(loop, "epoch_batches", poisoned)
    cfg = TrainConfig(subset=192, micro_batch_size=16, microbatches=2, model="mlp", width=32,
                      scheme="ap", stages=2, epochs=3)
    out = tmp_path / "div"
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        train(cfg, out, progress=False)
    kept = torch.load(out / "checkpoint.pt", weights_only=False)
    assert kept["epoch"] == 0  # the last good epoch (counted from 0)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(loop, "epoch_batches", real)
    code = _run(["--scheme", "digital", "--epochs", "2", "--lr", "1e6",
                 "--out", str(tmp_path / "cli")])
    assert code == 3
    assert "diverged" in capsys.readouterr().err
