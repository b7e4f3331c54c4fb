"""The AIMC clock of a run: measured pulse-train length, actual partition, cycle model.

cycles-to-target = samples-to-target x cycles-per-sample. Cycles per sample come from the
cycle model (``analogpipe.timing.cycles.simulate``) run on one epoch's schedule of the run,
with per-stage costs from the AIMC cost model (``analogpipe.timing.aimc.stage_costs``) on the
partition the run actually used (``TrainConfig.partition_metric``, AIMC cost by default):
one MVM per sample (per output pixel for a conv), the transposed MVM in the backward except
for the network's input layer, and the update charged by the *measured* mean pulse-train
length (BL) of the run rather than the maximum ``desired_bl``.

BL is measured the way the pulsed update would draw it (``analogpipe.tiles.pulses``: update
BL management, BL_s = clamp(ceil(lr max|x_s| max|d_s| / dw_min), 1, desired_bl) per sample
and layer): on the first micro-batches of the run's stream, once with the initial weights
and the initial lr and once with the final weights and the final lr; the clock uses the mean
of the two. The balanced clock (t_f = t_b = 1/M, every stage exactly 1/M of the model) is
reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from analogpipe.timing.aimc import AimcCosts

__all__ = ["mean_pulse_train_length", "run_clock"]


def mean_pulse_train_length(cfg: Any, state: dict | None = None, *, lr: float | None = None,
                            updates: int = 4) -> float:
    """Mean BL over every sample and layer of ``updates`` updates of the run's stream.

    ``cfg``: the run's TrainConfig (an analog scheme); ``state``: a model state_dict (None:
    the initial weights); ``lr``: the rate of those updates (default ``cfg.lr``). An AP /
    PipeDream update is one micro-batch (loss averaged over b samples); a WOP / SP update is
    one mini-batch of B micro-batches (loss averaged over B b samples), as the executors do.
    """
    import torch

    from analogpipe.nn import analog_tiles
    from analogpipe.tiles.pulses import pulse_probabilities
    from analogpipe.train.loop import build, epoch_batches

    setup = build(replace(cfg, update="pulsed"))  # the pulsed mode stashes every sample's rows
    if state is not None:
        import warnings

        from analogpipe.tiles import accept_config_changes

        # the run's conductances into its pulsed twin: only update.mode differs, on purpose
        with accept_config_changes(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            setup.model.load_state_dict(state)
    model = setup.model
    model.train()
    batch, steps = epoch_batches(setup, 0)
    per_update = 1 if cfg.scheme in ("ap", "pipedream") else cfg.microbatches
    lr = cfg.lr if lr is None else lr
    total, count = 0.0, 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for u in range(min(updates, steps)):
            parts = [batch(u * per_update + i) for i in range(per_update)]
            x = torch.cat([p[0] for p in parts])
            y = torch.cat([p[1] for p in parts])
            model.zero_grad(set_to_none=True)
            setup.loss_fn(model(x), y).backward()
            for tile in analog_tiles(model):
                for xr, dr in list(tile._stash):  # (x, d) rows, d compensated for the scale
                    _, _, bl = pulse_probabilities(xr, dr, lr, tile.config.device.dw_min,
                                                   tile.config.update)
                    total += float(bl.sum())
                    count += int(bl.numel())
                tile.clear_stash()
    finally:
        torch.set_num_threads(threads)
    return total / count if count else math.nan


_STRUCTURE: dict[tuple, Any] = {}


def _structure(cfg: Any) -> tuple[list, list[str], dict[str, int], list[list[str]], int]:
    """Layer specs, block order, block outputs and stage blocks of a run (cached: they do not
    depend on the seed's weights)."""
    key = (cfg.dataset, cfg.model, cfg.width, cfg.depth, cfg.stages, cfg.partition_metric,
           cfg.subset, cfg.algorithm, cfg.transfer_every, cfg.n_reads_per_transfer)
    if key not in _STRUCTURE:
        from analogpipe.models import blocks
        from analogpipe.pipeline.partition import block_output_elements, layer_specs
        from analogpipe.train.loop import build

        setup = build(cfg)
        example = setup.data.train_x[:1].to(cfg.device)
        names = [n for n, _ in blocks(setup.model)]
        _STRUCTURE[key] = (layer_specs(setup.model, example), names,
                           block_output_elements(setup.model, example), setup.stage_blocks,
                           int(setup.data.train_x.shape[0]))
    return _STRUCTURE[key]


def run_clock(cfg: Any, mean_bl: float, aimc: AimcCosts | None = None) -> dict[str, Any]:
    """Cycles per training sample of a run on the AIMC clock (mean BL) and the balanced clock.

    Returns {"aimc": cycles/sample, "balanced": cycles/sample (t = 1/M), "density_unit":
    density of the schedule with unit stage costs, "density_aimc", "stage_blocks",
    "t_f", "t_b" (per stage, one micro-batch), "mean_bl"}.
    """
    from analogpipe.pipeline import schedules
    from analogpipe.timing.aimc import stage_costs
    from analogpipe.timing.cycles import Costs, simulate

    specs, names, out_el, stage_blocks, n_train = _structure(cfg)
    aimc = replace(aimc or AimcCosts(), bl=max(1.0, mean_bl) if math.isfinite(mean_bl) else 31)
    costs = stage_costs(specs, stage_blocks, cfg.micro_batch_size, aimc, block_order=names,
                        block_out_elements=out_el)
    steps = n_train // cfg.mini_batch
    sched = schedules.build(cfg.schedule_scheme(), cfg.stages, cfg.microbatches, steps)
    samples = steps * cfg.mini_batch
    tl = simulate(sched, costs)
    M = cfg.stages
    bal = simulate(sched, Costs(t_f=1.0 / M, t_b=1.0 / M))
    unit = simulate(sched, Costs())
    return {"aimc": tl.makespan / samples, "balanced": bal.makespan / samples,
            "density_unit": unit.density, "density_aimc": tl.density,
            "stage_blocks": stage_blocks, "t_f": list(costs.t_f) if isinstance(
                costs.t_f, list) else [costs.t_f], "t_b": list(costs.t_b) if isinstance(
                costs.t_b, list) else [costs.t_b], "mean_bl": aimc.bl}


def measure_bl(cfg: Any, run_folder: Path) -> dict[str, float]:
    """Mean BL at the start (initial weights, initial lr) and the end (checkpoint, last lr)
    of a finished run; ``mean`` is their average (NaN parts are left out)."""
    import torch

    from analogpipe.train.loop import lr_at

    start = mean_pulse_train_length(cfg, None, lr=cfg.lr)
    end = math.nan
    ck = Path(run_folder) / "checkpoint.pt"
    if ck.exists():
        state = torch.load(ck, map_location=cfg.device, weights_only=False)
        end = mean_pulse_train_length(cfg, state["model"], lr=lr_at(cfg, cfg.epochs - 1))
    vals = [v for v in (start, end) if math.isfinite(v)]
    return {"start": start, "end": end, "mean": sum(vals) / len(vals) if vals else math.nan}
