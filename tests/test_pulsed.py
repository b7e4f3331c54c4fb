"""Pulsed update: loop reference on the same draws, mean vs expected, granularities."""

import pytest
import torch

from analogpipe.devices import DeviceConfig, apply_pulses, expected_update, sample_device_state
from analogpipe.tiles.pulses import (
    UpdateConfig,
    coincidence_counts,
    draw_pulse_trains,
    pulse_counts,
    pulse_probabilities,
)

TAU = 0.8


def loop_reference(w, x_bits, d_bits, state, cfg):
    """Every coincidence fires one pulse, slot by slot, sample by sample (float64)."""
    w = w.clone().double()
    s_n, t_n = x_bits.shape[:2]
    for s in range(s_n):
        for t in range(t_n):
            for i in range(d_bits.shape[2]):
                for j in range(x_bits.shape[2]):
                    prod = d_bits[s, t, i] * x_bits[s, t, j]
                    if prod == 0:
                        continue
                    if prod < 0:  # -lr d x > 0: up pulse
                        w[i, j] += state.delta_up * (1 - w[i, j] / state.b_max)
                    else:
                        w[i, j] -= state.delta_down * (1 - w[i, j] / state.b_min)
    return w


def _problem(seed, s=1, n_in=5, n_out=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s, n_in, generator=g, dtype=torch.float64)
    d = torch.randn(s, n_out, generator=g, dtype=torch.float64)
    w = (torch.rand(n_out, n_in, generator=g, dtype=torch.float64) * 2 - 1) * 0.6
    return x, d, w


def test_vectorised_pulses_equal_loop_reference_on_the_same_draws_single_sample():
    cfg = DeviceConfig(name="softbounds", dw_min=0.01, w_max=TAU, w_min=-TAU)
    state = sample_device_state(cfg, (4, 5))
    ucfg = UpdateConfig(mode="pulsed")
    for seed in range(5):
        x, d, w = _problem(seed)
        xb, db = draw_pulse_trains(x, d, 0.3, cfg.dw_min, ucfg, torch.Generator().manual_seed(seed))
        assert xb.shape[1] > 1  # long trains: several pulses per element
        n_up, n_down = coincidence_counts(xb, db)
        fast = apply_pulses(w, n_up, n_down, state, cfg)
        torch.testing.assert_close(fast, loop_reference(w, xb, db, state, cfg), rtol=0, atol=1e-12)


def test_vectorised_pulses_across_samples_within_second_order_bound():
    """Samples of opposite sign are applied from the same w: error <= dw * (dw/tau) * n^2."""
    cfg = DeviceConfig(name="softbounds", dw_min=0.01, w_max=TAU, w_min=-TAU)
    state = sample_device_state(cfg, (4, 5))
    ucfg = UpdateConfig(mode="pulsed")
    x, d, w = _problem(7, s=6)
    xb, db = draw_pulse_trains(x, d, 0.2, cfg.dw_min, ucfg, torch.Generator().manual_seed(1))
    n_up, n_down = coincidence_counts(xb, db)
    fast = apply_pulses(w, n_up, n_down, state, cfg)
    ref = loop_reference(w, xb, db, state, cfg)
    bound = cfg.dw_min * (cfg.dw_min / TAU) * (n_up + n_down) ** 2 + 1e-12
    assert ((fast - ref).abs() <= bound).all()
    assert (n_up > 0).any() and (n_down > 0).any()


def test_pulse_probabilities_follow_update_management():
    x = torch.tensor([[0.5, -1.0, 0.25]])
    d = torch.tensor([[2.0, -0.5]])
    lr, dw = 0.05, 0.01
    p_x, p_d, bl = pulse_probabilities(x, d, lr, dw, UpdateConfig())
    assert bl.item() == 10  # k = lr * max|x| * max|d| / dw = 10
    # unclipped: p_x(x_max) = p_d(d_max) = sqrt(k / BL) = 1; E[coincidences] = lr|x||d|/dw
    torch.testing.assert_close(p_x.max(), torch.tensor(1.0))
    torch.testing.assert_close(bl * p_d.t() @ p_x, lr * d.abs().t() @ x.abs() / dw)


