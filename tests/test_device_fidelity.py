"""Device fidelity: PowStep as aihwkit, impossible settings refused at config time, non-finite
updates refused before any conductance changes, and an invariant swept over every device and
every mapping setting.

Oracles: aihwkit's PowStep "update once" written out pulse by pulse in float64 (its C++
`update_once`: w += scale_up * ((b_max - w) / (b_max - b_min)) ** gamma_up, then clip), closed
forms, and torch.optim.SGD where the device is ideal.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from analogpipe.devices import (
    DEVICE_NAMES,
    DeviceConfig,
    apply_pulses,
    expected_update,
    response,
    sample_device_state,
)
from analogpipe.errors import ConfigError
from analogpipe.nn import AnalogConv2d, AnalogLinear, analog_tiles, convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.tiles import IOConfig, MappingConfig, NonFiniteUpdateError, TileConfig
from analogpipe.tiles.pulses import UpdateConfig


# --- 2. PowStep ----------------------------------------------------------------------------------
def _aihwkit_powstep_pulses(w: float, n: int, up: bool, dw: float, b_max: float, b_min: float,
                            gamma: float) -> float:
    span = b_max - b_min
    for _ in range(n):
        if up:
            w += dw * ((b_max - w) / span) ** gamma
        else:
            w -= dw * ((w - b_min) / span) ** gamma
        w = min(max(w, b_min), b_max)
    return w


def test_powstep_is_normalised_by_the_full_range_like_aihwkit():
    cfg = DeviceConfig(name="powstep", w_max=0.8, w_min=-0.8, pow_gamma=2.0)
    state = sample_device_state(cfg, (1, 1))
    q_up, q_down = response(torch.zeros(1, 1, dtype=torch.float64), state, cfg)
    assert q_up.item() == pytest.approx(0.25) and q_down.item() == pytest.approx(0.25)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("w0", [-0.55, -0.2, 0.0, 0.35, 0.75])
def test_powstep_one_pulse_equals_aihwkit_update_once(gamma, w0):
    cfg = DeviceConfig(name="powstep", dw_min=0.01, w_max=0.8, w_min=-0.6, pow_gamma=gamma)
    state = sample_device_state(cfg, (1, 2))
    w = torch.tensor([[w0, w0]], dtype=torch.float64)
    first = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    zero = torch.zeros(1, 2, dtype=torch.float64)
    up = apply_pulses(w, first, zero, state, cfg)  # one up pulse on element 0
    down = apply_pulses(w, zero, first.flip(1), state, cfg)  # one down pulse on element 1
    assert up[0, 0].item() == pytest.approx(
        _aihwkit_powstep_pulses(w0, 1, True, 0.01, 0.8, -0.6, gamma), abs=1e-15)
    assert down[0, 1].item() == pytest.approx(
        _aihwkit_powstep_pulses(w0, 1, False, 0.01, 0.8, -0.6, gamma), abs=1e-15)
    assert up[0, 1].item() == w0 and down[0, 0].item() == w0  # no pulse, no change
    # the expected update of a small dW is dW * q(w) (first order in dW)
    dw = torch.tensor([[1e-4, -1e-4]], dtype=torch.float64)
    want = torch.tensor([[w0 + 1e-4 * ((0.8 - w0) / 1.4) ** gamma,
                          w0 - 1e-4 * ((w0 + 0.6) / 1.4) ** gamma]], dtype=torch.float64)
    torch.testing.assert_close(expected_update(w, dw, dw.abs(), state, cfg), want,
                               rtol=0, atol=1e-15)


def test_powstep_gamma_one_is_soft_bounds_response_at_half_step_for_symmetric_bounds():
    tau = 0.8
    pow_cfg = DeviceConfig(name="powstep", w_max=tau, w_min=-tau, pow_gamma=1.0)
    sb_cfg = DeviceConfig(name="softbounds", w_max=tau, w_min=-tau)
    w = torch.linspace(-tau, tau, 17, dtype=torch.float64)[None]
    pu, pd = response(w, sample_device_state(pow_cfg, (1, 17)), pow_cfg)
    su, sd = response(w, sample_device_state(sb_cfg, (1, 17)), sb_cfg)
    torch.testing.assert_close(pu, su / 2)
    torch.testing.assert_close(pd, sd / 2)


# --- 3. config-time validation -------------------------------------------------------------------
BOUNDED = [n for n in DEVICE_NAMES if n != "ideal"]


@pytest.mark.parametrize("name", BOUNDED)
def test_step_at_least_the_bound_is_refused_for_every_device(name):
    with pytest.raises(ConfigError, match=r"device\.dw_min.*w_max=0\.5"):
        DeviceConfig(name=name, dw_min=0.5, w_max=0.5, w_min=-0.9)
    with pytest.raises(ConfigError, match=r"device\.dw_min.*\|w_min\|=0\.2"):
        DeviceConfig(name=name, dw_min=0.3, w_max=0.9, w_min=-0.2)
    DeviceConfig(name=name, dw_min=0.2, w_max=0.9, w_min=-0.25)  # 0.2 < 0.25: fine
    # aihwkit's up_down only shrinks one direction's step: (1 - 0.5) * 0.3 = 0.15 < 0.2
    DeviceConfig(name=name, dw_min=0.3, w_max=0.9, w_min=-0.2, up_down=0.5)


@pytest.mark.parametrize("name", DEVICE_NAMES)
@pytest.mark.parametrize("field", ["dw_min_dtod", "w_max_dtod", "w_min_dtod", "up_down_dtod"])
def test_spreads_of_100_percent_or_more_are_refused(name, field):
    with pytest.raises(ConfigError, match=f"device.{field}"):
        DeviceConfig(name=name, **{field: 1.0})
    with pytest.raises(ConfigError, match=f"device.{field}"):
        DeviceConfig(name=name, **{field: -0.1})


@pytest.mark.parametrize("name", DEVICE_NAMES)
@pytest.mark.parametrize("field", ["dw_min", "w_max", "w_min", "pow_gamma", "dw_min_std",
                                   "up_down"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_device_fields_are_refused(name, field, bad):
    with pytest.raises(ConfigError, match=f"device.{field}"):
        DeviceConfig(name=name, **{field: bad})


def test_non_finite_omega_is_refused():
    with pytest.raises(ConfigError, match="weight_scaling_omega"):
        MappingConfig(weight_scaling_omega=math.inf)


@pytest.mark.parametrize("name", BOUNDED)
def test_large_spreads_never_give_non_finite_or_out_of_bound_weights(name):
    # the case that used to write NaN silently: dtod gains up to ~4x push steps past the bound
    cfg = DeviceConfig(name=name, dw_min=0.3, w_max=0.8, w_min=-0.8, dw_min_dtod=0.9,
                       w_max_dtod=0.9, w_min_dtod=0.9, up_down_dtod=0.5, dw_min_std=0.5)
    g = torch.Generator().manual_seed(0)
    state = sample_device_state(cfg, (60, 60), g)
    if name == "softbounds":  # one pulse cannot cross the bound
        assert (state.delta_up < state.b_max).all() and (state.delta_down < -state.b_min).all()
    w = (torch.rand(60, 60, generator=g) * 2 - 1) * 0.5
    w = torch.clamp(w, state.b_min, state.b_max)
    n_up = torch.randint(0, 40, (60, 60), generator=g).float()
    n_down = torch.randint(0, 40, (60, 60), generator=g).float()
    for out in (apply_pulses(w, n_up, n_down, state, cfg, g),
                expected_update(w, n_up - n_down, n_up + n_down, state, cfg)):
        assert torch.isfinite(out).all()
        assert (out <= state.b_max).all() and (out >= state.b_min).all()


# --- 4. non-finite stash -------------------------------------------------------------------------
def _cfg(mode: str) -> TileConfig:
    return TileConfig(device=DeviceConfig(name="softbounds"), update=UpdateConfig(mode=mode))


@pytest.mark.parametrize("mode", ["expected", "pulsed"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("where", ["x", "d"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_x_or_d_raises_naming_the_layer_before_any_change(mode, kind, where, bad):
    torch.manual_seed(0)
    if kind == "linear":
        net = nn.Sequential(OrderedDict(first=nn.Linear(5, 4), act=nn.Tanh(),
                                        head=nn.Linear(4, 3)))
        x = torch.randn(6, 5)
    else:
        net = nn.Sequential(OrderedDict(first=nn.Conv2d(2, 3, 3), act=nn.Tanh(),
                                        head=nn.Conv2d(3, 3, 2)))
        x = torch.randn(2, 2, 5, 5)
    an = convert_to_analog(net, _cfg(mode))
    opt = AnalogSGD(an, lr=0.1)
    before = [t.weight.clone() for t in analog_tiles(an)]
    out = an(x)
    d = torch.ones_like(out)
    if where == "x":  # a non-finite activation reaching 'head' (its input)
        an.head.register_forward_pre_hook(lambda m, a: (a[0] * bad,))
        out = an(x)
        d = torch.ones_like(out)
    else:
        d = d.contiguous()
        d.view(-1)[0] = bad
    with pytest.raises(NonFiniteUpdateError, match="'head'.*NaN or inf"):
        out.backward(d)
    opt.step()  # nothing was stashed: no tile changes
    for t, w in zip(analog_tiles(an), before):
        assert torch.equal(t.weight, w)


def test_directly_built_layer_is_named_by_the_optimizer():
    model = nn.Sequential(OrderedDict(enc=AnalogLinear(3, 2)))
    AnalogSGD(model, lr=0.1)
    x = torch.tensor([[1.0, math.nan, 0.0]])
    with pytest.raises(NonFiniteUpdateError, match="'enc'"):
        model(x).sum().backward()


# --- invariant over every device x every mapping x both update modes ---------------------------
MAPPINGS = {"none": MappingConfig(),
            "omega": MappingConfig(weight_scaling_omega=0.3),
            "learned": MappingConfig(weight_scaling_omega=0.3, learn_out_scaling=True),
            "learned_no_omega": MappingConfig(learn_out_scaling=True)}


def _device(name: str) -> DeviceConfig:
    if name == "ideal":
        return DeviceConfig(name="ideal", dw_min=0.01)
    return DeviceConfig(name=name, dw_min=0.01, w_max=0.6, w_min=-0.5, up_down=0.1,
                        dw_min_dtod=0.3, w_max_dtod=0.3, w_min_dtod=0.3, up_down_dtod=0.05,
                        dw_min_std=0.2, pow_gamma=1.5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize(("device", "mapping", "mode"),
                         list(itertools.product(DEVICE_NAMES, MAPPINGS, ["expected", "pulsed"])))
def test_invariants_for_every_device_and_mapping(device, mapping, mode, kind):
    """For any device and mapping: conductances stay finite and within the device bounds, the
    logical weight is out_scale * W, a zero error changes nothing, the same seed gives the same
    run, and (expected update, micro-batch granularity) every conductance moves against its
    gradient or not at all, strictly against it where it is inside the bounds."""
    cfg = TileConfig(device=_device(device), forward=IOConfig(), backward=IOConfig(),
                     update=UpdateConfig(mode=mode, granularity="microbatch"),
                     mapping=MAPPINGS[mapping])

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if kind == "conv":
            layer = AnalogConv2d(2, 4, 3, padding=1, config=cfg, seed=seed)
            x = torch.randn(3, 2, 4, 4, generator=g)
        else:
            layer = AnalogLinear(6, 4, config=cfg, seed=seed)
            x = torch.randn(5, 6, generator=g)
        opt = AnalogSGD(layer, lr=0.05)
        tile = layer.tile
        w0 = tile.weight.clone()
        out = layer(x)
        out.backward(torch.zeros_like(out))
        opt.step()
        assert torch.equal(tile.weight, w0)  # zero error: nothing moves
        out = layer(x)
        ((out - torch.randn(out.shape, generator=g)) ** 2).sum().backward()
        grad = tile._stash[0][0] if mode == "expected" else None
        opt.step()
        w = tile.weight
        assert torch.isfinite(w).all()
        inside = torch.ones_like(w, dtype=torch.bool)
        if device != "ideal":
            st = tile.device_state
            assert (w <= st.b_max).all() and (w >= st.b_min).all()
            inside = (w0 < st.b_max) & (w0 > st.b_min)
        s = torch.ones(tile.out_size) if tile.out_scale is None else tile.out_scale.detach()
        torch.testing.assert_close(layer.weight.reshape(tile.out_size, -1), s[:, None] * w)
        if grad is not None:
            moved = torch.sign(w - w0)
            assert (moved * torch.sign(grad) <= 0).all()
            big = (grad.abs() > grad.abs().max() * 1e-2) & inside
            assert big.sum() > 0
            assert torch.equal(moved[big], -torch.sign(grad[big]))
        return w.clone()

    assert torch.equal(run(3), run(3))
