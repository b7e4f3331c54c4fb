"""Tiki-Taka compound tile and PipeMare: closed forms, slow loop references, AP replay."""

import numpy as np
import pytest
import torch
from torch import nn

from analogpipe.devices import DeviceConfig, response
from analogpipe.errors import ConfigError
from analogpipe.nn.layers import AnalogLinear, analog_tiles
from analogpipe.optim import AnalogSGD
from analogpipe.optim.delay import PipeMareSGD, pipemare_factor, stage_delay
from analogpipe.pipeline import schedules
from analogpipe.pipeline.local import LocalPipeline
from analogpipe.tiles import (
    IOConfig,
    MappingConfig,
    TileConfig,
    TransferCompoundConfig,
    UpdateConfig,
)
from analogpipe.tiles.transfer import symmetric_point, tile_config_from_dict

IDEAL = DeviceConfig(name="ideal")
PERFECT = IOConfig.perfect()


def _tt(**kw):
    base = dict(device=IDEAL, fast_device=IDEAL, forward=PERFECT, backward=PERFECT,
                update=UpdateConfig(mode="expected", granularity="microbatch"),
                transfer_forward=PERFECT,
                transfer_update=UpdateConfig(mode="expected", granularity="microbatch"),
                mapping=MappingConfig())
    base.update(kw)
    return TransferCompoundConfig(**base)


