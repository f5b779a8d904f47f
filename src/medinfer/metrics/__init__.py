"""Medical metrics: a functional core and small accumulators around it."""

from medinfer.metrics.segmentation import SegmentationScores, dice_iou_per_image, summarize

__all__ = ["SegmentationScores", "dice_iou_per_image", "summarize"]
