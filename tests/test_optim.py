"""AnalogSGD is a torch.optim.Optimizer: param groups, schedulers, torch SGD's arguments,
zero_grad drops pending analog updates, state_dict round-trips.

Oracle: torch.optim.SGD (with the same scheduler) on the digital twin; an ideal device with
perfect IO is exactly digital SGD, so the tiles must follow it bit for bit.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from analogpipe.errors import ConfigError
from analogpipe.nn import analog_tiles, convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.presets import ideal_config, paper_config


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def _batch(k):
    g = torch.Generator().manual_seed(k)
    return torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)


def _train(model, opt, steps, sched=None, start=0):
    for k in range(start, start + steps):
        x, y = _batch(k)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def _logical(model):
    return [m.weight.detach().clone() for m in model if hasattr(m, "weight")]


SGD_ARGS = [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
            dict(momentum=0.5, dampening=0.3, weight_decay=1e-2), dict(weight_decay=1e-3),
            dict(maximize=True)]


@pytest.mark.parametrize("kw", SGD_ARGS, ids=str)
def test_digital_parameters_are_bit_identical_to_torch_sgd(kw):
    a, d = _net(), _net()
    opt = AnalogSGD(a, lr=0.1, **kw)
    assert isinstance(opt, torch.optim.Optimizer)
    _train(a, opt, 6)
    _train(d, torch.optim.SGD(d.parameters(), lr=0.1, **kw), 6)
    for pa, pd in zip(a.parameters(), d.parameters()):
        assert torch.equal(pa, pd)


SCHEDULERS = {
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "multistep": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 3], gamma=0.3),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_schedulers_drive_the_tiles_like_torch_sgd(name):
    digital = _net()
    an = convert_to_analog(digital, ideal_config())
    opt = AnalogSGD(an, lr=0.2)  # tiles do plain SGD: compare without momentum
    ref = torch.optim.SGD(digital.parameters(), lr=0.2)
    sa, sd = SCHEDULERS[name](opt), SCHEDULERS[name](ref)
    _train(an, opt, 6, sa)
    _train(digital, ref, 6, sd)
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] != 0.2
    for wa, wd in zip(_logical(an), _logical(digital)):
        assert torch.equal(wa, wd)  # tiles: plain SGD with the scheduled lr


def test_param_groups_give_each_tile_its_groups_lr():
    digital = _net()
    an = convert_to_analog(digital, ideal_config())
    opt = AnalogSGD([{"params": an[:2], "lr": 0.3}, {"params": an[2:]}], lr=0.05)
    ref = torch.optim.SGD([{"params": digital[:2].parameters(), "lr": 0.3},
                           {"params": digital[2:].parameters()}], lr=0.05)
    assert [len(g["tiles"]) for g in opt.param_groups] == [1, 1]
    _train(an, opt, 4)
    _train(digital, ref, 4)
    for wa, wd in zip(_logical(an), _logical(digital)):
        assert torch.equal(wa, wd)


def test_zero_grad_drops_pending_analog_updates():
    an = convert_to_analog(_net(), paper_config(0.8))
    opt = AnalogSGD(an, lr=0.1)
    before = [t.weight.clone() for t in analog_tiles(an)]
    for k in range(3):
        x, y = _batch(k)
        nn.functional.cross_entropy(an(x), y).backward()
    assert all(t.pending > 0 for t in analog_tiles(an))
    opt.zero_grad()
    assert all(t.pending == 0 for t in analog_tiles(an))
    opt.step()
    for t, w in zip(analog_tiles(an), before):
        assert torch.equal(t.weight, w)


def test_state_dict_round_trips_and_training_continues_identically():
    an = convert_to_analog(_net(), paper_config(0.8))
    opt = AnalogSGD(an, lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    _train(an, opt, 3, sched)
    buf = io.BytesIO()
    torch.save({"model": an.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict()}, buf)
    assert len(opt.state_dict()["state"]) > 0  # momentum buffers are in it
    twin = copy.deepcopy(an)
    _train(an, opt, 3, sched, start=3)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    with torch.no_grad():  # start the twin from garbage so that only the load matters
        for p in twin.parameters():
            p.add_(1.0)
    twin.load_state_dict(ck["model"])
    opt2 = AnalogSGD(twin, lr=0.5, momentum=0.9, nesterov=True)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    assert len(opt2.param_groups[0]["tiles"]) == 2  # tiles survive the load
    _train(twin, opt2, 3, sched2, start=3)
    for a, b in zip(an.state_dict().values(), twin.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_legacy_state_dict_format_loads():
    an = convert_to_analog(_net(), ideal_config())
    opt = AnalogSGD(an, lr=0.1, momentum=0.9)
    bufs = [torch.full_like(p, 0.5) for p in opt.params]
    opt.load_state_dict({"lr": 0.02, "momentum_buffers": bufs})
    assert opt.lr == 0.02
    assert torch.equal(opt.state[opt.params[0]]["momentum_buffer"], bufs[0])


def test_step_count_and_lr_attribute_for_the_pipeline_executors():
    an = convert_to_analog(_net(), ideal_config())
    opt = AnalogSGD(an, lr=0.1)
    opt.lr = 0.05
    assert [g["lr"] for g in opt.param_groups] == [0.05]
    for k in range(2):
        x, y = _batch(k)
        nn.functional.cross_entropy(an(x), y).backward()
        opt.end_microbatch()
    tile = analog_tiles(an)[0]
    opt.step(count=1)
    assert tile.pending == 1
    with pytest.raises(ConfigError, match="update count"):
        opt.step(count=2)


def test_unsupported_arguments_are_refused_clearly():
    an = convert_to_analog(_net(), ideal_config())
    with pytest.raises(ConfigError, match="maximize"):
        AnalogSGD(an, lr=0.1, maximize=True)
    with pytest.raises(ConfigError, match="fused"):
        AnalogSGD(an, lr=0.1, fused=True)
    with pytest.raises(ConfigError, match="differentiable"):
        AnalogSGD(an, lr=0.1, differentiable=True)
    with pytest.raises(ValueError, match="[Nn]esterov"):
        AnalogSGD(an, lr=0.1, nesterov=True)  # torch's rule: needs momentum, no dampening
    # plain tensors are accepted as in torch, with a warning: no tile is reachable from them
    with pytest.warns(UserWarning, match="Pass the model"):
        AnalogSGD(an.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AnalogSGD(an, lr=0.1)
        AnalogSGD([{"params": an[0]}, {"params": an[1:]}], lr=0.1)
