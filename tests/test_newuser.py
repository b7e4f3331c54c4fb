"""Findings of a new user: bad settings exit 2 naming the flag / file with nothing written,
flags a run would ignore are refused, --resume takes the run's settings, float64 models.

CLI tests call `analogpipe.cli.main([...])` in-process with tiny sizes (a 32-wide MLP on 192
digits samples); the BrokenPipe test needs a real pipe, so it starts a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from analogpipe.cli import main
from analogpipe.errors import ConfigError
from analogpipe.train import TrainConfig

TINY = ["--subset", "192", "--micro-batch-size", "16", "--microbatches", "2", "--width", "32",
        "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text, key", [
    ("epochs = 1.5\n", "epochs"), ("lr_milestones = [2.5]\n", "lr_milestones"),
    ('lr_milestones = "5"\n', "lr_milestones"), ('tau = "x"\n', "tau"),
    ("stages = true\n", "stages"), ("epochs = 0\n", "epochs"),
])
def test_config_file_with_a_bad_value_names_key_and_file_and_writes_nothing(
        tmp_path, capsys, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "train", "--config", str(cfg), "--out", str(out))
    assert code == 2
    assert key in err and str(cfg) in err and "Traceback" not in err
    assert not out.exists()


def test_binary_config_file_is_refused(tmp_path, capsys):
    cfg = tmp_path / "checkpoint.pt"
    torch.save({"model": torch.zeros(3)}, cfg)
    code, err = run_cli(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert code == 2 and str(cfg) in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("kw, field", [
    ({"epochs": 1.5}, "epochs"), ({"lr_milestones": [2.5]}, "lr_milestones"),
    ({"lr_milestones": "5"}, "lr_milestones"), ({"lr_milestones": (5, 3)}, "lr_milestones"),
    ({"lr_milestones": (0,)}, "lr_milestones"), ({"momentum": -1.0}, "momentum"),
    ({"weight_decay": -1.0}, "weight_decay"), ({"fast_lr": 0.0}, "fast_lr"),
    ({"fast_lr": -1.0}, "fast_lr"), ({"stages": True}, "stages"), ({"tau": "x"}, "tau"),
    ({"width": 0}, "width"), ({"dw_min": 0.0}, "dw_min"), ({"seed": 1.0}, "seed"),
])
def test_trainconfig_checks_type_and_value_of_every_field(kw, field):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        TrainConfig(**kw)


def test_trainconfig_accepts_ints_for_floats_and_lists_for_milestones():
    c = TrainConfig(lr=1, lr_milestones=[2, 5], momentum=0)
    assert type(c.lr) is float and c.lr_milestones == (2, 5) and type(c.momentum) is float


@pytest.mark.parametrize("flags, named", [
    (["--momentum", "-1"], "momentum"), (["--weight-decay", "-1"], "weight_decay"),
    (["--algorithm", "tiki-taka", "--fast-lr", "0"], "fast_lr"),
    (["--lr-milestones", "5,3"], "lr_milestones"),
    (["--launcher", "torchrun"], "--launcher torchrun"),
    (["--model", "cnn", "--dataset", "teacher"], "--dataset"),
    (["--tt-gamma", "0.5"], "--tt-gamma"), (["--fast-lr", "1.0"], "--fast-lr"),
    (["--pipemare-warmup-epochs", "2"], "--pipemare-warmup-epochs"),
    (["--scheme", "digital", "--tau", "0.3"], "--tau"),
    (["--data-dir", "somewhere"], "--data-dir"),
    (["--batch-size", "48"], "--batch-size 48 and --microbatches 2"),  # TINY: B=2, b=16
    (["--omega", "2"], "--omega"),
    (["--algorithm", "tiki-taka", "--tt-gamma", "-1"], "--tt-gamma"),
    (["--algorithm", "tiki-taka", "--transfer-lr", "-1"], "--transfer-lr"),
    (["--algorithm", "tiki-taka", "--n-reads-per-transfer", "0"], "--n-reads-per-transfer"),
    (["--algorithm", "tiki-taka", "--transfer-every", "-1"], "--transfer-every"),
])
def test_bad_or_ignored_flags_exit_2_naming_them_before_writing(tmp_path, capsys, monkeypatch,
                                                                flags, named):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "train", *flags, "--out", str(out), *TINY)
    assert code == 2, err
    assert named in err and "Traceback" not in err
    assert not out.exists()


def test_config_run_json_with_default_values_is_not_refused(tmp_path, capsys):
    first = tmp_path / "a"
    assert run_cli(capsys, "train", "--scheme", "digital", "--epochs", "1", "--out", str(first),
                   *TINY)[0] == 0
    record = json.loads((first / "run.json").read_text())["config"]
    assert record["tau"] == 0.8 and record["algorithm"] == "analog-sgd"  # defaults carried
    code, err = run_cli(capsys, "train", "--config", str(first / "run.json"), "--out",
                        str(tmp_path / "b"), "--no-progress")
    assert code == 0, err


def test_abbreviated_flags_are_refused_with_a_suggestion(tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--epoch", "2", "--out", str(tmp_path / "o"))
    assert code == 2 and "did you mean --epochs" in err


def test_run_is_in_the_command_list(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "    run " in text and "reproduce --quick" in text


def test_milestone_help_agrees_with_the_check():
    from analogpipe.cli import build_parser

    p = build_parser(["train"])
    sub = next(a for a in p._actions if a.dest == "command").choices["train"]
    text = next(a.help for a in sub._actions if a.dest == "lr_milestones")
    assert "counted from 0" not in text and ">= 1" in text and "ascending" in text


def test_schedule_without_work_is_refused(capsys):
    code, err = run_cli(capsys, "schedule", "--t-f", "0", "--t-b", "0")
    assert code == 2 and "--t-f" in err


def test_schedule_into_a_closed_pipe_exits_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "analogpipe.cli", "schedule", "--full",
                             "--stages", "8", "--microbatches", "64", "--steps", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert proc.returncode in (0, 141)


def test_resume_takes_the_runs_settings_and_checks_given_flags(tmp_path, capsys):
    out = tmp_path / "ap"
    assert run_cli(capsys, "train", "--stages", "3", "--epochs", "1", "--data-dir", "x",
                   "--dataset", "cifar10", "--out", str(out), *TINY)[0] == 2  # no CIFAR there
    assert run_cli(capsys, "train", "--stages", "3", "--epochs", "1", "--lr", "0.05",
                   "--out", str(out), *TINY)[0] == 0
    code, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--epochs", "2",
                        "--no-progress")
    assert code == 0, err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # the resumed run equals an uninterrupted one to epoch 2
    full = tmp_path / "full"
    assert run_cli(capsys, "train", "--stages", "3", "--epochs", "2", "--lr", "0.05",
                   "--out", str(full), *TINY)[0] == 0
    a = [json.loads(x)["test_loss"] for x in lines]
    b = [json.loads(x)["test_loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert a == b
    code, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--epochs", "3",
                        "--stages", "2", "--no-progress")
    assert code == 2 and "--stages" in err


def test_resume_without_checkpoint_points_to_overwrite(tmp_path, capsys):
    out = tmp_path / "early"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": TrainConfig().to_dict()}))
    code, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--no-progress")
    assert code == 2 and "--overwrite" in err and "start without --resume" not in err


def test_reproduce_refuses_a_train_run_folder_and_group_conflicts(tmp_path, capsys):
    out = tmp_path / "train-run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    before = sorted(p.name for p in out.iterdir())
    code, err = run_cli(capsys, "reproduce", "--quick", "--out", str(out))
    assert code == 2 and "train" in err and sorted(p.name for p in out.iterdir()) == before
    new = tmp_path / "r"
    code, err = run_cli(capsys, "reproduce", "--quick", "--groups", "", "--out", str(new))
    assert code == 2 and "--groups" in err and not new.exists()
    code, err = run_cli(capsys, "reproduce", "--quick", "--groups", "convergence",
                        "--no-convergence", "--out", str(new))
    assert code == 2 and "--no-convergence" in err and not new.exists()


@pytest.mark.parametrize("make, shape", [
    (lambda: torch.nn.Linear(8, 4), (3, 8)), (lambda: torch.nn.Conv1d(2, 3, 3), (2, 2, 7)),
    (lambda: torch.nn.Conv2d(2, 3, 3), (2, 2, 5, 5)),
])
def test_float64_model_stays_float64_and_matches_digital_sgd(make, shape):
    from analogpipe.nn.layers import convert_to_analog
    from analogpipe.optim import AnalogSGD
    from analogpipe.presets import ideal_config

    torch.manual_seed(0)
    digital = make().double()
    analog = convert_to_analog(digital, ideal_config())
    assert analog.tile.weight.dtype == torch.float64
    x = torch.randn(*shape, dtype=torch.float64)
    ya, yd = analog(x), digital(x)
    assert ya.dtype == torch.float64
    torch.testing.assert_close(ya, yd, rtol=1e-12, atol=1e-12)  # float32 would be ~1e-7 off
    ya.square().sum().backward()
    yd.square().sum().backward()
    AnalogSGD(analog, lr=0.1).step()
    torch.optim.SGD(digital.parameters(), lr=0.1).step()
    torch.testing.assert_close(analog.weight, digital.weight.detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match=r"float32.*float64|float64.*float32"):
        analog(x.float())


def test_report_intervals_are_clipped_to_the_feasible_range():
    from analogpipe.experiments.stats import ACCURACY, COUNT, mean_interval

    acc = mean_interval([0.01, 0.22])  # n=2: the t interval reaches far below 0
    assert acc.lo < 0
    text = acc.fmt(1, 100, ACCURACY)
    lo, hi = (float(v) for v in text.split("[")[1].rstrip("]").split(", "))
    assert lo == 0.0 and hi == pytest.approx(min(acc.hi, 1.0) * 100, abs=0.05)
    samples = mean_interval([0.0, 34.0])
    assert samples.lo < 0
    assert samples.fmt(0, bounds=COUNT).split("[")[1].startswith("0, ")
    assert acc.fmt(1, 100).split("[")[1].startswith("-")  # unclipped without bounds


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: "" would otherwise write the run here
    code, err = run_cli(capsys, "train", "--out", "", *TINY)
    assert code == 2 and "--out is empty" in err
    assert list(tmp_path.iterdir()) == []


# --- third pass (speed work): edge shapes and dtypes ----------------------------------------
@pytest.mark.parametrize("mode", ["expected", "pulsed"])
def test_conv_kernel_larger_than_the_padded_input_is_refused(mode):
    """nn.Conv2d raises here; the analog conv must not return an empty output silently."""
    from analogpipe.errors import ConfigError
    from analogpipe.nn import AnalogConv1d, AnalogConv2d
    from analogpipe.presets import paper_config

    cfg = paper_config(update=mode)
    with pytest.raises(ConfigError, match="smaller than the dilated kernel"):
        AnalogConv2d(3, 4, 5, padding=1, config=cfg)(torch.randn(1, 3, 2, 2))
    with pytest.raises(ConfigError, match="smaller than the dilated kernel"):
        AnalogConv1d(2, 3, 10, padding=1, config=cfg)(torch.randn(1, 2, 7))


@pytest.mark.parametrize("mode", ["expected", "pulsed"])
def test_conv_with_an_empty_batch_runs_like_nn_conv2d(mode):
    from analogpipe.nn import convert_to_analog
    from analogpipe.optim import AnalogSGD
    from analogpipe.presets import paper_config

    layer = convert_to_analog(torch.nn.Conv2d(3, 4, 3), paper_config(update=mode))
    w0 = layer.tile.weight.clone()
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (0, 4, 3, 3) and x.grad.shape == x.shape
    AnalogSGD(layer, lr=0.1).step()
    assert torch.equal(layer.tile.weight, w0)


def test_pulsed_float64_model_with_mixed_train_lengths_steps():
    """A float64 model whose samples get different train lengths (the float route's d bit
    density is computed per length): trains, stays float64."""
    from analogpipe.nn import convert_to_analog
    from analogpipe.optim import AnalogSGD
    from analogpipe.presets import paper_config
    from analogpipe.tiles.pulses import UpdateConfig, pulse_probabilities

    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 4)).double()
    model = convert_to_analog(net, paper_config(update="pulsed"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=g, dtype=torch.float64) * \
        torch.logspace(-2, 1, 32, dtype=torch.float64)[:, None]
    _, _, bl = pulse_probabilities(x, torch.ones(32, 8, dtype=torch.float64), 0.1, 0.001,
                                   UpdateConfig())
    assert len(set(bl.tolist())) > 1
    opt = AnalogSGD(model, lr=0.1)
    before = [t.weight.clone() for t in (model[0].tile, model[2].tile)]
    torch.nn.functional.cross_entropy(model(x), torch.randint(0, 4, (32,), generator=g),
                                      reduction="sum").backward()
    opt.step()
    after = [t.weight for t in (model[0].tile, model[2].tile)]
    assert all(a.dtype == torch.float64 for a in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def _float_fields() -> list[str]:
    from dataclasses import fields

    return [f.name for f in fields(TrainConfig) if f.type in ("float", float)
            and f.name not in ("divergence_loss",)]  # inf: never call a run diverged


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 4e38, -1e300,
                                   1e-46])
@pytest.mark.parametrize("field", _float_fields())
def test_every_float_setting_refuses_non_finite_values_naming_itself(field, value):
    """inf, -inf, NaN, finite values beyond float32's range (they overflow the float32
    tensors they act on) and nonzero ones that float32 turns into 0, in any float setting: a
    ConfigError naming that setting, raised by TrainConfig itself (so the CLI names its
    flag), not by torch in a layer later."""
    with pytest.raises(ConfigError, match=rf"^{field.split('_')[0]}"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("kind, kw, field", [
    ("paper", {"out_noise": 1e300}, "io.out_noise"), ("paper", {"tau": 1e300}, "device.w_max"),
    ("io", {"out_bound": 1e39}, "io.out_bound"), ("io", {"inp_bound": 1e39}, "io.inp_bound")])
def test_tile_configs_refuse_values_beyond_float32(kind, kw, field):
    """Periphery and device settings beyond float32's range: a ConfigError naming the
    setting (inf stays allowed for out_bound: no ADC clip)."""
    from analogpipe.presets import paper_config
    from analogpipe.tiles.io import IOConfig

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        (paper_config if kind == "paper" else IOConfig)(**kw)


@pytest.mark.parametrize("kw, field", [
    ({"inp_bound": 1e-45}, "io.inp_bound"), ({"inp_bound": 1e-33, "inp_res": 1e-7}, "io.inp_bound"),
    ({"inp_bound": 3e38, "inp_res": 0.99}, "io.inp_bound"), ({"out_bound": 1e-40}, "io.out_bound"),
    ({"out_bound": 3e38, "out_res": 0.9}, "io.out_bound")])
def test_converter_steps_beyond_float32_are_refused(kw, field):
    """A DAC or ADC step (res * 2 * bound) whose value or inverse leaves float32's range: the
    periphery divides by it in float32 (a step of 0 or inf, levels of inf), so the compiled
    and torch routes gave different garbage. Refused naming the bound and the step; steps at
    the ends of the range and unquantized converters stay allowed."""
    from analogpipe.tiles.io import IOConfig

    with pytest.raises(ConfigError, match=field.replace(".", r"\.") + r".*converter step"):
        IOConfig(**kw)
    IOConfig(inp_bound=1.5e-36, inp_res=0.001)  # step 3e-39: its inverse fits float32
    IOConfig(inp_res=0, inp_bound=1e-45, out_res=0, out_bound=3e38)  # no steps


def test_lr_whose_update_factor_overflows_is_refused():
    """lr / tau beyond float32's range (each alone within it): refused naming lr, for analog
    schemes (the soft-bounds update multiplies by lr / tau)."""
    with pytest.raises(ConfigError, match=r"^lr=.*lr / tau"):
        TrainConfig(lr=1e37, tau=0.01)
    TrainConfig(lr=1e37, tau=0.01, scheme="digital")  # no tiles: no such factor
