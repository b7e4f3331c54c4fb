"""Output scaling is compensated on the update path (aihwkit's mapping): with an ideal device and
perfect IO the logical weight s * W follows plain SGD whatever the mapping.

Oracles: torch.optim.SGD on an nn.Linear / nn.Conv2d holding the logical weights (fixed omega),
and for a learned scale the closed form w_new = (s_new / s_old) * (w_old - lr * dL/dw), where dL/dw
is torch autograd's gradient of the digital layer at the logical weights.
"""

import copy

import pytest
import torch
from torch import nn

from analogpipe.devices import DeviceConfig
from analogpipe.nn import analog_tiles, convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.tiles import IOConfig, TileConfig
from analogpipe.tiles.pulses import UpdateConfig
from analogpipe.tiles.tile import MappingConfig


def _cfg(omega, learn, granularity="sample"):
    return TileConfig(device=DeviceConfig(name="ideal"), forward=IOConfig.perfect(),
                      backward=IOConfig.perfect(),
                      update=UpdateConfig(mode="expected", granularity=granularity),
                      mapping=MappingConfig(weight_scaling_omega=omega, learn_out_scaling=learn))


def _nets():
    torch.manual_seed(3)
    lin = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 16, 3))
    return [(lin, lambda g: torch.randn(7, 6, generator=g)),
            (conv, lambda g: torch.randn(4, 2, 4, 4, generator=g))]


@pytest.mark.parametrize("omega", [0.05, 0.3, 1.7])
@pytest.mark.parametrize("net_idx", [0, 1])
def test_fixed_mapping_is_plain_sgd_on_logical_weights(omega, net_idx):
    net, make_x = _nets()[net_idx]
    an = convert_to_analog(net, _cfg(omega, False)).double()
    ref = copy.deepcopy(net).double()
    digital = [m for m in ref.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():  # start the oracle from the programmed logical weights
        for tile, m in zip(analog_tiles(an), digital):
            m.weight.copy_(tile.get_weights().reshape(m.weight.shape))
    opt = AnalogSGD(an, lr=0.2)
    ropt = torch.optim.SGD(ref.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = make_x(g).double()
        y = torch.randint(0, 3, (x.shape[0],), generator=g)
        nn.functional.cross_entropy(an(x), y).backward()
        nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
        ropt.step()
        ropt.zero_grad()
    for tile, m in zip(analog_tiles(an), digital):
        torch.testing.assert_close(tile.get_weights(), m.weight.detach().reshape(tile.out_size, -1),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("granularity", ["sample", "microbatch"])
def test_learned_scaling_matches_closed_form(granularity):
    torch.manual_seed(1)
    lin = nn.Linear(6, 4)
    an = convert_to_analog(nn.Sequential(lin), _cfg(0.4, True, granularity)).double()
    tile = analog_tiles(an)[0]
    opt = AnalogSGD(an, lr=0.3)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = torch.randn(5, 6, generator=g, dtype=torch.float64)
        t = torch.randn(5, 4, generator=g, dtype=torch.float64)
        w_old = tile.get_weights()
        s_old = tile.out_scale.detach().clone()
        ref = nn.Linear(6, 4).double()
        with torch.no_grad():
            ref.weight.copy_(w_old)
            ref.bias.copy_(an[0].bias)
        ((ref(x) - t) ** 2).sum().backward()
        ((an(x) - t) ** 2).sum().backward()
        opt.step()
        s_new = tile.out_scale.detach()
        assert not torch.equal(s_new, s_old)  # the scale did learn
        expect = (s_new / s_old)[:, None] * (w_old - 0.3 * ref.weight.grad)
        torch.testing.assert_close(tile.get_weights(), expect, rtol=1e-10, atol=1e-12)


def test_uncompensated_update_would_be_off_by_s_squared():
    # guards the oracle: with a scale far from 1 the compensation is what makes the test pass
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    an = convert_to_analog(nn.Sequential(lin), _cfg(0.05, False)).double()
    tile = analog_tiles(an)[0]
    s = tile.out_scale.clone()
    assert (s > 2).all()
    x = torch.randn(2, 4, dtype=torch.float64)
    an(x).sum().backward()
    grad_tile = tile._stash[0][0]
    d_logical = torch.ones(2, 3, dtype=torch.float64)
    torch.testing.assert_close(grad_tile, (d_logical.t() @ x) / s[:, None])
