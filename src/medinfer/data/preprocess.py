"""Preprocessing spec carried by a model artifact, and its deterministic application.

The same :class:`Preprocessing` object drives training, evaluation, calibration and
serving, so a variant is never fed differently from how it was trained.
"""

from __future__ import annotations


import numpy as np
import torch
from monai.transforms import Resize

from medinfer.data.spec import Preprocessing


def resize_image(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (C, H, W) image bilinearly (MONAI ``Resize``); returns float32 (C, *size)."""
    out = Resize(spatial_size=size, mode="bilinear", align_corners=False)(array.astype(np.float32))
    return np.asarray(out, dtype=np.float32)


def resize_mask(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Resize a (H, W) mask or label map with nearest-neighbour sampling; keeps its dtype."""
    out = Resize(spatial_size=size, mode="nearest")(mask[None].astype(np.float32))
    return np.rint(np.asarray(out)[0]).astype(mask.dtype)


def normalize(array: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Scale and standardize a (C, H, W) or (N, C, H, W) float array by ``spec``."""
    c = array.shape[-3]
    mean = np.asarray(spec.mean[:c], dtype=np.float32).reshape(c, 1, 1)
    std = np.asarray(spec.std[:c], dtype=np.float32).reshape(c, 1, 1)
    return ((array * spec.scale - mean) / std).astype(np.float32)


def to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Repeat a greyscale (1, H, W) image to ``channels`` or drop alpha; returns (channels, H, W)."""
    if array.shape[0] == channels:
        return array
    if array.shape[0] == 1:
        return np.repeat(array, channels, axis=0)
    return array[:channels]


def prepare_image(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """One raw (C, H, W) image of any size -> network input (spec.channels, *spec.size) float32."""
    return normalize(resize_image(to_channels(image, spec.channels), spec.size), spec)


def prepare_batch(images: list[np.ndarray], spec: Preprocessing) -> np.ndarray:
    """Raw (C, H, W) images of any size -> network batch (N, C, *spec.size) float32."""
    out = [prepare_image(im, spec) for im in images]
    return np.stack(out) if out else np.zeros((0, spec.channels, *spec.size), np.float32)


def prepare_slices(volume: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The 2.5D network inputs of every slice of a (rows, cols, slices) volume: slice k with
    its neighbours ``k - c .. k + c`` as channels (``spec.channels = 2c + 1``; the first and
    last slices repeat themselves), each windowed by ``spec.window``, scaled by ``spec``
    and resized to ``spec.size``. Returns (slices, channels, *size) float32.

    Runs in torch on the volume's own memory order (slices last: a channels-last batch), so
    the window and a resize to exactly half (the mean of 2x2 pixels, which is what bilinear
    interpolation gives there) use every thread; the intensity scaling, being linear, runs
    after the resize, on a quarter of the pixels."""
    v = torch.from_numpy(np.asarray(volume, np.float32)).permute(2, 0, 1)[None]  # (1, S, H, W)
    if spec.window is not None:
        v = v.clamp(spec.window[0], spec.window[1])
    (h, w), size = v.shape[-2:], tuple(spec.size)
    if (h, w) == (2 * size[0], 2 * size[1]):
        x = torch.nn.functional.avg_pool2d(v, 2)[0].contiguous()
    elif (h, w) != size:
        x = torch.from_numpy(resize_image(v[0].contiguous().numpy(), size))
    else:
        x = v[0].contiguous()
    x = (x * spec.scale - spec.mean[0]) / spec.std[0]
    c = spec.channels // 2
    index = (torch.arange(len(x))[:, None] + torch.arange(-c, c + 1)[None, :]).clamp(0, len(x) - 1)
    return x[index].numpy()


def prepare_tiles(tiles: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Pictures (N, H, W, C) uint8 (slide tiles) -> network batch (N, C, *spec.size) float32,
    exactly as :func:`prepare_image` prepares each of them (the resize is skipped when the
    tiles already have the network's size)."""
    chw = np.ascontiguousarray(np.moveaxis(tiles, -1, 1))
    if tuple(chw.shape[-2:]) != tuple(spec.size) or chw.shape[1] != spec.channels:
        return prepare_batch(list(chw), spec)
    return normalize(chw.astype(np.float32), spec)
