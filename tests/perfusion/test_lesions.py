"""Core, penumbra, mismatch and DEFUSE-3 eligibility on small synthetic maps with known
masks (40 x 40 x 3, column index growing to the patient's left in LPS)."""

from __future__ import annotations

import numpy as np
import pytest

from medinfer.perfusion.config import PerfusionConfig
from medinfer.perfusion.lesions import Lesions, find_lesions, left_right

SHAPE = (40, 40, 3)
BRAIN = np.ones(SHAPE, bool)
# LPS, as the phantom's: row -> +y (posterior), column -> +x (patient left), 1 mm pixels
AFFINE = np.array([[0.0, 1.0, 0.0, -19.5], [1.0, 0.0, 0.0, -19.5], [0.0, 0.0, 5.0, 0.0],
                   [0.0, 0.0, 0.0, 1.0]])
LEFT_COLS = slice(20, 40)
RIGHT_CBF = 30.0 + np.arange(40.0)  # by row: median 49.5, unlike the left's 60
LEFT_CBF = 60.0


def _box(rows: tuple[int, int], cols: tuple[int, int], slices: tuple[int, ...] = (0, 1, 2),
         drop_corner: bool = False) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    for k in slices:
        mask[rows[0]:rows[1], cols[0]:cols[1], k] = True
    if drop_corner:
        mask[rows[0], cols[0], slices[0]] = False
    return mask


