"""The periphery: quantizer levels, output noise, clipping, analog conv vs a patch loop."""

import math

import pytest
import torch

from analogpipe.devices import DeviceConfig
from analogpipe.errors import ConfigError
from analogpipe.nn import AnalogConv2d, AnalogLinear
from analogpipe.tiles import IOConfig, TileConfig, analog_mvm, res_for_bits
from analogpipe.tiles.tile import MappingConfig


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_n_bit_quantizer_has_exactly_2_pow_n_minus_1_levels(bits):
    # the DAC as the MVM applies it: one input, weight 1, no noise management, ideal ADC
    io = IOConfig(inp_res=res_for_bits(bits), noise_management="none", out_res=0,
                  out_noise=0.0, out_bound=float("inf"))
    v = torch.linspace(-3, 3, 200_001, dtype=torch.float64)
    q = analog_mvm(v[:, None], torch.ones(1, 1, dtype=torch.float64), io, None)
    levels = torch.unique(q)
    n = 2**bits - 1
    assert levels.numel() == n
    expected = torch.arange(-(n // 2), n // 2 + 1, dtype=torch.float64) / (n // 2)
    torch.testing.assert_close(levels, expected, rtol=0, atol=1e-12)


def test_output_noise_spread_matches_out_noise():
    io = IOConfig(inp_res=0, out_res=0, out_noise=0.05, out_bound=float("inf"))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 32, generator=g) * 0.1
    x = torch.randn(20_000, 32, generator=g)
    alpha = x.abs().amax(1, keepdim=True)
    clean = (x / alpha) @ w.t()
    noisy = analog_mvm(x, w, io, g) / alpha
    std = (noisy - clean).std().item()
    # 320k draws: relative standard error of a std is 1/sqrt(2N) ~ 0.13%; allow 2%
    assert abs(std / 0.05 - 1) < 0.02


def test_outputs_clip_at_out_bound_and_inputs_at_inp_bound():
    io = IOConfig(inp_res=0, out_res=0, out_noise=0.0, out_bound=2.0, noise_management="none")
    w = torch.ones(3, 10)
    x = torch.full((1, 10), 0.5)
    assert torch.equal(analog_mvm(x, w, io, None), torch.full((1, 3), 2.0))
    x = torch.full((1, 10), 5.0)  # inputs clip at inp_bound 1 -> sum 10 -> clipped to 2
    assert torch.equal(analog_mvm(x, w, io, None), torch.full((1, 3), 2.0))
    y = analog_mvm(torch.full((1, 10), -0.1), w, io, None)
    assert torch.allclose(y, torch.full((1, 3), -1.0))


def test_noise_management_zero_row_gives_zero_output_even_with_noise():
    io = IOConfig(out_noise=0.1)
    y = analog_mvm(torch.zeros(4, 5), torch.randn(3, 5), io, torch.Generator().manual_seed(0))
    assert torch.equal(y, torch.zeros(4, 3))


def _vector_reference(x, w, io):
    """One MVM of one vector through the periphery, float64, written from the SPEC."""
    alpha = x.abs().max()
    xs = x / alpha if alpha > 0 else x
    step = io.inp_res * 2 * io.inp_bound
    xs = torch.clamp(torch.round(xs / step) * step, -io.inp_bound, io.inp_bound)
    y = w @ xs
    ostep = io.out_res * 2 * io.out_bound
    y = torch.clamp(torch.round(y / ostep) * ostep, -io.out_bound, io.out_bound)
    return y * alpha


def test_analog_conv_equals_a_patch_by_patch_loop_reference():
    io = IOConfig.bits(8, 8, out_noise=0.0, out_bound=3.0)
    cfg = TileConfig(device=DeviceConfig(name="softbounds", w_max=1.0, w_min=-1.0),
                     forward=io, backward=io, mapping=MappingConfig())
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, bias=True)
    layer = AnalogConv2d.from_digital(conv, cfg).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    y = layer(x)
    w = layer.tile.weight
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    ho = wo = 4
    ref = torch.zeros(2, 4, ho, wo, dtype=torch.float64)
    for n in range(2):
        for i in range(ho):
            for j in range(wo):
                patch = xp[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(-1)
                ref[n, :, i, j] = _vector_reference(patch, w, io) + layer.bias
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-10)


