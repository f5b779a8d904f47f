"""compute_maps input checks: frame times (missing, uneven, too few) name the series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medinfer.errors import InputError
from medinfer.io import Image
from medinfer.perfusion import compute_maps, frame_times

SOURCE = Path("study") / "ctp-series"


def _image(times: list[float] | None, frames: int = 10, source: Path | None = SOURCE) -> Image:
    meta: dict[str, object] = {"frame": "LPS", "modality": "CT"}
    if times is not None:
        meta["frame_times"] = times
    array = np.full((frames, 8, 8, 2), 35.0, np.float32)
    return Image(array, (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), np.eye(3), source, meta)


EVEN = [1.5 * i for i in range(10)]


@pytest.mark.parametrize(("times", "reason"), [
    (None, "10 frames but 0 frame times"),
    ([], "10 frames but 0 frame times"),
    (EVEN[:-1], "10 frames but 9 frame times"),
    ([0.0, 1.5, 3.0, 4.5, 6.0, 9.0, 10.5, 12.0, 13.5, 15.0], "not evenly spaced"),
    ([1.5 * i + (0.05 if i == 4 else 0.0) for i in range(10)], "not evenly spaced"),  # 3 % off
    (list(reversed(EVEN)), "not evenly spaced"),
], ids=["missing", "empty", "count", "gap", "jitter", "decreasing"])
def test_bad_frame_times_raise_input_error_naming_the_source(times: list[float] | None,
                                                             reason: str) -> None:
    with pytest.raises(InputError, match=reason) as caught:
        compute_maps(_image(times))
    assert caught.value.path == SOURCE
    assert str(SOURCE) in str(caught.value)


def test_too_few_frames() -> None:
    with pytest.raises(InputError, match="only 3 frames"):
        frame_times(_image([0.0, 1.0, 2.0], frames=3))


def test_frame_times_accept_small_jitter_and_name_an_unnamed_series() -> None:
    jitter = [1.5 * i + (0.015 if i == 4 else 0.0) for i in range(10)]  # 1 %: within 2 %
    np.testing.assert_allclose(frame_times(_image(jitter)), jitter)
    with pytest.raises(InputError) as caught:
        frame_times(_image(None, source=None))
    assert str(caught.value.path) == "<series>"
