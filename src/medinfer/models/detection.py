"""Detection networks: MONAI's RetinaNet on a small ResNet + FPN (stage 1, candidate boxes)
and a small ResNet classifier of candidate crops (stage 2, false-positive reduction).

The stage-1 network ends at the heads: one tensor ``(N, anchors, classes + 2 * dims)`` of
classification logits and box-regression deltas, anchors ordered as MONAI's
``RetinaNetDetector`` orders them (level, then position, then anchor shape). Anchor
generation, box decoding, score thresholding and NMS stay outside the graph
(:class:`DetectorGeometry` and :func:`decode_boxes`), so the network exports to ONNX /
OpenVINO and quantizes like any other, and the post-processing runs the same on every backend.

Boxes inside this module follow MONAI's axis order: ``(a0, b0, a1, b1)`` with ``a`` the
first spatial axis (the image row) and ``b`` the second (the column). The task converts them
to and from the picture convention (x = column).

MONAI builds its ResNet + FPN feature extractor with torchvision's layer-freezing helper and
checks torchvision's Matcher / sampler types in its training code; neither is needed here:
:class:`ResNetFPN` takes the ResNet stages itself into MONAI's ``FeaturePyramidNetwork``, and
the type checks see a stand-in class when torchvision is absent (training uses MONAI's ATSS matcher and hard-negative sampler).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from monai.apps.detection.networks import retinanet_detector as _retinanet_detector
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.box_coder import BoxCoder
from monai.apps.detection.utils.box_selector import BoxSelector
from monai.data.box_utils import box_iou, clip_boxes_to_image
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets.resnet import ResNet
from monai.utils import optional_import
from torch import nn

from medinfer.models.registry import register_model

_, _HAS_TORCHVISION = optional_import("torchvision")
if not _HAS_TORCHVISION:
    class _TorchvisionAbsent:
        """Stands for torchvision's Matcher / BalancedPositiveNegativeSampler: nothing is one."""

    _retinanet_detector.Matcher = _TorchvisionAbsent  # type: ignore[attr-defined]
    _retinanet_detector.BalancedPositiveNegativeSampler = _TorchvisionAbsent  # type: ignore[attr-defined]

BOX_DIMS = 4
"""Box-regression outputs per anchor of a 2D detector."""


def _resnet(in_channels: int, width: int, blocks: int, num_classes: int = 0) -> ResNet:
    """MONAI's 2D ResNet with basic blocks, channels ``width * (1, 2, 4, 8)``; without a
    classifier when ``num_classes`` is 0 (a feature extractor)."""
    return ResNet("basic", [blocks] * 4, [width, 2 * width, 4 * width, 8 * width], spatial_dims=2,
                  n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
                  num_classes=max(num_classes, 1), feed_forward=num_classes > 0)


class ResNetFPN(nn.Module):
    """MONAI's ResNet stages ``layers`` into MONAI's FeaturePyramidNetwork (plus one max-pooled
    level): what MONAI's ``BackboneWithFPN`` builds with torchvision's layer getter."""

    def __init__(self, backbone: ResNet, layers: Sequence[int], width: int, out_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.act, backbone.maxpool)
        self.stages = nn.ModuleList(getattr(backbone, f"layer{k}") for k in range(1, max(layers) + 1))
        self.returned = tuple(layers)
        self.fpn = FeaturePyramidNetwork(2, [width * 2 ** (k - 1) for k in layers], out_channels,
                                         extra_blocks=LastLevelMaxPool(2))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        picked: dict[str, torch.Tensor] = {}
        for k, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if k in self.returned:
                picked[str(len(picked))] = x
        return self.fpn(picked)


