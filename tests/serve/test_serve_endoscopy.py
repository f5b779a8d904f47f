"""Endoscopy frames (VL Endoscopic and Video Endoscopic Image Storage, RGB, one frame, no
patient geometry) get a DICOM SEG and a Secondary Capture that reference the frame."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from serve_helpers import ThresholdPredictor

from medinfer.data.synthetic import VIDEO_ENDOSCOPIC, VL_ENDOSCOPIC, endoscopy_frame, write_dicom
from medinfer.io import read_image
from medinfer.serve.ingest import Receiver
from medinfer.serve.models import Job, Result
from medinfer.serve.worker import Worker
from medinfer.tasks import WriteOptions

SEG_STORAGE = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")  # binary, label map
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

CASES = [  # (SOP class, NumberOfFrames written)
    pytest.param(VL_ENDOSCOPIC, False, id="vl-endoscopic"),
    pytest.param(VIDEO_ENDOSCOPIC, True, id="video-endoscopic"),
    pytest.param(VIDEO_ENDOSCOPIC, False, id="video-endoscopic-no-number-of-frames"),
]


def polyp_frame(rows: int = 24, cols: int = 32) -> np.ndarray:
    """Dark RGB frame with a bright reddish box (what ThresholdPredictor segments)."""
    rgb = np.full((rows, cols, 3), 20, np.uint8)
    rgb[6:14, 8:20] = (230, 90, 80)
    return rgb


def check_results(files_by_kind: dict[str, Path], source: pydicom.Dataset,
                  mask: np.ndarray) -> None:
    """The SEG and the SC read back with pydicom and highdicom and reference ``source``."""
    seg = pydicom.dcmread(files_by_kind["seg"])
    assert seg.SOPClassUID in SEG_STORAGE
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    [frame] = seg.PerFrameFunctionalGroupsSequence
    ref = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == source.SOPClassUID
    pixels = seg.pixel_array if seg.pixel_array.ndim == 2 else seg.pixel_array[0]
    assert np.array_equal(pixels > 0, mask > 0)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" not in shared  # the frame has no PixelSpacing: none made up
    read_back = hd.seg.segread(files_by_kind["seg"])
    assert read_back.get_segment_numbers() == [1]
    by_source = read_back.get_pixels_by_source_instance([source.SOPInstanceUID],
                                                        combine_segments=True)
    assert np.array_equal(by_source[0] > 0, mask > 0)  # highdicom finds the frame by reference

    sc = pydicom.dcmread(files_by_kind["sc"])
    assert sc.SOPClassUID == SC_STORAGE
    assert sc.pixel_array.shape == (source.Rows, source.Columns, 3)
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert hd.imread(files_by_kind["sc"]).SOPInstanceUID == sc.SOPInstanceUID


@pytest.mark.parametrize(("sop_class", "frames"), CASES)
@pytest.mark.parametrize("labelmap", [False, True], ids=["binary", "labelmap"])
def test_endoscopy_frame_gets_seg_and_sc(tmp_path: Path, sop_class: str, frames: bool,
                                         labelmap: bool) -> None:
    ds = endoscopy_frame(polyp_frame(), sop_class=sop_class, number_of_frames=frames)
    assert ("NumberOfFrames" in ds) == frames
    path = write_dicom(ds, tmp_path / "in" / "frame.dcm")
    image = read_image(path)
    assert image.array.shape == (3, 24, 32)

    model = ThresholdPredictor()
    pred = model.predict(image)
    assert pred.mask.any()
    written = model.write(pred, image, tmp_path / "out", WriteOptions(labelmap=labelmap))
    files = {f.kind: Path(f.path) for f in written}
    assert {"seg", "sc", "overlay", "json"} <= set(files)
    check_results(files, pydicom.dcmread(path, stop_before_pixels=True), pred.mask)
    # the source instance the image carries is not changed by writing
    assert "SharedFunctionalGroupsSequence" not in image.instances[0]
    assert ("NumberOfFrames" in image.instances[0]) == frames


def test_video_endoscopic_frame_through_the_worker(make_config, store, tmp_path: Path) -> None:
    cfg = make_config(routes=[{"name": "endoscopy", "artifact": str(tmp_path / "art"),
                               "match": {"modality": ["ES"]}}])
    receiver = Receiver(cfg, store)
    ds = endoscopy_frame(polyp_frame(), sop_class=VIDEO_ENDOSCOPIC)
    [job_id] = receiver.close_study(receiver.accept_dataset(ds, "dimse", "ENDOSCOPE"))
    assert Worker(cfg, store, "w", lambda art: ThresholdPredictor()).run_once()
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job.state == "done", job.error
        files = {r.kind: Path(r.path) for r in s.query(Result).filter_by(job_id=job_id)}
    mask = np.zeros((24, 32), np.uint8)
    mask[6:14, 8:20] = 1
    check_results(files, ds, mask)
