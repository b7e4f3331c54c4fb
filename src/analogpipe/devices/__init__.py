"""Device response models: how one conductance responds to update pulses.

All physics of the weight update lives here, as pure tensor functions:
`sample_device_state` (device-to-device spread, drawn once), `response` (the factors
q_+(w), q_-(w)), `expected_update` (SPEC section 2) and `apply_pulses` (the pulsed update's
action on the array, given coincidence counts).
"""

from analogpipe.devices.config import DEVICE_NAMES, DeviceConfig
from analogpipe.devices.response import (
    DeviceState,
    apply_pulse_counts_,
    apply_pulses,
    clip_to_bounds,
    expected_update,
    expected_update_,
    is_symmetric_soft_bounds,
    response,
    sample_device_state,
)

__all__ = [
    "DEVICE_NAMES",
    "DeviceConfig",
    "DeviceState",
    "apply_pulse_counts_",
    "apply_pulses",
    "clip_to_bounds",
    "expected_update",
    "expected_update_",
    "is_symmetric_soft_bounds",
    "response",
    "sample_device_state",
]
