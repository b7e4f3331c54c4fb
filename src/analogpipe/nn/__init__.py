from analogpipe.nn.layers import (
    ANALOG_LAYERS,
    AnalogConv1d,
    AnalogConv2d,
    AnalogLinear,
    DigitalLayerWarning,
    analog_tiles,
    convert_to_analog,
    load_digital_state_dict,
)

__all__ = ["ANALOG_LAYERS", "AnalogConv1d", "AnalogConv2d", "AnalogLinear",
           "DigitalLayerWarning", "analog_tiles", "convert_to_analog", "load_digital_state_dict"]
