from analogpipe.tiles.io import IOConfig, analog_mvm, res_for_bits
from analogpipe.tiles.pulses import UpdateConfig
from analogpipe.tiles.tile import (
    AnalogTile,
    MappingConfig,
    NonFiniteUpdateError,
    TileConfig,
    accept_config_changes,
)
from analogpipe.tiles.transfer import TransferCompoundConfig, TransferTile, make_tile

__all__ = ["AnalogTile", "IOConfig", "MappingConfig", "NonFiniteUpdateError", "TileConfig",
           "TransferCompoundConfig", "TransferTile", "UpdateConfig", "accept_config_changes",
           "analog_mvm", "make_tile", "res_for_bits"]
