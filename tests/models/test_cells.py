"""Cell-centre detector: network shape, dense targets, loss, decoding, a short fit, ONNX export."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from medinfer.models import create_model, get_entry
from medinfer.models.cells import CentreLoss, centre_targets, decode_centres

SMALL = {"channels": (8, 16, 32, 64)}  # default depth (three strides of 2), narrow layers
GLASS = np.array([0.92, 0.88, 0.90], np.float32)
STAINS = np.array([[0.20, 0.25, 0.60], [0.60, 0.25, 0.20]], np.float32)  # class 0 blue, 1 brown


def blob_region(rng: np.random.Generator, side: int = 64, radius: float = 6.0,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (3, side, side) picture of pale glass with 1-3 dark blobs ("cells") of two colours.

    Returns the picture, the (m, 2) centres ``(x, y)`` and the (m,) classes.
    """
    centres: list[np.ndarray] = []
    while len(centres) < rng.integers(1, 4):
        c = rng.uniform(radius + 2, side - radius - 3, size=2)
        if all(np.abs(c - o).max() > 3 * radius for o in centres):
            centres.append(c)
    xy, classes = np.array(centres), rng.integers(0, 2, size=len(centres))
    yy, xx = np.mgrid[:side, :side]
    image = np.broadcast_to(GLASS[:, None, None], (3, side, side)).copy()
    for (cx, cy), k in zip(xy, classes):
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        image[:, inside] = STAINS[k][:, None]
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return image, xy, classes


def test_registered_and_output_shape() -> None:
    entry = get_entry("cell-centres")
    assert (entry.task, entry.spatial_dims) == ("segmentation", 2)
    net = create_model("cell-centres", in_channels=3, out_channels=6).eval()
    with torch.inference_mode():
        out = net(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, 6, 64, 96)
    assert torch.sigmoid(out[:, 0]).mean() == pytest.approx(0.1, abs=0.05)  # CenterNet's prior
    kinds = {type(m).__name__ for m in net.modules()}
    assert "ConvTranspose2d" not in kinds and "PReLU" not in kinds


def test_targets_peak_and_class_disc() -> None:
    t = centre_targets(np.array([[20.3, 30.6]]), np.array([1]), (64, 48), n_classes=3, sigma=4.0)
    assert t.shape == (4, 64, 48) and t.dtype == np.float32
    assert t[0, 31, 20] == 1.0 and (t[0] < 1.0).sum() == t[0].size - 1  # one exact peak
    assert t[0, 31, 24] == pytest.approx(np.exp(-16 / 32), abs=1e-6)
    disc = t[0] > 0.5
    assert (t[2] == disc).all() and not t[1].any() and not t[3].any()
    assert ((t[1:].sum(0) == 1) == disc).all()


def test_targets_nearest_cell_class_and_max_of_gaussians() -> None:
    t = centre_targets(np.array([[10.0, 10.0], [18.0, 10.0]]), np.array([0, 1]), (24, 32), 2, sigma=4.0)
    assert t[0, 10, 10] == t[0, 10, 18] == 1.0
    assert t[0, 10, 14] == pytest.approx(np.exp(-16 / 32), abs=1e-6)  # max, not sum, midway
    assert t[1, 10, 13] == 1 and t[2, 10, 13] == 0  # nearer the class-0 cell
    assert t[2, 10, 15] == 1 and t[1, 10, 15] == 0


def test_targets_empty_and_outside() -> None:
    empty = centre_targets(np.zeros((0, 2)), np.zeros(0, int), (16, 24), n_classes=2)
    assert empty.shape == (3, 16, 24) and not empty.any()
    t = centre_targets(np.array([[-3.0, 8.0]]), np.array([0]), (16, 24), n_classes=2, sigma=4.0)
    assert t[0].max() == pytest.approx(np.exp(-9 / 32), abs=1e-6)  # the tail reaches in
    assert t[0, 8, 0] == t[0].max() and t[1, 8, 0] == 1.0
    with pytest.raises(ValueError, match="classes"):
        centre_targets(np.array([[1.0, 1.0]]), np.array([2]), (8, 8), n_classes=2)


