"""Errors with messages that name the setting, what was wrong and what is allowed."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting is out of its allowed range; the message names the field."""


def check(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ConfigError('<field>=<value> is invalid: allowed <allowed>') unless ok."""
    if not ok:
        raise ConfigError(f"{field}={value!r} is invalid: allowed {allowed}")
