"""The compiled expected update of symmetric soft bounds (`analogpipe.tiles.updatekernel`)
against torch's passes (`analogpipe.devices.expected_update_`), and the one-sample stash of
expected updates (`AnalogTile.stash_rows` with one row) against the stash of its product."""

import pytest
import torch

from analogpipe.devices import DeviceConfig, expected_update_, sample_device_state
from analogpipe.tiles import jit, rng, updatekernel
from analogpipe.tiles.pulses import UpdateConfig
from analogpipe.tiles.tile import AnalogTile, NonFiniteUpdateError, TileConfig

pytestmark = pytest.mark.skipif(jit.load("_updatekernel_jit") is None,
                                reason="numba kernels unavailable")

def _device() -> DeviceConfig:
    return DeviceConfig(name="softbounds", dw_min=0.001, w_max=0.8, w_min=-0.8)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance of a and b in float32 units in the last place (NaN equal NaN)."""
    assert torch.equal(a.isnan(), b.isnan())
    ia = a.nan_to_num(0.0).view(torch.int32).long()
    ib = b.nan_to_num(0.0).view(torch.int32).long()
    # order the int views like the floats (negative floats count down from the sign bit)
    ia = torch.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int((ia - ib).abs().max()) if a.numel() else 0


def _weights(shape, g):
    w = (torch.rand(shape, generator=g) * 1.6 - 0.8)
    w.view(-1)[::97] = 0.8  # at the bounds
    w.view(-1)[1::89] = -0.8
    w.view(-1)[2::83] = -0.0
    return w


@pytest.mark.parametrize("route", ["openmp-team", "thread-pool"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(64, 64), (33, 129), (512, 512)])
def test_gradient_form_equals_the_torch_passes(shape, threads, route, monkeypatch):
    """W after the compiled pass equals W after torch's passes (|grad| taken inside): within
    one ulp everywhere (bit for bit where torch contracts its products into FMAs, as its
    CPU builds do; `equal` is reported), at 1-3 threads, on torch's team and on the pool;
    large gradients drive weights to the clip."""
    monkeypatch.setattr(rng, "KERNEL_PART", 1 << 10)
    monkeypatch.setattr(rng, "TEAM", route == "openmp-team")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(shape[0] * 7 + threads)
        cfg = _device()
        state = sample_device_state(cfg, shape, torch.Generator().manual_seed(0))
        for scale in (0.01, 30.0):
            w0 = _weights(shape, g)
            grad = torch.randn(shape, generator=g) * scale
            grad.view(-1)[3::71] = 0.0
            grad.view(-1)[4::67] = -0.0
            ref = expected_update_(w0.clone(), grad, None, 0.1, state, cfg)
            got = w0.clone()
            assert updatekernel.softbounds_update_(got, grad, 0.1, state.b_max, state.b_min)
            assert _ulps(got, ref) <= 1, (scale, _ulps(got, ref))
            assert got.abs().max() <= 0.8
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("route", ["openmp-team", "thread-pool"])
@pytest.mark.parametrize("threads", [1, 2])
def test_rank_one_form_equals_the_update_from_the_product(threads, route, monkeypatch):
    """One sample's (d, x) give the weights the product d^T x gives through torch's passes
    (d^T x of one row is exact: d_i x_j rounded once), within one ulp; zeros of both signs in
    d and x."""
    monkeypatch.setattr(rng, "KERNEL_PART", 1 << 10)
    monkeypatch.setattr(rng, "TEAM", route == "openmp-team")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(5)
        cfg = _device()
        shape = (96, 130)
        state = sample_device_state(cfg, shape, torch.Generator().manual_seed(0))
        w0 = _weights(shape, g)
        d = torch.randn(1, 96, generator=g) * 0.5
        x = torch.randn(1, 130, generator=g)
        d[0, ::7], x[0, ::5], x[0, 1::9] = 0.0, -0.0, 0.0
        ref = expected_update_(w0.clone(), d.t().mm(x), None, 0.3, state, cfg)
        got = w0.clone()
        assert updatekernel.softbounds_outer_update_(got, d, x, 0.3, state.b_max, state.b_min)
        assert _ulps(got, ref) <= 1
    finally:
        torch.set_num_threads(old)


def test_kernels_refuse_what_they_do_not_cover():
    """float64, non-contiguous, small or mismatched tensors: False, nothing written."""
    w = torch.zeros(128, 128, dtype=torch.float64)
    assert not updatekernel.softbounds_update_(w, w.clone(), 0.1, 0.8, -0.8)
    w32 = torch.zeros(128, 128)
    assert not updatekernel.softbounds_update_(w32, torch.ones(128, 256)[:, ::2], 0.1, 0.8,
                                               -0.8)
    assert not updatekernel.softbounds_update_(torch.zeros(8, 8), torch.ones(8, 8), 0.1, 0.8,
                                               -0.8)
    assert not updatekernel.softbounds_outer_update_(w32, torch.ones(1, 64), torch.ones(1, 128),
                                                     0.1, 0.8, -0.8)
    assert torch.equal(w32, torch.zeros(128, 128))


def _tile(granularity="sample", seed=0):
    cfg = TileConfig(device=_device(), update=UpdateConfig(mode="expected",
                                                           granularity=granularity))
    return AnalogTile(80, 100, cfg, seed)


@pytest.mark.parametrize("granularity", ["sample", "microbatch"])
def test_one_row_stash_updates_as_its_product(granularity, monkeypatch):
    """A tile that stashes one sample's rows updates its weights as the same tile given the
    product d^T x through `stash_products` (torch's passes, kernels off), within one ulp;
    with two micro-batches of one row each the sum of their products is used."""
    g = torch.Generator().manual_seed(3)
    w = torch.rand(80, 100, generator=g) * 1.2 - 0.6
    rows = [(torch.randn(1, 100, generator=g), torch.randn(1, 80, generator=g) * 0.2)
            for _ in range(2)]
    for count in (1, 2):
        a, b = _tile(granularity), _tile(granularity)
        a.set_weights(w)
        b.set_weights(w)
        for x, d in rows[:count]:
            a.stash_rows(x, d)
            a.end_microbatch()
        a.apply_update(0.2)
        monkeypatch.setattr(updatekernel, "KERNEL_MIN", 1 << 62)
        for x, d in rows[:count]:
            b.stash_products(d.t().mm(x), None)
            b.end_microbatch()
        b.apply_update(0.2)
        monkeypatch.undo()
        assert _ulps(a.weight, b.weight) <= 1, count


def test_one_row_stash_still_refuses_non_finite_rows():
    """A NaN in the one sample's x: NonFiniteUpdateError at the stash, weights untouched."""
    t = _tile()
    x = torch.ones(1, 100)
    x[0, 3] = float("nan")
    with pytest.raises(NonFiniteUpdateError):
        t.stash_rows(x, torch.ones(1, 80))
    assert t.pending == 0


@pytest.mark.parametrize("mode", ["pulsed", "expected"])
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
def test_compiled_stash_equals_the_torch_route(mode, learned, rows, monkeypatch):
    """`stash_rows` of small float32 rows through the compiled pass (compensated rows and
    the abs-maxima in one pass) stashes what its torch ops stash, bit for bit (output scales
    with a zero among them: compensation 1 there), and refuses NaN / inf in x or d on both
    routes alike."""
    from analogpipe.tiles import tile as tile_mod
    from analogpipe.tiles.tile import MappingConfig

    if jit.load("_periphery_jit") is None:
        pytest.skip("numba kernels unavailable")
    cfg = TileConfig(device=_device(), update=UpdateConfig(mode=mode),
                     mapping=MappingConfig(weight_scaling_omega=0.4, learn_out_scaling=learned))
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 100, generator=g)
    d = torch.randn(rows, 80, generator=g) * 0.1
    stashes = []
    for small in (True, False):
        monkeypatch.setattr(tile_mod, "SMALL_STASH_MAX", 1 << 17 if small else 0)
        t = AnalogTile(80, 100, cfg, 0)
        t.set_weights(torch.rand(80, 100, generator=torch.Generator().manual_seed(1)) - 0.5)
        t.out_scale.data[3] = 0.0
        t.stash_rows(x, d)
        e = t._stash[0]
        first = torch.cat([e[0].d, e[0].x], 1) if isinstance(e[0], tile_mod._RankOne) else e[0]
        stashes.append((first, e[1]))
        for bad in ("x", "d"):
            xb, db = x.clone(), d.clone()
            (xb if bad == "x" else db)[0, 7] = float("nan") if rows == 1 else float("inf")
            with pytest.raises(NonFiniteUpdateError):
                t.stash_rows(xb, db)
    (a, pa), (b, pb) = stashes
    assert torch.equal(a, b)
    assert (pa is None and pb is None) or torch.equal(pa, pb)