def test_loss_is_zero_class_free_and_prefers_the_target() -> None:
    target = torch.from_numpy(centre_targets(np.array([[12.0, 9.0]]), np.array([1]), (24, 24), 2))[None]
    loss = CentreLoss()
    good = torch.zeros_like(target)
    good[:, 0] = torch.where(target[:, 0] == 1, 30.0, -30.0)  # the centre certain, the rest off
    good[:, 2] = torch.where(target[:, 2] == 1, 30.0, 0.0)  # class 1 certain on its disc
    assert loss(good, target).item() < 1e-3
    assert loss(torch.zeros_like(target), target) > 1.0
    assert torch.isfinite(loss(torch.full_like(target, 1e4), target))  # stable far out
    no_cells = torch.zeros_like(target)
    assert loss(torch.zeros_like(target), no_cells).item() == pytest.approx(
        0.5**2 * np.log(2) * 24 * 24, rel=1e-5)  # every pixel negative, no class term


@pytest.mark.parametrize("min_distance", [4, 6])
def test_decode_finds_planted_peaks_and_suppresses_a_close_neighbour(min_distance: int) -> None:
    logits = np.full((3, 40, 48), -8.0, np.float32)
    peaks = [(10, 8, 5.0, 1), (30, 25, 3.0, 0), (35, 25, 2.0, 1)]  # (x, y, logit, class)
    for x, y, value, k in peaks:
        logits[0, y, x] = value
        logits[1 + k, y, x] = 2.0
    logits[0, 9, 11] = 4.0  # next to the first peak, lower: suppressed at any distance
    cells = decode_centres(logits, threshold=0.3, min_distance=min_distance)
    found = {tuple(int(v) for v in (r[0], r[1], r[3])) for r in cells}
    want = {(10, 8, 1), (30, 25, 0)} | ({(35, 25, 1)} if min_distance < 5 else set())
    assert found == want
    assert cells.dtype == np.float32 and (np.diff(cells[:, 2]) <= 0).all()
    assert cells[0, 2] == pytest.approx(1 / (1 + np.exp(-5.0)))


def test_decode_empty_plateau_and_cap() -> None:
    assert decode_centres(np.full((3, 16, 16), -5.0, np.float32)).shape == (0, 4)
    flat = np.zeros((1, 16, 16), np.float32)  # an INT8-like plateau: one cell per window
    cells = decode_centres(flat, threshold=0.5, min_distance=3)
    assert len(cells) == 16 and (cells[:, 3] == 0).all()
    assert len(decode_centres(flat, threshold=0.5, min_distance=3, max_cells=5)) == 5


def _batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    pictures, targets = [], []
    for _ in range(n):
        image, xy, classes = blob_region(rng)
        pictures.append(image)
        targets.append(centre_targets(xy, classes, image.shape[1:], n_classes=2, sigma=3.0))
    return torch.from_numpy(np.stack(pictures)), torch.from_numpy(np.stack(targets))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread: a tiny network's steps are ~15x slower on two busy CPU threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_short_training_learns_the_blobs() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = create_model("cell-centres", in_channels=3, out_channels=3, **SMALL)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)  # 1e-2 fails on some seeds
    loss_fn = CentreLoss()
    losses = []
    for _ in range(60):
        x, y = _batch(rng, 4)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 10, losses  # 40-70x over seeds 0-5
    net.eval()
    for seed in range(3):
        image, xy, classes = blob_region(np.random.default_rng(100 + seed))
        with torch.inference_mode():
            out = net(torch.from_numpy(image)[None])[0].numpy()
        cells = decode_centres(out, threshold=0.3, min_distance=6)
        assert len(cells) == len(xy), (cells, xy)
        for (cx, cy), k in zip(xy, classes):
            d = np.hypot(cells[:, 0] - cx, cells[:, 1] - cy)
            assert d.min() <= 2.0 and cells[d.argmin(), 3] == k, (cells, xy, classes)


def test_onnx_export_matches_torch(tmp_path) -> None:
    import onnxruntime as ort

    from medinfer.optimize.export import INPUT_NAME, export_onnx

    torch.manual_seed(0)
    net = create_model("cell-centres", in_channels=3, out_channels=6, **SMALL).eval()
    path = export_onnx(net, torch.randn(2, 3, 64, 64), tmp_path / "cells.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)  # another batch size: the batch axis is dynamic
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.inference_mode():
        want = net(x).numpy()
    assert got.shape == want.shape == (3, 6, 64, 64)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
