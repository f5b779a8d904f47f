"""Few-shot training images: many realistic views of a product from a handful of photos (S9).

The drug-package case of the seed trained a small network on images synthesised from 279
photos of 56 drugs. :func:`synthesize` does the same from one reference photo of a product
on a plain background: the product is cut out (:func:`object_mask`), turned, scaled and
seen in perspective, pasted on a new background (a generated counter or tray texture, or
a crop of another photo), lit differently (brightness, contrast, colour cast), sometimes
blurred, and sometimes partly covered by a finger or a tray edge. Every random choice comes
from the generator it is given, so a seed gives the same set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage


@dataclass(frozen=True)
class SynthesisConfig:
    """How far each random change goes.

    Attributes:
        size: side of the square output image (pixels).
        rotation: largest turn either way (degrees; 180: any orientation).
        scale: the product's longer side as a fraction of the output side (low, high).
        perspective: largest shift of each corner, as a fraction of the product's size.
        brightness: largest change of the mean level (fraction, either way).
        contrast: largest change of the contrast (fraction, either way).
        colour: largest gain change of one colour channel (fraction, either way).
        blur_prob: probability of a Gaussian blur (out of focus, motion).
        blur_sigma: its sigma in pixels (low, high).
        occlusion_prob: probability that a finger or a tray edge covers part of the product.
        occlusion_max: the largest fraction of the product it may cover.
    """

    size: int = 64
    rotation: float = 180.0
    scale: tuple[float, float] = (0.55, 0.95)
    perspective: float = 0.12
    brightness: float = 0.25
    contrast: float = 0.25
    colour: float = 0.08
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.4)
    occlusion_prob: float = 0.3
    occlusion_max: float = 0.3


def object_mask(photo: np.ndarray, threshold: float = 30.0) -> np.ndarray:
    """The product in a reference photo on a plain background: (H, W) bool.

    Pixels further than ``threshold`` (RGB distance) from the background colour (the median
    of the photo's border) are foreground; the largest connected part, holes filled, is
    the product. A photo whose foreground touches nothing is returned whole.
    """
    rgb = np.asarray(photo, np.float32)[..., :3]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    fg = np.linalg.norm(rgb - background, axis=-1) > threshold
    fg = ndimage.binary_opening(fg, structure=np.ones((3, 3), bool), iterations=2)  # specks off, corners kept
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.ones(rgb.shape[:2], bool)
    largest = 1 + int(np.argmax(ndimage.sum(fg, labels, index=range(1, n + 1))))
    return ndimage.binary_fill_holes(labels == largest)


def texture_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A counter- or tray-like background: a colour gradient with grain and faint stripes."""
    base = rng.uniform(60, 230, 3)
    tilt = rng.uniform(-40, 40, 3)
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1)
    angle = rng.uniform(0, np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    img = base + ramp[..., None] * tilt
    period = rng.uniform(4, 16)
    img += 6 * np.sin(2 * np.pi * (xx * np.cos(angle + 1) + yy * np.sin(angle + 1)) * size / period)[..., None]
    img += rng.normal(0, rng.uniform(2, 10), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def crop_background(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of another photo, resized to ``size``."""
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(np.ascontiguousarray(photo[y:y + side, x:x + side, :3]))
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def _cutout(photo: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The product as an RGBA image cropped to its mask."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.dstack([photo[y0:y1, x0:x1, :3], (mask[y0:y1, x0:x1] * 255).astype(np.uint8)])
    return Image.fromarray(np.ascontiguousarray(rgba), "RGBA")


def _perspective(obj: Image.Image, amount: float, rng: np.random.Generator) -> Image.Image:
    """``obj`` seen slightly from the side: each corner moved by up to ``amount`` of its size."""
    w, h = obj.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    dst = src + rng.uniform(-amount, amount, (4, 2)) * [w, h]
    # PIL maps output to input: solve for the 8 coefficients taking dst corners to src corners.
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    coeffs = np.linalg.solve(np.array(rows), np.array(rhs))
    return obj.transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BILINEAR)


def _occlude(canvas: Image.Image, box: tuple[int, int, int, int], cfg: SynthesisConfig,
             rng: np.random.Generator) -> None:
    """A finger (skin-toned ellipse) or a tray edge (grey band) over part of ``box``."""
    x0, y0, x1, y1 = box
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    cover = rng.uniform(0.1, cfg.occlusion_max)
    draw = ImageDraw.Draw(canvas)
    if rng.random() < 0.5:  # a finger reaching in from one side
        fw, fh = w * np.sqrt(cover) * 0.7, h * np.sqrt(cover) * 1.4
        cx, cy = x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)
        skin = tuple(int(v) for v in rng.uniform([170, 110, 90], [240, 190, 160]))
        draw.ellipse([cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2], fill=skin)
    else:  # a tray edge across one side
        grey = int(rng.uniform(90, 200))
        depth = cover * h
        draw.rectangle([x0 - 2, y1 - depth, x1 + 2, y1 + 2], fill=(grey, grey, grey))


def synthesize(photo: np.ndarray, mask: np.ndarray, background: np.ndarray, rng: np.random.Generator,
               cfg: SynthesisConfig = SynthesisConfig()) -> np.ndarray:
    """One training image of the product in ``photo`` (its ``mask``) on ``background``.

    Args:
        photo: (H, W, 3) uint8 reference photo.
        mask: (H, W) bool, the product (:func:`object_mask`).
        background: (size, size, 3) uint8 (:func:`texture_background`, :func:`crop_background`).
        rng: every random choice comes from it.
        cfg: how far each change goes.

    Returns:
        (size, size, 3) uint8.

    Raises:
        ValueError: the mask is empty or the background is not ``cfg.size`` square.
    """
    if not mask.any():
        raise ValueError("the product mask is empty")
    if background.shape[:2] != (cfg.size, cfg.size):
        raise ValueError(f"background is {background.shape[:2]}, expected {(cfg.size, cfg.size)}")
    obj = _perspective(_cutout(photo, mask), cfg.perspective, rng)
    obj = obj.rotate(rng.uniform(-cfg.rotation, cfg.rotation), Image.BILINEAR, expand=True)
    side = rng.uniform(*cfg.scale) * cfg.size
    k = side / max(obj.size)
    obj = obj.resize((max(1, round(obj.size[0] * k)), max(1, round(obj.size[1] * k))), Image.BILINEAR)
    canvas = Image.fromarray(np.ascontiguousarray(background[..., :3])).convert("RGB")
    x = int(rng.integers(0, max(cfg.size - obj.size[0], 0) + 1))
    y = int(rng.integers(0, max(cfg.size - obj.size[1], 0) + 1))
    canvas.paste(obj, (x, y), obj)
    if rng.random() < cfg.occlusion_prob:
        _occlude(canvas, (x, y, x + obj.size[0], y + obj.size[1]), cfg, rng)
    if rng.random() < cfg.blur_prob:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(*cfg.blur_sigma)))
    img = np.asarray(canvas, np.float32)
    mean = img.mean()
    img = (img - mean) * (1 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    img = img * (1 + rng.uniform(-cfg.brightness, cfg.brightness))
    img = img * (1 + rng.uniform(-cfg.colour, cfg.colour, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
