"""``fedseg data check SITE``: what a user sees for good and bad sites, and a real-data smoke test."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import fedseg.cli
from fedseg.data.inspect import inspect_site

SHARED_HIPPOCAMPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msd-hippocampus"


@pytest.fixture
def run_cli(monkeypatch):
    """``run_cli(*argv)`` -> (exit code, everything the command printed), on a wide plain console."""

    def run(*argv: str) -> tuple[int, str]:
        buffer = io.StringIO()
        monkeypatch.setattr(fedseg.cli, "console", Console(file=buffer, width=250, color_system=None))
        code = fedseg.cli.main(list(argv))
        return code, buffer.getvalue()

    return run


def rgb24_volume(shape) -> np.ndarray:
    """A NIfTI RGB24 volume (nibabel's structured dtype) of colour (10, 20, 30) everywhere."""
    array = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    array["R"], array["G"], array["B"] = 10, 20, 30
    return array


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error")]


def test_good_nifti_site_lists_cases_shapes_and_label_counts(nifti_site, run_cli):
    code, output = run_cli("data", "check", str(nifti_site.root))

    assert code == 0, output
    for i in range(6):
        assert f"case_{i:02d}" in output
    assert "8x8x8" in output  # shape
    assert "1x1x1" in output  # spacing
    assert "0: 496, 1: 8, 2: 8" in output  # per case: value: voxel count
    assert "label values over all readable cases (value: voxels): 0: 2976, 1: 48, 2: 48" in output
    assert "6 case(s) ok, 0 problem(s)" in output
    assert error_lines(output) == []


def test_good_png_site_with_declared_labels_says_masks_were_binarised(png_site, run_cli):
    code, output = run_cli("data", "check", str(png_site.root), "--labels", "background=0,lesion=1")

    assert code == 0, output
    assert "16x16" in output and "case_05" in output
    assert "(binarised at 128)" in output
    assert "6 case(s) ok" in output


def test_png_site_without_declared_labels_lists_stored_values(png_site, run_cli):
    code, output = run_cli("data", "check", str(png_site.root))
    assert code == 0, output
    assert "255: " in output and "binarised" not in output


def test_bad_site_prints_an_error_line_naming_the_bad_file(nifti_site, run_cli):
    nifti_site.raw("labels", "case_03.nii.gz", b"corrupt bytes" * 10)
    values = nifti_site.three_class_label((8, 8, 8))
    values[0, 0, 0] = 5
    nifti_site.nifti("labels", "case_04", values)

    code, output = run_cli("data", "check", str(nifti_site.root), "--labels", "background=0,a=1,b=2")

    assert code == 1
    errors = error_lines(output)
    assert len(errors) == 2, output
    corrupt = next(line for line in errors if "case_03.nii.gz" in line)
    assert str(nifti_site.labels / "case_03.nii.gz") in corrupt and "unreadable or corrupt" in corrupt
    undeclared = next(line for line in errors if "case_04.nii.gz" in line)
    assert "undeclared label values {5: 1}" in undeclared
    assert "4 case(s) ok, 2 problem(s)" in output


def test_empty_site_is_an_error(make_site, run_cli):
    site = make_site("nothing_here")
    code, output = run_cli("data", "check", str(site.root))
    assert code == 1
    (line,) = error_lines(output)
    assert str(site.root) in line and "has no cases" in line
    assert "0 case(s) ok, 1 problem(s)" in output


def test_missing_site_is_an_error(tmp_path, run_cli):
    code, output = run_cli("data", "check", str(tmp_path / "nowhere"))
    assert code == 1
    (line,) = error_lines(output)
    assert "nowhere" in line and "not found" in line


def test_file_names_with_brackets_are_printed_as_they_are(make_site, run_cli):
    # rich markup must not eat "[v2]" or "[red]" from paths (nor fail on a "[/...]" in one)
    site = make_site("site[v2]")
    site.png_case("scan[b]1")
    site.png_case("ok")
    site.raw("images", "scan[red]2.png", b"not a png")
    site.picture("labels", "scan[red]2.png", np.zeros((16, 16), dtype=np.uint8))

    code, output = run_cli("data", "check", str(site.root))

    assert code == 1
    (line,) = error_lines(output)
    assert str(site.images / "scan[red]2.png") in line and "unreadable or corrupt" in line
    assert "scan[b]1" in output  # in the table of readable cases
    assert "site[v2]" in output


def test_manifest_site_is_checked(nifti_site, run_cli):
    manifest = nifti_site.root / "cases.csv"
    manifest.write_text("image,label,split\nimages/case_00.nii.gz,labels/case_00.nii.gz,train\n"
                        "images/case_01.nii.gz,labels/case_01.nii.gz,bogus\n")
    code, output = run_cli("data", "check", str(manifest))
    assert code == 1
    (line,) = error_lines(output)
    assert f"{manifest}:3" in line and "split 'bogus'" in line


@pytest.mark.parametrize("labels, expected", [
    ("background=0,liver", "--labels must look like background=0,liver=1"),
    ("background=0,liver=", "give a DICOM segment/ROI name"),  # liver=Liver names a DICOM segment
    ("liver=1,spleen=2", "background class to 0"),
    ("background=0,liver=1,spleen=1", "distinct values"),
    ("background=0,liver=1,liver=2", "names a class twice"),
])
def test_invalid_labels_option_is_a_user_error(labels, expected, nifti_site, run_cli):
    code, output = run_cli("data", "check", str(nifti_site.root), "--labels", labels)
    assert code == 1
    assert output.startswith("error:") and expected in output


def test_dims_option_overrides_the_guess(nifti_site, run_cli):
    code, output = run_cli("data", "check", str(nifti_site.root), "--dims", "2")
    assert code == 1
    assert "3 spatial dimensions (8, 8, 8) but the task is 2D" in output


def test_inspect_site_collects_problems_instead_of_raising(nifti_site):
    (nifti_site.labels / "case_02.nii.gz").unlink()
    inspection = inspect_site(nifti_site.root, labels={"background": 0, "a": 1, "b": 2})
    assert inspection.cases == []
    assert [Path(p.path).name for p in inspection.problems] == ["case_02.nii.gz"]
    assert "image without label" in inspection.problems[0].message


def test_data_check_on_an_rgb24_nifti_site_lists_it(make_site, run_cli):
    site = make_site()
    shape = (6, 6, 6)
    site.nifti("images", "c", rgb24_volume(shape))
    site.nifti("labels", "c", np.zeros(shape, np.uint8))
    code, output = run_cli("data", "check", str(site.root))
    assert code == 0, output
    assert "6x6x6" in output and "10..30" in output and "1 case(s) ok, 0 problem(s)" in output


@pytest.mark.real_data
def test_inspect_real_msd_hippocampus_cases(tmp_path):
    if not SHARED_HIPPOCAMPUS.is_dir():
        pytest.skip(f"real data not available: {SHARED_HIPPOCAMPUS} does not exist "
                    "(../shared/data/msd-hippocampus from the repository root)")
    images = sorted((SHARED_HIPPOCAMPUS / "images").glob("*.nii.gz"))[:5]
    assert len(images) == 5, f"expected at least 5 images in {SHARED_HIPPOCAMPUS / 'images'}"
    manifest = tmp_path / "five_cases.csv"
    manifest.write_text("image,label\n" + "".join(
        f"{image},{SHARED_HIPPOCAMPUS / 'labels' / image.name}\n" for image in images))

    inspection = inspect_site(manifest, labels={"background": 0, "anterior": 1, "posterior": 2}, spatial_dims=3)

    assert inspection.problems == [], "\n".join(map(str, inspection.problems))
    assert [c.name for c in inspection.cases] == [i.name[: -len(".nii.gz")] for i in images]
    for case in inspection.cases:
        assert len(case.shape) == 3 and all(20 <= s <= 64 for s in case.shape), case
        assert case.spacing == pytest.approx((1.0, 1.0, 1.0), abs=1e-3)
        assert case.channels == 1 and not case.binarised
        assert set(case.label_counts) == {0, 1, 2}
    assert set(inspection.label_totals) == {0, 1, 2}
