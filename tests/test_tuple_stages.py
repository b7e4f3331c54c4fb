"""Stages that pass a tuple of tensors (a skip connection across a stage boundary).

Oracles: the synchronous pipeline (SP) over 3 stages computes the same mini-batch gradients as
the unsplit model without a pipeline (WOP, one stage), so their weights agree to float64
rounding; the 2-process executor equals the single-process one bit for bit; a stage that
cannot take the tuple is diagnosed by the start-up shape check with the tuple's shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from analogpipe.pipeline import schedules
from analogpipe.pipeline.dist import DistributedPipeline, StageShapeError
from analogpipe.pipeline.launch import launch_local
from analogpipe.pipeline.local import LocalPipeline

LOSS = nn.functional.cross_entropy


class Split(nn.Module):
    """Returns (features, the input itself): the input skips to the next stage."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.lin(x)), x


class Merge(nn.Module):
    def __init__(self, skip_in: int = 6) -> None:
        super().__init__()
        self.lin, self.skip = nn.Linear(8, 8), nn.Linear(skip_in, 8)

    def forward(self, t: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h, x = t
        return torch.tanh(self.lin(h) + self.skip(x))


def _model(dtype=torch.float32, skip_in: int = 6) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(Split(), Merge(skip_in), nn.Linear(8, 3)).to(dtype)


def _batch(dtype=torch.float32):
    def batch(k: int):
        g = torch.Generator().manual_seed(50 + k)
        return torch.randn(5, 6, generator=g).to(dtype), torch.randint(0, 3, (5,), generator=g)

    return batch


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_local_pipeline_with_a_tuple_boundary_equals_the_unsplit_model():
    split, whole = _model(torch.float64), _model(torch.float64)
    pipe = LocalPipeline([split[0:1], split[1:2], split[2:3]], lr=0.1, loss_fn=LOSS)
    ref = LocalPipeline([whole], lr=0.1, loss_fn=LOSS)
    run = pipe.run(schedules.build("sp", 3, 2, 3), _batch(torch.float64))
    ref_run = ref.run(schedules.build("wop", 1, 2, 3), _batch(torch.float64))
    assert run.losses == pytest.approx(ref_run.losses, rel=1e-12)
    a, b = _weights(split), _weights(whole)
    assert all(torch.allclose(a[k], b[k], rtol=1e-12, atol=1e-14) for k in a)
    assert any(not torch.equal(a[k], _weights(_model(torch.float64))[k]) for k in a)  # trained
    # AP runs too, and the skip input's gradient reaches stage 0 (its weights move)
    ap = _model()
    before = ap[0].lin.weight.detach().clone()
    LocalPipeline([ap[0:1], ap[1:3]], lr=0.1, loss_fn=LOSS).run(
        schedules.build("ap", 2, 2, 2), _batch())
    assert not torch.equal(before, ap[0].lin.weight)


def _tuple_worker(rank: int, world_size: int, _: None) -> dict:
    model = _model()
    stages = [model[0:1], model[1:3]]
    pipe = DistributedPipeline(stages[rank], rank, world_size, lr=0.1, loss_fn=LOSS)
    shapes = pipe.check_shapes(torch.zeros(5, 6) if rank == 0 else None)
    run = pipe.run(schedules.build("ap", 2, 2, 2), _batch())
    dicts = pipe.stage_state_dicts()
    bad = _model(skip_in=7)  # stage 1's skip layer expects 7 features, stage 0 passes 6
    bad_pipe = DistributedPipeline([bad[0:1], bad[1:3]][rank], rank, world_size, lr=0.1,
                                   loss_fn=LOSS)
    try:
        bad_pipe.check_shapes(torch.zeros(5, 6) if rank == 0 else None)
        message = None
    except StageShapeError as exc:
        message = str(exc)
    return {"shapes": shapes, "run": run, "message": message,
            "states": None if dicts is None else [
                {k: v for k, v in d["stage"].items() if isinstance(v, torch.Tensor)}
                for d in dicts]}


@pytest.mark.slow
def test_two_processes_pass_tuples_and_equal_one_process_bit_for_bit():
    results = launch_local(_tuple_worker, 2, None, threads_per_worker=1, timeout_s=240)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        ref = LocalPipeline([model[0:1], model[1:3]], lr=0.1, loss_fn=LOSS)
        ref_run = ref.run(schedules.build("ap", 2, 2, 2), _batch())
    finally:
        torch.set_num_threads(threads)
    r0 = results[0]
    assert r0["shapes"] == [(5, 6), ((5, 8), (5, 6)), (5, 3)]
    assert r0["run"].losses == ref_run.losses
    assert r0["run"].versions == ref_run.versions
    ref_states = [model[0:1].state_dict(), model[1:3].state_dict()]
    for got, want in zip(r0["states"], ref_states):
        assert all(torch.equal(got[k], want[k]) for k in want)
    for r in results:  # the diagnosis names the tuple, not the input shape
        msg = r["message"]
        assert msg is not None and "stage 0 outputs a tuple of shapes ([5, 8], [5, 6])" in msg
        assert "stage 1" in msg and "mat1 and mat2" in msg, msg