def test_analog_conv_backward_equals_fold_of_patch_errors():
    """Backward MVM with ideal IO through the unfold path equals the autograd conv gradient."""
    io = IOConfig(inp_res=0, out_res=0, out_noise=0.0, out_bound=float("inf"),
                  noise_management="none")
    cfg = TileConfig(device=DeviceConfig(name="ideal"), forward=io, backward=io)
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(2, 3, 3, stride=1, padding=1, bias=False).double()
    layer = AnalogConv2d.from_digital(conv, cfg).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    layer(x).sum().backward()
    conv(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.tile._stash[0][0], conv.weight.grad.reshape(3, -1))


def test_linear_forward_uses_the_tile_periphery():
    io = IOConfig.bits(8, 8, out_noise=0.0)
    cfg = TileConfig(device=DeviceConfig(name="softbounds"), forward=io, backward=io)
    lin = AnalogLinear(6, 3, bias=False, config=cfg)
    lin.tile.set_weights(torch.full((3, 6), 0.1))
    y = lin(torch.ones(2, 6))
    # 6 * 0.1 = 0.6, quantized on the ADC grid of step 24/254
    step = 24 / 254
    assert torch.allclose(y, torch.full((2, 3), round(0.6 / step) * step))


def test_analog_conv_backward_with_quantized_io_equals_a_patch_loop_then_fold():
    """Backward MVM per output pixel through 8-bit DAC/ADC (no noise) on the current weights,
    then col2im: a float64 loop over patches of the SPEC's per-vector periphery."""
    io = IOConfig.bits(8, 8, out_noise=0.0, out_bound=3.0)
    cfg = TileConfig(device=DeviceConfig(name="softbounds", w_max=1.0, w_min=-1.0),
                     forward=IOConfig.perfect(), backward=io, mapping=MappingConfig())
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    layer = AnalogConv2d.from_digital(conv, cfg).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    d = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    layer(x).backward(d)
    w = layer.tile.weight
    cols = torch.zeros(2, 27, 16, dtype=torch.float64)
    for n in range(2):
        for p in range(16):
            cols[n, :, p] = _vector_reference(d[n, :, p // 4, p % 4], w.t(), io)
    ref = torch.nn.functional.fold(cols, (7, 7), 3, padding=1, stride=2)
    torch.testing.assert_close(x.grad, ref, rtol=0, atol=1e-10)


def test_column_layout_equals_row_layout():
    """analog_mvm on columns [N, in, L] is the row MVM of every column (noise-free, float64;
    with noise: the same spread)."""
    io = IOConfig.bits(8, 8, out_noise=0.0)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(5, 9, generator=g, dtype=torch.float64) * 0.3
    for transposed, n_in in ((False, 9), (True, 5)):  # backward: d [N, out, L] -> [N, in, L]
        x = torch.randn(3, n_in, 11, generator=g, dtype=torch.float64)
        rows = x.transpose(1, 2).reshape(-1, n_in)
        cols_out = analog_mvm(x, w, io, None, transposed=transposed, columns=True)
        row_out = analog_mvm(rows, w, io, None, transposed=transposed)
        torch.testing.assert_close(cols_out.transpose(1, 2).reshape(-1, cols_out.shape[1]),
                                   row_out, rtol=0, atol=1e-12)
    noisy = IOConfig(inp_res=0, out_res=0, out_noise=0.05, out_bound=float("inf"))
    xs = torch.randn(64, 9, 500, generator=g)
    alpha = xs.abs().amax(1, keepdim=True)
    clean = torch.matmul(w.float(), xs / alpha)
    spread = (analog_mvm(xs, w.float(), noisy, g, columns=True) / alpha - clean).std().item()
    assert abs(spread / 0.05 - 1) < 0.02  # 160k draws


def test_converters_beyond_24_bits_are_refused():
    """Levels of more than 24 bits do not fit float32 (the ADC clamp overflowed): refused by
    res_for_bits and by IOConfig's resolutions, with the setting named."""
    assert res_for_bits(24) == 1 / (2**24 - 2)
    with pytest.raises(ConfigError, match="bits"):
        res_for_bits(25)
    with pytest.raises(ConfigError, match="io.out_res"):
        IOConfig(out_res=1e-12)
    with pytest.raises(ConfigError, match="io.inp_res"):
        IOConfig(inp_res=1 / (2**30))


def test_an_adc_step_needs_a_finite_out_bound():
    """out_res > 0 with out_bound = inf would make the ADC step infinite (NaN outputs): refused
    with the setting named; out_res <= 0 allows an unbounded output."""
    with pytest.raises(ConfigError, match="io.out_bound"):
        IOConfig(out_bound=math.inf)
    assert IOConfig(out_res=0, out_bound=math.inf).out_step == 0.0


def _both_routes(monkeypatch, fn):
    """fn() with the compiled output side, then with the torch passes (same noise key)."""
    from analogpipe.tiles import io as io_mod

    got = [fn()]
    old = io_mod.ADC_KERNEL_MIN
    io_mod.ADC_KERNEL_MIN = 1 << 62
    try:
        got.append(fn())
    finally:
        io_mod.ADC_KERNEL_MIN = old
    return got


_ADC_CONFIGS = [IOConfig(), IOConfig(out_noise=0), IOConfig(out_res=0, out_bound=3.0),
                IOConfig(out_res=0, out_bound=math.inf, out_noise=0.02), IOConfig(inp_res=0),
                IOConfig.bits(6, 10, out_noise=0.1, out_bound=5),
                IOConfig(noise_management="none")]


def _same(a, b):
    """Bit for bit (NaN payloads aside): the int32 views agree where not NaN."""
    return a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num(1234.5).view(torch.int32), b.nan_to_num(1234.5).view(torch.int32))


@pytest.mark.parametrize("route", ["openmp-team", "thread-pool"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("io", _ADC_CONFIGS, ids=range(len(_ADC_CONFIGS)))
def test_compiled_output_side_equals_the_torch_passes_bit_for_bit(io, threads, route,
                                                                  monkeypatch):
    """The one-pass compiled ADC (`_rngkernel_jit.adc_range_`) gives every value the torch
    passes give, bit for bit: rows (2-d and 3-d, also with as many rows as outputs) and
    columns, with and without abs-max scales, NaN, inf and -0 included, at 1-3 threads on
    torch's OpenMP team or on the thread pool (parts of 4096 values, so that every thread
    gets work)."""
    from analogpipe.tiles import rng
    from analogpipe.tiles.io import _adc

    monkeypatch.setattr(rng, "KERNEL_PART", 1 << 12)
    monkeypatch.setattr(rng, "TEAM", route == "openmp-team")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(1)
        for shape, cols in [((70, 1000), False), ((64, 32, 32), False), ((3, 37, 1100), True),
                            ((5, 144, 64), True)]:
            y = torch.randn(shape, generator=g) * 30
            y.view(-1)[::997] = float("nan")
            y.view(-1)[5::1009] = float("inf")
            y.view(-1)[7::101] = -0.0
            alpha = torch.rand((shape[0], 1, shape[2]) if cols else (*shape[:-1], 1),
                               generator=g) + 0.1
            alpha.view(-1)[0] = 0.0
            for a in (alpha, None):
                fused, ref = _both_routes(monkeypatch, lambda y=y, a=a, cols=cols: _adc(
                    y.clone(), io, None if a is None else a.clone(),
                    torch.Generator().manual_seed(3), cols))
                assert _same(fused, ref), (shape, a is None)
    finally:
        torch.set_num_threads(old)


def test_3d_rows_through_the_compiled_output_side_equal_2d_rows(monkeypatch):
    """analog_mvm on rows [B, T, in] with T equal to the output count (a layout the
    columns' scales would also fit) scales per row, as the 2-d rows do."""
    x = torch.randn(64, 32, 48, generator=torch.Generator().manual_seed(0))
    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    io = IOConfig(out_noise=0)
    ref = analog_mvm(x.reshape(-1, 48), w, io, None).reshape(64, 32, 32)
    fused, torch_route = _both_routes(monkeypatch, lambda: analog_mvm(x, w, io, None))
    assert _same(fused, ref) and _same(torch_route, ref)


def test_an_output_noise_below_float32_keeps_the_torch_bits(monkeypatch):
    """out_noise > 0 that rounds to 0 in float32: the torch passes add 0 * z (so -0 turns
    +0); the compiled route leaves such settings to them."""
    from analogpipe.tiles.io import _adc

    y = torch.zeros(300, 400)
    y[::2] = -0.0
    io = IOConfig(out_noise=1e-50, out_res=0, out_bound=math.inf, inp_res=0)
    fused, ref = _both_routes(monkeypatch, lambda: _adc(
        y.clone(), io, None, torch.Generator().manual_seed(3)))
    assert _same(fused, ref)


@pytest.mark.parametrize("hw,pad,n_pixels,what", [
    ((12, 12), 1, 256, "conv backward errors"), ((64, 64), 1, 256, "conv backward errors"),
    ((1, 1), 0, 1, "conv backward input size")])
def test_conv_backward_refuses_errors_of_another_input_size(hw, pad, n_pixels, what,
                                                            monkeypatch):
    """analog_mvm_fold checks that the kernel fits the hw input and that d holds its output
    pixels, before any pass and on every route (the compiled route would otherwise read
    past the errors, or return zeros for an input smaller than the kernel)."""
    from analogpipe.tiles.io import PatchGeometry, analog_mvm_fold

    geo = PatchGeometry((3, 3), (1, 1), (pad, pad), (1, 1))
    d, w = torch.randn(50, 16, n_pixels), torch.randn(16, 8 * 9)
    for io in (IOConfig(), IOConfig.perfect()):
        for _ in range(2):
            with pytest.raises(ConfigError, match=what):
                analog_mvm_fold(d, geo, hw, w, io, torch.Generator().manual_seed(0))
            monkeypatch.setattr("analogpipe.tiles.io.ADC_KERNEL_MIN", 1 << 62)
        monkeypatch.undo()


GEOMETRIES = [((3, 3), (1, 1), (1, 1), (1, 1), (32, 32), 16, 16, 8),
              ((3, 3), (2, 2), (1, 1), (1, 1), (17, 17), 8, 24, 6),
              ((1, 1), (2, 2), (0, 0), (1, 1), (32, 32), 32, 64, 16),
              ((3, 3), (1, 1), (2, 2), (2, 2), (20, 20), 6, 12, 5),
              ((1, 5), (1, 2), (0, 2), (1, 1), (1, 300), 10, 7, 9),
              ((3, 3), (1, 1), (1, 1), (1, 1), (4, 4), 128, 128, 64)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_compiled_conv_backward_equals_adc_then_fold_bit_for_bit(geometry, monkeypatch):
    """The conv backward's output side and col2im in one compiled pass equal the torch
    passes then `PatchGeometry.fold` bit for bit (strides, dilation, padding, 1xk kernels),
    and F.fold of the same patch errors to float32 rounding."""
    from analogpipe.tiles.io import PatchGeometry, analog_mvm_fold

    k, s, p, dl, hw, c, out, n = geometry
    geo = PatchGeometry(k, s, p, dl)
    ho, wo = geo.output_hw(*hw)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(out, c * k[0] * k[1], generator=g) * 0.3
    d = torch.randn(n, out, ho * wo, generator=g)
    d[0, 0, 0] = float("nan")
    d[1] = 0
    assert n * c * k[0] * k[1] * ho * wo >= 1 << 15  # the compiled route's size
    for io in [*_ADC_CONFIGS, IOConfig.perfect()]:
        fused, ref = _both_routes(monkeypatch, lambda io=io: analog_mvm_fold(
            d, geo, hw, w, io, torch.Generator().manual_seed(5)))
        assert fused.shape == (n, c, *hw) and _same(fused, ref), io
        cols = analog_mvm(d, w, io, torch.Generator().manual_seed(5), transposed=True,
                          columns=True)
        folded = torch.nn.functional.fold(cols, hw, k, dl, p, s)
        torch.testing.assert_close(fused.nan_to_num(0), folded.nan_to_num(0), rtol=1e-5,
                                   atol=1e-5)


def test_conv_backward_with_the_callers_abs_max_equals_its_own():
    """analog_mvm_fold given the errors' abs-max per pixel (as the conv layer passes it from
    the |d| its update needs too) gives the same values as computing it itself, on the
    compiled route and on the torch passes."""
    from analogpipe.tiles.io import PatchGeometry, analog_mvm_fold

    geo = PatchGeometry((3, 3), (1, 1), (1, 1), (1, 1))
    g = torch.Generator().manual_seed(2)
    d, w = torch.randn(6, 16, 16 * 16, generator=g), torch.randn(16, 8 * 9, generator=g)
    d[1, :, 7] = 0.0  # a pixel without error: alpha 0
    alpha = d.abs().amax(1, keepdim=True)
    for kernel_min in (None, 1 << 62):
        import analogpipe.tiles.io as io_mod

        old = io_mod.ADC_KERNEL_MIN
        if kernel_min is not None:
            io_mod.ADC_KERNEL_MIN = kernel_min
        try:
            own = analog_mvm_fold(d, geo, (16, 16), w, IOConfig(), torch.Generator().manual_seed(5))
            given = analog_mvm_fold(d, geo, (16, 16), w, IOConfig(),
                                    torch.Generator().manual_seed(5), alpha)
        finally:
            io_mod.ADC_KERNEL_MIN = old
        assert _same(own, given)
        assert own.abs().sum() > 0


_SMALL_CONFIGS = _ADC_CONFIGS + [IOConfig(inp_bound=0.5), IOConfig(inp_res=0, inp_bound=0.25),
                                 IOConfig(out_noise=1e-50),
                                 IOConfig.bits(24, 24, out_bound=1e30, out_noise=0.0)]


def _special_rows(shape, g):
    y = torch.randn(shape, generator=g) * 30
    flat = y.view(-1)
    flat[::97] = float("nan")
    flat[5::101] = float("inf")
    flat[9::103] = -float("inf")
    flat[7::11] = -0.0
    if shape[0] > 2:
        y[1] = 0.0  # an all-zero row: alpha 0
        y[2, ::2] = -0.0
    return y


@pytest.mark.parametrize("io", _SMALL_CONFIGS, ids=range(len(_SMALL_CONFIGS)))
def test_small_rows_periphery_equals_the_torch_ops_bit_for_bit(io, monkeypatch):
    """Rows below the compiled output side's size: the compiled DAC of rows
    (`_periphery_jit.dac_rows_`) and output side (`adc_rows_`, noise drawn from the torch
    generator as `rng.add_normal_` draws it) give the values of the torch ops bit for bit
    (alpha included), NaN, inf, -0 and all-zero rows included, and so does analog_mvm."""
    import analogpipe.tiles.io as io_mod
    from analogpipe.tiles.io import _adc, _dac

    if io_mod.jit.load("_periphery_jit") is None:
        pytest.skip("numba kernels unavailable")
    g = torch.Generator().manual_seed(4)
    w = torch.randn(40, 33, generator=g)
    for shape in [(1, 33), (7, 33), (64, 33), (3, 512)]:
        x = _special_rows(shape, g)
        runs = []
        for small in (True, False):
            monkeypatch.setattr(io_mod, "SMALL_KERNELS", small)
            xq, alpha = _dac(x, io, -1)
            yy = torch.randn(shape[0], 40, generator=torch.Generator().manual_seed(1)) * 40
            yy[0, :3] = float("nan")
            yy[-1, 3:6] = -0.0
            a_in = None if alpha is None else alpha.clone()
            out = _adc(yy, io, a_in, torch.Generator().manual_seed(7))
            mvm = analog_mvm(x, w, io, torch.Generator().manual_seed(9)) \
                if shape[1] == 33 else None
            runs.append((xq, alpha, out, mvm))
        (xq, al, out, mvm), (rxq, ral, rout, rmvm) = runs
        assert _same(xq, rxq), (shape, "dac")
        assert (al is None and ral is None) or _same(al, ral), (shape, "alpha")
        assert _same(out, rout), (shape, "adc")
        assert mvm is None or _same(mvm, rmvm), (shape, "mvm")


def _compiled_route(route: str, monkeypatch) -> None:
    """Skip without the numba kernels; run them on torch's team ("openmp-team") or on the
    pool, in parts small enough that the test sizes use several."""
    import analogpipe.tiles.io as io_mod
    from analogpipe.tiles import rng

    if io_mod.jit.load("_periphery_jit") is None:
        pytest.skip("numba kernels unavailable")
    monkeypatch.setattr(rng, "KERNEL_PART", 1 << 10)
    monkeypatch.setattr(rng, "TEAM", route == "openmp-team")


@pytest.mark.parametrize("route", ["openmp-team", "thread-pool"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_compiled_patch_absmax_equals_the_max_pool_route(geometry, route, monkeypatch):
    """The patch maxima in one compiled pass equal the max-pool of the channel maxima bit for
    bit (strides, dilation, padding, 1xk kernels), NaN and inf included, on torch's team and
    on the pool."""
    import analogpipe.tiles.io as io_mod
    from analogpipe.tiles.io import PatchGeometry

    _compiled_route(route, monkeypatch)
    ks, st, pad, dil, hw, c, _, n = geometry
    geo = PatchGeometry(ks, st, pad, dil)
    x = torch.randn(n, c, *hw, generator=torch.Generator().manual_seed(3))
    x.view(-1)[::977] = float("nan")
    x.view(-1)[3::1013] = -float("inf")
    x[0] = 0.0
    got = geo.patch_absmax(x)
    monkeypatch.setattr(io_mod, "SMALL_KERNELS", False)
    ref = geo.patch_absmax(x)
    assert got.shape == ref.shape and _same(got, ref)


@pytest.mark.parametrize("scale", [1e-30, 1e-37, 1e-39, 1e-45])
def test_tiny_vectors_give_finite_outputs_on_every_route(scale, monkeypatch):
    """Inputs whose abs-max is below `alpha_floor` (1.5e-36 for float32, 8-bit DAC) used to
    overflow the DAC's factor (1 / alpha) / i_step into inf and give NaN outputs. They are
    now scaled by the floor: finite outputs, within the DAC's resolution of W x at that
    scale (exactly W x's sign pattern is not promised), zero rows still exactly zero, the
    same values on the compiled and the torch routes, for rows and for conv patches."""
    import analogpipe.tiles.io as io_mod
    from analogpipe.tiles.io import PatchGeometry, alpha_floor, analog_mvm_patches

    g = torch.Generator().manual_seed(0)
    w = torch.randn(30, 40, generator=g) * 0.1
    x = torch.rand(4, 40, generator=g) * scale
    x[2] = 0.0
    io = IOConfig(out_noise=0.0)
    floor = alpha_floor(io.inp_step, torch.float32)
    outs = []
    for small in (True, False):
        monkeypatch.setattr(io_mod, "SMALL_KERNELS", small)
        y = analog_mvm(x, w, io, None)
        assert torch.isfinite(y).all() and (y[2] == 0).all()
        outs.append(y)
    assert _same(*outs)
    ref = x.double() @ w.double().t()
    a = torch.maximum(x.abs().amax(1, keepdim=True), torch.tensor(floor)).double()
    # each input is off by at most half a DAC step of the scale a; the output ADC adds
    # at most half an output step (out_bound 12 * a * 2 / 254 per unit of y / a)
    err = (0.5 * io.inp_step * a * w.abs().sum(1).double()[None, :]
           + 0.5 * io.out_step * a)
    assert ((outs[0].double() - ref).abs() <= err * 1.01 + 1e-300).all()
    geo = PatchGeometry((3, 3), (1, 1), (1, 1), (1, 1))
    xc = torch.rand(2, 3, 6, 6, generator=g) * scale
    wc = torch.randn(5, 27, generator=g)
    conv = analog_mvm_patches(xc, geo, None, wc, IOConfig(), torch.Generator().manual_seed(1))
    assert torch.isfinite(conv).all()
    # a DAC step above 1 (a wide input range): the floor stays the smallest normal number
    for small in (True, False):
        monkeypatch.setattr(io_mod, "SMALL_KERNELS", small)
        wide = analog_mvm(x, w, IOConfig(inp_bound=1000.0, out_noise=0.0), None)
        assert torch.isfinite(wide).all() and (wide[2] == 0).all()


def _dac_torch_factors(alpha, io):
    """`_dac`'s torch ops on given abs-maxima: (floored alpha, factor), restated here."""
    from analogpipe.tiles.io import alpha_floor

    scaled = alpha.clamp_min(alpha_floor(io.inp_step, alpha.dtype))
    inv = torch.where(alpha > 0, scaled, 1.0).reciprocal_()
    return torch.where(alpha > 0, scaled, alpha), inv / io.inp_step if io.inp_step > 0 else inv


_DAC_CONFIGS = [IOConfig(), IOConfig(inp_bound=0.5), IOConfig(inp_res=0, inp_bound=0.25),
                IOConfig.bits(4, 8), IOConfig(inp_bound=1000.0)]


@pytest.mark.parametrize("route", ["openmp-team", "thread-pool"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_compiled_conv_dac_factors_and_error_dac_equal_the_torch_ops(geometry, route,
                                                                      monkeypatch):
    """The conv DACs' compiled passes give the torch ops' values bit for bit (NaN payloads
    aside), NaN, inf, -0, all-zero and tiny (below `alpha_floor`) patches and pixels
    included, over DAC resolutions and bounds: the patches' alpha and factor formed with
    their maxima, and the zero-padded input copied in the same pass
    (`PatchGeometry.dac_factors`), and so the forward MVM of every patch; the
    errors' DAC of columns (`_dac_columns`: abs-maxima, factors and levels) and so the conv
    backward; on torch's team and on the pool."""
    import analogpipe.tiles.io as io_mod
    from analogpipe.tiles.io import (
        PatchGeometry,
        _dac,
        _dac_columns,
        analog_mvm_fold,
        analog_mvm_patches,
    )

    _compiled_route(route, monkeypatch)
    ks, st, pad, dil, hw, c, out, n = geometry
    geo = PatchGeometry(ks, st, pad, dil)
    ho, wo = geo.output_hw(*hw)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, c, *hw, generator=g)
    x.view(-1)[::977] = float("nan")
    x.view(-1)[3::1013] = -float("inf")
    x.view(-1)[5::7] = -0.0
    x[0] = 0.0
    x[1] *= 1e-37  # below the floor
    w = torch.randn(out, c * ks[0] * ks[1], generator=g) * 0.3
    d = torch.randn(n, out, ho * wo, generator=g)
    d[0, 0, 0], d[0, 1, 1], d[1, 2, 2] = float("nan"), float("inf"), -float("inf")
    d[1, :, 3] = 0.0
    d[2] *= 1e-38
    d.view(-1)[9::11] = -0.0
    for io in _DAC_CONFIGS:
        alpha, fac, xp = geo.dac_factors(x, io)
        assert (xp is None) == (pad == (0, 0))
        assert xp is None or _same(xp, torch.nn.functional.pad(x, (pad[1], pad[1], pad[0],
                                                                     pad[0])))
        monkeypatch.setattr(io_mod, "DAC_FACTOR_KERNELS", False)
        ref_alpha, ref_fac = _dac_torch_factors(geo.patch_absmax(x), io)
        assert _same(alpha, ref_alpha) and _same(fac, ref_fac), io
        fwd_ref = analog_mvm_patches(x, geo, None, w, io, torch.Generator().manual_seed(1))
        bwd_ref = analog_mvm_fold(d, geo, hw, w, io, torch.Generator().manual_seed(2))
        lv_ref, al_ref = _dac(d, io, -2)
        monkeypatch.setattr(io_mod, "DAC_FACTOR_KERNELS", True)
        assert _same(analog_mvm_patches(x, geo, None, w, io,
                                        torch.Generator().manual_seed(1)), fwd_ref), io
        assert _same(analog_mvm_fold(d, geo, hw, w, io, torch.Generator().manual_seed(2)),
                     bwd_ref), io
        levels, al = _dac_columns(d, io)
        assert _same(levels, lv_ref) and _same(al, al_ref), io
    assert geo.dac_factors(x, IOConfig(noise_management="none")) is None
    assert _dac_columns(d, IOConfig(noise_management="none")) is None
    assert _dac_columns(d.double(), IOConfig()) is None


@pytest.mark.parametrize("small", [True, False])
def test_the_periphery_refuses_inputs_that_require_grad(small, monkeypatch):
    """analog_mvm, analog_mvm_patches and analog_mvm_fold are not differentiable (the
    converters round): an input that requires grad, with grad mode on, is refused with a
    ConfigError naming the function, on the compiled and on the torch routes alike (the
    routes disagreed: one raised from inside torch, one returned values without a graph);
    under torch.no_grad() they run, as inside the layers."""
    import analogpipe.tiles.io as io_mod
    from analogpipe.errors import ConfigError
    from analogpipe.tiles.io import PatchGeometry, analog_mvm_fold, analog_mvm_patches

    monkeypatch.setattr(io_mod, "SMALL_KERNELS", small)
    geo = PatchGeometry((3, 3), (1, 1), (1, 1), (1, 1))
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    d = torch.randn(2, 8, 36, requires_grad=True)
    rows = torch.randn(3, 36, requires_grad=True)
    w = torch.randn(8, 36)
    calls = {"analog_mvm": lambda: analog_mvm(rows, w, IOConfig(), None),
             "analog_mvm_patches": lambda: analog_mvm_patches(x, geo, None, w, IOConfig(), None),
             "analog_mvm_fold": lambda: analog_mvm_fold(d, geo, (6, 6), w, IOConfig(), None)}
    for name, call in calls.items():
        with pytest.raises(ConfigError, match=f"^{name}: the input requires grad"):
            call()
        with torch.no_grad():
            assert not call().requires_grad


@pytest.mark.parametrize("small", [True, False])
def test_backward_with_create_graph_through_analog_layers(small, monkeypatch):
    """A backward with create_graph (gradient penalties, Hessian-vector products) runs the
    layers' backward with grad mode on: the layers hand the periphery detached errors (it is
    a constant for higher orders), so it runs and gives the first-order gradients of a plain
    backward bit for bit, for linear and conv layers, on the compiled and torch routes; the
    digital parameters keep their graph (the bias gradient is differentiable). The perfect
    periphery stays differentiable when called directly."""
    import torch.nn.functional as F

    import analogpipe.tiles.io as io_mod
    from analogpipe.nn.layers import convert_to_analog
    from analogpipe.presets import paper_config

    monkeypatch.setattr(io_mod, "SMALL_KERNELS", small)
    g = torch.Generator().manual_seed(0)
    for net, x in [(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                        torch.nn.Linear(16, 4)), torch.randn(5, 8, generator=g)),
                   (torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(6, 4, 3), torch.nn.Flatten(),
                                        torch.nn.Linear(4 * 4 * 4, 4)),
                    torch.randn(5, 3, 6, 6, generator=g))]:
        grads = []
        for create_graph in (False, True):
            torch.manual_seed(0)
            m = convert_to_analog(net, paper_config(), seed=0)
            y = torch.randint(0, 4, (5,), generator=torch.Generator().manual_seed(1))
            loss = F.cross_entropy(m(x), y)
            params = [p for p in m.parameters() if p.requires_grad]
            gs = torch.autograd.grad(loss, params, create_graph=create_graph)
            grads.append(gs)
            if create_graph:  # a second order through the digital parameters
                assert any(gr.requires_grad for gr in gs)
                sum(gr.square().sum() for gr in gs if gr.requires_grad).backward()
        assert all(torch.equal(a, b.detach()) for a, b in zip(*grads))
    xr = torch.randn(3, 8, requires_grad=True)
    analog_mvm(xr, torch.randn(4, 8), IOConfig.perfect(), None).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