@dataclass(frozen=True)
class AnchorSpec:
    """The anchors of a detector (stored in the artifact's ``arch_kwargs``).

    Attributes:
        shapes: anchor (height, width) in input pixels on the finest returned level.
        returned_layers: ResNet layers feeding the FPN (layer k has stride ``2 ** (k + 1)``);
            one extra max-pooled level follows the last.
    """

    shapes: tuple[tuple[int, int], ...] = ((24, 24), (32, 40), (40, 32))
    returned_layers: tuple[int, ...] = (2, 3)

    @classmethod
    def of(cls, arch_kwargs: Mapping[str, object]) -> AnchorSpec:
        """The anchors of a network built with ``arch_kwargs`` (``anchors``, ``returned_layers``)."""
        shapes = arch_kwargs.get("anchors", cls.shapes)
        layers = arch_kwargs.get("returned_layers", cls.returned_layers)
        return cls(tuple(tuple(int(v) for v in a) for a in shapes),  # type: ignore[union-attr]
                   tuple(int(k) for k in layers))  # type: ignore[union-attr]

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of every level, the pooled one included."""
        base = tuple(2 ** (k + 1) for k in self.returned_layers)
        return (*base, 2 * base[-1])

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(s // self.strides[0] for s in self.strides)

    def generator(self) -> AnchorGeneratorWithAnchorShape:
        return AnchorGeneratorWithAnchorShape(feature_map_scales=self.scales, base_anchor_shapes=self.shapes)


class Detector2D(nn.Module):
    """RetinaNet (MONAI) on a ResNet + FPN, returning one tensor (see the module docstring).

    Args:
        in_channels: input channels (3 neighbouring CT slices for 2.5D).
        out_channels: object classes (1: lesion).
        width: channels of the first ResNet stage.
        fpn_channels: channels of every FPN level and of the heads.
        anchors / returned_layers: see :class:`AnchorSpec`.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, width: int = 16, fpn_channels: int = 32,
                 blocks: int = 1, anchors: Sequence[Sequence[int]] = AnchorSpec.shapes,
                 returned_layers: Sequence[int] = AnchorSpec.returned_layers) -> None:
        super().__init__()
        self.anchor_spec = AnchorSpec.of({"anchors": anchors, "returned_layers": returned_layers})
        features = ResNetFPN(_resnet(in_channels, width, blocks), self.anchor_spec.returned_layers,
                             width, fpn_channels)
        self.num_classes = out_channels
        self.num_anchors = len(self.anchor_spec.shapes)
        self.retinanet = RetinaNet(2, out_channels, self.num_anchors, features,
                                   size_divisible=self.anchor_spec.strides[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.retinanet(x)
        cls = torch.cat([self._flat(m, self.num_classes) for m in maps[self.retinanet.cls_key]], 1)
        box = torch.cat([self._flat(m, BOX_DIMS) for m in maps[self.retinanet.box_reg_key]], 1)
        return torch.cat([cls, box], 2)

    def _flat(self, m: torch.Tensor, k: int) -> torch.Tensor:
        # (B, A*k, H, W) -> (B, H*W*A, k), the order of RetinaNetDetector._reshape_maps
        b, _, h, w = m.shape
        return m.view(b, self.num_anchors, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)


@register_model("retinanet2d", task="detection", spatial_dims=2)
def retinanet2d(in_channels: int = 3, out_channels: int = 1, **kwargs: object) -> nn.Module:
    """2.5D lesion detector: RetinaNet on a ResNet-10-like backbone (width 16) with a 32-channel FPN."""
    return Detector2D(in_channels, out_channels, **kwargs)  # type: ignore[arg-type]


@register_model("candidate-resnet", task="classification", spatial_dims=2)
def candidate_resnet(in_channels: int = 3, out_channels: int = 1, width: int = 16, blocks: int = 1) -> nn.Module:
    """Stage-2 classifier of candidate crops: a small 2D ResNet, one logit per class."""
    return _resnet(in_channels, width, blocks, num_classes=out_channels)


class DetectorGeometry:
    """What the detector's outputs mean for one input size: the anchors, MONAI's box coder
    and box selector (score threshold, top-k, NMS) — the post-processing outside the graph."""

    def __init__(self, spec: AnchorSpec, size: Sequence[int], num_classes: int = 1,
                 score_thresh: float = 0.05, nms_thresh: float = 0.3, topk: int = 200,
                 detections: int = 20) -> None:
        self.spec, self.size, self.num_classes = spec, tuple(int(s) for s in size), num_classes
        self.coder = BoxCoder(weights=(1.0,) * BOX_DIMS)
        self.logit_thresh = float(torch.logit(torch.tensor(score_thresh, dtype=torch.float64)))
        self.selector = BoxSelector(score_thresh=score_thresh, topk_candidates_per_level=topk,
                                    nms_thresh=nms_thresh, detections_per_img=detections, apply_sigmoid=True)

    @cached_property
    def level_sizes(self) -> list[tuple[int, int]]:
        return [(-(-self.size[0] // s), -(-self.size[1] // s)) for s in self.spec.strides]

    @cached_property
    def anchors(self) -> torch.Tensor:
        """(sum H*W*A, 4) anchors in input pixels, in the network's output order."""
        gen = self.spec.generator()
        maps = [torch.zeros(1, 1, *hw) for hw in self.level_sizes]
        return gen(torch.zeros(1, 1, *self.size), maps)[0]

    @property
    def locations(self) -> list[int]:
        """Anchor locations per level (what the ATSS matcher needs)."""
        return [h * w for h, w in self.level_sizes]

    def decode(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's network output (anchors, classes + 4) -> (boxes (n, 4), scores (n,))
        after sigmoid, threshold, top-k and NMS, boxes clipped to the input."""
        logits, deltas = output[:, :self.num_classes].float(), output[:, self.num_classes:].float()
        # MONAI's selection (score threshold, top-k, clip, NMS per class); only the anchors the
        # threshold keeps are decoded, and the NMS compares all boxes at once (nms below)
        kept = (logits.max(dim=1).values > self.logit_thresh).nonzero()[:, 0]
        top, scores, labels = self.selector.select_top_score_idx_per_level(logits[kept])
        boxes = self.coder.decode_single(deltas[kept][top], self.anchors[kept][top])
        boxes, valid = clip_boxes_to_image(boxes, self.size, remove_empty=True)
        pick = nms(boxes, scores[valid], labels[valid], self.selector.nms_thresh)[:self.selector.detections_per_img]
        return boxes[pick], scores[valid][pick]


def nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression per label, indices by descending score: what MONAI's
    ``batched_nms`` returns, with one IoU matrix instead of one IoU call per kept box (the
    per-call checks cost milliseconds per slice)."""
    order = torch.argsort(scores, descending=True, stable=True)
    if len(order) == 0:
        return order
    b, lab = boxes[order], labels[order]
    overlap = ((box_iou(b, b) > threshold) & (lab[:, None] == lab[None, :])).numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    pick = []
    for i in range(len(order)):
        if not suppressed[i]:
            pick.append(i)
            suppressed |= overlap[i]
    return order[pick]


class DetectionLoss(nn.Module):
    """MONAI RetinaNet's training loss on :class:`Detector2D`'s single output: ATSS anchor
    matching, hard-negative sampling, BCE on the sampled anchors and GIoU on the
    matched boxes (the settings of MONAI's lung-nodule detection bundle).

    ``target`` is ``(B, M, 5)``: per image up to M boxes ``(a0, b0, a1, b1, label)`` in input
    pixels, padded with rows of -1.
    """

    def __init__(self, geometry: DetectorGeometry, batch_per_image: int = 64) -> None:
        super().__init__()
        from monai.losses.giou_loss import BoxGIoULoss

        self.geometry = geometry
        stand_in = _HeadStandIn(geometry.num_classes, len(geometry.spec.shapes))
        self.detector = RetinaNetDetector(stand_in, geometry.spec.generator())
        self.detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
        self.detector.set_hard_negative_sampler(batch_size_per_image=batch_per_image, positive_fraction=0.3,
                                                pool_size=20, min_neg=16)
        self.detector.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = self.geometry.num_classes
        targets = []
        for t in target:
            keep = t[:, 4] >= 0
            targets.append({"boxes": t[keep, :4], "labels": t[keep, 4].long()})
        heads = {self.detector.cls_key: output[..., :k], self.detector.box_reg_key: output[..., k:]}
        anchors = self.geometry.anchors.to(output.device)
        losses = self.detector.compute_loss(heads, targets, [anchors] * len(targets), self.geometry.locations)
        return sum(losses.values())



class _HeadStandIn(nn.Module):
    """What RetinaNetDetector reads from its network when only its loss is used."""

    def __init__(self, num_classes: int, num_anchors: int) -> None:
        super().__init__()
        self.spatial_dims, self.num_classes, self.num_anchors = 2, num_classes, num_anchors
        self.size_divisible = 1
        self.cls_key, self.box_reg_key = "classification", "box_regression"
