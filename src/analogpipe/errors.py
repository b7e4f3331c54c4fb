"""Errors with messages that name the setting, what was wrong and what is allowed."""

from __future__ import annotations

from typing import Any

FLOAT32_MAX = 3.4028234663852886e38  # settings act on float32 tensors: larger ones overflow
FLOAT32_TRUE_MIN = 1.401298464324817e-45  # and nonzero ones below this turn 0


class ConfigError(ValueError):
    """A setting is out of its allowed range; the message names the field."""


def check(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ConfigError('<field>=<value> is invalid: allowed <allowed>') unless ok."""
    if not ok:
        raise ConfigError(f"{field}={value!r} is invalid: allowed {allowed}")


class NonFiniteUpdateError(FloatingPointError):
    """NaN or inf in what an analog layer stashed for its update (raised at the backward,
    naming the layer, before any conductance changes). Also importable from
    `analogpipe.tiles.tile`."""
