"""Fixtures of the partition tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from partition_helpers import BRAIN, brain_crop
from shared_data import require


@pytest.fixture
def brain() -> Callable[..., torch.Tensor]:
    require(BRAIN, "shipped 3D data")
    return brain_crop
