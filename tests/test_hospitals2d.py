"""The heterogeneous 2D hospitals builder: deterministic, sized by share, case mix and acquisition as
designed, readable by the normal readers, and hostile source volumes refused with the case named."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fedseg.data.acquisition import Scanner, scan
from fedseg.data.errors import DataError
from fedseg.data.hospitals2d import HOSPITALS, SIZE, Hospital, build, deal, main, make_case
from fedseg.data.inspect import inspect_site
from fedseg.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd-hippocampus"
LABELS = {"background": 0, "anterior": 1, "posterior": 2}
SHAPE = (24, 44, 40)  # a sagittal slice: 40 rows (S) x 44 columns (A), padded to 48 x 64


def _volume(rng, radius: float, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid (label 1 in front, 2 behind) on a noisy darker head."""
    x, y, z = np.mgrid[:shape[0], :shape[1], :shape[2]]
    centre = np.array(shape) / 2
    inside = (((x - centre[0]) / radius) ** 2 + ((y - centre[1]) / (2 * radius)) ** 2
              + ((z - centre[2]) / radius) ** 2 <= 1)
    label = np.where(inside, np.where(y >= centre[1], 1, 2), 0).astype(np.uint8)
    image = 300 + rng.normal(0, 5, shape) + 400 * inside
    return image.astype(np.float32), label


def _source(root: Path, n: int = 18, flip_first: bool = False) -> Path:
    rng = np.random.default_rng(5)
    for kind in ("images", "labels"):
        (root / kind).mkdir(parents=True)
    for i in range(n):
        image, label = _volume(rng, 3 + 6 * i / n)
        affine = np.eye(4)
        if flip_first and i == 0:  # stored left-right flipped (LAS): the builder reorients to RAS
            image, label, affine = image[::-1], label[::-1], np.diag([-1.0, 1, 1, 1])
        nib.save(nib.Nifti1Image(image, affine), root / "images" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labels" / f"case_{i:03d}.nii.gz")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("hospitals")
    source = _source(root / "source")
    return source, build(source, root / "out", seed=0)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_writes_the_same_files_and_another_seed_does_not(built, tmp_path):
    source, folders = built
    first = folders["university"].parent
    again = build(source, tmp_path / "again", seed=0)["university"].parent
    assert _files(first) == _files(again)
    other = build(source, tmp_path / "other", seed=1)["university"].parent
    assert _files(first) != _files(other)


def test_sizes_follow_the_shares_and_every_case_is_used_once(built):
    _, folders = built
    names = {site: {p.name.split(".")[0] for p in (folder / "images").iterdir()} for site, folder in folders.items()}
    assert {site: len(n) for site, n in names.items()} == {"memory_clinic": 3, "university": 9, "community": 6}
    assert len(set().union(*names.values())) == 18
    for site, folder in folders.items():
        suffix = next(h.image_format for h in HOSPITALS if h.name == site)
        assert {p.suffix for p in (folder / "images").iterdir()} == {f".{suffix}"}
    assert "CC BY-SA 4.0" in (folders["university"].parent / "README.md").read_text()


def test_the_output_reads_through_the_normal_readers(built):
    _, folders = built
    for folder in folders.values():
        inspection = inspect_site(folder, labels=LABELS, spatial_dims=2)
        assert inspection.problems == []
        assert {case.shape for case in inspection.cases} == {SIZE}
        assert set(inspection.label_totals) == {0, 1, 2}


def test_case_mix_deals_small_structures_to_the_first_hospital_with_overlap():
    sizes = {f"c{i:03d}": i for i in range(300)}
    dealt = deal(sizes, HOSPITALS, seed=0)
    assert [len(dealt[h.name]) for h in HOSPITALS] == [50, 150, 100]
    means = [np.mean([sizes[n] for n in dealt[h.name]]) for h in HOSPITALS]
    assert means[0] < means[1] < means[2]
    assert max(sizes[n] for n in dealt["memory_clinic"]) > min(sizes[n] for n in dealt["university"])
    with pytest.raises(UserError, match="too few"):
        deal({"a": 1, "b": 2}, HOSPITALS, seed=0)


def test_each_scanner_shows_in_the_pixels():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 0.5)
    assert scan(flat, Scanner(gamma=1, brightness=200), rng).mean() == pytest.approx(100, abs=0.6)
    assert scan(flat, Scanner(gamma=2, brightness=200), rng).mean() == pytest.approx(50, abs=0.6)
    assert scan(flat, Scanner(brightness=200, noise=8), rng).std() == pytest.approx(8, rel=0.1)
    bias = scan(flat, Scanner(brightness=200, bias=0.5), rng).astype(float)
    assert np.ptp(bias) > 20 and np.ptp(scan(flat, Scanner(brightness=200), rng)) <= 1
    stripes = np.indices((64, 64)).sum(axis=0) % 2 * 0.8  # detail at the 1 mm grid's limit
    sharp = scan(stripes, Scanner(), rng).astype(float)
    coarse = scan(stripes, Scanner(pixel_mm=1.8), rng).astype(float)
    assert np.abs(np.diff(coarse, axis=1)).mean() < 0.2 * np.abs(np.diff(sharp, axis=1)).mean()
    with pytest.raises(ValueError, match="pixel_mm"):
        Scanner(pixel_mm=0.5)


