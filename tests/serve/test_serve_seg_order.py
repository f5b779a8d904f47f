"""A series sent in any file order gives a SEG whose frame k lies on slice k of the volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from serve_helpers import ThresholdPredictor

from medinfer.data.synthetic import dicom_slice, write_dicom
from medinfer.io import read_dicom_series
from medinfer.tasks import WriteOptions


@pytest.mark.parametrize("labelmap", [False, True])
def test_shuffled_series_seg_frames_reference_their_slices(tmp_path: Path, labelmap: bool) -> None:
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(6):  # slice i holds a bright square of side 2 + 2i: every slice's mask differs
        px = np.full((16, 16), 10, np.uint16)
        px[2:4 + 2 * i, 3:5 + 2 * i] = 200
        # instance numbers deliberately disagree with the slice order
        ds = dicom_slice(px, position=(0.0, 0.0, -30.0 + 2.5 * i), instance=(5 * i) % 7 + 1,
                         series_uid=series, study_uid=study, thickness=2.5)
        paths.append(write_dicom(ds, tmp_path / "in" / f"{ds.SOPInstanceUID}.dcm"))
    rng = np.random.default_rng(3)
    shuffled = [paths[i] for i in rng.permutation(len(paths))]
    assert shuffled != paths
    image = read_dicom_series(shuffled)
    z = [float(ds.ImagePositionPatient[2]) for ds in image.instances]
    assert z == sorted(z) and len(z) == image.array.shape[-1] == 6

    model = ThresholdPredictor()
    pred = model.predict(image)
    files = model.write(pred, image, tmp_path / "out", WriteOptions(labelmap=labelmap))
    seg = pydicom.dcmread(next(f.path for f in files if f.kind == "seg"))
    slice_of = {ds.SOPInstanceUID: k for k, ds in enumerate(image.instances)}
    frames = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    assert len(seg.PerFrameFunctionalGroupsSequence) == len(frames) == 6
    seen = set()
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = slice_of[ref]  # the mask slice this frame was made from must be the referenced one
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        assert position == [float(v) for v in image.instances[k].ImagePositionPatient]
        assert np.array_equal(frame > 0, pred.mask[..., k] > 0)
        seen.add(k)
    assert seen == set(range(6))