def _quadratic(n=3, s=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(s, n, generator=g)
    Y = torch.randn(s, 1, generator=g)
    w0 = 0.3 * torch.randn(1, n, generator=g)
    return X, Y, w0


def _train_tt(cfg, X, Y, w0, lr, steps):
    layer = AnalogLinear(X.shape[1], 1, bias=False, config=cfg)
    layer.tile.set_weights(w0)
    opt = AnalogSGD(layer, lr=lr)
    for _ in range(steps):
        loss = 0.5 * (layer(X) - Y).square().sum()
        loss.backward()
        opt.step()
    return layer


@pytest.mark.parametrize("gamma,reset", [(0.0, False), (0.4, False), (0.4, True)])
def test_ideal_tiki_taka_follows_its_linear_closed_form(gamma, reset):
    """Ideal A and C, perfect IO, every column transferred every update: with the gradient
    g = W H - b of 0.5 ||X W^T - Y||^2 (W = gamma a + c) the state z = [a, c, 1] evolves by a
    fixed affine map, so z_K = M^K z_0 (float64 matrix power)."""
    X, Y, w0 = _quadratic()
    n, lr, fast_lr, t_lr, K = X.shape[1], 0.05, 0.7, 0.3, 40
    cfg = _tt(gamma=gamma, n_reads_per_transfer=n, fast_lr=fast_lr, transfer_lr=t_lr,
              with_reset_prob=1.0 if reset else 0.0)
    layer = _train_tt(cfg, X, Y, w0, lr, K)
    Xd, Yd = X.double().numpy(), Y.double().numpy()
    H, b = Xd.T @ Xd, (Yd.T @ Xd)[0]
    ea, et = fast_lr * lr, t_lr * lr
    eye = np.eye(n)
    # a' = a - ea ((gamma a + c) H - b); c' = c + et a'; a'' = 0 with reset (row vectors)
    # column-vector form: z' = T z
    T = np.zeros((2 * n + 1, 2 * n + 1))
    T[:n, :n] = (eye - ea * gamma * H).T
    T[:n, n:2 * n] = -ea * H.T
    T[:n, 2 * n] = ea * b
    T[n:2 * n, :] = et * T[:n, :]
    T[n:2 * n, n:2 * n] += eye
    if reset:
        T[:n, :] = 0.0
    T[2 * n, 2 * n] = 1.0
    z0 = np.concatenate([np.zeros(n), w0.double().numpy()[0], [1.0]])
    z = np.linalg.matrix_power(T, K) @ z0
    tile = layer.tile
    np.testing.assert_allclose(tile.fast_weight()[0].double().numpy(), z[:n], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(tile.slow.weight[0].double().numpy(), z[n:2 * n], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(tile.weight[0].double().numpy(), gamma * z[:n] + z[n:2 * n],
                               rtol=1e-4, atol=1e-6)


def test_exact_settings_reduce_tiki_taka_to_sgd():
    """gamma = 0, full transfer of A into C at eta_T = 1 after every update, then A reset: C
    moves by exactly -eta_A g, i.e. plain SGD. Against SGD's closed form on a quadratic,
    w_K = w* + (w_0 - w*)(I - lr H)^K, and bit for bit against a plain ideal tile."""
    X, Y, w0 = _quadratic(seed=1)
    n, lr, K = X.shape[1], 0.04, 60
    cfg = _tt(n_reads_per_transfer=n, transfer_lr=1.0, scale_transfer_lr=False,
              with_reset_prob=1.0)
    layer = _train_tt(cfg, X, Y, w0, lr, K)
    Xd, Yd = X.double().numpy(), Y.double().numpy()
    H, b = Xd.T @ Xd, (Yd.T @ Xd)[0]
    w_star = np.linalg.solve(H, b)
    wK = w_star + (w0.double().numpy()[0] - w_star) @ np.linalg.matrix_power(
        np.eye(n) - lr * H, K)
    np.testing.assert_allclose(layer.tile.weight[0].double().numpy(), wK, rtol=1e-5, atol=1e-6)
    plain = AnalogLinear(n, 1, bias=False, config=TileConfig(
        device=IDEAL, forward=PERFECT, backward=PERFECT, update=cfg.update,
        mapping=MappingConfig()))
    plain.tile.set_weights(w0)
    opt = AnalogSGD(plain, lr=lr)
    for _ in range(K):
        (0.5 * (plain(X) - Y).square().sum()).backward()
        opt.step()
    assert torch.equal(plain.tile.weight, layer.tile.weight)


# ------------------------------------------------------------------ transfers vs a slow loop
SB = DeviceConfig.soft_bounds(0.6, up_down=0.15, dw_min_dtod=0.2, w_max_dtod=0.1,
                              w_min_dtod=0.1, up_down_dtod=0.02)


def _expected_element(w, dw, du, dd, bmax, bmin, dw_min):
    """One element's expected update, the SPEC formula written out for soft bounds."""
    q_up = du / dw_min * (1 - w / bmax)
    q_down = dd / dw_min * (1 - w / bmin)
    f, g = (q_up + q_down) / 2, (q_down - q_up) / 2
    return min(max(w + dw * f - abs(dw) * g, bmin), bmax)


def _loop_reference(tile, events, rate, columns):
    """Slow loop: pointer, one-hot read (quantised by the ADC step, clipped at out_bound),
    element-by-element expected update of C."""
    cfg = tile.config
    io = cfg.transfer_forward
    a = tile.fast_weight().double().numpy()
    c = tile.slow.weight.double().numpy().copy()
    st = {k: np.broadcast_to(np.asarray(getattr(tile.slow.device_state, k), dtype=float),
                             c.shape) for k in ("b_max", "b_min", "delta_up", "delta_down")}
    out, inp = a.shape
    size = inp if columns else out
    ptr, touched = 0, []
    for _ in range(events):
        for r in range(min(cfg.n_reads_per_transfer, size)):
            i = (ptr + r) % size
            touched.append(i)
            line = a[:, i] if columns else a[i, :]
            for j, val in enumerate(line):
                step = io.out_step
                v = round(val / step) * step if step > 0 else val
                v = min(max(v, -io.out_bound), io.out_bound)
                e = (j, i) if columns else (i, j)
                c[e] = _expected_element(c[e], rate * v, st["delta_up"][e], st["delta_down"][e],
                                         st["b_max"][e], st["b_min"][e], SB.dw_min)
        ptr = (ptr + min(cfg.n_reads_per_transfer, size)) % size
    return c, touched


@pytest.mark.parametrize("columns", [True, False])
def test_transfers_match_a_slow_loop_reference(columns):
    """transfer_every = 2, n_reads = 3 on a 4x5 array: the pointer wraps, the reads go through
    a 6-bit ADC (no noise), C's update is the expected soft-bounds update per element."""
    cfg = TransferCompoundConfig(
        device=SB, fast_device=SB, forward=PERFECT, backward=PERFECT,
        update=UpdateConfig(mode="expected"), mapping=MappingConfig(),
        transfer_every=2, n_reads_per_transfer=3, transfer_columns=columns,
        transfer_lr=0.5, transfer_forward=IOConfig.bits(6, 6, out_noise=0.0, out_bound=1.0),
        transfer_update=UpdateConfig(mode="expected"))
    layer = AnalogLinear(5, 4, bias=False, config=cfg, seed=3)
    tile = layer.tile
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tile.slow.weight.copy_(0.3 * torch.randn(4, 5, generator=g))
        tile.fast.weight.copy_(tile.fast_reference + 0.2 * torch.randn(4, 5, generator=g))
    lr, updates = 0.2, 7
    c_ref, touched = _loop_reference(tile, updates // 2, 0.5 * lr, columns)
    zero = torch.zeros(4, 5)
    for _ in range(updates):  # zero gradients: only the transfers change anything
        tile.stash_products(zero, zero)
        tile.apply_update(lr)
    np.testing.assert_allclose(tile.slow.weight.double().numpy(), c_ref, rtol=0, atol=2e-6)
    size = 5 if columns else 4
    assert touched[:6] == [0, 1, 2, 3, 4 % size, 5 % size][:6]
    assert int(tile.transfer_pointer) == (3 * (updates // 2)) % size
    assert int(tile.transfer_count) == updates
    assert torch.equal(tile.weight, tile.slow.weight)  # gamma = 0: W is C


def test_pulsed_transfers_average_to_the_expected_transfer():
    """Pulsed writes into C: over 300 independent transfers from one state the mean change
    of every element matches the expected (slow loop) change within 5 standard errors plus
    the second-order term of the pulse model. (Rates stay below the pulse-train cap: a
    request beyond desired_bl pulses is clipped, as in aihwkit.)"""
    mk = dict(device=SB, fast_device=SB, forward=PERFECT, backward=PERFECT,
              update=UpdateConfig(mode="expected"), mapping=MappingConfig(),
              n_reads_per_transfer=5, transfer_lr=0.05, transfer_forward=PERFECT)
    cfg = TransferCompoundConfig(**mk, transfer_update=UpdateConfig(mode="pulsed"))
    tile = AnalogLinear(5, 4, bias=False, config=cfg, seed=5).tile
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        tile.slow.weight.copy_(0.3 * torch.randn(4, 5, generator=g))
        tile.fast.weight.copy_(tile.fast_reference + 0.2 * torch.randn(4, 5, generator=g))
    c0, a0 = tile.slow.weight.clone(), tile.fast.weight.clone()
    lr = 1.0
    assert 0.05 * lr * float(tile.fast_weight().abs().max()) / SB.dw_min < 31
    c_ref, _ = _loop_reference(tile, 1, 0.05 * lr, True)
    trials = 300
    acc = torch.zeros(4, 5, dtype=torch.float64)
    sq = torch.zeros_like(acc)
    for _ in range(trials):
        with torch.no_grad():
            tile.slow.weight.copy_(c0)
            tile.fast.weight.copy_(a0)
            tile.transfer_pointer.zero_()
        tile.transfer(0.05 * lr)
        delta = (tile.slow.weight - c0).double()
        acc += delta
        sq += delta.square()
    mean = acc / trials
    se = ((sq / trials - mean.square()).clamp_min(0) / trials).sqrt()
    expected = torch.from_numpy(c_ref) - c0.double()
    assert (mean - expected).abs().le(5 * se + 3e-4).all()
    assert expected.abs().max() > 10 * 3e-4  # the check has teeth


def test_symmetric_point_zero_shift():
    """Per element, one up and one down pulse are equal at the symmetric point; under
    alternating +/- gradients A drifts to its visible symmetric point: 0 with the zero-shift
    reference, g_sym without it."""
    dev = DeviceConfig.soft_bounds(0.5, up_down=0.3, dw_min_dtod=0.2, w_max_dtod=0.2,
                                   w_min_dtod=0.2, up_down_dtod=0.05)
    for ref in ("symmetric_point", "none"):
        cfg = _tt(fast_device=dev, device=dev, fast_reference=ref, transfer_every=0,
                  update=UpdateConfig(mode="expected", granularity="sample"))
        tile = AnalogLinear(3, 2, bias=False, config=cfg, seed=2).tile
        st = tile.fast.device_state
        gs = symmetric_point(st, dev)
        q_up, q_down = response(gs, st, dev)
        torch.testing.assert_close(q_up, q_down)
        assert float(gs.abs().max()) > 0.05  # the asymmetry is real
        grad = torch.full((2, 3), 1.0)
        for i in range(4000):
            tile.stash_products(grad if i % 2 else -grad, grad.abs())
            tile.apply_update(0.01)
        target = torch.zeros(2, 3) if ref == "symmetric_point" else gs
        torch.testing.assert_close(tile.fast_weight(), target, atol=0.01, rtol=0)


def test_state_dict_round_trip_and_config_errors():
    cfg = _tt(fast_device=SB, device=SB, gamma=0.3, n_reads_per_transfer=2,
              update=UpdateConfig(mode="pulsed"), transfer_update=UpdateConfig(mode="pulsed"))
    a = AnalogLinear(5, 4, config=cfg, seed=1)
    a.tile.set_weights(0.2 * torch.randn(4, 5, generator=torch.Generator().manual_seed(0)))
    opt = AnalogSGD(a, lr=0.5)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        a(x).square().sum().backward()
        opt.step()
    b = AnalogLinear(5, 4, config=cfg, seed=9)
    b.load_state_dict(a.state_dict())
    for layer in (a, b):  # same state => same future, generators included
        for _ in range(3):
            layer(x).square().sum().backward()
            AnalogSGD(layer, lr=0.5).step()
    for k, v in a.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b.state_dict()[k]), k
    assert int(a.tile.transfer_pointer) == (6 * 2) % 5
    assert len(analog_tiles(a)) == 1 and len(AnalogSGD(a, lr=1).tiles) == 1
    assert tile_config_from_dict(cfg.to_dict()) == cfg
    for bad, field in ((dict(transfer_every=-1), "transfer_every"),
                       (dict(n_reads_per_transfer=0), "n_reads_per_transfer"),
                       (dict(gamma=-0.1), "gamma"), (dict(with_reset_prob=2.0), "reset"),
                       (dict(fast_reference="mean"), "fast_reference")):
        with pytest.raises(ConfigError, match=field):
            _tt(**bad)


# ------------------------------------------------------------------ PipeMare
def test_pipemare_factor_and_delays():
    assert stage_delay("ap", 4, 0) == 3 and stage_delay("ap", 4, 3) == 0
    assert stage_delay("sp", 4, 0) == 0
    assert pipemare_factor(3, 0, 10) == pytest.approx(1 / 3)
    assert pipemare_factor(3, 5, 10) == pytest.approx(3 ** -0.5)
    assert pipemare_factor(3, 10, 10) == 1.0 == pipemare_factor(3, 50, 10)
    assert pipemare_factor(0, 0, 10) == 1.0 == pipemare_factor(5, 0, 0)


# ------------------------------------------------------------------ AP replay
def _replay_ap(stages, data, K, M, lr, warm, gamma, every, t_lr):
    """float64 sequential replay of AP on a chain of Linear(+tanh) stages with Tiki-Taka tiles:
    micro-batch k's forward at stage m reads the weights after max(0, k - (M-1-m)) updates,
    its backward the weights after k updates; each stage then updates A and transfers on its
    own counter and pointer, with PipeMare's factor for delay M-1-m."""
    st = []
    for layer in stages:
        t = layer[0].tile
        dev = {k: np.broadcast_to(np.asarray(getattr(arr.device_state, k), dtype=float),
                                  tuple(t.weight.shape)).copy()
               for arr in (t.fast,) for k in ("b_max", "b_min", "delta_up", "delta_down")}
        devc = {k: np.broadcast_to(np.asarray(getattr(t.slow.device_state, k), dtype=float),
                                   tuple(t.weight.shape)).copy()
                for k in ("b_max", "b_min", "delta_up", "delta_down")}
        st.append(dict(g=t.fast.weight.double().numpy().copy(),
                       r=t.fast_reference.double().numpy().copy(),
                       c=t.slow.weight.double().numpy().copy(), dev=dev, devc=devc,
                       count=0, ptr=0, steps=0))

    def weight(s):
        return gamma * (s["g"] - s["r"]) + s["c"]

    def exp_update(w, dw, dw_abs, d, dw_min):
        q_up = d["delta_up"] / dw_min * (1 - w / d["b_max"])
        q_down = d["delta_down"] / dw_min * (1 - w / d["b_min"])
        out = w + dw * (q_up + q_down) / 2 - dw_abs * (q_down - q_up) / 2
        return np.clip(out, d["b_min"], d["b_max"])

    hist = [[weight(s)] for s in st]
    losses = []
    for k in range(K):
        x, t = (v.double().numpy() for v in data(k))
        acts = [x]
        for m in range(M):
            h = acts[-1] @ hist[m][max(0, k - (M - 1 - m))].T
            acts.append(np.tanh(h) if m < M - 1 else h)
        losses.append(float(np.mean((acts[-1] - t) ** 2)))
        d = 2 * (acts[-1] - t) / t.size
        for m in reversed(range(M)):
            s = st[m]
            if m < M - 1:
                d = d * (1 - acts[m + 1] ** 2)
            d_prev = d @ weight(s)
            f = pipemare_factor(M - 1 - m, s["steps"], warm)
            s["steps"] += 1
            ea, et = lr * f, t_lr * lr * f
            xin = acts[m]
            s["g"] = exp_update(s["g"], -ea * d.T @ xin, ea * np.abs(d).T @ np.abs(xin),
                                s["dev"], SB.dw_min)
            s["count"] += 1
            if s["count"] % every == 0:
                i = s["ptr"]
                v = (s["g"] - s["r"])[:, i]
                col = exp_update(s["c"][:, i], et * v, et * np.abs(v),
                                 {kk: vv[:, i] for kk, vv in s["devc"].items()}, SB.dw_min)
                s["c"][:, i] = col
                s["ptr"] = (i + 1) % s["c"].shape[1]
            hist[m].append(weight(s))
            d = d_prev
    return st, losses


def test_ap_tiki_taka_with_pipemare_equals_float64_sequential_replay():
    M, K, lr, warm, gamma, every, t_lr = 3, 12, 0.3, 8, 0.5, 2, 0.8
    cfg = TransferCompoundConfig(
        device=SB, fast_device=SB, forward=PERFECT, backward=PERFECT,
        update=UpdateConfig(mode="expected", granularity="sample"), mapping=MappingConfig(),
        gamma=gamma, transfer_every=every, transfer_lr=t_lr, transfer_forward=PERFECT,
        transfer_update=UpdateConfig(mode="expected", granularity="sample"))
    sizes = [4, 5, 3, 2]
    gen = torch.Generator().manual_seed(7)
    stages = []
    for m in range(M):
        layer = AnalogLinear(sizes[m], sizes[m + 1], bias=False, config=cfg, seed=10 + m)
        layer.tile.set_weights(0.4 * torch.randn(sizes[m + 1], sizes[m], generator=gen))
        with torch.no_grad():  # start A away from 0 so gamma * A matters from the start
            layer.tile.fast.weight.add_(0.05 * torch.randn(sizes[m + 1], sizes[m],
                                                           generator=gen))
            layer.tile._reduce()
        stages.append(nn.Sequential(layer, nn.Tanh()) if m < M - 1 else nn.Sequential(layer))
    xs = torch.randn(K, 3, sizes[0], generator=gen)
    ys = torch.randn(K, 3, sizes[-1], generator=gen)

    def data(k):
        return xs[k], ys[k]

    st, ref_losses = _replay_ap(stages, data, K, M, lr, warm, gamma, every, t_lr)
    opts = [PipeMareSGD(s, lr=lr, delay=stage_delay("ap", M, i), warmup_steps=warm)
            for i, s in enumerate(stages)]
    pipe = LocalPipeline(stages, lr=lr, loss_fn=nn.functional.mse_loss, optimizers=opts)
    run = pipe.run(schedules.async_1f1b(M, 1, K), data)
    np.testing.assert_allclose(run.losses, ref_losses, rtol=1e-5, atol=1e-7)
    for s, ref in zip(stages, st):
        tile = s[0].tile
        np.testing.assert_allclose(tile.fast.weight.double().numpy(), ref["g"], atol=1e-6)
        np.testing.assert_allclose(tile.slow.weight.double().numpy(), ref["c"], atol=1e-6)
        assert int(tile.transfer_pointer) == ref["ptr"]
    assert [o.steps for o in opts] == [K] * M


# ------------------------------------------------------------------ CLI: resume, processes
TINY = ["train", "--subset", "192", "--micro-batch-size", "16", "--microbatches", "2",
        "--no-progress", "--model", "mlp", "--width", "32", "--scheme", "ap", "--stages", "2",
        "--algorithm", "tiki-taka", "--tt-gamma", "0.3", "--transfer-every", "2",
        "--n-reads-per-transfer", "3", "--update", "pulsed", "--delay-compensation",
        "pipemare", "--pipemare-warmup-epochs", "2"]


def _same_checkpoints(a_dir, b_dir):
    a = torch.load(a_dir / "checkpoint.pt", weights_only=False)
    b = torch.load(b_dir / "checkpoint.pt", weights_only=False)
    for key, t in a["model"].items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(t, b["model"][key]), key
    assert a["optimizers"][0]["pipemare_steps"] == b["optimizers"][0]["pipemare_steps"]
    strip = [{k: v for k, v in m.items() if k != "wall_s"} for m in a["metrics"]]
    assert strip == [{k: v for k, v in m.items() if k != "wall_s"} for m in b["metrics"]]
    return a


def test_tiki_taka_pipemare_resume_is_exact(tmp_path):
    from analogpipe.cli import main

    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*TINY, "--epochs", "3", "--out", str(full)]) == 0
    assert main([*TINY, "--epochs", "1", "--out", str(part)]) == 0
    ck = torch.load(part / "checkpoint.pt", weights_only=False)
    ck["config"]["epochs"] = 3
    torch.save(ck, part / "checkpoint.pt")
    assert main([*TINY, "--epochs", "3", "--out", str(part), "--resume"]) == 0
    a = _same_checkpoints(full, part)
    assert any(k.endswith("transfer_pointer") for k in a["model"])
    assert a["optimizers"][0]["pipemare_steps"] == 3 * 12  # 12 micro-batches an epoch


@pytest.mark.slow
def test_tiki_taka_two_processes_equal_one_process(tmp_path):
    from analogpipe.cli import main

    assert main([*TINY, "--epochs", "2", "--out", str(tmp_path / "local")]) == 0
    assert main([*TINY, "--epochs", "2", "--processes", "2", "--out",
                 str(tmp_path / "dist")]) == 0
    _same_checkpoints(tmp_path / "local", tmp_path / "dist")


@pytest.mark.parametrize("args,needle", [
    (["--algorithm", "tiki-taka", "--n-reads-per-transfer", "0"], "n_reads_per_transfer"),
    (["--algorithm", "tiki-taka", "--transfer-every", "-2"], "transfer_every"),
    (["--delay-compensation", "pipemare", "--scheme", "sp"], "delay_compensation"),
    (["--algorithm", "tiki-taka", "--scheme", "digital"], "algorithm"),
])
def test_bad_tiki_taka_settings_exit_2_before_writing(tmp_path, capsys, args, needle):
    from analogpipe.cli import main

    out = tmp_path / "x"
    base = TINY[:TINY.index("--scheme")]
    assert main([*base, *args, "--out", str(out)]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_cycle_model_charges_transfer_reads_and_pulses():
    """One transfer read = one MVM on A + one bl-slot pulse train into C, per update."""
    from analogpipe.pipeline.partition import layer_specs
    from analogpipe.timing.aimc import AimcCosts, layer_times

    cfg = _tt(n_reads_per_transfer=3, transfer_every=2)
    model = nn.Sequential(AnalogLinear(8, 4, config=cfg), nn.Tanh(),
                          AnalogLinear(4, 2, config=_tt(transfer_every=0)))
    specs = layer_specs(model, torch.zeros(1, 8))
    assert [s.transfer_reads for s in specs] == [1.5, 0.0]
    aimc = AimcCosts(t_mvm=1.0, bl=20, t_pulse=0.05)
    plain = layer_times(specs[1], 4, aimc)
    tt = layer_times(specs[0], 4, aimc)
    assert plain == (4.0, 4.0 + 4 * 20 * 0.05)
    assert tt == (4.0, 4.0 + 4 * 20 * 0.05 + 1.5 * (1.0 + 20 * 0.05))
