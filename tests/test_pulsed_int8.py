"""The CPU's int8 pulse path (byte-wise Bernoulli trials, int8 count GEMMs) against closed
forms and against the float path's statistics: same trials, same counts in the mean."""

import pytest
import torch

import analogpipe.tiles.pulses as pulses
from analogpipe.devices import DeviceConfig, apply_pulses, sample_device_state
from analogpipe.tiles.pulses import (
    UpdateConfig,
    _ByteThresholds,
    _Trains,
    expected_pulse_count,
    pulse_counts,
    pulse_probabilities,
    pulsed_update_,
)


@pytest.fixture
def int8_always(monkeypatch):
    monkeypatch.setattr(pulses, "INT8_MIN_ELEMENTS", 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_byte_trials_fire_with_probability_p(dtype):
    """Frequencies of 2^20 trials per p within 5 binomial standard errors of p; p = 0 never
    fires and p = 1 always does (ties at the top level resolve to a fire)."""
    p = torch.tensor([[0.0, 1e-4, 1 / 256, 0.5 / 256, 0.3, 0.5, 200.5 / 256, 0.999, 1.0]],
                     dtype=dtype)
    side = _ByteThresholds(p * 256, torch.ones_like(p))
    t = 1 << 20
    gen = torch.Generator().manual_seed(0)
    bits, signed = side.draw([(0, 1, t)], t, gen, False, pulses._Arena(side.bytes_needed(t, False),
                                                                        torch.device("cpu")))
    assert signed is None and bits.dtype == torch.int8
    freq = bits.double().mean(0)
    pp = p[0].double()
    se = (pp * (1 - pp) / t).sqrt()
    assert ((freq - pp).abs() <= 5 * se + 1e-12).all(), (freq, pp)
    assert freq[0] == 0 and freq[-1] == 1


def test_byte_trials_signed_and_independent_across_slots():
    """Signed bits carry each sample's signs; two slots of the same element are independent
    (P(both fire) = p^2)."""
    p = torch.tensor([[0.3, 0.7], [0.5, 0.05]])
    sign = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    side = _ByteThresholds(p * 256, sign)
    t = 1 << 16
    gen = torch.Generator().manual_seed(1)
    rows = 2 * t
    bits, signed = side.draw([(0, 2, t)], rows, gen, True,
                             pulses._Arena(side.bytes_needed(rows, True), torch.device("cpu")))
    b = bits.view(2, t, 2).double()
    s = signed.view(2, t, 2).double()
    assert torch.equal(s, b * sign[:, None, :].double())
    both = (b[:, 0::2] * b[:, 1::2]).mean(1)  # slots 2k and 2k+1
    se = (p.double() ** 2 * (1 - p.double() ** 2) / (t // 2)).sqrt()
    assert ((both - p.double() ** 2).abs() <= 5 * se).all()


def test_int8_path_counts_have_the_expected_mean(int8_always):
    """Mixed train lengths through the int8 path: mean coincidences = lr |d|^T |x| / dw_min
    (5 SEM), every sample within its own BL, and signs as in the float path."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g) * torch.tensor([0.01, 0.1, 0.5, 1, 2, 4])[:, None]
    d = torch.randn(6, 4, generator=g)
    lr, dw = 0.05, 0.01
    ucfg = UpdateConfig(mode="pulsed")
    assert _Trains(x, d, lr, dw, ucfg).int8
    gen = torch.Generator().manual_seed(0)
    reps = 3000
    ups, downs = zip(*(pulse_counts(x, d, lr, dw, ucfg, gen) for _ in range(reps)))
    ups, downs = torch.stack(ups), torch.stack(downs)
    for counts, sign in ((downs, 1.0), (ups, -1.0)):
        # expected per direction: samples whose d_i x_j has that sign
        sgn = torch.sign(d)[:, :, None] * torch.sign(x)[:, None, :]
        per = lr * d.abs()[:, :, None] * x.abs()[:, None, :] / dw
        want = (per * (sgn == sign)).sum(0)
        mean, sem = counts.mean(0), counts.std(0) / reps**0.5
        assert ((mean - want).abs() <= 5 * sem + 1e-6).all()
    total = ups + downs
    torch.testing.assert_close(total.mean(0), expected_pulse_count(x, d, lr, dw),
                               rtol=0.05, atol=0.05)
    p_x, p_d, bl = pulse_probabilities(x, d, lr, dw, ucfg)
    for s in range(6):
        n = sum(pulse_counts(x[s:s + 1], d[s:s + 1], lr, dw, ucfg, gen))
        assert n.max() <= bl[s]


def test_int8_submatrix_update_equals_dense_update_on_the_same_draws(int8_always):
    """As the float path's test: counts on the fired rows / columns only (in place) equal
    apply_pulses on the full int8 counts from the same generator state."""
    cfg = DeviceConfig(name="softbounds", dw_min=0.01, w_max=0.8, w_min=-0.8, dw_min_dtod=0.3,
                       up_down=0.1)
    ucfg = UpdateConfig(mode="pulsed")
    state = sample_device_state(cfg, (40, 60), torch.Generator().manual_seed(5))
    for seed, (s, scale) in enumerate([(1, 0.02), (3, 0.05), (8, 0.5), (20, 3.0)]):
        g = torch.Generator().manual_seed(seed)
        x = (torch.randn(s, 60, generator=g) * scale).relu()  # ReLU inputs: unsigned x path
        d = torch.randn(s, 40, generator=g)
        w = (torch.rand(40, 60, generator=g) - 0.5) * 0.6
        n_up, n_down = pulse_counts(x, d, 0.1, cfg.dw_min, ucfg,
                                    torch.Generator().manual_seed(seed))
        ref = apply_pulses(w, n_up, n_down, state, cfg)
        fast = pulsed_update_(w.clone(), x, d, 0.1, state, cfg, ucfg,
                              torch.Generator().manual_seed(seed))
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
        assert torch.equal(fast == w, ref == w)


def test_int8_and_float_paths_agree_in_distribution(monkeypatch):
    """Same rows through both paths (threshold forced each way): the per-element mean counts
    agree within 5 combined SEM."""
    g = torch.Generator().manual_seed(9)
    x, d = torch.randn(16, 12, generator=g), torch.randn(16, 10, generator=g)
    ucfg = UpdateConfig(mode="pulsed")
    means = []
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(pulses, "INT8_MIN_ELEMENTS", threshold)
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
