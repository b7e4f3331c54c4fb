"""The CPU's bit-mask pulse kernel (`analogpipe.tiles.pulsekernel`) against closed forms, an
unpacked-bits oracle and the float path's statistics."""

import numpy as np
import pytest
import torch

import analogpipe.tiles.pulses as pulses
from analogpipe.tiles import jit, pulsekernel
from analogpipe.tiles.pulses import (
    UpdateConfig,
    _Trains,
    expected_pulse_count,
    pulse_counts,
    pulse_probabilities,
)


@pytest.fixture
def kernel_always(monkeypatch):
    monkeypatch.setattr(pulses, "KERNEL_MIN_ELEMENTS", 0)


def _bits(masks: np.ndarray) -> np.ndarray:
    """Unpack masks [S, W, n] into bits [S, 32 W, n] (slot 32 w + k = bit k of word w)."""
    s, w, n = masks.shape
    shifts = np.arange(32, dtype=np.uint32)[None, None, :, None]
    return ((masks[:, :, None, :] >> shifts) & 1).reshape(s, 32 * w, n).astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trials_fire_with_probability_p(dtype):
    """2^20 trials per p (2^15 samples x 32 slots): frequencies within 5 binomial SE of p;
    p = 0 never fires and p = 1 always does."""
    p = np.array([0.0, 1e-4, 1 / 256, 0.3, 0.5, 200.5 / 256, 0.999, 1.0], dtype)
    s = 1 << 15
    masks = pulsekernel.fire_masks(np.tile(p, (s, 1)), np.full(s, 32, np.int64), 7, "x",
                                   p.size, 3)
    freq = _bits(masks).mean(axis=(0, 1))
    pp = p.astype(np.float64)
    se = np.sqrt(pp * (1 - pp) / (32 * s))
    assert (np.abs(freq - pp) <= 5 * se + 1e-12).all(), (freq, pp)
    assert freq[0] == 0 and freq[-1] == 1


def test_trials_are_independent_across_slots_elements_and_samples():
    """Pairs of trials that share or neighbour a random word: the two halves of one 64-bit
    output (slots 2k, 2k + 1), neighbouring counters (elements j, j + 1), slots 31 / 32 across
    mask words, and neighbouring samples: P(both fire) = p^2 within 5 SE."""
    p = 0.4
    s, n = 1 << 13, 8
    bits = _bits(pulsekernel.fire_masks(np.full((s, n), p), np.full(s, 64, np.int64), 3, "d",
                                        5, n))  # [s, 64, n]
    pairs = {
        "halves": bits[:, 0::2] * bits[:, 1::2],
        "elements": bits[:, :, :-1] * bits[:, :, 1:],
        "words": bits[:, 31] * bits[:, 32],
        "samples": bits[:-1] * bits[1:],
    }
    for name, both in pairs.items():
        se = np.sqrt(p**2 * (1 - p**2) / both.size)
        assert abs(both.mean() - p**2) <= 5 * se, name


