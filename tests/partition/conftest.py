"""Fixtures of the partition tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from partition_helpers import BRAIN, brain_crop


@pytest.fixture
def brain() -> Callable[..., torch.Tensor]:
    if not BRAIN.is_file():
        pytest.skip(f"shipped 3D data not available: {BRAIN}")
    return brain_crop
