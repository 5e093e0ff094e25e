"""DICOM label readers beyond the basic cases: hostile RTSTRUCT contour data is only ever a Problem,
ROI names map case/whitespace-insensitively, an oblique SEG round trip with an empty class and an
all-background label, overlaps keep the larger stored value, the real RTSTRUCT's exact mask against a
matplotlib point-in-polygon reference, and every bad label file names itself and the fix."""

from __future__ import annotations

import math
from pathlib import Path

import hypothesis.strategies as st
import nrrd
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from pydicom.uid import generate_uid

from dicom_builders import SHAPE, grid_series, rtstruct, shared, square
from fedseg.data.dicom.export import write_series
from fedseg.data.dicom.geometry import LPS_TO_RAS
from fedseg.data.dicom.labels import read_label, read_nrrd
from fedseg.data.dicom.rtstruct import read_rtstruct
from fedseg.data.dicom.seg import read_seg
from fedseg.data.dicom.seg_writer import write_seg
from fedseg.data.dicom.series import read_series
from fedseg.data.errors import Problem
from fedseg.data.readers import Volume

NAMES = {"liver": 1, "tumor": 2, "spleen": 3}


def oblique_series(folder: Path, shape=(6, 5, 3), key: str = "readers/oblique"):
    c, s = math.cos(0.4), math.sin(0.4)
    affine = np.array([[c * 0.8, -s * 0.9, 0.0, 12.0], [s * 0.8, c * 0.9, 0.3, -40.0], [0.0, 0.0, 2.5, 7.0],
                       [0, 0, 0, 1]])
    array = np.random.default_rng(0).integers(0, 300, size=(1, *shape)).astype(np.float32)
    return write_series(Volume(array, affine), folder, key, modality="MR")


def message(problems, path: Path) -> str:
    assert problems and all(isinstance(p, Problem) for p in problems), problems
    text = " | ".join(str(p) for p in problems)
    assert str(path) in text, text  # every problem names the file
    return text


def test_a_ring_contour_pair_fills_exactly_and_roi_names_map_ignoring_case_and_spaces(tmp_path):
    series = grid_series(tmp_path / "ct")
    path = rtstruct(tmp_path / "rt.dcm", series, [square(1, 8, 2.0), square(3, 5, 2.0)], name="  TUMOR   ")
    problems = []
    got = read_label(path, series, NAMES, problems)  # dispatch by Modality; ROI '  TUMOR ' is class tumor
    assert problems == []
    expected = np.zeros(SHAPE, np.int64)
    expected[1:9, 1:9, 1] = 2  # slice 1 at z = 2 mm, boundary included
    expected[3:6, 3:6, 1] = 0  # the inner square is a hole (even-odd), its boundary pixels too
    assert np.array_equal(got, expected)


def test_bad_rtstructs_name_the_file_and_the_fix(tmp_path):
    series = grid_series(tmp_path / "ct")
    cases = {
        "off.dcm": (dict(contours=[square(1, 5, 41.0)]), "no slice"),
        "name.dcm": (dict(contours=[square(1, 5, 2.0)], name="Kidney"), "liver, spleen, tumor"),
        "series.dcm": (dict(contours=[square(1, 5, 2.0)], ref_series=generate_uid(), frame=generate_uid()),
                       "another series"),
        "open.dcm": (dict(contours=[square(1, 5, 2.0)], kinds=["OPEN_PLANAR"]), "CLOSED_PLANAR"),
    }
    for filename, (kwargs, fix) in cases.items():
        path = rtstruct(tmp_path / filename, series, **kwargs)
        problems = []
        assert read_rtstruct(path, series, NAMES, problems) is None, filename
        text = message(problems, path)
        assert fix in text, text
    path = rtstruct(tmp_path / "name.dcm", series, [square(1, 5, 2.0)], name="Kidney")
    problems = []
    read_rtstruct(path, series, NAMES, problems)
    assert "'Kidney'" in message(problems, path) and "[task] labels" in message(problems, path)


