"""CUDA parity: the same physics on the GPU as on the CPU (skipped without a CUDA device).

Deterministic paths (no noise) must agree with the CPU to float32 reduction-order
tolerance; stochastic paths are checked against their closed-form means and for
same-seed determinism on the device. Run on a GPU machine with
`pytest -m cuda tests/test_cuda.py` (or `bench/gpu-check.sh`).
"""

import copy
import os

import pytest
import torch
from torch import nn

from analogpipe.devices import DeviceConfig, apply_pulses, sample_device_state
from analogpipe.models import resnet10
from analogpipe.nn import analog_tiles, convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.pipeline import schedules
from analogpipe.pipeline.local import LocalPipeline
from analogpipe.presets import ideal_config, paper_config
from analogpipe.tiles.io import IOConfig
from analogpipe.tiles.pulses import (
    UpdateConfig,
    expected_pulse_count,
    pulse_counts,
    pulsed_update_,
)
from analogpipe.tiles.tile import MappingConfig, TileConfig

# ANALOGPIPE_CUDA_TESTS_DEVICE=cpu runs this file on the CPU: a dry run of the tests themselves
CUDA = torch.device(os.environ.get("ANALOGPIPE_CUDA_TESTS_DEVICE", "cuda"))
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                 reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full float32 on the GPU (cuDNN convolutions default to TF32 on Ampere and later)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _noiseless_config(update: str = "expected") -> TileConfig:
    return TileConfig(device=DeviceConfig.soft_bounds(0.8), forward=IOConfig.perfect(),
                      backward=IOConfig.perfect(), update=UpdateConfig(mode=update),
                      mapping=MappingConfig(weight_scaling_omega=0.4, learn_out_scaling=True))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.Flatten(), nn.LazyLinear(10))


def _steps(model: nn.Module, device: torch.device, n: int = 3) -> list[torch.Tensor]:
    model = model.to(device)
    opt = AnalogSGD(model, lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(4, 3, 12, 12, generator=g).to(device)
        y = torch.randint(0, 10, (4,), generator=g).to(device)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [t.detach().cpu() for t in model.state_dict().values() if isinstance(t, torch.Tensor)]


def test_noiseless_expected_training_matches_cpu():
    base = _cnn()
    base(torch.zeros(1, 3, 12, 12))  # materialize the lazy layer
    analog = convert_to_analog(base, _noiseless_config(), seed=2)
    cpu = _steps(copy.deepcopy(analog), torch.device("cpu"))
    gpu = _steps(copy.deepcopy(analog), CUDA)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_pulse_counts_on_cuda_have_the_expected_mean():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 5, generator=g) * torch.tensor([0.01, 0.1, 0.5, 1, 2, 4])[:, None])
    d = torch.randn(6, 4, generator=g)
    x, d = x.to(CUDA), d.to(CUDA)
    lr, dw, reps = 0.05, 0.01, 4000
    gen = torch.Generator(device=CUDA).manual_seed(0)
    ucfg = UpdateConfig(mode="pulsed")
    totals = torch.stack([sum(pulse_counts(x, d, lr, dw, ucfg, gen)) for _ in range(reps)])
    mean, sem = totals.mean(0), totals.std(0) / reps**0.5
    assert ((mean - expected_pulse_count(x, d, lr, dw)).abs() <= 5 * sem + 1e-6).all()


def test_pulsed_update_on_cuda_submatrix_equals_dense_and_is_seeded():
    cfg = DeviceConfig(name="softbounds", dw_min=0.01, w_max=0.8, w_min=-0.8)
    state = sample_device_state(cfg, (40, 60), device=CUDA)
    ucfg = UpdateConfig(mode="pulsed")
    g = torch.Generator().manual_seed(0)
    for s, scale in [(1, 0.02), (3, 0.05), (20, 3.0)]:
        x = (torch.randn(s, 60, generator=g) * scale).to(CUDA)
        d = torch.randn(s, 40, generator=g).to(CUDA)
        w = ((torch.rand(40, 60, generator=g) - 0.5) * 0.6).to(CUDA)
        n_up, n_down = pulse_counts(x, d, 0.1, cfg.dw_min, ucfg,
                                    torch.Generator(device=CUDA).manual_seed(s))
        ref = apply_pulses(w, n_up, n_down, state, cfg)
        runs = [pulsed_update_(w.clone(), x, d, 0.1, state, cfg, ucfg,
                               torch.Generator(device=CUDA).manual_seed(s)) for _ in range(2)]
        torch.testing.assert_close(runs[0], ref, rtol=0, atol=1e-6)
        assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("update", ["expected", "pulsed"])
def test_paper_config_resnet_on_cuda_is_seeded_and_bounded(update):
    torch.manual_seed(0)
    base = convert_to_analog(resnet10(width=8), paper_config(0.8, update=update), seed=1)
    runs = []
    for _ in range(2):
        model = copy.deepcopy(base).to(CUDA)
        opt = AnalogSGD(model, lr=0.1)
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            x = torch.randn(8, 3, 32, 32, generator=g).to(CUDA)
            y = torch.randint(0, 10, (8,), generator=g).to(CUDA)
            nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
            opt.step()
        tiles = analog_tiles(model)
        assert all(t.generator("update").device.type == CUDA.type for t in tiles)
        assert all(t.weight.abs().max() <= 0.8 + 1e-6 for t in tiles)
        runs.append([t.weight.cpu() for t in tiles])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
        assert torch.isfinite(a).all()


def test_ap_pipeline_on_cuda_matches_cpu_for_the_ideal_tile():
    torch.manual_seed(0)
    base = convert_to_analog(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32),
                                           nn.ReLU(), nn.Linear(32, 4)), ideal_config())
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(12, 8, 16, generator=g), torch.randint(0, 4, (12, 8), generator=g)
    results = []
    for device in (torch.device("cpu"), CUDA):
        model = copy.deepcopy(base).to(device)
        pipe = LocalPipeline([model[:2], model[2:4], model[4:]], lr=0.05,
                             loss_fn=nn.functional.cross_entropy)
        run = pipe.run(schedules.build("ap", 3, 4, 3),
                       lambda k, d=device: (xs[k].to(d), ys[k].to(d)))
        results.append((run.losses, [p.detach().cpu() for p in model.state_dict().values()
                                     if isinstance(p, torch.Tensor)]))
    (l_cpu, s_cpu), (l_gpu, s_gpu) = results
    torch.testing.assert_close(torch.tensor(l_gpu), torch.tensor(l_cpu), rtol=1e-4, atol=1e-5)
    for a, b in zip(s_cpu, s_gpu):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_cuda_checkpoint_loads_on_cpu():
    torch.manual_seed(0)
    model = convert_to_analog(nn.Sequential(nn.Linear(8, 4)), paper_config(0.8), seed=0)
    gpu = copy.deepcopy(model).to(CUDA)
    _ = gpu(torch.randn(2, 8, device=CUDA))  # creates the CUDA forward generator
    state = gpu.state_dict()
    model.load_state_dict({k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                           for k, v in state.items()})
    torch.testing.assert_close(analog_tiles(model)[0].weight, analog_tiles(gpu)[0].weight.cpu())
