"""Dense cell-centre detection (cervical cytology, stage 2): network, targets, loss, decoding.

On a level-0 RGB region of a suspicious slide area (256 x 256 pixels at 0.25 um/pixel, cells
about 100 pixels across) a small fully convolutional network gives, per pixel, one centre
heat-map logit (channel 0) and one logit per abnormal cell class (channels ``1..K``). The peaks
of the heat map are the cells; the class logits at a peak give its class (CenterNet, Zhou et
al. 2019, "Objects as Points", with the size and offset heads left out: a cell is a point).

- :func:`cell_centres` (registered as ``"cell-centres"``) builds the network;
- :func:`centre_targets` turns one region's annotated cells into the dense target;
- :class:`CentreLoss` is CenterNet's penalty-reduced focal loss plus a class cross-entropy;
- :func:`decode_centres` turns one region's output back into cells.

Coordinates: a cell centre is ``(x, y)`` in region pixels, ``x`` the column and ``y`` the row,
with pixel ``(row r, column c)`` centred on ``(x, y) = (c, r)``. Arrays are ``(channels, h, w)``.
Decoding stays outside the graph (like :mod:`medinfer.models.detection`), so the exported
network is plain convolutions and runs, and quantizes, the same on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medinfer.models.networks import ResizeUNet
from medinfer.models.registry import register_model

HEAT_PRIOR = 0.1
"""Initial centre probability of every pixel. CenterNet starts the heat-map bias at
``logit(0.1)``: from 0 (probability 0.5) the focal loss of the many background pixels
dominates the first steps and training is slow and unstable."""

CLASS_ON = 0.5
"""A pixel carries its nearest cell's class where that cell's Gaussian exceeds this
(within ``sigma * sqrt(2 ln 2)``, 9.4 pixels at ``sigma`` 8: inside the nucleus)."""


@register_model("cell-centres", task="segmentation", spatial_dims=2)
def cell_centres(
    in_channels: int = 3, out_channels: int = 6, channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2), num_res_units: int = 1,
) -> nn.Module:
    """Cell-centre network: MONAI ``UNet`` with an interpolating decoder (:class:`ResizeUNet`).

    Batch norm and ReLU, bilinear upsampling then convolution: every layer is a plain
    convolution, norm, activation or resize, so the network exports to ONNX / OpenVINO and
    quantizes to INT8 without float islands (see :class:`ResizeUNet`). The heat-map bias
    starts at ``logit(HEAT_PRIOR)``.

    Args:
        in_channels: input channels (3: RGB).
        out_channels: ``1 + K``: the centre heat logit, then ``K`` class logits.
        channels: feature channels per level.
        strides: downsampling per level (``len(channels) - 1`` of them).
        num_res_units: residual units per block.

    Returns:
        Module mapping ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)`` logits; ``H``
        and ``W`` must be multiples of ``prod(strides)`` (8 by default).

    Example:
        >>> from medinfer.models import create_model
        >>> net = create_model("cell-centres", in_channels=3, out_channels=1 + 5)
        >>> net(torch.zeros(2, 3, 256, 256)).shape
        torch.Size([2, 6, 256, 256])
    """
    net = ResizeUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
        channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
        norm="batch", act="relu",
    )
    head = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]  # the logits' convolution
    if head.bias is not None:
        with torch.no_grad():
            head.bias[0] = float(np.log(HEAT_PRIOR / (1 - HEAT_PRIOR)))
    return net


def centre_targets(
    centres: np.ndarray, classes: np.ndarray, size: tuple[int, int], n_classes: int,
    sigma: float = 8.0,
) -> np.ndarray:
    """Dense training target of one region.

    Channel 0 is the heat map: the maximum over cells of ``exp(-d^2 / (2 sigma^2))``, ``d`` the
    distance to the cell's centre rounded to the nearest pixel (so exactly 1.0 at that pixel
    when it lies in the region). Channels ``1..n_classes`` one-hot the class of the nearest
    cell on the pixels where that cell's Gaussian exceeds :data:`CLASS_ON`, zero elsewhere.
    Cells centred outside the region still reach into it with their Gaussian and class disc.

    Args:
        centres: (m, 2) cell centres ``(x, y)`` in region pixels; m may be 0.
        classes: (m,) integer classes in ``[0, n_classes)``.
        size: region ``(h, w)`` in pixels (rows, columns).
        n_classes: number of classes ``K``.
        sigma: Gaussian standard deviation in pixels.

    Returns:
        (1 + n_classes, h, w) float32.

    Example:
        >>> t = centre_targets(np.array([[40.0, 20.0]]), np.array([1]), (64, 96), n_classes=2)
        >>> t.shape, float(t[0, 20, 40]), float(t[2, 20, 40])
        ((3, 64, 96), 1.0, 1.0)
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    classes = np.asarray(classes).reshape(-1)
    h, w = (int(s) for s in size)
    if len(classes) != len(centres):
        raise ValueError(f"{len(centres)} centres but {len(classes)} classes")
    if len(classes) and (classes.min() < 0 or classes.max() >= n_classes):
        raise ValueError(f"classes must lie in [0, {n_classes}), got {classes.min()}..{classes.max()}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    heat = np.zeros((h, w), np.float32)
    nearest = np.full((h, w), -1, np.int64)  # index of the cell whose Gaussian is highest
    cols, rows = np.arange(w), np.arange(h)
    for k, (cx, cy) in enumerate(np.floor(centres + 0.5)):  # round half up
        # Separable: one row and one column profile, their outer product is the Gaussian.
        gx = np.exp(-((cols - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
        gy = np.exp(-((rows - cy) ** 2) / (2 * sigma**2)).astype(np.float32)
        g = np.outer(gy, gx)
        higher = g > heat
        heat[higher] = g[higher]
        nearest[higher] = k
    target = np.zeros((1 + n_classes, h, w), np.float32)
    target[0] = heat
    on = heat > CLASS_ON
    if on.any():
        rr, cc = np.nonzero(on)
        target[1 + classes[nearest[on]], rr, cc] = 1.0
    return target


class CentreLoss(nn.Module):
    """CenterNet's penalty-reduced focal loss on the heat map plus a weighted class loss.

    ``loss = focal(logits[:, 0], target[:, 0]) + class_weight * CE(logits[:, 1:], classes)``,
    where the focal term (alpha 2, beta 4) is summed over pixels and divided by the number of
    centre pixels (target exactly 1) in the batch, at least 1, and the cross-entropy is the
    mean over the pixels whose target has a class (0 when none has).

    Args:
        class_weight: weight of the class cross-entropy.
        alpha: focusing exponent on the prediction.
        beta: exponent of ``1 - target`` that lowers the penalty near a centre.

    Shapes:
        ``forward(logits, target)``: both (N, 1 + K, H, W) (targets from
        :func:`centre_targets`); returns a scalar.
    """

    def __init__(self, class_weight: float = 1.0, alpha: float = 2.0, beta: float = 4.0) -> None:
        super().__init__()
        self.class_weight, self.alpha, self.beta = float(class_weight), float(alpha), float(beta)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
        logits, target = logits.float(), target.float()
        loss = self.focal(logits[:, 0], target[:, 0])
        if logits.shape[1] > 1 and self.class_weight:
            loss = loss + self.class_weight * self.class_ce(logits[:, 1:], target[:, 1:])
        return loss

    def focal(self, logit: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        """Penalty-reduced focal loss, (N, H, W) logits and Gaussian heat map."""
        log_p, log_q = F.logsigmoid(logit), F.logsigmoid(-logit)  # log p, log (1 - p), stable
        pos = heat == 1.0
        pos_loss = torch.exp(self.alpha * log_q) * log_p
        neg_loss = torch.pow(1 - heat, self.beta) * torch.exp(self.alpha * log_p) * log_q
        per_pixel = torch.where(pos, pos_loss, neg_loss)
        return -per_pixel.sum() / pos.sum().clamp(min=1)

    @staticmethod
    def class_ce(logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the pixels with a class, (N, K, H, W) logits and one-hot."""
        has = onehot.sum(1) > 0
        ce = F.cross_entropy(logits, onehot.argmax(1), reduction="none")
        return (ce * has).sum() / has.sum().clamp(min=1)


def decode_centres(
    logits: np.ndarray, threshold: float = 0.3, min_distance: int = 12, max_cells: int = 64,
) -> np.ndarray:
    """Cells of one region's network output.

    A cell is a pixel whose centre score ``sigmoid(logits[0])`` is at least ``threshold`` and
    the maximum of its ``(2 * min_distance + 1)^2`` neighbourhood (max-pool non-maximum
    suppression). The pooling runs on the logits, which order pixels as the scores do but do not
    saturate at 1.0 in float32; equal neighbouring peaks (a plateau, common in INT8 outputs)
    keep only the first in row-major order.

    Args:
        logits: (1 + K, h, w) network output of one region.
        threshold: minimum centre score in [0, 1].
        min_distance: peaks closer than this in both x and y (Chebyshev distance
            ``<= min_distance``) are suppressed in favour of the higher.
        max_cells: most cells returned.

    Returns:
        (n, 4) float32 rows ``(x, y, score, class)``, highest score first; ``class`` is the
        argmax of the class logits at the peak (0 when the output has no class channels).
        Shape (0, 4) when there are no cells.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[0] < 1:
        raise ValueError(f"expected (1 + K, h, w) logits, got shape {logits.shape}")
    if min_distance < 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    heat = torch.from_numpy(np.ascontiguousarray(logits[0], dtype=np.float32))[None, None]
    pooled = F.max_pool2d(heat, 2 * min_distance + 1, stride=1, padding=min_distance)[0, 0]
    heat = heat[0, 0]
    score = torch.sigmoid(heat)
    rows, cols = torch.nonzero((heat == pooled) & (score >= threshold), as_tuple=True)
    order = torch.argsort(score[rows, cols], descending=True, stable=True)
    keep = _drop_ties(rows[order].numpy(), cols[order].numpy(), min_distance, max_cells)
    rows, cols = rows[order][keep].numpy(), cols[order][keep].numpy()
    out = np.zeros((len(rows), 4), np.float32)
    out[:, 0], out[:, 1] = cols, rows
    out[:, 2] = score[rows, cols].numpy()
    if logits.shape[0] > 1:
        out[:, 3] = logits[1:, rows, cols].argmax(0)
    return out


def _drop_ties(rows: np.ndarray, cols: np.ndarray, min_distance: int, max_cells: int) -> list[int]:
    """Indices of the peaks kept, in order, dropping any within ``min_distance`` of a kept one.

    After max-pool NMS two survivors that close are exactly equal, so this only breaks ties.
    """
    kept: list[int] = []
    for i in range(len(rows)):
        if len(kept) >= max_cells:
            break
        if kept and (np.maximum(np.abs(rows[kept] - rows[i]),
                                np.abs(cols[kept] - cols[i])) <= min_distance).any():
            continue
        kept.append(i)
    return kept