def test_pulsed_mean_matches_per_sample_expected_update():
    """Mean over R draws vs W + dW F - lr |D|^T |X| G, tolerance from the draw statistics."""
    cfg = DeviceConfig(name="softbounds", dw_min=0.002, w_max=TAU, w_min=-TAU)
    state = sample_device_state(cfg, (4, 5))
    ucfg = UpdateConfig(mode="pulsed")
    x, d, w = _problem(3, s=3)
    x, d, w = x.float(), d.float(), w.float()
    lr = 0.01
    g = torch.Generator().manual_seed(0)
    reps = 3000
    xr, dr = x.repeat(reps, 1), d.repeat(reps, 1)
    # one draw per repetition: counts of each repetition applied to the same w
    deltas = []
    for r0 in range(0, reps, 500):
        xb, db = draw_pulse_trains(xr[r0 * 3:(r0 + 500) * 3], dr[r0 * 3:(r0 + 500) * 3], lr,
                                   cfg.dw_min, ucfg, g)
        xb = xb.reshape(500, 3 * xb.shape[1], 5)
        db = db.reshape(500, 3 * db.shape[1], 4)
        signed = torch.einsum("rti,rtj->rij", db, xb)
        total = torch.einsum("rti,rtj->rij", db.abs(), xb.abs())
        n_up, n_down = (total - signed) / 2, (total + signed) / 2
        deltas.append(apply_pulses(w.expand(500, 4, 5), n_up, n_down, state, cfg) - w)
    deltas = torch.cat(deltas)
    mean, sem = deltas.mean(0), deltas.std(0) / reps**0.5
    grad = d.t() @ x
    exp = expected_update(w, -lr * grad, lr * d.abs().t() @ x.abs(), state, cfg) - w
    n_mean = lr * d.abs().t() @ x.abs() / cfg.dw_min
    second_order = cfg.dw_min * (cfg.dw_min / TAU) * n_mean**2
    assert ((mean - exp).abs() <= 5 * sem + second_order + 1e-7).all()
    # and the per-micro-batch expected update differs from it where samples disagree
    micro = expected_update(w, -lr * grad, lr * grad.abs(), state, cfg) - w
    assert (micro - exp).abs().max() > 10 * sem.max()


def test_per_microbatch_and_per_sample_expected_differ_exactly_by_the_spec():
    cfg = DeviceConfig.soft_bounds(TAU)
    state = sample_device_state(cfg, (3, 4))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, generator=g, dtype=torch.float64)
    d = torch.randn(2, 3, generator=g, dtype=torch.float64)
    x[1], d[1] = x[0], -d[0]  # opposite gradients: they cancel in G, not in sum |g_b|
    w = torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.5
    lr = 0.1
    grad = d.t() @ x
    assert grad.abs().max() < 1e-15
    per_mb = expected_update(w, -lr * grad, lr * grad.abs(), state, cfg)
    per_s = expected_update(w, -lr * grad, lr * d.abs().t() @ x.abs(), state, cfg)
    torch.testing.assert_close(per_mb, w)  # nothing happens
    torch.testing.assert_close(per_mb - per_s, lr * (d.abs().t() @ x.abs()) * w / TAU)


def test_pulse_counts_chunking_covers_all_samples():
    cfg = UpdateConfig(mode="pulsed", chunk_elements=1024)
    g = torch.Generator().manual_seed(0)
    x, d = torch.ones(40, 8), torch.ones(40, 6)
    # lr*|x||d|/dw = 1 exactly: every slot of BL=1 fires with p = 1 -> one pulse per sample
    n_up, n_down = pulse_counts(x, d, 0.01, 0.01, cfg, g)
    assert torch.equal(n_down, torch.full((6, 8), 40.0)) and torch.equal(n_up, torch.zeros(6, 8))


def _rows(seed, s, n_in, n_out, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s, n_in, generator=g) * torch.rand(s, 1, generator=g) * scale
    d = torch.randn(s, n_out, generator=g) * torch.rand(s, 1, generator=g)
    x[::3, ::2] = 0  # zero inputs (ReLU) and a sample that cannot fire
    d[min(1, s - 1)] = 0 if s > 1 else d[0]
    return x, d


