"""write_seg: a label map as a DICOM SEG that read_seg gives back voxel for voxel, naming its source
series, its segments and the algorithm."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedseg.data.dicom.export import write_series
from fedseg.data.dicom.seg import read_seg
from fedseg.data.dicom.seg_writer import write_seg
from fedseg.data.dicom.series import read_series
from fedseg.data.readers import Volume

SHARED_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
NAMES = {"liver": 1, "tumor": 2, "spleen": 3}


def oblique_series(folder: Path, shape=(7, 6, 3)):
    affine = np.array([[0.0, -0.8, 0.1, 12.0], [0.9, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]])
    array = np.random.default_rng(0).integers(0, 300, size=(1, *shape)).astype(np.float32)
    return write_series(Volume(array, affine), folder, f"writer/{folder.name}", modality="MR")


def test_a_written_seg_names_its_series_segments_and_algorithm(tmp_path):
    series = oblique_series(tmp_path / "mr")
    label = np.zeros(series.spatial_shape, np.int64)
    label[1:5, 2:4, 1] = 1
    out = write_seg(label, series, ["Liver", "Tumor", "Spleen"], tmp_path / "out" / "seg.dcm",
                    algorithm_name="fedseg FL_global", algorithm_version="round 7")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == series.study_uid and ds.FrameOfReferenceUID == series.frame_of_reference_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(
        series.sop_instance_uids)  # every source image, also those without foreground
    segments = ds.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["Liver", "Tumor", "Spleen"]  # empty classes are still listed
    assert {s.SegmentAlgorithmType for s in segments} == {"AUTOMATIC"}
    assert segments[0].SegmentAlgorithmName == "fedseg FL_global"
    assert ds.NumberOfFrames == 1  # frames without foreground are left out
    problems = []
    assert np.array_equal(read_seg(out, series, NAMES, problems), label) and problems == []


def test_a_converted_annotation_is_manual_and_a_label_off_the_grid_is_refused(tmp_path):
    series = oblique_series(tmp_path / "mr")
    out = write_seg(np.zeros(series.spatial_shape, np.int64), series, ["Liver"], tmp_path / "seg.dcm",
                    algorithm_name="", algorithm_version="")
    assert pydicom.dcmread(out).SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    with pytest.raises(ValueError, match="not on the series' grid"):
        write_seg(np.zeros((2, 2, 2), np.int64), series, ["Liver"], tmp_path / "x.dcm", algorithm_name="a",
                  algorithm_version="1")
    with pytest.raises(ValueError, match="outside 0..1"):
        write_seg(np.full(series.spatial_shape, 2), series, ["Liver"], tmp_path / "x.dcm", algorithm_name="a",
                  algorithm_version="1")


SERIES_DIR = tempfile.TemporaryDirectory(prefix="fedseg-seg-writer-")
SERIES = oblique_series(Path(SERIES_DIR.name) / "mr")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 3), min_size=7 * 6 * 3, max_size=7 * 6 * 3))
def test_any_small_label_round_trips_voxel_for_voxel(values):
    label = np.asarray(values, dtype=np.int64).reshape(SERIES.spatial_shape)
    with tempfile.TemporaryDirectory() as tmp:
        out = write_seg(label, SERIES, ["Liver", "Tumor", "Spleen"], Path(tmp) / "seg.dcm", algorithm_name="m",
                        algorithm_version="1")
        problems = []
        assert np.array_equal(read_seg(out, SERIES, NAMES, problems), label) and problems == []


@pytest.mark.real_data
def test_the_real_ct_seg_written_again_reads_back_the_same(tmp_path):
    folder = SHARED_DICOM / "ct-liver-seg"
    if not folder.is_dir():
        pytest.skip(f"real DICOM data not available: {folder} (../shared/data/dicom)")
    problems = []
    series = read_series(sorted((folder / "ct").glob("*.dcm")), 3, problems)
    label = read_seg(folder / "liver-seg.dcm", series, {"liver": 1}, problems)
    assert problems == [] and int(label.sum()) == 107_098
    out = write_seg(label, series, ["Liver"], tmp_path / "again.dcm", algorithm_name="fedseg", algorithm_version="1")
    assert np.array_equal(read_seg(out, series, {"liver": 1}, problems), label) and problems == []
