"""segment_names: the segment or ROI names a label file declares, in file order ([] for a plain label
map or a file that cannot be read), as the case reader lists them before mapping them to classes."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest

from fedseg.data.dicom.export import write_series
from fedseg.data.dicom.geometry import LPS_TO_RAS
from fedseg.data.dicom.labels import read_label, segment_names
from fedseg.data.dicom.seg_writer import write_seg
from fedseg.data.readers import Volume

SHAPE = (6, 5, 3)


def series_at(folder: Path):
    array = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(1, *SHAPE)
    affine = np.array([[-0.7, 0, 0, 10.0], [0, -0.9, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
    return write_series(Volume(array, affine), folder, "files/a", modality="CT")


def slicer_nrrd(path: Path, data: np.ndarray, ras_affine: np.ndarray, segments: dict[int, str]) -> Path:
    lps = LPS_TO_RAS @ ras_affine  # 3D Slicer saves in DICOM's patient space
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]}
    for n, (value, name) in enumerate(segments.items()):
        header.update({f"Segment{n}_Name": name, f"Segment{n}_LabelValue": str(value), f"Segment{n}_Layer": "0"})
    nrrd.write(str(path), data.astype(np.int16), header=header, index_order="F")
    return path


def label() -> np.ndarray:
    out = np.zeros(SHAPE, np.int64)
    out[1:4, 1:4, :2] = 1
    out[2, 2, 1] = 2
    return out


def test_segment_names_come_in_file_order_for_seg_and_slicer_nrrd_and_none_for_a_plain_map(tmp_path):
    series = series_at(tmp_path / "ct")
    seg = write_seg(label(), series, ["Tumor", "Liver"], tmp_path / "s.dcm", algorithm_name="", algorithm_version="")
    assert segment_names(seg) == ["Tumor", "Liver"]
    stored = np.array([0, 9, 5])[label()]
    slicer = slicer_nrrd(tmp_path / "l.seg.nrrd", stored, series.volume.affine, {9: "Spleen", 5: "Liver"})
    assert segment_names(slicer) == ["Spleen", "Liver"]
    problems = []
    assert np.array_equal(read_label(slicer, series, {"liver": 1, "spleen": 2}, problems), np.array([0, 2, 1])[label()])
    plain = slicer_nrrd(tmp_path / "plain.nrrd", label(), series.volume.affine, {})
    assert segment_names(plain) == [] and problems == []
    assert segment_names(tmp_path / "missing.dcm") == [] and segment_names(series.files[0]) == []


def test_a_detached_nrrd_header_may_name_only_a_data_file_beside_it(tmp_path):
    import nrrd

    from fedseg.data.dicom.labels import read_nrrd
    from fedseg.data.readers import ReadError

    case = tmp_path / "case"
    case.mkdir()
    nrrd.write(str(case / "label.nhdr"), np.zeros((4, 4, 2), np.int16), detached_header=True,
               header={"space": "left-posterior-superior", "space directions": np.eye(3), "space origin": np.zeros(3)})
    assert read_nrrd(case / "label.nhdr").spatial_shape == (4, 4, 2)
    (tmp_path / "other.raw.gz").write_bytes((case / "label.raw.gz").read_bytes())
    for target in ("../other.raw.gz", "/dev/zero"):
        text = (case / "label.nhdr").read_text().replace("data file: label.raw.gz", f"data file: {target}")
        (case / "evil.nhdr").write_text(text)
        with pytest.raises(ReadError, match="not a plain file beside the header"):
            read_nrrd(case / "evil.nhdr")


def test_a_label_with_thousands_of_undeclared_names_gets_a_short_message(tmp_path):
    from fedseg.data.dicom.seg import declared

    problems = []
    assert not declared(tmp_path / "x.dcm", [f"<script>{i}" * 20 for i in range(5000)], {"liver": 1}, problems)
    [problem] = problems
    assert len(problem.message) < 1500 and "and 4990 more" in problem.message and "liver" in problem.message
