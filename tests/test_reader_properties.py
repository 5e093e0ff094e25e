"""Property tests: whatever bytes or arrays a site's files hold, reading them gives a clean reading
or a per-case problem (a DataError for the site), never another exception.

Random bytes rarely get past a format's magic number, so most examples start from a valid file and
damage it (truncate it, overwrite bytes), which reaches the header and pixel decoders.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from fedseg.data.errors import DataError
from fedseg.data.inspect import inspect_site
from fedseg.data.loading import load_case
from fedseg.data.site import Case, discover_cases
from fedseg.data.task import Task
from fedseg.errors import printable

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = (".nii", ".nii.gz", ".png", ".jpg", ".tif", ".bmp")
TASKS = {2: Task({"background": 0, "lesion": 1}, 2), 3: Task({"background": 0, "a": 1, "b": 2}, 3)}


def valid_file(suffix: str) -> bytes:
    """A small, valid image file of the format ``suffix``."""
    rng = np.random.default_rng(0)
    if suffix.startswith(".nii"):
        image = nib.Nifti1Image(rng.integers(0, 3, (4, 5, 3)).astype(np.int16), np.diag([0.5, 1, 2, 1]))
        data = image.to_bytes()
        return gzip.compress(data) if suffix == ".nii.gz" else data
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (6, 7)).astype(np.uint8)).save(buffer, Image.registered_extensions()[suffix])
    return buffer.getvalue()


VALID = {suffix: valid_file(suffix) for suffix in SUFFIXES}


@st.composite
def damaged(draw, suffix: str) -> bytes:
    """Random bytes, or a valid file truncated and/or with some bytes overwritten."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(VALID[suffix] if suffix != ".nii.gz" else gzip.decompress(VALID[suffix]))
    data = data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    for _ in range(draw(st.integers(0, 8))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return gzip.compress(bytes(data)) if suffix == ".nii.gz" else bytes(data)


def check_site(root: Path, spatial_dims: int) -> None:
    """The ways fedseg reads a site (data check, and site loading with declared labels) do not crash,
    and every problem prints as UTF-8."""
    inspection = inspect_site(root, spatial_dims=spatial_dims)
    for problem in inspection.problems:
        str(problem).encode("utf-8")
    try:
        cases = discover_cases("site", root)
    except DataError as exc:
        str(exc).encode("utf-8")
        return
    for case in cases:
        _, problems = load_case(case, TASKS[spatial_dims])
        for problem in problems:
            str(problem).encode("utf-8")


def write_site(root: Path, image: tuple[str, bytes], label: tuple[str, bytes]) -> Path:
    for kind, (suffix, data) in (("images", image), ("labels", label)):
        (root / kind).mkdir(parents=True)
        (root / kind / f"case{suffix}").write_bytes(data)
    return root


@SETTINGS
@given(suffix=st.sampled_from(SUFFIXES), data=st.data(), image_is_bad=st.booleans())
def test_random_or_damaged_files_give_per_case_problems(suffix, data, image_is_bad):
    bad = data.draw(damaged(suffix))
    good = VALID[suffix]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_site(Path(tmp) / "site", (suffix, bad if image_is_bad else good),
                          (suffix, good if image_is_bad else bad))
        check_site(root, 3 if suffix.startswith(".nii") else 2)


@SETTINGS
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                      st.lists(st.sampled_from(["image", "label", "split", "train", "test", "a.png", "b.nii",
                                                "../x.png", ",", "\n", "\r", '"', "\x00", "\ufeff", " "]),
                               max_size=30).map("".join)),
       encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_random_manifests_give_data_errors(text, encoding):
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "site.csv"
        manifest.write_bytes(text.encode(encoding, "replace"))
        (Path(tmp) / "a.png").write_bytes(VALID[".png"])
        check_site(manifest, 2)


DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128,
          np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]),  # nibabel's RGB24
          np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])]  # and RGBA32


