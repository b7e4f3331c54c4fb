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



def test_compiled_float32_normals_are_standard_normal_and_independent():
    """The compiled float32 fill (counter-based Box-Muller): KS test, mean and variance
    within 5 SE, two-sided tail masses at 2, 3 and 4 sigma within 5 binomial SE, and no
    correlation between the two values of a pair, neighbours, or blocks (|r| < 5/sqrt(n))."""
    from analogpipe.tiles import _rngkernel_jit as kernels

    n = 4 * rng.PART
    x = rng.normal_(torch.empty(n), torch.Generator().manual_seed(0)).double()
    assert stats.kstest(x[::7].numpy(), "norm").pvalue > 1e-3
    assert abs(float(x.mean())) < 5 / n**0.5
    assert abs(float(x.var()) - 1) < 5 * (2 / n) ** 0.5
    for z in (2.0, 3.0, 4.0):
        p = 2 * stats.norm.sf(z)
        assert abs(float((x.abs() > z).double().mean()) - p) < 5 * (p * (1 - p) / n) ** 0.5
    b = kernels.BLOCK
    blocks = x.view(-1, 2, b)  # [block, cos/sin, pair]
    pairs = {
        "cos-sin of a pair": (blocks[:, 0].flatten(), blocks[:, 1].flatten()),
        "neighbours": (x[:-1], x[1:]),
        "next block": (blocks[:-1].flatten(), blocks[1:].flatten()),
    }
    for name, (a, c) in pairs.items():
        r = float(torch.corrcoef(torch.stack([a, c]))[0, 1])
        assert abs(r) < 5 / a.numel() ** 0.5, name
    # the radius and the angle of a pair are independent: E[(c^2 + s^2)] = 2 in every
    # angle quarter
    r2 = (blocks[:, 0] ** 2 + blocks[:, 1] ** 2).flatten()
    quarter = (torch.atan2(blocks[:, 1], blocks[:, 0]).flatten() // (torch.pi / 2)).long()
    for q in range(-2, 2):
        sel = r2[quarter == q]
        assert abs(float(sel.mean()) - 2) < 5 * 2 / sel.numel() ** 0.5, q


@pytest.mark.parametrize("n", [5000, (1 << 15) + 3, 3 * (1 << 17) + 11])
def test_add_normal_adds_the_values_normal_draws(n, threads):
    """add_normal_(t, std) = t + std * normal_(...) from the same generator state (exactly
    for the torch route, to float32 rounding for the compiled one), at 1 and 3 threads."""
    base = torch.linspace(-3, 3, n)
    for t in (1, 3):
        torch.set_num_threads(t)
        z = rng.normal_(torch.empty(n), torch.Generator().manual_seed(5))
        got = rng.add_normal_(base.clone(), 0.25, torch.Generator().manual_seed(5))
        torch.testing.assert_close(got, base + 0.25 * z, rtol=0, atol=1e-6)


def test_a_fill_of_a_tensor_saved_for_backward_is_caught_by_autograd():
    """The compiled fill writes through numpy; it still bumps the tensor's version, so a
    backward that saved the tensor raises (as after torch's own in-place ops)."""
    w = torch.randn(1 << 16, requires_grad=True)
    a = torch.ones(1 << 16)
    z = (a * w).sum()  # saves a for the gradient of w
    rng.normal_(a, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


@pytest.mark.parametrize("n", [1 << 15, 300_001, 3 * (1 << 17) + 11])
def test_compiled_fills_on_torchs_openmp_team_equal_the_thread_pool_route(n, threads,
                                                                          monkeypatch):
    """run_team (the kernel as a parallel region of torch's own OpenMP threads) gives every
    value the pool route gives, bit for bit, at 1, 2 and 3 threads, for normal_ and
    add_normal_."""
    if rng.team() is None:
        pytest.skip("torch does not run on libgomp here")
    base = torch.randn(n, generator=torch.Generator().manual_seed(3))
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        got = {}
        for route in (True, False):
            monkeypatch.setattr(rng, "TEAM", route)
            z = rng.normal_(torch.empty(n), torch.Generator().manual_seed(11))
            y = rng.add_normal_(base.clone(), 0.37, torch.Generator().manual_seed(11))
            got[route] = (z, y)
        assert torch.equal(got[True][0], got[False][0])
        assert torch.equal(got[True][1], got[False][1])
        assert not torch.equal(got[True][1], base)


def test_a_forked_child_does_not_use_the_parents_openmp_team():
    """libgomp's threads do not survive a fork: in a forked child `team()` is None (the
    thread pool runs there) while the parent keeps its team."""
    import os

    parent = rng.team()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        os._exit(0 if rng.team() is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert rng.team() is parent
