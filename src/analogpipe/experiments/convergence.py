"""Convergence rate and floor of analog SGD on a teacher problem inside the device range.

The theory (Wu et al., arXiv 2410.15155; see docs/reproduction.md): for analog SGD on the
soft-bounds device with saturation level tau, noise variance sigma^2 and max |W| <= W_max <
tau, E_K = (1/K) sum_k ||grad f(W_k)||^2 falls like O(1/sqrt(K)) to a floor of order
sigma^2 W_max^2 / (tau^2 - W_max^2), which vanishes as tau -> inf.

The problem: a linear teacher y = W* x + noise whose optimum lies inside every tau swept
(max |W*| = ``conv_w_star`` < min tau), so the floor is the asymmetric-update term and not a
clipping limit. One analog tile (soft bounds, perfect IO, no mapping, the expected update per
micro-batch: the theory's model), W_0 = 0, constant lr, micro-batches of ``conv_batch``; the
full-batch gradient is measured before every update. The ideal device (tau = inf) on the same
stream gives the digital floor of constant-lr SGD, which the analog floor adds to.
"""

from __future__ import annotations

import math
from typing import Any

IN_FEATURES, OUT_FEATURES, N_TRAIN, NOISE_STD = 16, 4, 512, 0.1


def teacher(seed: int, w_star_max: float) -> tuple[Any, Any, Any]:
    """(X [n, in], Y [n, out], W* [out, in]) with max |W*| = w_star_max, seeded."""
    import torch

    g = torch.Generator().manual_seed(10_007 * seed + 1)
    w = torch.rand(OUT_FEATURES, IN_FEATURES, generator=g, dtype=torch.float64) * 2 - 1
    w = w * (w_star_max / w.abs().max())
    x = torch.randn(N_TRAIN, IN_FEATURES, generator=g, dtype=torch.float64)
    y = x @ w.T + NOISE_STD * torch.randn(N_TRAIN, OUT_FEATURES, generator=g,
                                          dtype=torch.float64)
    return x.float(), y.float(), w.float()


def run_teacher(tau: float, seed: int, *, steps: int, lr: float, batch: int,
                w_star_max: float) -> dict[str, Any]:
    """One analog SGD run; tau = inf is the ideal device. Returns the logged E_K curve, the
    floor (mean ||grad f||^2 over the last quarter of the steps), max |W| over training and
    the gradient-noise variance sigma^2 at W*."""
    import torch

    from analogpipe.devices import DeviceConfig
    from analogpipe.tiles import AnalogTile, IOConfig, MappingConfig, TileConfig, UpdateConfig

    X, Y, w_star = teacher(seed, w_star_max)
    n = X.shape[0]
    dev = (DeviceConfig(name="ideal") if math.isinf(tau)
           else DeviceConfig(name="softbounds", w_max=tau, w_min=-tau))
    cfg = TileConfig(device=dev, forward=IOConfig.perfect(), backward=IOConfig.perfect(),
                     update=UpdateConfig(mode="expected", granularity="microbatch"),
                     mapping=MappingConfig())
    tile = AnalogTile(OUT_FEATURES, IN_FEATURES, cfg, seed=seed)
    tile.set_weights(torch.zeros(OUT_FEATURES, IN_FEATURES))
    gen = torch.Generator().manual_seed(10_007 * seed + 2)
    scale = 2.0 / (n * OUT_FEATURES)  # gradient of mean((X W^T - Y)^2)
    sq: list[float] = []
    w_max = 0.0
    logged_k, logged_e = [], []
    cum = 0.0
    marks = sorted({int(round(10 ** (i / 8))) for i in range(0, 8 * int(math.log10(steps)) + 9)}
                   | {steps})
    marks = [m for m in marks if m <= steps]
    mi = 0
    with torch.no_grad():
        for k in range(1, steps + 1):
            W = tile.get_weights()
            g = scale * (X @ W.T - Y).T @ X
            v = float((g * g).sum())
            sq.append(v)
            cum += v
            if mi < len(marks) and k == marks[mi]:
                logged_k.append(k)
                logged_e.append(cum / k)
                mi += 1
            idx = torch.randint(n, (batch,), generator=gen)
            xb, yb = X[idx], Y[idx]
            gb = (2.0 / (batch * OUT_FEATURES)) * (xb @ W.T - yb).T @ xb
            tile.stash_products(gb, None)
            tile.apply_update(lr)
            w_max = max(w_max, float(tile.get_weights().abs().max()))
        # sigma^2: variance of the micro-batch gradient at W* (over all samples, /batch)
        r = (X @ w_star.T - Y)
        per = (2.0 / OUT_FEATURES) * r[:, :, None] * X[:, None, :]  # [n, out, in]
        sigma2 = float(per.var(dim=0, unbiased=True).sum()) / batch
    q = max(steps // 4, 1)
    return {"tau": tau, "seed": seed, "K": logged_k, "E_K": logged_e,
            "floor": sum(sq[-q:]) / q, "w_max": w_max, "sigma2": sigma2,
            "w_star_max": float(w_star.abs().max())}


def convergence_runs(taus: tuple[float, ...], seeds: int, *, steps: int, lr: float,
                     batch: int, w_star_max: float) -> list[dict[str, Any]]:
    """Every (tau, seed) run plus the ideal device (tau = inf) per seed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [run_teacher(t, s, steps=steps, lr=lr, batch=batch, w_star_max=w_star_max)
                for s in range(seeds) for t in (*taus, math.inf)]
    finally:
        torch.set_num_threads(threads)