coordinate = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                       st.sampled_from(["nan", "inf", "-inf", "1e308", "-1e308", "0", "2", "4"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.lists(coordinate, min_size=0, max_size=14),
       kind=st.sampled_from(["CLOSED_PLANAR", "OPEN_PLANAR", "POINT", "", "CLOSED_PLANAR_XOR"]))
def test_hostile_contour_data_is_only_ever_a_problem(tmp_path, points, kind):
    series = getattr(test_hostile_contour_data_is_only_ever_a_problem, "series", None)
    if series is None or not series.files[0].exists():
        series = grid_series(tmp_path / "hostile_ct")
        test_hostile_contour_data_is_only_ever_a_problem.series = series
    values = [f"{v:.17g}" if isinstance(v, float) else str(v) for v in points]
    path = tmp_path / "hostile.dcm"
    rtstruct(path, series, [values] if values else [[]], kinds=[kind])
    problems = []
    got = read_rtstruct(path, series, NAMES, problems)
    if got is None:
        message(problems, path)
    else:
        assert problems == [] and got.shape == SHAPE and set(np.unique(got).tolist()) <= {0, 1}


def test_a_single_value_contour_is_a_problem_not_a_crash(tmp_path):
    series = grid_series(tmp_path / "ct")
    path = rtstruct(tmp_path / "one.dcm", series, [["3"]])  # ContourData of one value: pydicom gives a float
    problems = []
    assert read_rtstruct(path, series, NAMES, problems) is None
    assert "at least 3 points" in message(problems, path)


def test_an_oblique_seg_round_trips_with_an_empty_class_and_an_all_background_label(tmp_path):
    series = oblique_series(tmp_path / "mr")
    label = np.zeros(series.spatial_shape, np.int64)
    label[0:3, 1:4, 0] = 1
    label[4, 2:5, 1:3] = 3  # class 2 ('Tumor') has no voxels
    for name, data in {"some.dcm": label, "none.dcm": np.zeros_like(label)}.items():
        out = write_seg(data, series, ["Liver", "Tumor", "Spleen"], tmp_path / name, algorithm_name="",
                        algorithm_version="")
        ds = pydicom.dcmread(out)
        assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Liver", "Tumor", "Spleen"]
        assert {s.SegmentAlgorithmType for s in ds.SegmentSequence} == {"MANUAL"}
        assert ds.StudyInstanceUID == series.study_uid and ds.FrameOfReferenceUID == series.frame_of_reference_uid
        assert {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == \
            set(series.sop_instance_uids)
        problems = []
        assert np.array_equal(read_seg(out, series, NAMES, problems), data) and problems == []


def test_overlapping_segments_keep_the_larger_stored_value_whatever_their_order(tmp_path):
    import highdicom as hd

    series = grid_series(tmp_path / "ct")
    # one SEG, segment 1 'Spleen' and segment 2 'Liver' overlapping it (write_seg cannot overlap)
    both = np.zeros((*SHAPE[::-1], 2), np.uint8)  # (slices, rows, columns, segments)
    both[0:2, 1:5, 1:5, 0] = 1  # Spleen
    both[1:3, 3:7, 3:7, 1] = 1  # Liver, overlapping Spleen on slice 1
    from pydicom.sr.codedict import codes
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    descriptions = [hd.seg.SegmentDescription(i + 1, n, codes.SCT.Tissue, codes.SCT.Tissue,
                                              hd.seg.SegmentAlgorithmTypeValues.MANUAL) for i, n in
                    enumerate(["Spleen", "Liver"])]
    seg = hd.seg.Segmentation(sources, both, hd.seg.SegmentationTypeValues.BINARY, descriptions, hd.UID(), 2,
                              hd.UID(), 1, "t", "t", "1", "0")
    seg.save_as(tmp_path / "both.dcm")
    for values in ({"spleen": 3, "liver": 1}, {"spleen": 1, "liver": 3}):
        problems = []
        got = read_seg(tmp_path / "both.dcm", series, values, problems)
        assert problems == []
        assert got[4, 4, 1] == max(values.values())  # overlap: the larger stored value wins
        assert got[2, 2, 0] == values["spleen"] and got[6, 6, 2] == values["liver"]


@pytest.mark.real_data
def test_the_real_rtstruct_matches_a_matplotlib_point_in_polygon_reference():
    from matplotlib.path import Path as Polygon

    folder = shared("ct-rtstruct")
    problems = []
    series = read_series([folder / "ct_1.dcm", folder / "ct_2.dcm"], 3, problems)
    assert series is not None and problems == []
    label = read_rtstruct(folder / "rt.dcm", series, {"roi-1": 1}, problems)
    assert problems == []
    assert int(label.sum()) == REAL_RT_COUNT
    assert label[..., 1:].sum() == 0 and label[..., 0].sum() == REAL_RT_COUNT  # slice 0 only
    # reference: pixel centres inside the contour (matplotlib), boundary pixels within half a pixel
    to_index = np.linalg.inv(series.lps_affine())
    contour = pydicom.dcmread(folder / "rt.dcm").ROIContourSequence[0].ContourSequence
    reference = np.zeros(series.spatial_shape[:2], bool)
    grid = np.stack(np.meshgrid(np.arange(series.spatial_shape[0]), np.arange(series.spatial_shape[1]),
                                indexing="ij"), -1).reshape(-1, 2)
    for item in contour:
        pts = np.asarray(item.ContourData, float).reshape(-1, 3)
        index = (to_index @ np.column_stack([pts, np.ones(len(pts))]).T)[:3].T
        inside = Polygon(index[:, :2]).contains_points(grid, radius=0.0).reshape(reference.shape)
        reference ^= inside
    mask = label[..., 0].astype(bool)
    perimeter = sum(np.linalg.norm(np.diff(np.asarray(i.ContourData, float).reshape(-1, 3)[:, :2], axis=0, append=
                                           np.asarray(i.ContourData, float).reshape(-1, 3)[:1, :2]), axis=1).sum()
                    for i in contour) / series.spacing[0]
    assert reference.sum() == 1443 and not (reference & ~mask).any()  # every pixel whose centre is inside is in
    assert (mask & ~reference).sum() <= perimeter  # and the rest are boundary pixels (rounded vertices, rt-utils)


REAL_RT_COUNT = 1542  # a 49 mm square ring: outer 50 x 50 px minus an octagonal hole; checked by eye


@pytest.mark.real_data
def test_the_real_seg_equals_its_nrrd_twin_through_read_label():
    folder = shared("ct-liver-seg")
    problems = []
    series = read_series(sorted((folder / "ct").glob("*.dcm")), 3, problems)
    assert series is not None and problems == []
    seg = read_label(folder / "liver-seg.dcm", series, {"liver": 1}, problems)
    twin = read_label(folder / "liver-seg.nrrd", series, {"liver": 1}, problems)
    assert problems == [] and np.array_equal(seg, twin) and int((seg > 0).sum()) == 107_098
    assert np.allclose(read_nrrd(folder / "liver-seg.nrrd").affine, series.volume.affine, atol=1e-3)


def test_bad_label_files_name_the_file_and_the_fix(tmp_path):
    series = grid_series(tmp_path / "ct")
    other = grid_series(tmp_path / "other", key="readers/other")
    label = np.zeros(SHAPE, np.int64)
    label[2:5, 2:5, 1] = 1
    good = write_seg(label, series, ["Liver"], tmp_path / "good.dcm", algorithm_name="", algorithm_version="")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    foreign = write_seg(label, other, ["Liver"], tmp_path / "foreign.dcm", algorithm_name="", algorithm_version="")
    ds = pydicom.dcmread(good)
    ds.FrameOfReferenceUID = generate_uid()
    ds.save_as(tmp_path / "frame.dcm")
    kidney = write_seg(label, series, ["Kidney"], tmp_path / "kidney.dcm", algorithm_name="", algorithm_version="")
    lps = LPS_TO_RAS @ series.volume.affine
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3] + 1.0}
    nrrd.write(str(tmp_path / "off.nrrd"), label.astype(np.int16), header=header, index_order="F")
    header = {**header, "space origin": lps[:3, 3], "Segment0_Name": "Kidney", "Segment0_LabelValue": "1"}
    nrrd.write(str(tmp_path / "kidney.seg.nrrd"), label.astype(np.int16), header=header, index_order="F")
    expected = {truncated: "copy the file again", foreign: "another study", tmp_path / "frame.dcm":
                "frame of reference", kidney: "[task] labels", tmp_path / "off.nrrd": "not on the series' grid",
                tmp_path / "kidney.seg.nrrd": "'Kidney'", series.files[0]: "must be a DICOM SEG, an RTSTRUCT or an NRRD"}
    for path, fix in expected.items():
        problems = []
        assert read_label(path, series, NAMES, problems) is None, path
        text = message(problems, path)
        assert fix in text, (path, text)
    problems = []
    assert np.array_equal(read_label(good, series, NAMES, problems), label) and problems == []


@pytest.mark.parametrize("points", [
    [1e30, 2, 2.0, 5, 2, 2.0, 5, 5, 2.0],  # a vertex on the slice, far off the image (Pillow takes C ints)
    ["9.99", 2, 2.0, 5, 2, 2.0, 5, 5, 2.0],  # 'abc ' written over '9.99' below: not a number
    [2, 2, 2.0, 5, 2, 2.0, 5, 5, 2.0, 7],  # not triples
])
def test_far_off_malformed_or_ragged_contours_are_problems(tmp_path, points):
    series = grid_series(tmp_path / "ct")
    path = rtstruct(tmp_path / "bad.dcm", series, [points])
    path.write_bytes(path.read_bytes().replace(b"9.99", b"abc "))
    problems = []
    assert read_rtstruct(path, series, NAMES, problems) is None
    message(problems, path)
