"""analogpipe: analog in-memory training with pipeline parallelism."""

__version__ = "0.1.0"
