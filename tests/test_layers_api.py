"""Analog layers behave as PyTorch users expect: initialisation, `.weight`, conversion, loading.

Oracles: nn.Linear / nn.Conv*d (their initial distribution, their outputs and gradients with an
ideal device), torch.optim.SGD, and the closed form of the omega mapping and of the clip.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections import OrderedDict

import pytest
import torch
from scipy import stats
from torch import nn

from analogpipe.devices import DeviceConfig
from analogpipe.errors import ConfigError
from analogpipe.nn import (
    AnalogConv1d,
    AnalogConv2d,
    AnalogLinear,
    DigitalLayerWarning,
    analog_tiles,
    convert_to_analog,
    load_digital_state_dict,
)
from analogpipe.optim import AnalogSGD
from analogpipe.presets import ideal_config, paper_config
from analogpipe.tiles import IOConfig, MappingConfig, TileConfig, accept_config_changes
from analogpipe.tiles.pulses import UpdateConfig


# --- 7. layers built directly --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv1d"])
def test_direct_layers_are_initialised_like_torch_from_the_seed(kind):
    torch.manual_seed(0)
    if kind == "linear":
        a, ref = AnalogLinear(96, 80, config=ideal_config(), seed=5), nn.Linear(96, 80)
        fan_in = 96
    elif kind == "conv2d":
        a, ref = AnalogConv2d(8, 70, 3, config=ideal_config(), seed=5), nn.Conv2d(8, 70, 3)
        fan_in = 72
    else:
        a, ref = AnalogConv1d(24, 90, 3, config=ideal_config(), seed=5), nn.Conv1d(24, 90, 3)
        fan_in = 72
    w = a.weight
    assert w.shape == ref.weight.shape
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), ...)
    assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
    assert a.bias.abs().max() <= bound
    # same distribution as torch's own initialisation (two-sample KS, ~6000 draws each)
    p = stats.ks_2samp(w.flatten().numpy(), ref.weight.detach().flatten().numpy()).pvalue
    assert p > 1e-3
    # seeded: same seed same weights, other seed other weights; programmed on the tile
    again = type(a)(*_args(kind), config=ideal_config(), seed=5)
    assert torch.equal(again.weight, w) and torch.equal(again.bias, a.bias)
    other = type(a)(*_args(kind), config=ideal_config(), seed=6)
    assert not torch.equal(other.weight, w)
    torch.testing.assert_close(a.tile.weight, w.reshape(a.tile.out_size, -1), rtol=0, atol=0)


def _args(kind):
    return {"linear": (96, 80), "conv2d": (8, 70, 3), "conv1d": (24, 90, 3)}[kind]


def test_direct_init_is_programmed_through_the_mapping():
    cfg = TileConfig(device=DeviceConfig(name="softbounds", w_max=0.6, w_min=-0.6),
                     mapping=MappingConfig(weight_scaling_omega=0.3))
    a = AnalogLinear(10, 6, config=cfg, seed=1)
    torch.testing.assert_close(a.tile.weight.abs().amax(1), torch.full((6,), 0.3))
    assert a.weight.abs().max() <= 1 / math.sqrt(10) + 1e-7


def test_a_net_of_direct_layers_learns():
    cfg = ideal_config()
    net = nn.Sequential(AnalogLinear(4, 16, config=cfg, seed=0), nn.Tanh(),
                        AnalogLinear(16, 1, config=cfg, seed=1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    opt = AnalogSGD(net, lr=0.1)
    first = None
    for _ in range(150):
        loss = nn.functional.mse_loss(net(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


# --- 8. read-only .weight, attention refused -----------------------------------------------------
def test_weight_is_a_read_only_logical_view():
    cfg = TileConfig(device=DeviceConfig(name="ideal"), forward=IOConfig.perfect(),
                     backward=IOConfig.perfect(),
                     mapping=MappingConfig(weight_scaling_omega=0.2, learn_out_scaling=True))
    a = AnalogConv2d(3, 4, 3, config=cfg, seed=0)
    w = a.weight
    assert w.shape == (4, 3, 3, 3) and not w.requires_grad
    torch.testing.assert_close(w.reshape(4, -1), a.tile.out_scale.detach()[:, None]
                               * a.tile.weight)
    x = torch.randn(2, 3, 5, 5)
    # torch code reading .weight computes what the layer computes
    torch.testing.assert_close(nn.functional.conv2d(x, w, a.bias), a(x), rtol=1e-5, atol=1e-6)
    w.zero_()  # a copy: the tile is untouched
    assert a.weight.abs().sum() > 0
    with pytest.raises(AttributeError, match="read-only.*set_weights"):
        a.weight = torch.zeros(4, 3, 3, 3)
    a.set_weights(torch.full((4, 3, 3, 3), 0.1))
    torch.testing.assert_close(a.weight, torch.full((4, 3, 3, 3), 0.1))


@pytest.mark.parametrize("build", [
    lambda: nn.Sequential(OrderedDict(attn=nn.MultiheadAttention(8, 2))),
    lambda: nn.MultiheadAttention(8, 2),
    lambda: nn.TransformerEncoderLayer(8, 2, dim_feedforward=16),
    lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16), 2,
                                  enable_nested_tensor=False),
])
def test_attention_is_refused_rather_than_silently_digital(build):
    with pytest.raises(ConfigError, match="MultiheadAttention.*digital"):
        convert_to_analog(build(), ideal_config())


# --- 9. convert_to_analog ------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [nn.Linear(5, 3), nn.Conv2d(2, 3, 3), nn.Conv1d(2, 3, 3)])
def test_bare_layers_convert(layer):
    a = convert_to_analog(layer, ideal_config())
    assert type(a).__name__ == "Analog" + type(layer).__name__
    torch.testing.assert_close(a.weight, layer.weight.detach(), rtol=0, atol=0)


def test_conv1d_with_ideal_device_equals_nn_conv1d_and_torch_sgd():
    torch.manual_seed(0)
    digital = nn.Sequential(nn.Conv1d(3, 5, 3, stride=2, padding=1, dilation=2), nn.Tanh(),
                            nn.Conv1d(5, 2, 2, bias=False))
    an = convert_to_analog(digital, ideal_config())
    assert isinstance(an[0], AnalogConv1d)
    opt, ref = AnalogSGD(an, lr=0.1), torch.optim.SGD(digital.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 3, 11, generator=g)
        ya, yd = an(x), digital(x)
        torch.testing.assert_close(ya, yd, rtol=1e-5, atol=1e-6)
        (ya ** 2).sum().backward()
        (yd ** 2).sum().backward()
        opt.step()
        ref.step()
        ref.zero_grad()
    for a, d in zip([an[0], an[2]], [digital[0], digital[2]]):
        torch.testing.assert_close(a.weight, d.weight.detach(), rtol=1e-5, atol=1e-6)


def test_layers_left_digital_are_reported_and_warned_about():
    model = nn.Sequential(OrderedDict(emb=nn.Embedding(10, 6), fc=nn.Linear(6, 6),
                                      bn=nn.BatchNorm1d(6), head=nn.Linear(6, 2)))
    report: list = []
    with pytest.warns(DigitalLayerWarning, match="emb \\(Embedding\\)") as rec:
        an = convert_to_analog(model, ideal_config(), report=report)
    assert "bn" not in str(rec[0].message)  # normalisation is digital periphery: no warning
    assert report == [("emb", "Embedding"), ("bn", "BatchNorm1d")]
    assert isinstance(an.fc, AnalogLinear) and isinstance(an.emb, nn.Embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a conv net with BatchNorm converts silently
        convert_to_analog(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), ideal_config())


def test_lazy_grouped_and_tied_layers_get_clear_messages():
    lazy = nn.Sequential(OrderedDict(fc=nn.LazyLinear(4)))
    with pytest.raises(ConfigError, match="'fc' \\(LazyLinear\\) has no weights yet.*forward"):
        convert_to_analog(lazy, ideal_config())
    lazy(torch.randn(2, 7))  # materialised: now it converts
    assert isinstance(convert_to_analog(lazy, ideal_config()).fc, AnalogLinear)
    grouped = nn.Sequential(OrderedDict(c=nn.Conv2d(4, 4, 3, groups=2)))
    with pytest.raises(ConfigError, match="'c' \\(Conv2d\\).*groups"):
        convert_to_analog(grouped, ideal_config())
    same = nn.Sequential(OrderedDict(c=nn.Conv2d(4, 4, 3, padding="same")))
    with pytest.raises(ConfigError, match="'c'.*padding"):
        convert_to_analog(same, ideal_config())
    emb, head = nn.Embedding(10, 6), nn.Linear(6, 10, bias=False)
    head.weight = emb.weight  # tied
    with pytest.raises(ConfigError, match="'head'.*tied"):
        convert_to_analog(nn.Sequential(OrderedDict(emb=emb, head=head)), ideal_config())


# --- 10. loading ---------------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_state_from_another_tile_config_is_an_error_naming_the_fields():
    src = convert_to_analog(_mlp(), paper_config(0.8), seed=1)
    dst = convert_to_analog(_mlp(), paper_config(0.4), seed=2)
    before = [t.weight.clone() for t in analog_tiles(dst)]
    sd = _roundtrip(src.state_dict())
    with pytest.raises(ConfigError, match=r"device\.w_max: saved 0\.8, this model 0\.4.*"
                                          r"device\.w_min.*mapping\.weight_scaling_omega"):
        dst.load_state_dict(sd)
    assert torch.equal(analog_tiles(dst)[0].weight, before[0])  # refused before it changed
    with pytest.warns(UserWarning, match="device.w_max"), accept_config_changes():
        dst.load_state_dict(sd)
    for a, b in zip(analog_tiles(dst), analog_tiles(src)):
        assert torch.equal(a.weight, b.weight)
        assert a.config.device.w_max == 0.4  # the model keeps its own config
    with pytest.raises(ConfigError):  # the opt-in ends with the block
        dst.load_state_dict(sd)


def test_same_config_loads_silently_and_memory_budgets_do_not_count():
    src = convert_to_analog(_mlp(), paper_config(0.8), seed=1)
    cfg = paper_config(0.8)
    cfg = TileConfig(device=cfg.device, forward=cfg.forward, backward=cfg.backward,
                     update=UpdateConfig(chunk_elements=4096), mapping=cfg.mapping)
    dst = convert_to_analog(_mlp(), cfg, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dst.load_state_dict(_roundtrip(src.state_dict()))
    assert torch.equal(analog_tiles(dst)[1].weight, analog_tiles(src)[1].weight)


@pytest.mark.parametrize("cfg_name", ["ideal", "paper"])
def test_a_digital_state_dict_programs_the_analog_conversion(cfg_name):
    cfg = ideal_config() if cfg_name == "ideal" else paper_config(0.8)
    torch.manual_seed(1)
    trained = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        trained[3].weight.mul_(4)  # some weights beyond what a bounded device could hold
        trained[1].running_mean.fill_(0.3)
    an = convert_to_analog(_mlp_bn(), cfg)
    load_digital_state_dict(an, trained.state_dict())
    for i in (0, 3):
        w = trained[i].weight.detach()
        # programmed as convert_to_analog would: mapped by omega (rows scaled), exact logical
        torch.testing.assert_close(an[i].weight, w, rtol=1e-6, atol=1e-7)
        assert torch.equal(an[i].bias, trained[i].bias)
    assert torch.equal(an[1].running_mean, trained[1].running_mean)
    if cfg_name == "paper":
        tile = an[3].tile
        torch.testing.assert_close(tile.weight.abs().amax(1), torch.full((3,), 0.4))


def test_digital_state_dict_with_missing_or_foreign_keys_is_refused_before_loading():
    an = convert_to_analog(_mlp_bn(), ideal_config())
    before = an[0].weight
    sd = dict(_mlp_bn().state_dict())
    with torch.no_grad():
        sd = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    del sd["3.weight"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="3.weight.*extra.weight"):
        load_digital_state_dict(an, sd)
    assert torch.equal(an[0].weight, before)


def _mlp_bn():
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def test_refused_load_leaves_every_layer_unchanged():
    # only the *second* tile's saved config differs: the first must not be loaded either
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    src = convert_to_analog(net, paper_config(0.8), seed=1)
    dst = convert_to_analog(net, paper_config(0.8), seed=7)
    with torch.no_grad():
        for t in analog_tiles(dst):
            t.weight.mul_(0.5)  # make dst's conductances differ from src's
    state = copy.deepcopy(src.state_dict())
    state["2.tile._extra_state"]["config"]["device"]["w_max"] = 0.4
    before = [t.weight.clone() for t in analog_tiles(dst)]
    with pytest.raises(ConfigError, match="w_max"):
        dst.load_state_dict(state)
    for t, w in zip(analog_tiles(dst), before):
        assert torch.equal(t.weight, w)
