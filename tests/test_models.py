"""Models: shapes, block names, architecture counts, determinism, block-wise execution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from analogpipe.models import (
    MODEL_NAMES,
    BasicBlock,
    block_names,
    blocks,
    build_model,
    mlp,
    resnet10,
    resnet18,
    resnet34,
    small_cnn,
)

ALLOWED_LEAVES = (
    nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Identity,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model_output_shape_and_layers(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_shape=(3, 16, 16), width=8)
    assert isinstance(model, nn.Sequential)
    out = model(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 7)
    # Only plain layers the analog converter knows how to replace (or leave alone).
    for module in model.modules():
        if not list(module.children()):
            assert isinstance(module, ALLOWED_LEAVES), type(module)


def test_cnn_and_mlp_on_digits_shape() -> None:
    x = torch.randn(5, 1, 8, 8)
    assert small_cnn(10, 1, 8)(x).shape == (5, 10)
    assert build_model("cnn", 10, (1, 8, 8))(x).shape == (5, 10)
    assert build_model("mlp", 10, (1, 8, 8))(x).shape == (5, 10)
    assert build_model("mlp", 10, (64,))(x.flatten(1)).shape == (5, 10)


def test_mlp_blocks() -> None:
    model = mlp(64, 10, hidden=(32, 16, 8))
    assert block_names(model) == ["flatten", "fc1", "fc2", "fc3", "out"]
    fc1 = model.get_submodule("fc1")
    assert isinstance(fc1[0], nn.Linear) and isinstance(fc1[1], nn.ReLU)
    assert isinstance(model.get_submodule("out"), nn.Linear)
    assert model.get_submodule("out").out_features == 10


def test_resnet_block_names() -> None:
    assert block_names(resnet10(width=8)) == [
        "stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "head",
    ]
    names18 = block_names(resnet18(width=8))
    assert names18[1:-1] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    names34 = block_names(resnet34(width=8))
    expected = [f"layer{i}.{j}" for i, n in zip(range(1, 5), (3, 4, 6, 3)) for j in range(n)]
    assert names34 == ["stem", *expected, "head"]


def test_resnet34_has_3_4_6_3_basic_blocks() -> None:
    model = resnet34(width=8)
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 3 + 4 + 6 + 3
    for i, n in zip(range(1, 5), (3, 4, 6, 3)):
        assert len(model.get_submodule(f"layer{i}")) == n


def test_resnet_widths_strides_and_stem() -> None:
    model = resnet10(width=8)
    stem_conv = model.get_submodule("stem")[0]
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())  # CIFAR: no max-pool
    x = torch.randn(2, 3, 16, 16)
    shapes = []
    for _, block in blocks(model)[:-1]:
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(8, 16, 16), (8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2)]
    # Convs followed by BN carry no bias; the shortcut conv appears only where shape changes.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
    assert isinstance(model.get_submodule("layer1.0").shortcut, nn.Identity)
    assert isinstance(model.get_submodule("layer2.0").shortcut, nn.Sequential)


def _hand_count_resnet(blocks_per_stage, num_classes=10, in_channels=3, width=64) -> int:
    """Parameter count from the architecture formula: conv k*k*cin*cout, BN 2*c, linear."""

    def conv(cin, cout, k):
        return k * k * cin * cout

    def bn(c):
        return 2 * c  # weight and bias (running stats are buffers)

    total = conv(in_channels, width, 3) + bn(width)
    cin = width
    for stage, n in enumerate(blocks_per_stage):
        cout = width * 2**stage
        for j in range(n):
            stride = 2 if (stage > 0 and j == 0) else 1
            total += conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
            if stride != 1 or cin != cout:
                total += conv(cin, cout, 1) + bn(cout)
            cin = cout
    return total + cin * num_classes + num_classes


def test_resnet10_param_count_matches_hand_count() -> None:
    expected = _hand_count_resnet((1, 1, 1, 1))
    assert n_params(resnet10()) == expected == 4_903_242


def test_resnet18_param_count_matches_published() -> None:
    # 11,173,962 is the widely reported count of the CIFAR ResNet18 (10 classes).
    assert n_params(resnet18()) == _hand_count_resnet((2, 2, 2, 2)) == 11_173_962


def test_resnet34_param_count_small_width() -> None:
    model = resnet34(num_classes=100, in_channels=1, width=8)
    assert n_params(model) == _hand_count_resnet((3, 4, 6, 3), 100, 1, 8)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_parameters(name: str) -> None:
    torch.manual_seed(123)
    a = build_model(name, 10, (3, 16, 16), width=8)
    torch.manual_seed(123)
    b = build_model(name, 10, (3, 16, 16), width=8)
    torch.manual_seed(124)
    c = build_model(name, 10, (3, 16, 16), width=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_running_blocks_in_order_equals_model(name: str) -> None:
    """A pipeline that runs the blocks stage by stage computes the same function."""
    torch.manual_seed(0)
    model = build_model(name, 10, (3, 16, 16), width=8).eval()
    x = torch.randn(3, 3, 16, 16)
    h = x
    for block_name, block in blocks(model):
        assert model.get_submodule(block_name) is block
        h = block(h)
    torch.testing.assert_close(h, model(x), rtol=0, atol=0)
    # Every parameter belongs to exactly one block.
    assert sum(n_params(b) for _, b in blocks(model)) == n_params(model)


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="model name 'vgg'.*mlp, cnn, resnet10"):
        build_model("vgg", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="in_shape"):
        build_model("resnet10", 10, (64,))
    with pytest.raises(ValueError, match="width"):
        build_model("cnn", 10, (1, 8, 8), width=0)
    with pytest.raises(ValueError, match="image_size"):
        small_cnn(10, 1, 2)
    with pytest.raises(ValueError, match="width"):
        resnet10(width=0)


def test_build_model_width_defaults() -> None:
    torch.manual_seed(0)
    assert n_params(build_model("resnet10", 10, (3, 32, 32))) == 4_903_242
    cnn = build_model("cnn", 10, (3, 32, 32))
    assert cnn.get_submodule("conv1")[0].out_channels == 16
    m = build_model("mlp", 10, (1, 8, 8), width=32)
    assert m.get_submodule("fc1")[0].out_features == 32
    assert m.get_submodule("fc2")[0].out_features == 16


def test_he_initialisation_statistics_and_seed():
    import math

    import pytest
    import torch

    from analogpipe.models import build_model, initialize

    m = initialize(build_model("mlp", 10, (64,), width=256, depth=3), "he", seed=3)
    linears = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    for i, lin in enumerate(linears):
        fan_in = lin.weight.shape[1]
        want = math.sqrt((1.0 if i == len(linears) - 1 else 2.0) / fan_in)
        # std of n >= 2560 normals: relative standard error <= 1/sqrt(2n) ~ 1.4%; allow 8%
        assert abs(lin.weight.std().item() / want - 1) < 0.08
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    again = initialize(build_model("mlp", 10, (64,), width=256, depth=3), "he", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="init"):
        initialize(m, "xavier", 0)