GEOMETRY = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 1e-30, 1e30]), st.floats(width=32))
"""Header geometry values, NaN and infinities included."""


@st.composite
def geometry(draw) -> dict[str, np.ndarray] | None:
    """Header fields that make the affine: sform rows, quaternion, voxel sizes and codes (or None)."""
    if draw(st.booleans()):
        return None
    return {"srow": draw(hnp.arrays(np.float32, (3, 4), elements=GEOMETRY)),
            "quatern": draw(hnp.arrays(np.float32, 6, elements=GEOMETRY)),
            "pixdim": draw(hnp.arrays(np.float32, 3, elements=GEOMETRY)),
            "codes": draw(st.tuples(st.integers(0, 4), st.integers(0, 4)))}


def write_geometry(path: Path, fields: dict[str, np.ndarray] | None) -> None:
    """Overwrite the geometry fields of a saved NIfTI's header, as a hostile writer could
    (nibabel's own writer cannot be given such an affine: its SVD may never return on NaN)."""
    if fields is None:
        return
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    header = nib.Nifti1Header(raw[:348], check=False)
    header["srow_x"], header["srow_y"], header["srow_z"] = fields["srow"]
    for name, value in zip(("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"),
                           fields["quatern"]):
        header[name] = value
    header["pixdim"][1:4] = fields["pixdim"]
    header["sform_code"], header["qform_code"] = fields["codes"]
    raw = header.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # nibabel on random geometry
@SETTINGS
@given(array=st.sampled_from(DTYPES).flatmap(lambda dtype: hnp.arrays(
           dtype, hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=5))),
       fields=geometry(), as_label=st.booleans(), suffix=st.sampled_from([".nii", ".nii.gz"]),
       spatial_dims=st.sampled_from([2, 3]))
def test_any_array_saved_as_nifti_is_read_or_reported(array, fields, as_label, suffix, spatial_dims):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"case{suffix}"
        try:
            nib.save(nib.Nifti1Image(array, np.eye(4), dtype=array.dtype), str(path))
        except Exception:  # nibabel refuses some dtypes (bool, float16) and shapes: nothing to read
            reject()
        write_geometry(path, fields)
        other = Path(tmp) / f"other{suffix}"
        shape = array.shape[:spatial_dims] if array.ndim >= spatial_dims else (4,) * spatial_dims
        nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), str(other))
        write_geometry(other, fields)
        case = Case("case", other, path) if as_label else Case("case", path, other)
        for check_declared in (True, False):
            loaded, problems = load_case(case, TASKS[spatial_dims], check_declared=check_declared)
            assert (loaded is None) == bool(problems)
            for problem in problems:
                str(problem).encode("utf-8")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_valid_seed_files_read_cleanly(tmp_path, suffix):
    """The property tests damage these files: they must be readable to begin with."""
    spatial_dims = 3 if suffix.startswith(".nii") else 2
    root = write_site(tmp_path / "site", (suffix, VALID[suffix]), (suffix, VALID[suffix]))
    inspection = inspect_site(root, spatial_dims=spatial_dims)
    assert len(inspection.cases) == 1 and not inspection.problems, inspection.problems


@SETTINGS
@given(names=st.lists(st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b
                                                               and not b.startswith(b".")),
                      min_size=1, max_size=4, unique=True))
def test_any_file_name_is_read_or_reported_printably(names):
    """Non-UTF-8 bytes and control characters in names never reach a case name; problems print."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "site"
        for kind in ("images", "labels"):
            (root / kind).mkdir(parents=True)
            for name in names:
                with open(os.path.join(os.fsencode(root / kind), name + b".png"), "wb") as handle:
                    handle.write(VALID[".png"])
        inspection = inspect_site(root, spatial_dims=2)
        for case in inspection.cases:
            assert printable(case.name) == case.name and case.name.encode("utf-8")
        for problem in inspection.problems:
            assert printable(str(problem)) == str(problem) and str(problem).encode("utf-8")
        assert inspection.problems or len(inspection.cases) == len(names)