def test_kernels_leave_factors_beyond_float32_to_torch():
    """lr / b_max (or lr) beyond float32: the kernels do not run on an inf factor; torch's
    passes then raise their overflow error, as before the kernels."""
    w, g = torch.zeros(128, 128), torch.ones(128, 128)
    assert not updatekernel.softbounds_update_(w, g, 1e37, 0.01, -0.01)
    assert not updatekernel.softbounds_outer_update_(w, torch.ones(1, 128), torch.ones(1, 128),
                                                     1e39, 0.8, -0.8)
    assert torch.equal(w, torch.zeros(128, 128))


@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("with_abs", [True, False])
def test_compiled_products_stash_equals_the_torch_ops(learned, with_abs, monkeypatch):
    """`stash_products` with output scales (learned or a fixed mapping; a zero scale and one
    whose square underflows among them): the compensation in one compiled pass
    (`_periphery_jit.scale_products_`) stashes the values of the torch ops bit for bit, -0
    and subnormals included, and both routes refuse a product sum holding NaN or inf, or
    overflowing to inf once compensated (a NaN in the abs product alone is not checked, on
    either route)."""
    from analogpipe.tiles import tile as tile_mod
    from analogpipe.tiles.tile import MappingConfig

    if jit.load("_periphery_jit") is None:
        pytest.skip("numba kernels unavailable")
    cfg = TileConfig(device=_device(), update=UpdateConfig(mode="expected"),
                     mapping=MappingConfig(weight_scaling_omega=0.4, learn_out_scaling=learned))
    g = torch.Generator().manual_seed(5)
    grad = torch.randn(48, 90, generator=g) * 3
    grad[2, ::3] = -0.0
    grad[4] = 1e-38  # at the subnormal range
    grad[6] = 1e-3  # times 1 / (3e-19)^2 = 1.1e37: large, finite
    prod = grad.abs() + torch.rand(48, 90, generator=g)
    stashes = []
    for compiled in (True, False):
        monkeypatch.setattr(tile_mod, "SMALL_PRODUCTS", compiled)
        t = AnalogTile(48, 90, cfg, 0)
        t.set_weights(torch.rand(48, 90, generator=torch.Generator().manual_seed(1)) - 0.5)
        t.out_scale.data[3] = 0.0
        t.out_scale.data[5] = 1e-23  # s^2 underflows to 0: no compensation
        t.out_scale.data[6] = 3e-19
        assert (tile_mod._small_products(grad, prod, t.out_scale) is not None) == compiled
        t.stash_products(grad, prod if with_abs else None)
        stashes.append(t._stash[0])
        for bad in (float("nan"), float("inf"), -float("inf")):
            gb = grad.clone()
            gb[7, 11] = bad
            with pytest.raises(NonFiniteUpdateError):
                t.stash_products(gb, prod if with_abs else None)
        gb = grad.clone()
        gb[6, 0] = 100.0  # 1.1e37 * 100: inf once compensated
        with pytest.raises(NonFiniteUpdateError):
            t.stash_products(gb, prod if with_abs else None)
        pb = prod.clone()
        pb[0, 0] = float("nan")
        t.stash_products(grad, pb)
        assert len(t._stash) == 2
    (ga, pa), (gb_, pb_) = stashes
    assert torch.equal(ga.view(torch.int32), gb_.view(torch.int32))
    assert ga[6].abs().max() > 1e30
    assert (pa is None and pb_ is None) or torch.equal(pa.view(torch.int32),
                                                      pb_.view(torch.int32))


