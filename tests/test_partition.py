"""Partition: exact DP against brute force; profiling a torch model; splitting it."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from analogpipe.pipeline.partition import (
    block_costs,
    block_names,
    block_output_elements,
    layer_specs,
    partition,
    split_model,
)
from analogpipe.timing.aimc import AimcCosts, layer_times, stage_costs


def brute_force(costs: list[int], M: int) -> int:
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), M - 1):
        bounds = (0, *cuts, n)
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_dp_matches_brute_force(data) -> None:
    costs = data.draw(st.lists(st.integers(0, 20), min_size=1, max_size=9))
    M = data.draw(st.integers(1, len(costs)))
    groups = partition(costs, M)
    assert len(groups) == M and all(groups)
    assert [i for g in groups for i in g] == list(range(len(costs)))  # contiguous, in order
    assert max(sum(costs[i] for i in g) for g in groups) == brute_force(costs, M)


def test_partition_examples() -> None:
    assert partition([1, 1, 1, 1], 2) == [[0, 1], [2, 3]]
    assert partition([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]
    assert partition([3.0], 1) == [[0]]
    assert partition([0, 0, 0], 3) == [[0], [1], [2]]


def test_partition_errors_are_actionable() -> None:
    names = ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "head"]
    with pytest.raises(ValueError) as info:
        partition([1] * 6, 9, names)
    assert str(info.value) == (
        "stages=9 but the model has only 6 blocks (stem, layer1.0, layer1.1, layer2.0, ...): "
        "use at most 6"
    )
    with pytest.raises(ValueError, match="stages=0 is invalid: use an integer from 1 to 6"):
        partition([1] * 6, 0)
    with pytest.raises(ValueError, match=">= 0"):
        partition([1, -2], 1)


# ------------------------------------------------------------------------ torch models


class FakeAnalogLinear(nn.Module):
    """Stands in for an analog layer: no nn.Linear inside, torch-like size attributes."""

    analog_kind = "linear"

    def __init__(self, i: int, o: int):
        super().__init__()
        self.in_features, self.out_features = i, o
        self.register_buffer("w", torch.randn(o, i))

    def forward(self, x):
        return x @ self.w.t()


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                       nn.ReLU()))
    m.add_module("down", nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()))
    m.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    m.add_module("hidden", FakeAnalogLinear(16, 32))
    m.add_module("fc", nn.Linear(32, 10))
    return m


def test_layer_specs_and_costs() -> None:
    m, x = small_model(), torch.randn(2, 3, 8, 8)
    m.train()
    specs = layer_specs(m, x)
    assert m.training  # mode restored
    assert [(s.name, s.block, s.kind, s.in_size, s.out_size, s.mvms_per_sample,
             s.out_elements_per_sample) for s in specs] == [
        ("stem.0", "stem", "conv2d", 27, 8, 64, 512),
        ("down.0", "down", "conv2d", 72, 16, 16, 256),
        ("hidden", "hidden", "linear", 16, 32, 1, 32),
        ("fc", "fc", "linear", 32, 10, 1, 10),
    ]
    assert block_names(m) == ["stem", "down", "pool", "hidden", "fc"]
    params = block_costs(m, x, "params")
    assert params == [8 * 27 + 8 + 16, 16 * 72 + 16, 0, 16 * 32, 32 * 10 + 10]
    macs = block_costs(m, x, "macs")
    assert macs == [64 * 27 * 8, 16 * 72 * 16, 0, 16 * 32, 32 * 10]
    aimc = AimcCosts()
    got = block_costs(m, x, "aimc", aimc)
    want = [sum(layer_times(s, 1, aimc, input_layer=i == 0)) for i, s in enumerate(specs)]
    assert got == pytest.approx([want[0], want[1], 0.0, want[2], want[3]])
    # the input layer: forward + one-MVM update, no transposed MVM (its error is never used)
    assert got[0] == pytest.approx(64 * 2)
    assert got[1] == pytest.approx(16 * 3)  # forward + transposed MVM + one-MVM update
    with pytest.raises(ValueError, match="metric='flops' is unknown"):
        block_costs(m, x, "flops")


def test_stage_costs_from_a_profiled_model() -> None:
    m, x = small_model(), torch.randn(1, 3, 8, 8)
    groups = partition(block_costs(m, x, "aimc"), 2, block_names(m))
    assert groups == [[0], [1, 2, 3, 4]]
    out = block_output_elements(m, x)
    assert out == {"stem": 512, "down": 256, "pool": 16, "hidden": 32, "fc": 10}
    c = stage_costs(layer_specs(m, x), groups, 4, AimcCosts(t_transfer=1.0),
                    block_order=block_names(m), block_out_elements=out)
    assert c.t_f == [64 * 4, (16 + 1 + 1) * 4]
    assert c.t_comm == [512 * 4]


def test_split_model_reproduces_the_model() -> None:
    m, x = small_model().eval(), torch.randn(3, 3, 8, 8)
    stages = split_model(m, [[0, 1], [2], [3, 4]])
    assert [list(dict(s.named_children())) for s in stages] == [["stem", "down"], ["pool"],
                                                                ["hidden", "fc"]]
    y = x
    for s in stages:
        y = s(y)
    torch.testing.assert_close(y, m(x), rtol=0, atol=0)
    assert stages[0].stem is m.stem  # shared modules, not copies
    assert [list(dict(s.named_children())) for s in split_model(m, [["stem"], ["down", "pool",
            "hidden", "fc"]])][0] == ["stem"]
    with pytest.raises(ValueError, match="each once, in order"):
        split_model(m, [[0], [2, 3, 4]])
    with pytest.raises(ValueError, match="not one of"):
        split_model(m, [["nope"]])


class WrappingAnalogConv(nn.Module):
    """An analog layer that keeps a digital twin inside: must be profiled once, not twice."""

    analog_kind = "conv2d"

    def __init__(self):
        super().__init__()
        self.inner = nn.Conv2d(4, 6, (3, 1), groups=2, padding=(1, 0))
        self.in_channels, self.out_channels = 4, 6
        self.kernel_size, self.groups = (3, 1), 2

    def forward(self, x):
        return self.inner(x)


def test_analog_wrapper_is_profiled_once() -> None:
    m = nn.Sequential()
    m.add_module("conv", WrappingAnalogConv())
    specs = layer_specs(m, torch.randn(2, 4, 5, 5))
    assert [(s.name, s.in_size, s.out_size, s.mvms_per_sample) for s in specs] == [
        ("conv", 2 * 3 * 1, 6, 25)
    ]