@pytest.mark.parametrize("signed_x", [False, True])
def test_counts_equal_the_unpacked_trains(signed_x):
    """count_range's (down, up) equal the matmuls of the unpacked bit trains of the same key,
    with train lengths 0 to 255 (several mask words) and signs on both sides."""
    g = torch.Generator().manual_seed(0)
    s, n_in, n_out = 40, 37, 9
    # values and factors: p = min(f |v|, 1) covers 0 (zero inputs), (0, 1) and clipped at 1
    x = torch.randn(s, n_in, generator=g).relu_()
    x[:, :4] = 0.0
    if signed_x:
        x *= torch.where(torch.rand(s, n_in, generator=g) < 0.3, -1.0, 1.0)
    d = torch.randn(s, n_out, generator=g)
    a, b = torch.rand(s, generator=g) * 1.5, torch.rand(s, generator=g) * 1.5
    p_x = (x.abs() * b[:, None]).clamp_max(1.0).numpy()
    p_d = (d.abs() * a[:, None]).clamp_max(1.0).numpy()
    neg_x, neg_d = (x < 0).numpy(), (d < 0).numpy()
    assert (p_x == 1).any() and (p_d == 1).any()
    bl = torch.randint(0, 256, (s,), generator=g).numpy()
    bl[:3] = [0, 1, 255]
    acc = np.zeros((2, n_out, n_in), np.int32)
    pulsekernel.count_range(x.numpy(), d.numpy(), a.numpy(), b.numpy(), bl, signed_x,
                            2**64 - 5, 0, s, acc)
    xb = _bits(pulsekernel.fire_masks(p_x, bl, 2**64 - 5, "x", n_in, n_out))
    db = _bits(pulsekernel.fire_masks(p_d, bl, 2**64 - 5, "d", n_in, n_out))
    live = np.arange(xb.shape[1])[None, :] < bl[:, None]
    assert not xb[~live].any() and not db[~live].any()  # slots beyond BL are silent
    sx = np.where(neg_x, -1.0, 1.0)
    sd = np.where(neg_d, -1.0, 1.0)
    signed = np.einsum("sti,stj->ij", db * sd[:, None], xb * sx[:, None])
    total = np.einsum("sti,stj->ij", db, xb)
    assert total.sum() > 0
    np.testing.assert_array_equal(acc[0], (total + signed) / 2)
    np.testing.assert_array_equal(acc[1], (total - signed) / 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("team", [True, False], ids=["openmp-team", "thread-pool"])
def test_counts_do_not_depend_on_the_thread_count(kernel_always, monkeypatch, dtype, team):
    """The samples are split over the intra-op threads (on torch's OpenMP team or on a pool
    of our own); the counts are the same with 1, 2 and 3 threads, and the same seed gives
    the same counts."""
    from analogpipe.tiles import rng

    monkeypatch.setattr(pulses, "KERNEL_PART_ELEMENTS", 1000)  # split even this small draw
    monkeypatch.setattr(rng, "TEAM", team)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 50, generator=g, dtype=dtype)
    d = torch.randn(300, 20, generator=g, dtype=dtype)
    ucfg = UpdateConfig(mode="pulsed")
    old = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(pulse_counts(x, d, 0.5, 0.01, ucfg, torch.Generator().manual_seed(8)))
    finally:
        torch.set_num_threads(old)
    for up, down in runs[1:]:
        assert torch.equal(up, runs[0][0]) and torch.equal(down, runs[0][1])
    assert runs[0][0].sum() > 0 and runs[0][1].sum() > 0
    other = pulse_counts(x, d, 0.5, 0.01, ucfg, torch.Generator().manual_seed(9))
    assert not torch.equal(other[0], runs[0][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_counts_have_the_expected_mean(kernel_always, dtype):
    """Mixed train lengths through the kernel: mean coincidences per direction =
    lr sum_s |d_s,i x_s,j| / dw_min over the samples whose d_i x_j has that sign (5 SEM), and
    no sample exceeds its own BL."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 5, generator=g) * torch.tensor([0.01, 0.1, 0.5, 1, 2, 4])[:, None]
         ).to(dtype)
    d = torch.randn(6, 4, generator=g).to(dtype)
    lr, dw = 0.05, 0.01
    ucfg = UpdateConfig(mode="pulsed")
    assert _Trains(x, d, lr, dw, ucfg).kernel
    gen = torch.Generator().manual_seed(0)
    reps = 3000
    ups, downs = zip(*(pulse_counts(x, d, lr, dw, ucfg, gen) for _ in range(reps)))
    ups, downs = torch.stack(ups), torch.stack(downs)
    assert ups.dtype == dtype
    sgn = torch.sign(d)[:, :, None] * torch.sign(x)[:, None, :]
    per = lr * d.abs()[:, :, None] * x.abs()[:, None, :] / dw
    for counts, sign in ((downs, 1.0), (ups, -1.0)):
        want = (per * (sgn == sign)).sum(0)
        mean, sem = counts.mean(0), counts.std(0) / reps**0.5
        assert ((mean - want).abs() <= 5 * sem + 1e-6).all()
    torch.testing.assert_close((ups + downs).mean(0), expected_pulse_count(x, d, lr, dw),
                               rtol=0.05, atol=0.05)
    _, _, bl = pulse_probabilities(x, d, lr, dw, ucfg)
    for s in range(6):
        # two copies of sample s (one sample would take the batch-1 path)
        n = sum(pulse_counts(x[s:s + 1].repeat(2, 1), d[s:s + 1].repeat(2, 1), lr, dw, ucfg,
                             gen))
        assert n.max() <= 2 * bl[s]


def test_kernel_and_float_paths_agree_in_distribution(monkeypatch):
    """Same rows through both paths (threshold forced each way): the per-element mean counts
    agree within 5 combined SEM."""
    g = torch.Generator().manual_seed(9)
    x, d = torch.randn(16, 12, generator=g), torch.randn(16, 10, generator=g)
    ucfg = UpdateConfig(mode="pulsed")
    means = []
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(pulses, "KERNEL_MIN_ELEMENTS", threshold)
        assert _Trains(x, d, 0.05, 0.01, ucfg).kernel == (threshold == 0)
        gen = torch.Generator().manual_seed(2)
        runs = torch.stack([torch.stack(pulse_counts(x, d, 0.05, 0.01, ucfg, gen))
                            for _ in range(1500)])
        means.append((runs.mean(0), runs.std(0) / 1500**0.5))
    (m0, s0), (m1, s1) = means
    assert ((m0 - m1).abs() <= 5 * (s0**2 + s1**2).sqrt() + 1e-6).all()
@pytest.mark.parametrize("scale", [0.05, 3.0])  # BL 1 and long trains
def test_one_sample_path_has_the_expected_counts_per_direction(scale):
    """Batch 1 takes a lean path: per-direction mean counts over many draws equal
    BL p_d,i p_x,j (= lr |d_i x_j| / dw_min unless the train is clipped at desired_bl) on the
    side of sign(d_i x_j) (5 SEM), zero on the other."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 7, generator=g) * scale
    d = torch.randn(1, 5, generator=g)
    x[0, 2] = 0.0  # a zero input never fires
    lr, dw = 0.05, 0.01
    ucfg = UpdateConfig(mode="pulsed")
    p_x, p_d, bl = pulse_probabilities(x, d, lr, dw, ucfg)
    assert (bl.item() == 1) == (scale < 1)
    gen = torch.Generator().manual_seed(0)
    reps = 4000
    ups, downs = zip(*(pulse_counts(x, d, lr, dw, ucfg, gen) for _ in range(reps)))
    ups, downs = torch.stack(ups), torch.stack(downs)
    per = bl.item() * p_d.t() @ p_x
    if scale < 1:  # unclipped: the update's mean is the gradient's
        torch.testing.assert_close(per, lr * d.abs().t() @ x.abs() / dw)
    down_side = (torch.sign(d).t() @ torch.sign(x)) > 0  # d x > 0: down pulses
    for counts, side in ((downs, down_side), (ups, ~down_side)):
        mean, sem = counts.mean(0), counts.std(0) / reps**0.5
        want = torch.where(side, per, torch.zeros_like(per))
        assert ((mean - want).abs() <= 5 * sem + 1e-6).all()
    assert not ups[:, :, 2].any() and not downs[:, :, 2].any()
    assert (ups + downs).max() <= bl.item()


@pytest.mark.parametrize("error", [ImportError("no numba"), RuntimeError("no cache locator")])
def test_without_the_kernel_the_float_route_runs(monkeypatch, kernel_always, error):
    """numba missing (ImportError): the float route, silently; a kernel that cannot be built
    (any other error): the float route with a RuntimeWarning naming the cause."""
    def broken(name):
        raise error

    monkeypatch.setattr(jit.importlib, "import_module", broken)
    monkeypatch.setattr(jit, "load", jit.load.__wrapped__)
    x, d = torch.randn(8, 6), torch.randn(8, 5)
    ucfg = UpdateConfig(mode="pulsed")
    if isinstance(error, ImportError):
        assert not _Trains(x, d, 0.05, 0.01, ucfg).kernel
        up, down = pulse_counts(x, d, 0.05, 0.01, ucfg, torch.Generator().manual_seed(0))
    else:
        with pytest.warns(RuntimeWarning, match="no cache locator"):
            assert not _Trains(x, d, 0.05, 0.01, ucfg).kernel
            up, down = pulse_counts(x, d, 0.05, 0.01, ucfg, torch.Generator().manual_seed(0))
    assert up.shape == (5, 6) and (up + down).sum() > 0


def test_other_dtypes_and_grad_tracking_inputs_take_a_working_route(kernel_always):
    """bfloat16 / float16 samples (no numpy view) take the float route; inputs that track
    gradients are counted as data. Mean total counts stay lr |d|^T |x| / dw_min (10%)."""
    g = torch.Generator().manual_seed(6)
    x, d = torch.rand(64, 20, generator=g), torch.randn(64, 8, generator=g)
    ucfg = UpdateConfig(mode="pulsed")
    want = expected_pulse_count(x, d, 0.05, 0.01)
    for xx, dd in ((x.bfloat16(), d.bfloat16()), (x.half(), d.half()),
                   (x.clone().requires_grad_(), d.clone().requires_grad_())):
        gen = torch.Generator().manual_seed(1)
        runs = torch.stack([sum(pulse_counts(xx, dd, 0.05, 0.01, ucfg, gen)).float()
                            for _ in range(200)])
        assert not runs.requires_grad
        torch.testing.assert_close(runs.mean(0).sum(), want.sum(), rtol=0.1, atol=0)
