"""Single-process executor: parities, staleness emerging from the schedule, float64 oracle."""

import copy

import pytest
import torch
from torch import nn

from analogpipe.nn import analog_tiles, convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.pipeline import schedules
from analogpipe.pipeline.local import LocalPipeline
from analogpipe.presets import ideal_config, paper_config

LOSS = nn.functional.cross_entropy


def _net(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 4)]
    return nn.Sequential(*layers)


def _split(model, M):
    n = len(model)
    cuts = [round(i * n / M) for i in range(M + 1)]
    return [model[cuts[i]:cuts[i + 1]] for i in range(M)]


def _data(K, b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(K, b, 12, generator=g)
    ys = torch.randint(0, 4, (K, b), generator=g)
    return lambda k: (xs[k], ys[k])


def _plain(model, batch, B, steps, lr):
    """Plain training without a pipeline: B micro-batches accumulate, one step."""
    opt = AnalogSGD(model, lr=lr)
    for step in range(steps):
        for j in range(B):
            x, y = batch(step * B + j)
            (LOSS(model(x), y) / B).backward()
        opt.step()
    return model


def _state(model):
    return [t.clone() for t in model.state_dict().values() if isinstance(t, torch.Tensor)]


def _run(model, scheme, M, B, steps, lr=0.05, **kw):
    stages = _split(model, M)
    pipe = LocalPipeline(stages, lr=lr, loss_fn=LOSS)
    return pipe.run(schedules.build(scheme, M, B, steps, **kw), _data(B * steps))


CONFIGS = {"ideal": ideal_config(), "paper": paper_config(0.8),
           "pulsed": paper_config(0.8, update="pulsed")}


@pytest.mark.parametrize("cfg", list(CONFIGS), ids=str)
def test_one_stage_ap_sp_b1_and_wop_equal_plain_training(cfg):
    base = convert_to_analog(_net(), CONFIGS[cfg], seed=3)
    K = 5
    ref = _plain(copy.deepcopy(base), _data(K), 1, K, 0.05)
    for scheme, M, B, steps in [("ap", 1, 1, K), ("ap", 1, K, 1), ("sp", 3, 1, K),
                                ("wop", 3, 1, K)]:
        model = copy.deepcopy(base)
        _run(model, scheme, M, B, steps)
        for a, b in zip(_state(model), _state(ref)):
            assert torch.equal(a, b), (scheme, M, B)


@pytest.mark.parametrize("cfg", list(CONFIGS), ids=str)
@pytest.mark.parametrize("M,B", [(2, 4), (3, 3), (4, 2)])
def test_sp_equals_wop_and_plain_minibatch_training(cfg, M, B):
    base = convert_to_analog(_net(bn=True), CONFIGS[cfg], seed=5)
    steps = 3
    ref = _plain(copy.deepcopy(base), _data(B * steps), B, steps, 0.05)
    sp, wop = copy.deepcopy(base), copy.deepcopy(base)
    run_sp = _run(sp, "sp", M, B, steps)
    run_wop = _run(wop, "wop", M, B, steps)
    assert run_sp.losses == run_wop.losses
    for a, b, c in zip(_state(sp), _state(wop), _state(ref)):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("M,K", [(2, 7), (3, 9), (4, 10)])
def test_ap_weight_versions_emerge_from_the_schedule(M, K):
    run = _run(convert_to_analog(_net(), ideal_config()), "ap", M, 1, K)
    for (s, k), (vf, vb) in run.versions.items():
        assert vf == max(0, k - (M - 1 - s)) and vb == k
    assert run.peak_in_flight == [M - s for s in range(M)]
    assert run.peak_weight_copies == [0] * M  # AP: one array per stage, no copies
    pd = _run(convert_to_analog(_net(), ideal_config()), "pipedream", M, 1, K)
    assert pd.peak_weight_copies == [M - s for s in range(M)]  # stashing: M - s versions
    assert run.staleness(0)[M - 1] == K - (M - 1)


def test_ap_with_ideal_device_equals_float64_staleness_replay():
    """Oracle: a sequential replay of W_s^(max(0, k-(M-1-s))) forwards, W_s^(k) backwards."""
    torch.manual_seed(0)
    M, K, lr, b = 3, 8, 0.1, 5
    sizes = [6, 7, 5, 3]
    digital = nn.Sequential(*[nn.Linear(sizes[i], sizes[i + 1], bias=False) for i in range(3)])
    model = convert_to_analog(digital, ideal_config()).double()
    ws = [[t.weight.detach().double().clone()] for t in analog_tiles(model)]  # versions
    g = torch.Generator().manual_seed(4)
    xs = torch.randn(K, b, 6, generator=g, dtype=torch.float64)
    ts = torch.randn(K, b, 3, generator=g, dtype=torch.float64)

    def loss(out, t):
        return ((out - t) ** 2).sum() / 2

    stages = [nn.Sequential(model[0], nn.Tanh()), nn.Sequential(model[1], nn.Tanh()),
              nn.Sequential(model[2])]
    pipe = LocalPipeline(stages, lr=lr, loss_fn=loss)
    pipe.run(schedules.async_1f1b(M, 1, K), lambda k: (xs[k], ts[k]))

    for k in range(K):  # the oracle, in float64 with explicit formulas
        acts, pre = [xs[k]], []
        for s in range(M):
            w = ws[s][max(0, k - (M - 1 - s))]
            z = acts[-1] @ w.t()
            pre.append(z)
            acts.append(torch.tanh(z) if s < M - 1 else z)
        delta = acts[-1] - ts[k]  # dL/dz of the last stage
        for s in reversed(range(M)):
            w_now = ws[s][k]  # k updates applied before this backward
            grad_w = delta.t() @ acts[s]
            if s > 0:
                delta = (delta @ w_now) * (1 - torch.tanh(pre[s - 1]) ** 2)
            ws[s].append(w_now - lr * grad_w)
    for s, tile in enumerate(analog_tiles(model)):
        torch.testing.assert_close(tile.weight, ws[s][-1], rtol=0, atol=1e-12)


def test_ap_differs_from_sp_and_pipedream_differs_from_ap():
    base = convert_to_analog(_net(), ideal_config())
    finals = {}
    for scheme in ("ap", "sp", "pipedream"):
        model = copy.deepcopy(base)
        _run(model, scheme, 3, 4, 3)
        finals[scheme] = _state(model)
    assert not all(torch.equal(a, b) for a, b in zip(finals["ap"], finals["sp"]))
    assert not all(torch.equal(a, b) for a, b in zip(finals["ap"], finals["pipedream"]))


def test_pipedream_backward_uses_the_forward_weights():
    """With stashing, stage s back-propagates through the version its forward used."""
    torch.manual_seed(0)
    M, K, lr = 3, 6, 0.1
    lins = [nn.Linear(4, 5, bias=False), nn.Linear(5, 4, bias=False), nn.Linear(4, 2, bias=False)]
    model = convert_to_analog(nn.Sequential(*lins), ideal_config()).double()
    xs = torch.randn(K, 3, 4, dtype=torch.float64)
    ts = torch.randn(K, 3, 2, dtype=torch.float64)
    w = [[t.weight.clone()] for t in analog_tiles(model)]
    pipe = LocalPipeline([model[0:1], model[1:2], model[2:3]], lr=lr,
                         loss_fn=lambda o, t: ((o - t) ** 2).sum() / 2)
    pipe.run(schedules.pipedream(M, 1, K), lambda k: (xs[k], ts[k]))
    for k in range(K):
        used = [w[s][max(0, k - (M - 1 - s))] for s in range(M)]  # forward = backward version
        acts = [xs[k]]
        for s in range(M):
            acts.append(acts[-1] @ used[s].t())
        delta = acts[-1] - ts[k]
        for s in reversed(range(M)):
            grad_w = delta.t() @ acts[s]
            delta = delta @ used[s]
            w[s].append(w[s][k] - lr * grad_w)  # the update lands on the current weights
    for s, tile in enumerate(analog_tiles(model)):
        torch.testing.assert_close(tile.weight, w[s][-1], rtol=0, atol=1e-12)


def test_digital_model_in_async_pipeline_runs_without_version_errors():
    model = _net(bn=True)
    run = _run(model, "ap", 3, 4, 2)
    assert len(run.losses) == 8 and all(torch.isfinite(torch.tensor(run.losses)))


@pytest.mark.parametrize("scheme", ["ap", "sp", "pipedream"])
def test_ideal_analog_pipeline_is_digital_sgd_in_the_same_pipeline(scheme):
    """Ideal device + ideal IO in any schedule equals the digital model in that schedule."""
    digital = _net(bn=True)
    analog = convert_to_analog(digital, ideal_config())
    _run(digital, scheme, 3, 4, 3)
    _run(analog, scheme, 3, 4, 3)
    for a, d in zip(analog, digital):
        if isinstance(d, nn.Linear):
            assert torch.equal(a.tile.weight, d.weight) and torch.equal(a.bias, d.bias)
        elif isinstance(d, nn.BatchNorm1d):
            assert torch.equal(a.weight, d.weight) and torch.equal(a.running_mean, d.running_mean)


def test_first_stage_without_weights_runs():
    """A stage of only parameter-free blocks (flatten) has nothing to backpropagate."""
    torch.manual_seed(0)
    model = convert_to_analog(nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(),
                                            nn.Linear(8, 4)), paper_config(0.8))
    pipe = LocalPipeline([model[0:1], model[1:3], model[3:4]], lr=0.05, loss_fn=LOSS)
    run = pipe.run(schedules.build("ap", 3, 2, 2), _data(4))
    assert len(run.losses) == 4 and pipe.version == [4, 4, 4]
