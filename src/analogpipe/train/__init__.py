from analogpipe.train.config import SCHEMES, TrainConfig
from analogpipe.train.loop import TrainingDiverged, build, evaluate, train

__all__ = ["SCHEMES", "TrainConfig", "TrainingDiverged", "build", "evaluate", "train"]
