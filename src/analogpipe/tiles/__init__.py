from analogpipe.tiles.io import IOConfig, analog_mvm, res_for_bits
from analogpipe.tiles.pulses import UpdateConfig
from analogpipe.tiles.tile import AnalogTile, MappingConfig, TileConfig

__all__ = ["AnalogTile", "IOConfig", "MappingConfig", "TileConfig", "UpdateConfig",
           "analog_mvm", "res_for_bits"]