def _maps(core: np.ndarray, penumbra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CBF and Tmax: normal everywhere (Tmax 1 s), the penumbra CBF 30 / Tmax 8 s, the core
    CBF 5 / Tmax 9 s."""
    cbf = np.full(SHAPE, LEFT_CBF)
    cbf[:, :20, :] = RIGHT_CBF[:, None, None]
    tmax = np.full(SHAPE, 1.0)
    cbf[penumbra], tmax[penumbra] = 30.0, 8.0
    cbf[core], tmax[core] = 5.0, 9.0
    return cbf, tmax


def _find(cbf: np.ndarray, tmax: np.ndarray, voxel_ml: float = 0.1, frame: str = "LPS",
          **settings: object) -> Lesions:
    side = left_right(BRAIN, AFFINE, frame)
    return find_lesions(cbf, tmax, BRAIN, side, voxel_ml, PerfusionConfig(**settings))


CORE = _box((15, 25), (27, 33))        # 60 voxels a slice, inside
PENUMBRA = _box((10, 30), (24, 36))    # 240 voxels a slice


def test_left_right_of_lps_and_ras() -> None:
    lps, ras = left_right(BRAIN, AFFINE, "LPS"), left_right(BRAIN, AFFINE, "RAS")
    assert np.all(lps[:, LEFT_COLS] > 0) and np.all(lps[:, :20] < 0)
    np.testing.assert_allclose(ras, -lps)
    np.testing.assert_allclose(lps[0, :, 0], np.arange(40) - 19.5)


def test_core_and_penumbra_in_the_left_hemisphere() -> None:
    cbf, tmax = _maps(CORE, PENUMBRA)
    found = _find(cbf, tmax, voxel_ml=0.1)
    np.testing.assert_array_equal(found.core, CORE)
    np.testing.assert_array_equal(found.penumbra, PENUMBRA)
    assert found.affected == "left"
    assert found.reference_cbf == pytest.approx(np.median(RIGHT_CBF)) == pytest.approx(49.5)
    assert found.core_ml == pytest.approx(180 * 0.1)
    assert found.penumbra_ml == pytest.approx(720 * 0.1)
    assert found.mismatch_ml == pytest.approx(72.0 - 18.0)
    assert found.mismatch_ratio == pytest.approx(4.0)
    assert found.defuse3_eligible


def test_labels_and_summary() -> None:
    cbf, tmax = _maps(CORE, PENUMBRA)
    found = _find(cbf, tmax)
    labels = found.labels()
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[CORE], 1)
    np.testing.assert_array_equal(labels[PENUMBRA & ~CORE], 2)
    np.testing.assert_array_equal(labels[~PENUMBRA], 0)
    summary = found.summary()
    assert set(summary) == {"core_ml", "penumbra_ml", "mismatch_ml", "mismatch_ratio",
                            "defuse3_eligible", "affected_side", "reference_cbf"}
    assert summary == {"core_ml": 18.0, "penumbra_ml": 72.0, "mismatch_ml": 54.0,
                       "mismatch_ratio": 4.0, "defuse3_eligible": True, "affected_side": "left",
                       "reference_cbf": 49.5}


def test_ras_frame_flips_the_side_only() -> None:
    cbf, tmax = _maps(CORE, PENUMBRA)
    lps, ras = _find(cbf, tmax), _find(cbf, tmax, frame="RAS")
    assert lps.affected == "left" and ras.affected == "right"
    # the reference is still the hemisphere without the lesion, the same voxels
    assert ras.reference_cbf == lps.reference_cbf
    np.testing.assert_array_equal(ras.core, lps.core)
    np.testing.assert_array_equal(ras.penumbra, lps.penumbra)


def test_no_hypoperfusion() -> None:
    cbf, tmax = _maps(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool))
    found = _find(cbf, tmax)
    assert found.affected == "none"
    assert not found.core.any() and not found.penumbra.any()
    assert found.core_ml == found.penumbra_ml == found.mismatch_ml == 0.0
    assert found.mismatch_ratio is None and not found.defuse3_eligible


# DEFUSE-3 at its boundaries (core < 70 ml, ratio >= 1.8, mismatch >= 15 ml); voxel 0.5 ml
# makes every volume exact in floating point.
_BIG_CORE, _BIG_PEN = ((12, 19), (25, 35), (0, 1)), ((5, 25), (22, 37), (0, 1))  # 140, 600 voxels
_MID_CORE, _MID_PEN = ((12, 17), (25, 35), (1,)), ((10, 19), (25, 35), (1,))  # 50, 90 voxels
_SMALL_CORE, _SMALL_PEN = ((12, 16), (28, 33), (1,)), ((10, 20), (28, 33), (1,))  # 20, 50 voxels
_ONLY_PEN = ((10, 16), (28, 33), (1,))  # 30 voxels
_NONE = np.zeros(SHAPE, bool)
_DEFUSE3 = [
    # id, core mask, penumbra mask, core ml, penumbra ml, eligible
    ("core-70", _box(*_BIG_CORE), _box(*_BIG_PEN), 70.0, 300.0, False),
    ("core-69.5", _box(*_BIG_CORE, drop_corner=True), _box(*_BIG_PEN), 69.5, 300.0, True),
    ("ratio-1.8", _box(*_MID_CORE), _box(*_MID_PEN), 25.0, 45.0, True),
    ("ratio-1.78", _box(*_MID_CORE), _box(*_MID_PEN, drop_corner=True), 25.0, 44.5, False),
    ("mismatch-15", _box(*_SMALL_CORE), _box(*_SMALL_PEN), 10.0, 25.0, True),
    ("mismatch-14.5", _box(*_SMALL_CORE), _box(*_SMALL_PEN, drop_corner=True), 10.0, 24.5, False),
    ("no-core-15", _NONE, _box(*_ONLY_PEN), 0.0, 15.0, True),
    ("no-core-14.5", _NONE, _box(*_ONLY_PEN, drop_corner=True), 0.0, 14.5, False),
]


@pytest.mark.parametrize(("core", "penumbra", "core_ml", "penumbra_ml", "eligible"),
                         [pytest.param(*case[1:], id=case[0]) for case in _DEFUSE3])
def test_defuse3_boundaries(core: np.ndarray, penumbra: np.ndarray, core_ml: float,
                            penumbra_ml: float, eligible: bool) -> None:
    cbf, tmax = _maps(core, penumbra)
    found = _find(cbf, tmax, voxel_ml=0.5)
    assert found.core_ml == core_ml and found.penumbra_ml == penumbra_ml
    assert found.mismatch_ml == penumbra_ml - core_ml
    if core_ml == 0:
        assert found.mismatch_ratio is None
    else:
        assert found.mismatch_ratio == penumbra_ml / core_ml
    assert found.defuse3_eligible is eligible


def test_low_flow_with_normal_tmax_is_core_only_when_asked() -> None:
    """An old infarct in the right hemisphere: CBF 5 but an on-time bolus."""
    old = _box((2, 6), (3, 8))
    cbf, tmax = _maps(CORE, PENUMBRA)
    cbf[old] = 5.0
    default = _find(cbf, tmax)
    np.testing.assert_array_equal(default.core, CORE)
    anywhere = _find(cbf, tmax, core_within_hypoperfusion=False)
    np.testing.assert_array_equal(anywhere.core, CORE | old)
    assert anywhere.core_ml == pytest.approx((180 + 60) * 0.1)
    np.testing.assert_array_equal(anywhere.penumbra, PENUMBRA)


def test_low_flow_needs_core_min_tmax() -> None:
    """Tmax 5 s: above core_min_tmax (4) but below penumbra_tmax (6): core, not penumbra."""
    cbf, tmax = _maps(CORE, PENUMBRA)
    tmax[CORE] = 5.0
    found = _find(cbf, tmax)
    np.testing.assert_array_equal(found.core, CORE)
    # the penumbra's holes are filled slice by slice, so the core inside still counts
    np.testing.assert_array_equal(found.penumbra, PENUMBRA)
    assert not _find(cbf, tmax, core_min_tmax=5.5).core.any()


def test_small_islands_are_dropped() -> None:
    island2 = _box((35, 36), (36, 38), (1,))   # 2 voxels = 0.2 ml < 0.3 ml
    island4 = _box((2, 4), (36, 38), (1,))     # 4 voxels = 0.4 ml
    cbf, tmax = _maps(CORE | island2 | island4, PENUMBRA | island2 | island4)
    found = _find(cbf, tmax, voxel_ml=0.1)
    np.testing.assert_array_equal(found.core, CORE | island4)
    np.testing.assert_array_equal(found.penumbra, PENUMBRA | island4)
    kept = _find(cbf, tmax, voxel_ml=0.1, min_component_ml=0.0)
    np.testing.assert_array_equal(kept.core, CORE | island2 | island4)
    np.testing.assert_array_equal(kept.penumbra, PENUMBRA | island2 | island4)


def test_holes_are_filled_inside_the_brain_only() -> None:
    cbf, tmax = _maps(CORE, PENUMBRA)
    hole = _box((20, 21), (30, 31), (1,))
    cbf[hole] = 40.0  # noise lifting one voxel of the core over the threshold
    found = _find(cbf, tmax)
    np.testing.assert_array_equal(found.core, CORE)
    outside = find_lesions(cbf, tmax, BRAIN & ~hole, left_right(BRAIN, AFFINE, "LPS"), 0.1)
    np.testing.assert_array_equal(outside.core, CORE & ~hole)