@pytest.mark.parametrize("mode", ["expected", "pulsed"])
def test_conv_training_steps_equal_with_and_without_the_conv_passes(mode, monkeypatch):
    """Two training steps of a small ResNet (conv layers, learned output scales): the
    compiled conv DAC passes and products stash (`io.DAC_FACTOR_KERNELS`,
    `tile.SMALL_PRODUCTS`) leave every output and every state value as the torch ops give
    them, bit for bit."""
    import torch.nn.functional as F

    from analogpipe.models import resnet10
    from analogpipe.nn.layers import convert_to_analog
    from analogpipe.optim.analog_sgd import AnalogSGD
    from analogpipe.presets import paper_config
    from analogpipe.tiles import io as io_mod
    from analogpipe.tiles import tile as tile_mod

    if jit.load("_periphery_jit") is None:
        pytest.skip("numba kernels unavailable")
    runs = []
    for compiled in (True, False):
        monkeypatch.setattr(io_mod, "DAC_FACTOR_KERNELS", compiled)
        monkeypatch.setattr(tile_mod, "SMALL_PRODUCTS", compiled)
        torch.manual_seed(0)
        model = convert_to_analog(resnet10(num_classes=10, width=8),
                                  paper_config(update=mode), seed=0).train()
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
        opt = AnalogSGD(model, lr=0.1)
        outs = []
        for _ in range(2):
            opt.zero_grad()
            out = model(x)
            F.cross_entropy(out, y).backward()
            opt.step()
            outs.append(out.detach())
        runs.append((outs, model.state_dict()))
    (oa, sa), (ob, sb) = runs
    assert all(torch.equal(a, b) for a, b in zip(oa, ob))
    assert _equal_state(sa, sb)


def _equal_state(a, b) -> bool:
    """Tensors equal (torch.equal) and everything else equal, through dicts and lists."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_state(u, v) for u, v in zip(a, b))
    return a == b
