"""Split random fills (analogpipe.tiles.rng): reproducible at any thread count, and the
distribution they promise (normal: KS test)."""

import pytest
import torch
from scipy import stats

from analogpipe.tiles import rng


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_split_fills_give_the_same_numbers_at_any_thread_count(threads):
    n = 3 * rng.PART + 17  # several parts and a ragged last one
    outs = []
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        outs.append(rng.normal_(torch.empty(n), torch.Generator().manual_seed(7)))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    other = rng.normal_(torch.empty(n), torch.Generator().manual_seed(8))
    assert not torch.equal(outs[0], other)


def test_small_fills_draw_from_the_callers_generator():
    a = rng.normal_(torch.empty(1000), torch.Generator().manual_seed(3))
    b = torch.empty(1000).normal_(generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_split_normal_fill_is_standard_normal_and_parts_uncorrelated():
    n = 4 * rng.PART
    x = rng.normal_(torch.empty(n, dtype=torch.float64), torch.Generator().manual_seed(0))
    sample = x[:: 97]  # 43k values spread over every part
    assert stats.kstest(sample.numpy(), "norm").pvalue > 1e-3
    parts = x.view(4, rng.PART)
    corr = torch.corrcoef(parts)
    off = corr[~torch.eye(4, dtype=torch.bool)]
    assert off.abs().max() < 5 / rng.PART**0.5  # |r| of independent parts ~ 1/sqrt(n)

