"""Medical metrics: a functional core and small accumulators around it."""

from medinfer.metrics.classification import AucScore, ClassificationScores, classification_scores, roc_auc
from medinfer.metrics.segmentation import dice_iou_per_image, mean_interval

__all__ = ["AucScore", "ClassificationScores", "classification_scores", "dice_iou_per_image",
           "mean_interval", "roc_auc"]