@pytest.mark.parametrize("relu", [False, True])  # signed inputs, and the kernel's unsigned x
@pytest.mark.parametrize("route", ["float", "kernel"])
def test_submatrix_update_equals_dense_update_on_the_same_draws(monkeypatch, route, relu):
    """The tile's path (counts on the fired rows / columns only, in place) against
    apply_pulses on the full pulse_counts, same generator state: identical weights, through
    the float route and the CPU's bit-mask kernel (forced for every size)."""
    import analogpipe.tiles.pulses as pulses
    from analogpipe.tiles.pulses import pulsed_update_

    if route == "kernel":
        monkeypatch.setattr(pulses, "KERNEL_MIN_ELEMENTS", 0)

    cfgs = [DeviceConfig(name="softbounds", dw_min=0.01, w_max=TAU, w_min=-TAU),
            DeviceConfig(name="softbounds", dw_min=0.01, w_max=TAU, w_min=-TAU,
                         dw_min_dtod=0.3, up_down=0.1)]
    ucfg = UpdateConfig(mode="pulsed")
    for cfg in cfgs:
        state = sample_device_state(cfg, (40, 60), torch.Generator().manual_seed(5))
        for seed, (s, scale) in enumerate([(1, 0.02), (3, 0.05), (8, 0.5), (20, 3.0)]):
            x, d = _rows(seed, s, 60, 40, scale)
            if relu:
                x = x.relu()
            w = (torch.rand(40, 60, generator=torch.Generator().manual_seed(seed)) - 0.5) * 0.6
            n_up, n_down = pulse_counts(x, d, 0.1, cfg.dw_min, ucfg,
                                        torch.Generator().manual_seed(seed))
            ref = apply_pulses(w, n_up, n_down, state, cfg)
            fast = pulsed_update_(w.clone(), x, d, 0.1, state, cfg, ucfg,
                                  torch.Generator().manual_seed(seed))
            torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
            assert torch.equal(fast == w, ref == w)  # the same elements are touched


def test_pulse_counts_follow_each_samples_own_train_length():
    """Mixed train lengths (drawn per length group): the mean coincidences equal
    lr |d|^T |x| / dw_min and every sample's count stays within its BL_s slots."""
    from analogpipe.tiles.pulses import expected_pulse_count

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g) * torch.tensor([0.01, 0.1, 0.5, 1, 2, 4])[:, None]
    d = torch.randn(6, 4, generator=g)
    lr, dw = 0.05, 0.01
    _, _, bl = pulse_probabilities(x, d, lr, dw, UpdateConfig())
    assert len(set(bl.tolist())) >= 4  # several train lengths in one call
    ucfg = UpdateConfig(mode="pulsed")
    reps = 4000
    gen = torch.Generator().manual_seed(0)
    totals = torch.stack([sum(pulse_counts(x, d, lr, dw, ucfg, gen)) for _ in range(reps)])
    mean, sem = totals.mean(0), totals.std(0) / reps**0.5
    assert ((mean - expected_pulse_count(x, d, lr, dw)).abs() <= 5 * sem + 1e-6).all()
    # one sample alone never exceeds its own BL coincidences per element
    for s in range(6):
        n = sum(pulse_counts(x[s:s + 1], d[s:s + 1], lr, dw, ucfg, gen))
        assert n.max() <= bl[s]


def test_rows_that_cannot_fire_leave_the_weights_exactly_unchanged():
    from analogpipe.tiles.pulses import pulsed_update_

    cfg = DeviceConfig.soft_bounds(TAU)
    state = sample_device_state(cfg, (3, 4))
    w = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    gen = torch.Generator().manual_seed(0)
    for x, d in [(torch.randn(5, 4), torch.zeros(5, 3)), (torch.zeros(5, 4), torch.randn(5, 3))]:
        assert torch.equal(pulsed_update_(w.clone(), x, d, 0.1, state, cfg, UpdateConfig(), gen), w)
        n_up, n_down = pulse_counts(x, d, 0.1, cfg.dw_min, UpdateConfig(), gen)
        assert not n_up.any() and not n_down.any()


