from analogpipe.optim.analog_sgd import AnalogSGD

__all__ = ["AnalogSGD"]
