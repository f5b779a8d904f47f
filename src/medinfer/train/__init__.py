"""Training: configuration and the segmentation training loop."""

from medinfer.train.config import TrainConfig
from medinfer.train.loop import TrainResult, predict_masks, train_segmentation

__all__ = ["TrainConfig", "TrainResult", "predict_masks", "train_segmentation"]
