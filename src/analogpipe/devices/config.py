"""Device configuration (field names follow IBM aihwkit's pulsed devices)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from analogpipe.errors import check

DEVICE_NAMES = ("ideal", "softbounds", "constantstep", "powstep")


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One resistive device type.

    name:        "ideal" (digital SGD, no bounds), "softbounds" (the paper's asymmetric linear
                 device: q_+ = 1 - w/w_max, q_- = 1 - w/w_min, saturation tau = w_max = -w_min),
                 "constantstep" (same step until a hard bound), "powstep" (step shrinks as
                 ((distance to bound) / half range) ** pow_gamma; pow_gamma = 1 is soft bounds).
    dw_min:      mean weight change of one pulse at the symmetric point.
    w_max/w_min: bounds of the conductance range (w_min < 0 < w_max).
    up_down:     systematic up/down step asymmetry (aihwkit convention).
    *_dtod:      device-to-device relative spread, drawn once per cross-point.
    dw_min_std:  cycle-to-cycle relative spread of each pulse's step.
    """

    name: str = "softbounds"
    dw_min: float = 0.001
    w_max: float = 0.8
    w_min: float = -0.8
    up_down: float = 0.0
    dw_min_dtod: float = 0.0
    w_max_dtod: float = 0.0
    w_min_dtod: float = 0.0
    up_down_dtod: float = 0.0
    dw_min_std: float = 0.0
    pow_gamma: float = 1.0

    def __post_init__(self) -> None:
        check(self.name in DEVICE_NAMES, "device.name", self.name, f"one of {DEVICE_NAMES}")
        check(self.dw_min > 0 and math.isfinite(self.dw_min), "device.dw_min", self.dw_min,
              "a finite value > 0")
        if self.name != "ideal":
            check(self.w_max > 0, "device.w_max (tau)", self.w_max, "a value > 0")
            check(self.w_min < 0, "device.w_min", self.w_min, "a value < 0 (w_min < 0 < w_max)")
            check(self.w_min < self.w_max, "device.w_min", self.w_min,
                  f"a value below w_max={self.w_max}")
        check(abs(self.up_down) < 1, "device.up_down", self.up_down, "a value in (-1, 1)")
        for field in ("dw_min_dtod", "w_max_dtod", "w_min_dtod", "up_down_dtod", "dw_min_std"):
            v = getattr(self, field)
            check(v >= 0 and math.isfinite(v), f"device.{field}", v, "a finite value >= 0")
        check(self.pow_gamma > 0, "device.pow_gamma", self.pow_gamma, "a value > 0")

    @property
    def tau(self) -> float:
        """Saturation level of a symmetric soft-bounds device (infinite for ideal)."""
        return math.inf if self.name == "ideal" else self.w_max

    @property
    def has_dtod(self) -> bool:
        spreads = ("dw_min_dtod", "w_max_dtod", "w_min_dtod", "up_down_dtod")
        return any(getattr(self, f) > 0 for f in spreads)

    @classmethod
    def soft_bounds(cls, tau: float = 0.8, **kw: float) -> DeviceConfig:
        """The asymmetric linear device of the paper, w in [-tau, tau]."""
        check(tau > 0, "tau", tau, "a value > 0")
        return cls(name="softbounds", w_max=tau, w_min=-tau, **kw)