def test_hospitals_differ_as_designed_in_the_written_images(built):
    _, folders = built
    levels, roughness, edges = {}, {}, {}
    for site, folder in folders.items():
        images = [np.asarray(Image.open(p), dtype=float) for p in (folder / "images").iterdir()]
        tissue = [image[8:12, 15:25] for image in images]  # grey tissue above the structure
        levels[site] = np.mean(tissue)
        roughness[site] = np.mean([np.abs(np.diff(v, axis=1)).mean() for v in tissue])
        edges[site] = np.mean([np.abs(np.diff(image, axis=1)).max() / (np.percentile(image, 99) - levels[site])
                               for image in images])  # steepest step across the structure's outline
    scanners = {h.name: h.scanner for h in HOSPITALS}
    grey = levels["university"] / scanners["university"].brightness  # gamma 1 there
    for site in ("memory_clinic", "community"):
        expected = scanners[site].brightness * grey ** scanners[site].gamma
        assert levels[site] == pytest.approx(expected, rel=0.1)
    assert roughness["community"] > 2 * roughness["university"]  # noise sd 12 vs 3
    assert edges["memory_clinic"] < 0.7 * edges["university"]  # 2.2 mm vs 1 mm native pixels


def test_a_volume_stored_in_another_orientation_gives_the_same_slice(tmp_path):
    plain = build(_source(tmp_path / "a"), tmp_path / "out_a")
    flipped = build(_source(tmp_path / "b", flip_first=True), tmp_path / "out_b")
    assert [_files(plain[site]) for site in plain] == [_files(flipped[site]) for site in flipped]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(8, 80), st.integers(8, 80))
def test_any_labelled_volume_gives_one_slice_of_the_size_through_the_structure(seed, rows, cols):
    rng = np.random.default_rng(seed)
    label = np.zeros((6, cols, rows), np.uint8)
    label[rng.integers(0, 6), rng.integers(0, cols), rng.integers(0, rows)] = rng.integers(1, 256)
    image = rng.normal(0, 1, label.shape) * rng.choice([0, 1e3])
    out_image, out_label = make_case(image, label, HOSPITALS[2], rng)
    assert out_image.shape == out_label.shape == SIZE and out_image.dtype == np.uint8
    assert out_label.any() and set(np.unique(out_label)) <= set(np.unique(label))


def test_hostile_sources_are_refused_naming_the_case(tmp_path):
    source = _source(tmp_path / "src", n=9)
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4)), source / "labels" / "case_004.nii.gz")
    with pytest.raises(DataError, match="case_004.*no foreground"):
        build(source, tmp_path / "out")
    nib.save(nib.Nifti1Image(np.full(SHAPE, 300, np.int16), np.eye(4)), source / "labels" / "case_004.nii.gz")
    with pytest.raises(DataError, match="case_004.*0..255"):
        build(source, tmp_path / "out2")
    (source / "labels" / "case_004.nii.gz").unlink()
    with pytest.raises(DataError, match="image without label"):
        build(source, tmp_path / "out3")


def test_command_line_refuses_to_mix_two_builds(tmp_path, capsys):
    source = _source(tmp_path / "src", n=12)
    assert main([str(source), str(tmp_path / "out")]) == 0
    assert "university: 6 cases" in capsys.readouterr().out
    assert main([str(source), str(tmp_path / "out"), "--seed", "1"]) == 2
    assert "already holds files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(source), str(tmp_path / "new"), "--seed", "-1"])


@pytest.mark.real_data
def test_msd_hippocampus_gives_43_130_87_slices(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    folders = build(SHARED, tmp_path)
    counts = {site: len(list((f / "images").iterdir())) for site, f in folders.items()}
    assert counts == {"memory_clinic": 43, "university": 130, "community": 87}
    sizes = {site: np.mean([(np.asarray(Image.open(p)) > 0).sum() for p in (f / "labels").iterdir()])
             for site, f in folders.items()}
    assert sizes["memory_clinic"] < sizes["university"] < sizes["community"]
