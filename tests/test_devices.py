"""Device physics: closed forms, bounds, zero updates, config errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analogpipe.devices import (
    DEVICE_NAMES,
    DeviceConfig,
    apply_pulses,
    expected_update,
    response,
    sample_device_state,
)
from analogpipe.errors import ConfigError
from analogpipe.presets import paper_config
from analogpipe.tiles.io import IOConfig, res_for_bits
from analogpipe.tiles.pulses import UpdateConfig

CONFIGS = [
    DeviceConfig(name="ideal"),
    DeviceConfig(name="softbounds", w_max=0.8, w_min=-0.8),
    DeviceConfig(name="softbounds", w_max=0.6, w_min=-0.5, up_down=0.2, dw_min_dtod=0.3,
                 w_max_dtod=0.2, w_min_dtod=0.2, up_down_dtod=0.05),
    DeviceConfig(name="constantstep", w_max=0.5, w_min=-0.7, dw_min_dtod=0.2),
    DeviceConfig(name="powstep", w_max=0.8, w_min=-0.8, pow_gamma=2.0),
]


def test_soft_bounds_expected_update_is_the_closed_form():
    tau = 0.8
    cfg = DeviceConfig.soft_bounds(tau)
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(6, 7, generator=g, dtype=torch.float64) * 2 - 1) * 0.7
    dw = torch.randn(6, 7, generator=g, dtype=torch.float64) * 0.01
    state = sample_device_state(cfg, (6, 7))
    out = expected_update(w, dw, dw.abs(), state, cfg)
    torch.testing.assert_close(out, w + dw - dw.abs() * w / tau, rtol=0, atol=1e-15)
    # F = 1, G = W / tau
    q_up, q_down = response(w, state, cfg)
    torch.testing.assert_close((q_up + q_down) / 2, torch.ones_like(w))
    torch.testing.assert_close((q_down - q_up) / 2, w / tau)


def test_general_response_path_equals_where_form():
    cfg = CONFIGS[2]
    g = torch.Generator().manual_seed(1)
    state = sample_device_state(cfg, (5, 4), g)
    w = torch.rand(5, 4, generator=g) * 0.4 - 0.2
    dw = torch.randn(5, 4, generator=g) * 0.01
    q_up, q_down = response(w, state, cfg)
    want = (w + dw * torch.where(dw > 0, q_up, q_down)).clamp(state.b_min, state.b_max)
    torch.testing.assert_close(expected_update(w, dw, dw.abs(), state, cfg), want)


def test_dtod_sampling_follows_aihwkit_formulas_and_is_seeded():
    cfg = DeviceConfig(name="softbounds", dw_min=0.01, w_max=1.0, w_min=-1.0,
                       dw_min_dtod=0.3, w_max_dtod=0.3, w_min_dtod=0.3)
    a = sample_device_state(cfg, (200, 200), torch.Generator().manual_seed(3))
    b = sample_device_state(cfg, (200, 200), torch.Generator().manual_seed(3))
    assert torch.equal(a.delta_up, b.delta_up) and torch.equal(a.b_max, b.b_max)
    # gain spread: std(delta)/dw_min ~ dw_min_dtod (40k samples: rel. error ~0.4%)
    assert abs(a.delta_up.std().item() / 0.01 - 0.3) < 0.02
    assert abs(a.b_max.std().item() - 0.3) < 0.02
    assert (a.b_max > 0).all() and (a.b_min < 0).all()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-4, 10.0))
def test_weights_stay_in_bounds_and_zero_update_is_identity(cfg, seed, scale):
    g = torch.Generator().manual_seed(seed)
    state = sample_device_state(cfg, (8, 9), g)
    lo = -0.9 if cfg.name == "ideal" else state.b_min
    hi = 0.9 if cfg.name == "ideal" else state.b_max
    w = lo + (hi - lo) * torch.rand(8, 9, generator=g)
    dw = torch.randn(8, 9, generator=g) * scale
    extra = torch.rand(8, 9, generator=g) * scale  # per-sample |.| sum >= |sum|
    out = expected_update(w, dw, dw.abs() + extra, state, cfg)
    n_up = torch.randint(0, 200, (8, 9), generator=g).float()
    n_down = torch.randint(0, 200, (8, 9), generator=g).float()
    pulsed = apply_pulses(w, n_up * scale, n_down * scale, state, cfg, g)
    if cfg.name != "ideal":
        for t in (out, pulsed):
            assert (t <= state.b_max + 1e-6).all() and (t >= state.b_min - 1e-6).all()
    zero = torch.zeros_like(w)
    assert torch.equal(expected_update(w, zero, zero, state, cfg), w)
    assert torch.equal(apply_pulses(w, zero, zero, state, cfg, g), w)


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=lambda c: c.name)
def test_update_direction_follows_the_sign_of_dw(cfg):
    state = sample_device_state(cfg, (4, 4), torch.Generator().manual_seed(0))
    w = torch.zeros(4, 4)
    dw = torch.full((4, 4), 1e-3)
    assert (expected_update(w, dw, dw.abs(), state, cfg) > 0).all()
    assert (expected_update(w, -dw, dw.abs(), state, cfg) < 0).all()


def test_soft_bounds_n_pulses_closed_form_equals_sequential_pulses():
    cfg = DeviceConfig(name="softbounds", dw_min=0.01, w_max=1.0, w_min=-1.0)
    state = sample_device_state(cfg, (1, 1))
    w0 = torch.tensor([[0.5]], dtype=torch.float64)
    seq = 0.5
    for _ in range(37):
        seq += 0.01 * (1 - seq)  # aihwkit: up pulses from 0.5 give 0.005, 0.00495, ...
    out = apply_pulses(w0, torch.tensor([[37.0]], dtype=torch.float64),
                       torch.zeros(1, 1, dtype=torch.float64), state, cfg)
    assert abs(out.item() - seq) < 1e-13


def test_bad_settings_are_refused_with_the_field_name():
    with pytest.raises(ConfigError, match="tau"):
        DeviceConfig.soft_bounds(0.0)
    with pytest.raises(ConfigError, match="w_max"):
        DeviceConfig(name="softbounds", w_max=-0.1, w_min=-0.5)
    with pytest.raises(ConfigError, match="w_min"):
        DeviceConfig(name="softbounds", w_max=0.5, w_min=0.6)
    with pytest.raises(ConfigError, match="device.name"):
        DeviceConfig(name="memristor9000")
    with pytest.raises(ConfigError, match="bits"):
        res_for_bits(0)
    with pytest.raises(ConfigError, match="out_noise"):
        IOConfig(out_noise=-0.1)
    with pytest.raises(ConfigError, match="update.mode"):
        UpdateConfig(mode="magic")
    with pytest.raises(ConfigError, match="tau"):
        paper_config(tau=-1)
    with pytest.raises(ConfigError, match="dw_min_std"):
        DeviceConfig(dw_min_std=-1)
    assert set(DEVICE_NAMES) == {"ideal", "softbounds", "constantstep", "powstep"}
    assert math.isinf(DeviceConfig(name="ideal").tau)


def test_apply_pulse_counts_in_place_equals_apply_pulses():
    """The tile's in-place form from (signed, total), with the pair table (small counts) and
    the per-count table (large counts), against apply_pulses: float32 within 1e-7 of the
    weights, untouched elements exactly unchanged; other devices bit for bit."""
    import importlib

    from analogpipe.devices import apply_pulse_counts_

    response_mod = importlib.import_module("analogpipe.devices.response")
    g = torch.Generator().manual_seed(0)
    cfgs = [DeviceConfig.soft_bounds(0.8),
            DeviceConfig(name="softbounds", w_max=0.6, w_min=-0.7, dw_min_dtod=0.2, up_down=0.1),
            DeviceConfig(name="constantstep", w_max=0.8, w_min=-0.8)]
    for cfg in cfgs:
        state = sample_device_state(cfg, (30, 20), g)
        for rate in (0.3, 400.0):  # pair table / per-count table
            n_up = torch.poisson(torch.full((30, 20), rate), generator=g)
            n_down = torch.poisson(torch.full((30, 20), rate), generator=g)
            n_up[::4] = 0
            n_down[::4] = 0
            w = (torch.rand(30, 20, generator=g) - 0.5) * 0.8
            ref = apply_pulses(w, n_up, n_down, state, cfg)
            got = apply_pulse_counts_(w.clone(), n_down - n_up, n_down + n_up, state, cfg)
            exact = rate > response_mod.PAIR_TABLE_MAX or cfg.name != "softbounds" \
                or isinstance(state.b_max, torch.Tensor)
            torch.testing.assert_close(got, ref, rtol=0, atol=0 if exact else 1e-7)
            assert torch.equal(got[::4], w[::4])
