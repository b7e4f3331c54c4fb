"""A layer used several times in one forward (weight sharing): every use within a micro-batch
goes into that micro-batch's update, in every executor.

Oracle: torch.optim.SGD on the digital model (plain loop for SP/GPipe and WOP, whose updates are
mini-batch SGD), and the digital model driven through the same schedule for AP (stale weights,
same arithmetic). The analog model has an ideal device and perfect IO, so it must follow.
The distributed executor runs in 2 spawned gloo processes (see tests/test_dist.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from analogpipe.nn import analog_tiles, convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.pipeline import schedules
from analogpipe.pipeline.launch import launch_local
from analogpipe.pipeline.local import LocalPipeline
from analogpipe.presets import ideal_config

LOSS = nn.functional.cross_entropy
LR = 0.1
M, B, STEPS = 2, 3, 2


class Twice(nn.Module):
    """The same Linear applied twice (a block reused within one forward)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.lin(x)))


def _net() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(12, 16), Twice(16), nn.Tanh(), Twice(16), nn.Linear(16, 4))


def _split(model: nn.Sequential) -> list[nn.Sequential]:
    return [model[:2], model[2:]]  # each stage holds a shared layer


def _batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + k)
    return torch.randn(4, 12, generator=g), torch.randint(0, 4, (4,), generator=g)


def _torch_sgd(model: nn.Module) -> nn.Module:
    """Mini-batch SGD: B micro-batches accumulate (loss / B), one torch.optim.SGD step."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        opt.zero_grad()
        for j in range(B):
            x, y = _batch(step * B + j)
            (LOSS(model(x), y) / B).backward()
        opt.step()
    return model


def _pipeline(model: nn.Sequential, scheme: str) -> LocalPipeline:
    pipe = LocalPipeline(_split(model), lr=LR, loss_fn=LOSS)
    pipe.run(schedules.build(scheme, M, B, STEPS), _batch)
    return pipe


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """Logical weights of every weight layer in order (analog or digital)."""
    out = []
    for m in model.modules():
        if hasattr(m, "in_features") and hasattr(m, "weight"):
            out += [m.weight.detach().clone(), m.bias.detach().clone()]
    return out


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want) == 8
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


def test_reused_module_stays_one_analog_layer():
    lin = nn.Linear(5, 5)
    an = convert_to_analog(nn.Sequential(lin, nn.Tanh(), lin), ideal_config())
    assert an[0] is an[2]


@pytest.mark.parametrize("scheme", ["sp", "wop"])
def test_sp_and_wop_equal_torch_sgd(scheme):
    want = _weights(_torch_sgd(_net()))
    an = convert_to_analog(_net(), ideal_config())
    pipe = _pipeline(an, scheme)
    _assert_close(_weights(an), want)
    assert all(t.pending == 0 for t in analog_tiles(an))
    assert pipe.version == [STEPS, STEPS]


def test_sp_per_microbatch_updates_equal_the_digital_model_in_the_same_schedule():
    sched = schedules.build("sp", M, B, STEPS, update_per_microbatch=True)
    digital = _net()
    LocalPipeline(_split(digital), lr=LR, loss_fn=LOSS).run(sched, _batch)
    an = convert_to_analog(_net(), ideal_config())
    LocalPipeline(_split(an), lr=LR, loss_fn=LOSS).run(sched, _batch)
    _assert_close(_weights(an), _weights(digital))
    assert all(t.pending == 0 for t in analog_tiles(an))


def test_ap_equals_the_digital_model_in_the_same_schedule_and_leaves_no_backlog():
    digital = _net()
    _pipeline(digital, "ap")
    an = convert_to_analog(_net(), ideal_config())
    _pipeline(an, "ap")
    _assert_close(_weights(an), _weights(digital))
    assert all(t.pending == 0 for t in analog_tiles(an))  # no entry left behind


def test_uses_are_grouped_per_microbatch():
    an = convert_to_analog(_net(), ideal_config())
    opt = AnalogSGD(an, lr=LR)
    shared = an[1].lin.tile
    for k in range(3):
        x, y = _batch(k)
        LOSS(an(x), y).backward()
        opt.end_microbatch()
    assert shared.pending == 3 and len(shared._stash) == 6
    opt.step(count=2)
    assert shared.pending == 1 and len(shared._stash) == 2
    opt.zero_grad()
    assert shared.pending == 0 and len(shared._stash) == 0


# --- the distributed executor ------------------------------------------------------------------
def _dist_worker(rank: int, world_size: int, args: dict) -> dict:
    from analogpipe.pipeline.dist import DistributedPipeline

    out = {}
    for scheme in args["schemes"]:
        stage = _split(convert_to_analog(_net(), ideal_config()))[rank]
        pipe = DistributedPipeline(stage, rank, world_size, lr=LR, loss_fn=LOSS)
        pipe.run(schedules.build(scheme, world_size, B, STEPS), _batch)
        out[scheme] = (_weights(stage), [t.pending for t in analog_tiles(stage)])
    return out


@pytest.fixture(scope="module")
def dist_results():
    return launch_local(_dist_worker, M, {"schemes": ["sp", "wop", "ap"]},
                        threads_per_worker=1, timeout_s=240)


@pytest.mark.parametrize("scheme", ["sp", "wop", "ap"])
def test_distributed_executor_equals_torch_sgd(dist_results, scheme):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if scheme == "ap":
            digital = _net()
            _pipeline(digital, "ap")
            want = _weights(digital)
        else:
            want = _weights(_torch_sgd(_net()))
    finally:
        torch.set_num_threads(threads)
    got = dist_results[0][scheme][0] + dist_results[1][scheme][0]
    _assert_close(got, want)
    assert dist_results[0][scheme][1] == [0, 0] and dist_results[1][scheme][1] == [0, 0]


def test_unmarked_uses_count_as_one_microbatch():
    # without an executor marking boundaries, the uses since the last step are one micro-batch
    an = convert_to_analog(_net(), ideal_config())
    x, y = _batch(0)
    LOSS(an(x), y).backward()
    assert len(an[1].lin.tile._stash) == 2 and an[1].lin.tile.pending == 1
    ref = copy.deepcopy(an)
    AnalogSGD(an, lr=LR).step(count=1)
    assert len(an[1].lin.tile._stash) == 0
    assert not torch.equal(an[1].lin.tile.weight, ref[1].lin.tile.weight)
