"""Medical metrics: a functional core and small accumulators around it."""

from medinfer.metrics.classification import AucScore, ClassificationScores, classification_scores, roc_auc
from medinfer.metrics.detection import (SliceDetections, SliceTruth, boxes_agree, detection_scores,
                                        froc_curve, match_boxes)
from medinfer.metrics.segmentation import dice_iou_per_image, mean_interval

__all__ = ["AucScore", "ClassificationScores", "SliceDetections", "SliceTruth", "boxes_agree",
           "classification_scores", "detection_scores", "dice_iou_per_image", "froc_curve",
           "match_boxes", "mean_interval", "roc_auc"]
