"""Cycle model of pipeline schedules: costs, ``simulate`` -> timeline, closed forms, Gantt.

No torch import anywhere in this package (matplotlib only inside ``gantt.save_png``), so
``analogpipe schedule`` and reports stay light.
"""

from analogpipe.timing.aimc import AimcCosts, LayerSpec, layer_times, num_tiles, stage_costs
from analogpipe.timing.cycles import (
    Costs,
    Event,
    Timeline,
    closed_form,
    simulate,
    wop_makespan,
)
from analogpipe.timing.gantt import save_png, save_trace, to_chrome_trace

__all__ = [
    "AimcCosts",
    "Costs",
    "Event",
    "LayerSpec",
    "Timeline",
    "closed_form",
    "layer_times",
    "num_tiles",
    "save_png",
    "save_trace",
    "simulate",
    "stage_costs",
    "to_chrome_trace",
    "wop_makespan",
]
