"""DICOM SEG, RTSTRUCT and NRRD labels read onto a series' grid, mapped to the task's classes by name;
each bad label file is a Problem naming the file and the fix."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from dicom_builders import SHAPE, grid_series, rtstruct, shared, square
from fedseg.data.dicom.labels import read_label
from fedseg.data.dicom.rtstruct import read_rtstruct
from fedseg.data.dicom.seg import read_seg
from fedseg.data.dicom.seg_writer import write_seg
from fedseg.data.dicom.series import read_series

NAMES = {"liver": 1, "tumor": 2}


def sample_label() -> np.ndarray:
    label = np.zeros(SHAPE, np.int64)
    label[1:7, 2:8, 0:3] = 1
    label[3:5, 3:5, 1:3] = 2
    return label


def message(problems) -> str:
    assert problems, "expected a problem"
    return " | ".join(str(p) for p in problems)


def test_a_seg_reads_back_as_the_task_values_of_its_segment_names(tmp_path):
    series = grid_series(tmp_path / "ct")
    write_seg(sample_label(), series, ["Liver", "Tumor"], tmp_path / "seg.dcm", algorithm_name="", algorithm_version="")
    problems = []
    got = read_seg(tmp_path / "seg.dcm", series, {"liver": 7, "tumor": 3}, problems)
    assert problems == []
    expected = np.array([0, 7, 3])[sample_label()]  # segment 'Liver' -> 7, 'Tumor' -> 3
    assert got.shape == series.spatial_shape and np.array_equal(got, expected)


def test_a_seg_of_another_series_study_or_frame_of_reference_is_refused_with_the_fix(tmp_path):
    series, other = grid_series(tmp_path / "ct"), grid_series(tmp_path / "other", key="labels/b")
    seg = write_seg(sample_label(), other, ["Liver", "Tumor"], tmp_path / "seg.dcm", algorithm_name="",
                    algorithm_version="")
    problems = []
    assert read_seg(seg, series, NAMES, problems) is None
    text = message(problems)
    assert str(seg) in text and "another series" in text and "case folder" in text
    ds = pydicom.dcmread(seg)
    ds.StudyInstanceUID, ds.ReferencedSeriesSequence[0].SeriesInstanceUID = series.study_uid, series.series_uid
    ds.FrameOfReferenceUID = "1.2.3.4"
    ds.save_as(tmp_path / "frame.dcm")
    problems = []
    assert read_seg(tmp_path / "frame.dcm", series, NAMES, problems) is None
    assert "frame of reference 1.2.3.4" in message(problems) and "export the segmentation again" in message(problems)


def test_an_undeclared_segment_name_lists_the_declared_names(tmp_path):
    series = grid_series(tmp_path / "ct")
    seg = write_seg(sample_label(), series, ["Liver", "Spleen"], tmp_path / "seg.dcm", algorithm_name="",
                    algorithm_version="")
    problems = []
    assert read_seg(seg, series, NAMES, problems) is None
    text = message(problems)
    assert str(seg) in text and "'Spleen'" in text and "liver, tumor" in text and "[task] labels" in text


def test_a_truncated_seg_is_a_problem_not_a_crash(tmp_path):
    series = grid_series(tmp_path / "ct")
    seg = write_seg(sample_label(), series, ["Liver", "Tumor"], tmp_path / "seg.dcm", algorithm_name="",
                    algorithm_version="")
    data = seg.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 40])
    problems = []
    assert read_label(cut, series, NAMES, problems) is None
    assert str(cut) in message(problems)


def test_an_rtstruct_square_with_a_square_hole_fills_exactly(tmp_path):
    series = grid_series(tmp_path / "ct")
    path = rtstruct(tmp_path / "rt.dcm", series, [square(2, 7, 4.0), square(4, 5, 4.0)])
    problems = []
    got = read_rtstruct(path, series, NAMES, problems)
    assert problems == []
    expected = np.zeros(SHAPE, np.int64)
    expected[2:8, 2:8, 2] = 1  # slice 2 lies at z = 4 mm; boundary pixels are inside
    expected[4:6, 4:6, 2] = 0  # the inner contour is a hole
    assert np.array_equal(got, expected)


def test_an_rtstruct_contour_off_every_slice_or_of_another_frame_is_refused_with_the_fix(tmp_path):
    series = grid_series(tmp_path / "ct")
    problems = []
    assert read_rtstruct(rtstruct(tmp_path / "off.dcm", series, [square(2, 7, 40.0)]), series, NAMES, problems) is None
    text = message(problems)
    assert str(tmp_path / "off.dcm") in text and "no slice" in text and "export it again on this series" in text
    problems = []
    path = rtstruct(tmp_path / "other.dcm", grid_series(tmp_path / "b", "labels/b"), [square(2, 7, 4.0)])
    assert read_rtstruct(path, series, NAMES, problems) is None
    assert str(path) in message(problems) and "another study" in message(problems)
    problems = []
    assert read_rtstruct(rtstruct(tmp_path / "name.dcm", series, [square(2, 7, 4.0)], name="Kidney"), series, NAMES,
                         problems) is None
    assert "'Kidney'" in message(problems) and "liver, tumor" in message(problems)


@pytest.mark.real_data
def test_the_real_rtstructs_roi_is_undeclared_for_another_task(tmp_path):
    folder = shared("ct-rtstruct")  # its rasterisation: test_dicom_label_readers.py
    problems = []
    series = read_series([folder / "ct_1.dcm", folder / "ct_2.dcm"], 3, problems)
    shutil.copy(folder / "rt.dcm", tmp_path / "rt.dcm")
    assert read_rtstruct(tmp_path / "rt.dcm", series, {"liver": 1}, problems) is None
    assert "'ROI-1'" in message(problems) and str(tmp_path / "rt.dcm") in message(problems)


def test_overlapping_segments_take_the_larger_stored_value(tmp_path):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    series = grid_series(tmp_path / "ct")
    liver, tumor = sample_label() > 0, sample_label() == 2  # the tumour lies inside the liver segment
    pixels = np.stack([liver, tumor], axis=-1).transpose(2, 1, 0, 3).astype(np.uint8)  # (slices, rows, cols, segs)
    segments = [hd.seg.SegmentDescription(segment_number=i, segment_label=name,
                                          segmented_property_category=codes.SCT.Tissue,
                                          segmented_property_type=codes.SCT.Tissue,
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
                for i, name in enumerate(["Liver", "Tumor"], start=1)]
    seg = hd.seg.Segmentation(
        source_images=[pydicom.dcmread(p) for p in series.files], pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="0")
    seg.save_as(tmp_path / "overlap.dcm")
    for values, expected in (({"liver": 1, "tumor": 2}, sample_label()),
                             ({"liver": 2, "tumor": 1}, np.where(liver, 2, 0))):
        problems = []
        assert np.array_equal(read_seg(tmp_path / "overlap.dcm", series, values, problems), expected)
        assert problems == []


def test_a_slicer_seg_nrrd_maps_segment_names_and_a_plain_nrrd_keeps_its_values(tmp_path):
    import nrrd

    series = grid_series(tmp_path / "ct")
    lps = series.lps_affine()
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3],
              "Segment0_Name": "Tumor", "Segment0_LabelValue": "1", "Segment1_Name": "Liver",
              "Segment1_LabelValue": "2"}
    stored = np.array([0, 2, 1])[sample_label()].astype(np.uint8)  # Slicer's values: 2 = Liver, 1 = Tumor
    nrrd.write(str(tmp_path / "a.seg.nrrd"), stored, header, index_order="F")
    problems = []
    assert np.array_equal(read_label(tmp_path / "a.seg.nrrd", series, NAMES, problems), sample_label())
    assert problems == []
    ras = {"space": "right-anterior-superior", "space directions": series.volume.affine[:3, :3].T,
           "space origin": series.volume.affine[:3, 3]}
    nrrd.write(str(tmp_path / "plain.nrrd"), stored, ras, index_order="F")
    assert np.array_equal(read_label(tmp_path / "plain.nrrd", series, NAMES, problems), stored) and problems == []
    shifted = dict(ras, **{"space origin": series.volume.affine[:3, 3] + 5})
    nrrd.write(str(tmp_path / "off.nrrd"), stored, shifted, index_order="F")
    assert read_label(tmp_path / "off.nrrd", series, NAMES, problems) is None
    assert str(tmp_path / "off.nrrd") in message(problems) and "not on the series' grid" in message(problems)
