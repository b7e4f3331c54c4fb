"""Layers and AnalogSGD: digital parity, state round-trip, seam, digits accuracy."""

import copy

import pytest
import torch
from torch import nn

from analogpipe.data import batches, load_dataset
from analogpipe.errors import ConfigError
from analogpipe.models import mlp
from analogpipe.nn import AnalogConv2d, AnalogLinear, analog_tiles, convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.presets import ideal_config, paper_config
from analogpipe.tiles import IOConfig, TileConfig
from analogpipe.tiles.pulses import UpdateConfig


def _train_pair(net, make_input, n_classes, steps=5, lr=0.1, momentum=0.0, wd=0.0):
    ref = copy.deepcopy(net)
    an = convert_to_analog(net, ideal_config())
    opt = AnalogSGD(an, lr=lr, momentum=momentum, weight_decay=wd)
    ropt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = make_input(g)
        y = torch.randint(0, n_classes, (x.shape[0],), generator=g)
        la = nn.functional.cross_entropy(an(x), y)
        la.backward()
        opt.step()
        lr_ = nn.functional.cross_entropy(ref(x), y)
        lr_.backward()
        ropt.step()
        ropt.zero_grad()
        assert la.item() == lr_.item()
    return an, ref


def test_digital_parameters_follow_torch_sgd_with_momentum_and_weight_decay():
    """Tiles take plain analog SGD steps; digital parameters get torch's momentum and decay."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12), nn.ReLU(), nn.BatchNorm1d(12))
    an, ref = _train_pair(net, lambda g: torch.randn(8, 3, 4, generator=g), 12,
                          momentum=0.9, wd=5e-4)
    assert torch.equal(an[1].weight, ref[1].weight) and torch.equal(an[3].bias, ref[3].bias)


def test_ideal_linear_equals_nn_linear_and_sgd_bit_for_bit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    an, ref = _train_pair(net, lambda g: torch.randn(8, 20, generator=g), 5)
    for a, r in zip((an[0], an[2]), (ref[0], ref[2])):
        assert torch.equal(a.tile.weight, r.weight) and torch.equal(a.bias, r.bias)


def test_ideal_conv_equals_nn_conv2d_and_sgd_bit_for_bit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False), nn.Flatten(),
                        nn.Linear(4 * 16, 3))
    an, ref = _train_pair(net, lambda g: torch.randn(2, 3, 8, 8, generator=g), 3, steps=4)
    assert torch.equal(an[0].weight_view(), ref[0].weight)
    assert torch.equal(an[3].weight_view(), ref[3].weight)
    assert torch.equal(an[1].weight, ref[1].weight)


def test_backward_reads_the_current_weights_and_update_waits_for_the_call():
    """The seam: forward on version 0, update in between, backward on version 1."""
    cfg = TileConfig(forward=IOConfig.perfect(), backward=IOConfig.perfect(),
                     update=UpdateConfig(granularity="microbatch"))
    lin = AnalogLinear(4, 3, bias=False, config=cfg)
    w0 = torch.randn(3, 4) * 0.1
    lin.tile.set_weights(w0)
    x = torch.randn(2, 4, requires_grad=True)
    y = lin(x)  # forward on W0
    lin.tile.weight.add_(0.05)  # another micro-batch's update lands here
    d = torch.randn(2, 3)
    y.backward(d)
    torch.testing.assert_close(x.grad, d @ (w0 + 0.05))  # backward saw W1
    torch.testing.assert_close(lin.tile.weight, w0 + 0.05)  # no update until asked
    assert lin.tile.pending == 1
    lin.tile.apply_update(0.1)
    assert lin.tile.pending == 0
    assert not torch.equal(lin.tile.weight, w0 + 0.05)


def test_state_dict_round_trips_device_draws_generator_and_scales():
    torch.manual_seed(0)
    cfg = paper_config(0.8)
    cfg = TileConfig(device=type(cfg.device)(name="softbounds", w_max=0.8, w_min=-0.8,
                                               dw_min_dtod=0.3, w_max_dtod=0.2),
                     forward=cfg.forward, backward=cfg.backward, update=cfg.update,
                     mapping=cfg.mapping)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 36, 4))
    a = convert_to_analog(net, cfg, seed=1)
    x = torch.randn(3, 1, 8, 8)
    a(x).sum().backward()
    AnalogSGD(a, lr=0.1).step()
    a(x)  # advance the noise generator
    b = convert_to_analog(net, cfg, seed=99)
    b.load_state_dict(a.state_dict())
    for ta, tb in zip(analog_tiles(a), analog_tiles(b)):
        assert torch.equal(ta.weight, tb.weight)
        assert torch.equal(ta.dev_delta_up, tb.dev_delta_up)
        assert torch.equal(ta.dev_b_max, tb.dev_b_max)
        assert torch.equal(ta.out_scale, tb.out_scale)
    assert torch.equal(a(x), b(x))  # same noise draws from here on


def test_paper_config_maps_weights_and_learns_out_scaling():
    torch.manual_seed(0)
    lin = nn.Linear(10, 4)
    a = AnalogLinear.from_digital(lin, paper_config(0.8))
    assert isinstance(a.tile.out_scale, nn.Parameter)
    torch.testing.assert_close(a.tile.weight.abs().amax(1), torch.full((4,), 0.4))
    torch.testing.assert_close(a.tile.get_weights(), lin.weight.detach())
    assert 0.49 < a.tile.saturation().abs().max().item() <= 0.5 + 1e-6
    a(torch.randn(5, 10)).sum().backward()
    assert a.tile.out_scale.grad is not None


def test_bad_optimizer_and_layer_settings():
    with pytest.raises(ConfigError, match="lr"):
        AnalogSGD(nn.Sequential(AnalogLinear(2, 2)), lr=-0.1)
    with pytest.raises(ConfigError, match="lr"):
        AnalogSGD(nn.Sequential(AnalogLinear(2, 2)), lr=0.0)
    with pytest.raises(ConfigError, match="weight_scaling_omega"):
        paper_config(0.5, omega=0.9)
    with pytest.raises(ConfigError, match="groups"):
        AnalogConv2d.from_digital(nn.Conv2d(4, 4, 3, groups=2), ideal_config())


@pytest.mark.parametrize("update", ["expected", "pulsed"])
def test_analog_mlp_with_paper_config_learns_digits(update):
    ds = load_dataset("digits", flatten=True, seed=0)
    torch.manual_seed(0)
    model = convert_to_analog(mlp(64, 10, hidden=(64,)), paper_config(0.8, update=update), seed=0)
    opt = AnalogSGD(model, lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        for x, y in batches(ds.train_x, ds.train_y, 16, generator=g):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(ds.test_x).argmax(1) == ds.test_y).float().mean().item()
    assert acc >= 0.90, acc


@pytest.mark.parametrize("k,stride,pad,dil,hw", [(3, 1, 1, 1, (7, 7)), (3, 2, 1, 1, (7, 8)),
                                                 (1, 2, 0, 1, (6, 6)), (2, 1, 0, 2, (6, 5)),
                                                 (3, 3, 2, 1, (5, 9))])
def test_conv_patches_and_fold_equal_torch_unfold_and_fold(k, stride, pad, dil, hw):
    """The strided patches equal F.unfold exactly; the strided fold equals F.fold (float64,
    same sums up to rounding order); patch_rows are the transposed patches."""
    from analogpipe.nn import AnalogConv2d

    layer = AnalogConv2d(3, 4, k, stride=stride, padding=pad, dilation=dil).double()
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    ref = torch.nn.functional.unfold(x, k, dil, pad, stride)
    assert torch.equal(layer.unfold(x), ref)
    assert torch.equal(layer.patch_rows(x), ref.transpose(1, 2).reshape(-1, ref.shape[1]))
    cols = torch.randn_like(ref)
    torch.testing.assert_close(layer.fold(cols, hw),
                               torch.nn.functional.fold(cols, hw, k, dil, pad, stride),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("k,stride,pad,dil", [(3, 1, 1, 1), (3, 2, 2, 1), (1, 2, 0, 1),
                                              (2, 1, 1, 2)])
def test_conv_forward_periphery_on_patches_equals_the_unfold_path(k, stride, pad, dil):
    """The fused path (max-pooled patch maxima, im2col and DAC scaling in one pass) gives
    bit-identical outputs to the periphery on F.unfold's columns with the same noise draws."""
    from analogpipe.nn import AnalogConv2d
    from analogpipe.presets import paper_config
    from analogpipe.tiles.io import analog_mvm, analog_mvm_patches

    cfg = paper_config(update="expected")
    layer = AnalogConv2d(3, 5, k, stride=stride, padding=pad, dilation=dil, config=cfg)
    x = torch.randn(2, 3, 9, 8)
    x[0, :, :4] = 0  # whole zero patches: alpha 0, output exactly 0
    cols = torch.nn.functional.unfold(x, k, dil, pad, stride)
    alpha = layer.patch_absmax(x)
    assert torch.equal(alpha.reshape(2, 1, -1), cols.abs().amax(1, keepdim=True))
    io, w = cfg.forward, layer.tile.weight
    ref = analog_mvm(cols, w, io, torch.Generator().manual_seed(3), columns=True)
    fused = analog_mvm_patches(x, layer.geometry, alpha, w, io, torch.Generator().manual_seed(3))
    assert torch.equal(fused, ref)
    assert torch.equal(analog_mvm_patches(x, layer.geometry, None, w, io,
                                          torch.Generator().manual_seed(3)), ref)
