"""A DICOM image series becomes the volume SimpleITK's series reader gives (array, origin, spacing,
directions), whatever the file names and instance numbers; every bad input becomes a Problem that
names the file and the fix, never an exception."""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.encaps import encapsulate
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEG2000Lossless, JPEGLosslessSV1, RLELossless, generate_uid)

from fedseg.data.dicom.geometry import LPS_TO_RAS
from fedseg.data.dicom.series import read_series, scan_folder

SHARED_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
ROW, COLUMN = np.array([0.8, 0.6, 0.0]), np.array([0.0, 0.0, -1.0])  # oblique (rotated about the z axis), coronal-ish
NORMAL = np.cross(ROW, COLUMN)
SERIES, STUDY, FRAME = generate_uid(), generate_uid(), generate_uid()


def dataset(k: int, *, rows: int = 8, columns: int = 10, step: float = 2.5, series: str = SERIES,
            modality: str = "CT", description: str = "synthetic", depth: float | None = None) -> Dataset:
    """Slice ``k`` of a synthetic int16 series (position k * step along the normal, rescale 2 / -100)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = modality, STUDY, series, FRAME
    ds.SeriesDescription, ds.SeriesNumber, ds.PatientID = description, 3, "P"
    ds.InstanceNumber = (7 * k) % 11 + 1  # unrelated to the position
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array([-20.0, 35.0, 12.0]) + (k * step if depth is None else depth) * NORMAL]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*ROW, *COLUMN)]
    ds.PixelSpacing, ds.SliceThickness = ["0.7", "0.9"], "2.5"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    ds.PixelData = (np.arange(rows * columns, dtype=np.int16).reshape(rows, columns) * (k + 1) - 30).tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write(folder: Path, n: int = 6, **kwargs) -> list[Path]:
    """``n`` slices, file names in an order unrelated to the position."""
    order = np.random.default_rng(1).permutation(n)
    return [save(dataset(k, **kwargs), folder / f"f{order[k]:03d}.dcm") for k in range(n)]


def read(files, spatial_dims: int = 3):
    problems: list = []
    return read_series(files, spatial_dims, problems), [str(p) for p in problems]


def assert_like_simpleitk(series, files) -> None:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(files[0].parent))  # GDCM sorts by position too
    assert sorted(names) == sorted(str(f) for f in files)
    reader.SetFileNames(names)
    image = reader.Execute()
    reference = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    assert series.volume.array.shape == (1, *reference.shape) and series.volume.array.dtype == np.float32
    assert np.array_equal(series.volume.array[0], reference.astype(np.float32))
    assert np.allclose(series.origin, image.GetOrigin(), atol=1e-4)
    assert np.allclose(series.spacing, image.GetSpacing(), atol=1e-4)
    assert np.allclose(series.directions, np.reshape(image.GetDirection(), (3, 3)), atol=1e-6)
    assert np.allclose(series.volume.affine, LPS_TO_RAS @ series.lps_affine())


def test_a_shuffled_oblique_series_is_the_volume_simpleitk_reads(tmp_path):
    files = write(tmp_path)
    series, problems = read(files[::-1])
    assert problems == []
    assert_like_simpleitk(series, files)
    assert series.files == tuple(files) and series.sop_instance_uids == tuple(
        pydicom.dcmread(f).SOPInstanceUID for f in files)  # position order, not name or InstanceNumber order
    assert series.volume.array[0, 3, 2, 4] == 2 * (2 * 10 + 3) * 5 - 60 - 100  # [column, row, slice], rescaled
    assert (series.series_uid, series.modality, series.frame_of_reference_uid) == (SERIES, "CT", FRAME)
    assert series.spacing == pytest.approx((0.9, 0.7, 2.5))


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless])
def test_other_transfer_syntaxes_read_like_simpleitk(tmp_path, syntax):
    files = write(tmp_path, n=4)
    for path in files:
        ds = pydicom.dcmread(path)
        if syntax == RLELossless:  # compressed: pydicom's own RLE decoder, not the raw path
            ds.compress(RLELossless)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
    series, problems = read(files)
    assert problems == []
    assert_like_simpleitk(series, files)


@pytest.mark.real_data
@pytest.mark.parametrize("folder", ["mr-brain-series", "ct-liver-seg/ct", "ct-rtstruct"])
def test_real_series_are_the_volume_simpleitk_reads(folder):
    if not (SHARED_DICOM / folder).is_dir():
        pytest.skip(f"real DICOM data not available: {SHARED_DICOM / folder} (../shared/data/dicom)")
    problems: list = []
    scan = scan_folder(SHARED_DICOM / folder, problems)
    assert problems == [] and len(scan.series) == 1
    files = next(iter(scan.series.values()))
    series, problems = read(files)
    assert problems == []
    assert_like_simpleitk(series, files)


def test_scan_sorts_series_labels_and_explains_the_rest(tmp_path):
    files = write(tmp_path / "case" / "series", n=3)
    seg = dataset(0, series=generate_uid(), modality="CT")
    seg.Modality, seg.SOPClassUID = "SEG", "1.2.840.10008.5.1.4.1.1.66.4"
    save(seg, tmp_path / "case" / "label.dcm")
    report = dataset(0, series=generate_uid())
    report.Modality, report.SOPClassUID = "SR", "1.2.840.10008.5.1.4.1.1.88.22"
    del report.PixelData
    save(report, tmp_path / "case" / "report.dcm")
    (tmp_path / "case" / "mask.nrrd").write_bytes(b"NRRD0004\n")
    (tmp_path / "case" / "notes.txt").write_text("not dicom")
    (tmp_path / "case" / ".DS_Store").write_text("hidden")
    (tmp_path / "case" / "DICOMDIR").write_text("index")
    problems: list = []
    scan = scan_folder(tmp_path / "case", problems)
    assert scan.series == {SERIES: sorted(files)}
    assert scan.labels == [tmp_path / "case" / "label.dcm", tmp_path / "case" / "mask.nrrd"]
    messages = sorted(str(p) for p in problems)
    assert len(messages) == 2, messages
    assert "notes.txt" in messages[0] and "not a DICOM file" in messages[0] and "move it out" in messages[0]
    assert "report.dcm" in messages[1] and "Modality SR" in messages[1] and "move it out" in messages[1]


def test_two_series_in_a_case_folder_are_named_as_mixed(tmp_path):
    write(tmp_path / "a", n=3, description="axial T1")
    write(tmp_path / "b", n=2, series="1.2.3.4", description="localizer")
    problems: list = []
    scan = scan_folder(tmp_path, problems)
    assert len(scan.series) == 2 and len(problems) == 1
    message = str(problems[0])
    assert "mixed series" in message and "axial T1" in message and "localizer" in message
    assert "1.2.3.4" in message and "3 file(s)" in message and "2 file(s)" in message and "move the others out" in message


@pytest.mark.parametrize("cut", [1, 50, 170, 400, 800])  # in the pixels, before them, in the header
def test_a_truncated_file_is_named_with_the_fix(tmp_path, cut):
    files = write(tmp_path)
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-cut])
    series, problems = read(files)
    assert series is None and len(problems) == 1
    assert files[2].name in problems[0] and "truncated" in problems[0] and "copy the file again" in problems[0]
    if cut >= 170:  # the scan reads the header only: a file cut there is named too (pydicom alone keeps its start)
        found: list = []
        scan = scan_folder(tmp_path, found)
        assert list(scan.series.values()) == [sorted(set(files) - {files[2]})] and len(found) == 1
        assert files[2].name in str(found[0]) and "truncated" in str(found[0])


def test_a_non_dicom_file_given_as_a_slice_is_named(tmp_path):
    files = write(tmp_path, n=3)
    files[1].write_bytes(b"\x89PNG not a dicom file" * 20)
    series, problems = read(files)
    assert series is None and files[1].name in problems[0] and "not a DICOM file" in problems[0]


def test_a_missing_slice_is_located_between_its_neighbours(tmp_path):
    files = write(tmp_path, n=6)
    files[3].unlink()
    series, problems = read(files[:3] + files[4:])
    assert series is None and len(problems) == 1, problems
    assert "missing slices" in problems[0] and files[2].name in problems[0] and files[4].name in problems[0]
    assert "about 1 missing" in problems[0] and "export the whole series again" in problems[0]


def test_duplicated_slices_are_named(tmp_path):
    files = write(tmp_path, n=4)
    shutil.copy(files[1], tmp_path / "copy.dcm")
    series, problems = read([*files, tmp_path / "copy.dcm"])
    assert series is None and "duplicated slice" in problems[0] and "copy.dcm" in problems[0] + problems[-1]
    twin = dataset(2)  # another instance at slice 2's position
    series, problems = read([*files, save(twin, tmp_path / "twin.dcm")])
    assert series is None and len(problems) == 1 and "duplicated slice" in problems[0]
    assert "twin.dcm" in problems[0] and files[2].name in problems[0] and "delete one" in problems[0]


def test_uneven_spacing_reports_its_range(tmp_path):
    depths = [0.0, 2.5, 5.0, 7.5, 9.5, 11.5]
    files = [save(dataset(k, depth=d), tmp_path / f"{k}.dcm") for k, d in enumerate(depths)]
    series, problems = read(files)
    assert series is None and len(problems) == 1 and "uneven slice spacing" in problems[0]
    assert "2.0000 to 2.5000 mm" in problems[0] and "resample" in problems[0]


def test_slices_that_disagree_on_their_grid_are_named(tmp_path):
    files = write(tmp_path, n=4)
    odd = dataset(4, rows=9)
    series, problems = read([*files, save(odd, tmp_path / "odd.dcm")])
    assert series is None and "odd.dcm" in problems[0] and "9 x 10 pixels" in problems[0]
    for keyword, value, words in (("ImageOrientationPatient", [1, 0, 0, 0, 1, 0], "ImageOrientationPatient differs"),
                                  ("PixelSpacing", ["0.7", "1.0"], "PixelSpacing"),
                                  ("ImagePositionPatient", None, "missing or invalid ImagePositionPatient")):
        odd = dataset(4)
        setattr(odd, keyword, value) if value is not None else delattr(odd, keyword)
        series, problems = read([*files, save(odd, tmp_path / "odd.dcm")])
        assert series is None and len(problems) == 1 and "odd.dcm" in problems[0] and words in problems[0], problems


def test_a_segmentation_used_as_image_is_the_wrong_modality(tmp_path):
    seg = dataset(0)
    seg.Modality = "SEG"
    series, problems = read([save(seg, tmp_path / "seg.dcm")])
    assert series is None and "seg.dcm" in problems[0] and "wrong modality" in problems[0]
    assert "give it as the label" in problems[0]


def test_an_undecodable_transfer_syntax_names_the_syntax_and_the_fix(tmp_path):
    files = write(tmp_path, n=3)
    for syntax, words in ((JPEGLosslessSV1, "no installed decoder"), (JPEG2000Lossless, "cannot be decoded")):
        ds = dataset(3)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\xd8 not a valid stream \xff\xd9"])
        ds["PixelData"].VR = "OB"
        series, problems = read([*files, save(ds, tmp_path / "compressed.dcm")])
        assert series is None and len(problems) == 1, problems
        assert "compressed.dcm" in problems[0] and words in problems[0] and syntax.name in problems[0]
        assert "gdcmconv --raw" in problems[0] and str(syntax) in problems[0]


def test_multi_frame_images_are_refused_with_the_conversion(tmp_path):
    ds = dataset(0)
    ds.NumberOfFrames = 2
    series, problems = read([save(ds, tmp_path / "enhanced.dcm")])
    assert series is None and "enhanced.dcm" in problems[0] and "multi-frame" in problems[0] and "emf2sf" in problems[0]


def test_a_series_over_the_size_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    files = write(tmp_path, n=3)
    monkeypatch.setenv("FEDSEG_MAX_VOXELS", str(8 * 10 * 3 - 1))
    series, problems = read(files)
    assert series is None and "239" in problems[0] and "FEDSEG_MAX_VOXELS" in problems[0]
    monkeypatch.setenv("FEDSEG_MAX_VOXELS", str(8 * 10 * 3))
    assert read(files)[0] is not None


def test_2d_single_slice_3d_and_stored_bits(tmp_path):
    one = write(tmp_path / "one", n=1)
    image, problems = read(one, spatial_dims=2)
    assert problems == [] and image.volume.array.shape == (1, 8, 10) and image.spacing == (0.7, 0.9)
    assert np.allclose(image.volume.affine, np.diag([0.7, 0.9, 1.0]))
    assert "a 2D case is one image file" in read(write(tmp_path / "two", n=2), spatial_dims=2)[1][0]
    volume, problems = read(one)
    assert problems == [] and volume.spatial_shape == (10, 8, 1) and volume.spacing[2] == 2.5  # SliceThickness
    del_thickness = dataset(0)
    del del_thickness.SliceThickness
    assert "SliceThickness" in read([save(del_thickness, tmp_path / "thin.dcm")])[1][0]
    twelve = dataset(0)  # 12 stored bits, signed, with garbage in the 4 unused high bits
    values = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    twelve.Rows, twelve.Columns, twelve.BitsStored, twelve.HighBit = 1, 4, 12, 11
    twelve.PixelData = (values.view(np.uint16) & 0x0FFF | 0x5000).astype(np.uint16).tobytes()
    image, problems = read([save(twelve, tmp_path / "twelve.dcm")], spatial_dims=2)
    assert problems == [] and np.array_equal(image.volume.array[0], values * 2.0 - 100)


HOSTILE_TEXT = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e308", "0", "-1", "", "abc", "1e-320", "-0"]),
                         st.floats(allow_nan=True, allow_infinity=True).map(lambda v: f"{v:.8g}"[:16]))
DECIMAL = ["PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness", "RescaleSlope",
           "RescaleIntercept", "NumberOfFrames", "SeriesNumber"]
UNSIGNED = ["Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PixelRepresentation"]


def put(path: Path, keyword: str, value) -> None:
    """Store ``value`` in the file as it is: a decimal/integer string's bytes unchecked (pydicom would not
    write them), as a hostile file holds them; unsigned values through pydicom."""
    if keyword in UNSIGNED:
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
        return
    tag = Tag(keyword)
    head = struct.pack("<HH", tag.group, tag.element) + dictionary_VR(tag).encode()
    raw = path.read_bytes()
    at = raw.index(head, 132)  # the element as dataset() wrote it (Explicit VR Little Endian)
    length = struct.unpack("<H", raw[at + 6: at + 8])[0]
    data = "\\".join(value if isinstance(value, list) else [value]).encode("ascii")
    data += b" " * (len(data) % 2)
    path.write_bytes(raw[:at + 6] + struct.pack("<H", len(data)) + data + raw[at + 8 + length:])


@st.composite
def hostile_value(draw):
    keyword = draw(st.sampled_from(DECIMAL + UNSIGNED))
    items = st.integers(0, 65535) if keyword in UNSIGNED else HOSTILE_TEXT
    values = draw(st.lists(items, min_size=1, max_size=7))
    return keyword, values if len(values) > 1 else values[0]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values it is given
@settings(max_examples=80, deadline=None)
@given(hostile=hostile_value(), slices=st.integers(1, 3), only_last=st.booleans(), dims=st.sampled_from([2, 3]))
def test_hostile_header_values_give_problems_never_exceptions(hostile, slices, only_last, dims):
    keyword, value = hostile
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k in range(slices):
            ds = dataset(k, rows=2, columns=3)
            ds.NumberOfFrames = 1
            files.append(save(ds, Path(tmp) / f"{k}.dcm"))
            if k == slices - 1 or not only_last:
                put(files[-1], keyword, value)
        problems: list = []
        scan = scan_folder(Path(tmp), problems)
        assert problems == [] and list(scan.series.values()) == [files]  # the scan reads no pixel values
        series = read_series(files, dims, problems)
        assert (series is None) == bool(problems)
        if series is not None:
            assert np.isfinite(series.volume.affine).all() and np.isfinite(series.volume.array).all()
            assert all(1e-4 <= s <= 1e5 for s in series.spacing) and series.volume.array.size > 0
            assert abs(np.linalg.det(series.volume.affine)) > 1e-12
        for problem in problems:
            assert str(problem.path).startswith(tmp) and len(str(problem)) < 2000