@pytest.mark.parametrize("bl_management", [True, False])
@pytest.mark.parametrize("management", [True, False])
@pytest.mark.parametrize("desired_bl", [1, 5, 31])
def test_compiled_probabilities_equal_the_torch_ops(bl_management, management, desired_bl,
                                                     monkeypatch):
    """pulse_probabilities through the compiled pass (float32 rows) equals its torch ops:
    BL exactly, p_x and p_d to 2 units in the last place (the compiled pass takes IEEE square
    roots, torch's CPU sqrt can be one unit off; every other op is the same float32
    arithmetic), with all-zero rows, -0, rows whose k exceeds desired_bl (up to 1e6) and tiny
    ones (k below 1e-30)."""
    from analogpipe.tiles import jit as jit_mod
    from analogpipe.tiles import pulses as pulses_mod

    if jit_mod.load("_periphery_jit") is None:
        pytest.skip("numba kernels unavailable")
    cfg = UpdateConfig(desired_bl=desired_bl, update_bl_management=bl_management,
                       update_management=management)
    g = torch.Generator().manual_seed(desired_bl)
    for s, n_in, n_out in [(1, 512, 512), (9, 33, 17), (64, 100, 3)]:
        scale = torch.logspace(-15, 3, s)[:, None]  # k from below 1e-30 to about 1e6
        x = torch.randn(s, n_in, generator=g) * scale
        d = torch.randn(s, n_out, generator=g) * scale
        if s > 2:
            x[1] = 0.0
            d[2, ::2] = -0.0
        for lr, dw_min in [(0.1, 0.001), (3.0, 1e-5), (1e-4, 0.01), (0.0123, 0.000777),
                           (0.37, 0.0031), (0.051, 0.00017), (0.9, 0.0213)]:
            got = pulse_probabilities(x, d, lr, dw_min, cfg)
            monkeypatch.setattr(pulses_mod, "COMPILED_MAX", 0)
            ref = pulse_probabilities(x, d, lr, dw_min, cfg)
            monkeypatch.undo()
            assert torch.equal(got[2], ref[2]), (s, lr, dw_min)
            for a, b in zip(got[:2], ref[:2]):
                assert a.dtype == b.dtype == torch.float32
                assert torch.equal(a == 0, b == 0) and torch.equal(a == 1, b == 1)
                ulp = torch.finfo(torch.float32).eps * b.abs()
                assert ((a - b).abs() <= 2 * ulp).all(), (s, lr, dw_min)


@pytest.mark.parametrize("desired_bl", [1, 5, 31, 100])
@pytest.mark.parametrize("lr", [0.01, 1.0, 50.0])
def test_one_sample_compiled_update_equals_the_torch_route(desired_bl, lr, monkeypatch):
    """One sample's pulsed update through the compiled pass gives the weights of the torch
    route (`_one_sample_counts` then `apply_pulse_counts_`) bit for bit from the same
    generator, and leaves the generator in the same state: few pulses (a submatrix), many
    (the dense update, where unfired elements take factors 1 and 0), mixed signs, zeros in
    x and d, weights at and near the bounds, -0 weights."""
    from analogpipe.devices import DeviceConfig, sample_device_state
    from analogpipe.tiles import jit as jit_mod
    from analogpipe.tiles import pulses as pulses_mod

    if jit_mod.load("_periphery_jit") is None:
        pytest.skip("numba kernels unavailable")
    dev = DeviceConfig(name="softbounds", dw_min=0.001, w_max=0.6, w_min=-0.6)
    cfg = UpdateConfig(mode="pulsed", desired_bl=desired_bl)
    g = torch.Generator().manual_seed(desired_bl)
    for n_out, n_in in [(40, 70), (3, 200)]:
        state = sample_device_state(dev, (n_out, n_in), torch.Generator().manual_seed(0))
        w0 = torch.rand(n_out, n_in, generator=g) * 1.2 - 0.6
        w0.view(-1)[::13] = 0.6
        w0.view(-1)[1::17] = -0.0
        x = torch.randn(1, n_in, generator=g)
        d = torch.randn(1, n_out, generator=g) * 0.3
        x[0, ::7] = 0.0
        d[0, ::5] = 0.0
        out = []
        for compiled in (True, False):
            monkeypatch.setattr(pulses_mod, "ONE_SAMPLE_KERNEL", compiled)
            w = w0.clone()
            gen = torch.Generator().manual_seed(11)
            pulses_mod.pulsed_update_(w, x, d, lr, state, dev, cfg, gen)
            out.append((w, torch.rand(1, generator=gen)))
        (wc, nc), (wt, nt) = out
        assert torch.equal(wc.view(torch.int32), wt.view(torch.int32)), (n_out, n_in)
        assert torch.equal(nc, nt)
        assert not torch.equal(wc, w0) or lr == 0.01
