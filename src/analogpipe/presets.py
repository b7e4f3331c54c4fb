"""Presets are functions that return plain configs (no subclasses)."""

from __future__ import annotations

from analogpipe.devices import DeviceConfig
from analogpipe.errors import check
from analogpipe.tiles.io import IOConfig
from analogpipe.tiles.pulses import UpdateConfig
from analogpipe.tiles.tile import MappingConfig, TileConfig


def paper_config(
    tau: float = 0.8,
    *,
    io_bits: int = 8,
    out_noise: float = 0.005,
    update: str = "expected",
    granularity: str = "sample",
    device: str = "softbounds",
    dw_min: float = 0.001,
    omega: float | None = None,
    learn_out_scaling: bool = True,
) -> TileConfig:
    """The paper's experimental tile (arXiv 2410.15155, section 5).

    Soft-bounds device with saturation tau (w in [-tau, tau]), 8-bit DAC and ADC on forward and
    backward, Gaussian output noise of 0.5% of the output range (out_noise = 0.005 in normalized
    units), learnable per-column output scaling. Each output row is mapped so that its largest
    weight sits at omega = tau / 2 (50% saturation) unless omega is given.
    """
    check(tau > 0, "tau", tau, "a value > 0")
    io = IOConfig.bits(io_bits, io_bits, out_noise=out_noise)
    return TileConfig(
        device=DeviceConfig(name=device, w_max=tau, w_min=-tau, dw_min=dw_min),
        forward=io,
        backward=io,
        update=UpdateConfig(mode=update, granularity=granularity),
        mapping=MappingConfig(weight_scaling_omega=tau / 2 if omega is None else omega,
                              learn_out_scaling=learn_out_scaling),
    )


def ideal_config() -> TileConfig:
    """Ideal device and perfect periphery: the tile is exactly digital SGD."""
    return TileConfig(
        device=DeviceConfig(name="ideal"),
        forward=IOConfig.perfect(),
        backward=IOConfig.perfect(),
        update=UpdateConfig(mode="expected", granularity="microbatch"),
        mapping=MappingConfig(),
    )
