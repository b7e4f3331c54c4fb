"""Device configuration (field names follow IBM aihwkit's pulsed devices)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from analogpipe.errors import FLOAT32_MAX, check

DEVICE_NAMES = ("ideal", "softbounds", "constantstep", "powstep")
DTOD_FIELDS = ("dw_min_dtod", "w_max_dtod", "w_min_dtod", "up_down_dtod")


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One resistive device type.

    name:        "ideal" (digital SGD, no bounds), "softbounds" (the paper's asymmetric linear
                 device: q_+ = 1 - w/w_max, q_- = 1 - w/w_min, saturation tau = w_max = -w_min),
                 "constantstep" (same step until a hard bound), "powstep" (aihwkit's PowStep:
                 q_+ = ((w_max - w) / (w_max - w_min)) ** pow_gamma, q_- likewise with
                 (w - w_min); normalised by the *full* range as in aihwkit, so at w = 0 of a
                 symmetric device q = 0.5 ** pow_gamma).
    dw_min:      mean weight change of one pulse at the symmetric point (weight units).
    w_max/w_min: bounds of the conductance range (w_min < 0 < w_max).
    up_down:     systematic up/down step asymmetry (aihwkit convention), in (-1, 1).
    *_dtod:      device-to-device relative spread, drawn once per cross-point, in [0, 1).
    dw_min_std:  cycle-to-cycle relative spread of each pulse's step.
    pow_gamma:   exponent of the powstep response (> 0; aihwkit's default is 1).

    Settings that cannot describe a device are refused here (ConfigError naming the field),
    never deep inside an update: non-finite values, bounds that do not straddle zero, a pulse
    larger than the distance from 0 to the bound in its direction (aihwkit would saturate the
    device in one pulse; the soft-bounds closed form has no meaning there), relative spreads of
    100% or more (a third of the devices would have flipped bounds or steps).
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
        for f in ("dw_min", "w_max", "w_min", "up_down", "pow_gamma", "dw_min_std", *DTOD_FIELDS):
            v = getattr(self, f)
            check(isinstance(v, numbers.Real) and math.isfinite(v) and abs(v) <= FLOAT32_MAX,
                  f"device.{f}", v, f"a finite number within float32's range (|v| <= "
                  f"{FLOAT32_MAX:.4g})")
        check(self.dw_min > 0, "device.dw_min", self.dw_min, "a finite value > 0")
        check(abs(self.up_down) < 1, "device.up_down", self.up_down, "a value in (-1, 1)")
        for f in DTOD_FIELDS:
            v = getattr(self, f)
            check(0 <= v < 1, f"device.{f}", v,
                  "a relative device-to-device spread in [0, 1) (aihwkit's default is 0.3)")
        check(self.dw_min_std >= 0, "device.dw_min_std", self.dw_min_std, "a finite value >= 0")
        check(self.pow_gamma > 0, "device.pow_gamma", self.pow_gamma, "a value > 0")
        if self.name == "ideal":
            return
        check(self.w_max > 0, "device.w_max (tau)", self.w_max, "a value > 0")
        check(self.w_min < 0, "device.w_min", self.w_min, "a value < 0 (w_min < 0 < w_max)")
        up, down = self.step_sizes
        check(up < self.w_max, "device.dw_min", self.dw_min,
              f"a value whose up step {up:.6g} (dw_min with up_down={self.up_down}) is below "
              f"w_max={self.w_max} for device.name={self.name!r} (one pulse must not cross the "
              "whole way from 0 to the bound)")
        check(down < -self.w_min, "device.dw_min", self.dw_min,
              f"a value whose down step {down:.6g} (dw_min with up_down={self.up_down}) is "
              f"below |w_min|={-self.w_min} for device.name={self.name!r} (one pulse must not "
              "cross the whole way from 0 to the bound)")

    @property
    def step_sizes(self) -> tuple[float, float]:
        """(delta_up, delta_down): mean magnitudes of one up / down pulse at the symmetric point
        (aihwkit: (1 + beta_up) dw_min, (1 + beta_down) dw_min, beta from up_down)."""
        beta_up, beta_down = (0.0, -self.up_down) if self.up_down > 0 else (self.up_down, 0.0)
        return (1 + beta_up) * self.dw_min, (1 + beta_down) * self.dw_min

    @property
    def tau(self) -> float:
        """Saturation level of a symmetric soft-bounds device (infinite for ideal)."""
        return math.inf if self.name == "ideal" else self.w_max

    @property
    def has_dtod(self) -> bool:
        return any(getattr(self, f) > 0 for f in DTOD_FIELDS)

    @classmethod
    def soft_bounds(cls, tau: float = 0.8, **kw: float) -> DeviceConfig:
        """The asymmetric linear device of the paper, w in [-tau, tau]."""
        check(tau > 0, "tau", tau, "a value > 0")
        return cls(name="softbounds", w_max=tau, w_min=-tau, **kw)
