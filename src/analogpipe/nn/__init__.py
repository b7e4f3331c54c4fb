from analogpipe.nn.layers import AnalogConv2d, AnalogLinear, analog_tiles, convert_to_analog

__all__ = ["AnalogConv2d", "AnalogLinear", "analog_tiles", "convert_to_analog"]
