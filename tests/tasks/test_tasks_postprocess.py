"""Logits to labels, the one place segmentation outputs become label maps."""

from __future__ import annotations

import numpy as np

from medinfer.tasks import labels_from_logits


def test_one_channel_is_sigmoid_above_one_half() -> None:
    logits = np.array([[0.0, 1e-3, -1e-3, 50.0, -50.0, 1e4, -1e4]], np.float32)
    got = labels_from_logits(logits)
    # sigmoid(0) = 0.5 is not > 0.5; large logits must not overflow
    np.testing.assert_array_equal(got, [0, 1, 0, 1, 0, 1, 0])
    assert got.dtype == np.uint8


def test_several_channels_take_the_argmax() -> None:
    logits = np.array([[[0.1, 2.0]], [[0.3, -1.0]], [[-5.0, 1.9]]], np.float32)  # (K=3, 1, 2)
    np.testing.assert_array_equal(labels_from_logits(logits), [[1, 0]])
