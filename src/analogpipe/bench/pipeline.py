"""Benchmark group "pipeline": the single-process executor's overhead per sample.

Same model, same micro-batches, same optimizer: a plain training loop (forward, loss,
backward, AnalogSGD step per micro-batch) against LocalPipeline interpreting the asynchronous
1F1B schedule (and GPipe) on the model cut into M stages. Both do the same arithmetic; the
ratio is the executor's bookkeeping (schedule interpretation, activation hand-off, detach).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from analogpipe.bench.harness import Row, median, register, time_pair
from analogpipe.nn import convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.pipeline import schedules
from analogpipe.pipeline.local import LocalPipeline
from analogpipe.presets import paper_config

LOSS = nn.functional.cross_entropy


def _model(width: int, depth: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _split(model: nn.Sequential, M: int) -> list[nn.Sequential]:
    n = len(model)
    cuts = [round(i * n / M) for i in range(M + 1)]
    return [model[cuts[i]:cuts[i + 1]] for i in range(M)]


@register("pipeline")
def pipeline_group(quick: bool) -> list[Row]:
    width, depth, b, K, M = (64, 3, 16, 16, 4) if quick else (256, 4, 32, 64, 4)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(K, b, 64, generator=g)
    ys = torch.randint(0, 10, (K, b), generator=g)
    rows = []
    for label, cfg in (("analog expected", paper_config(0.8)), ("digital", None)):
        base = _model(width, depth)
        if cfg is not None:
            base = convert_to_analog(base, cfg, seed=0)
        plain_model = copy.deepcopy(base)
        plain_opt = AnalogSGD(plain_model, lr=0.05)

        def plain(model=plain_model, opt=plain_opt) -> None:
            for k in range(K):
                LOSS(model(xs[k]), ys[k]).backward()
                opt.step()

        for scheme in ("ap", "sp"):
            pipe_model = copy.deepcopy(base)
            pipe = LocalPipeline(_split(pipe_model, M), lr=0.05, loss_fn=LOSS)
            sched = schedules.build(scheme, M, 4, K // 4)

            def piped(pipe=pipe, sched=sched) -> None:
                pipe.run(sched, lambda k: (xs[k], ys[k]))

            tb, ts = time_pair(plain, piped, warmup=1, repeats=3 if quick else 7,
                               budget_s=5 if quick else 30)
            rows.append(Row(
                group="pipeline", case=f"{label} MLP {depth}x{width}, M={M}, b={b}, {K} mb",
                baseline_name="plain loop", baseline_s=median(tb) / (K * b),
                subject_name=f"LocalPipeline {scheme}", subject_s=median(ts) / (K * b),
                target=1.15 if scheme == "ap" else None, repeats=len(ts),
                notes="seconds per sample; sp makes one update per 4 micro-batches"))
    return rows
