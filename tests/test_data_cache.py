"""The on-disk cache of preprocessed cases: reuse, exact invalidation, damage, loader workers,
patches from memory-mapped cases, the memory budget and the settings from the environment.

Files opened are counted with an audit hook (every ``open`` of the process, whatever library
reads the file), recording only inside ``opened_under``.
"""

from __future__ import annotations

import os
import sys
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from fedseg.data.cache import DataSettings, cache_root, data_settings
from fedseg.data.dataset import SiteDataset, SiteSpec
from fedseg.data.preprocessing import Preprocessing
from fedseg.data.samples import CachedCase
from fedseg.data.splits import SplitFractions
from fedseg.errors import UserError
from fedseg.experiment import parse_experiment
from fedseg.simulate import run_simulation
from tiny_experiment import tiny_experiment

_RECORDING: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if _RECORDING and event == "open" and isinstance(args[0], (str, os.PathLike)):
        _RECORDING[-1].append(os.fspath(args[0]))


sys.addaudithook(_audit)


@contextmanager
def opened_under(folder: Path):
    """The files under ``folder`` opened inside the block (sorted, each once)."""
    found: list[str] = []
    _RECORDING.append(found)
    seen: list[str] = []
    try:
        yield seen
    finally:
        _RECORDING.pop()
        seen.extend(sorted({f for f in found if f.startswith(str(folder))}))


def _site(make_site, cases: int = 6, shape=(10, 10, 10)):
    site = make_site("cached")
    for i in range(cases):
        site.nifti_case(f"case_{i}", shape=shape)
    return site


def _load(root: Path, task, cache: Path, workers: int | None = 0, loader_workers: int = 0, memory: int = 0,
          **preprocessing) -> SiteDataset:
    settings = DataSettings(cache, memory, workers, loader_workers)
    return SiteDataset(SiteSpec(root.name, root), task, Preprocessing(**preprocessing), SplitFractions(0.5, 0.25, 0.25),
                       seed=0, divisible_by=4, settings=settings)


def _arrays(data: SiteDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {c["case"]: (c["image"].numpy().copy(), c["label"].numpy().copy()) for s in data.cases.values() for c in s}


def test_a_second_load_opens_no_image_file_and_serves_the_same_cases(make_site, task_3d, tmp_path):
    site = _site(make_site)
    first = _load(site.root, task_3d, tmp_path / "cache")
    with opened_under(site.root) as opened:
        second = _load(site.root, task_3d, tmp_path / "cache")
    assert opened == []
    assert {s: [c["case"] for c in cases] for s, cases in first.cases.items()} == \
           {s: [c["case"] for c in cases] for s, cases in second.cases.items()}
    a, b = _arrays(first), _arrays(second)
    assert all(np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1]) for k in a)
    assert all(isinstance(c, CachedCase) for cases in second.cases.values() for c in cases)


def test_a_changed_file_re_preprocesses_exactly_its_case(make_site, task_3d, tmp_path):
    site = _site(make_site)
    before = _arrays(_load(site.root, task_3d, tmp_path / "cache"))
    label = site.three_class_label((10, 10, 10))
    label[7:9, 7:9, 7:9] = 1
    image_file, label_file = site.nifti_case("case_3", shape=(10, 10, 10), label=label)
    with opened_under(site.root) as opened:
        after = _arrays(_load(site.root, task_3d, tmp_path / "cache"))
    assert opened == sorted([str(image_file), str(label_file)])
    assert after["case_3"][1].sum() > before["case_3"][1].sum()
    assert all(np.array_equal(after[k][0], before[k][0]) for k in before if k != "case_3")
    os.utime(label_file, ns=(1, 1))  # the same bytes, another modification time: made again too
    with opened_under(site.root) as opened:
        _load(site.root, task_3d, tmp_path / "cache")
    assert opened == sorted([str(image_file), str(label_file)])


def test_a_changed_preprocessing_setting_re_preprocesses_every_case_a_random_one_none(make_site, task_3d,
                                                                                         tmp_path):
    site = _site(make_site)
    _load(site.root, task_3d, tmp_path / "cache", patch_size=(4, 4, 4))
    with opened_under(site.root) as opened:  # drawn per sample: nothing to preprocess again
        _load(site.root, task_3d, tmp_path / "cache", patch_size=(4, 4, 4), flip=True, rotate90=True,
              foreground_ratio=0.9, patches_per_case=3)
    assert opened == []
    with opened_under(site.root) as opened:
        _load(site.root, task_3d, tmp_path / "cache", patch_size=(4, 4, 4), intensity="zscore")
    assert len(opened) == 12  # six cases, image and label each


def test_a_damaged_entry_is_made_again(make_site, task_3d, tmp_path):
    site = _site(make_site)
    data = _load(site.root, task_3d, tmp_path / "cache")
    case = data.cases["train"][0]
    (case.entry.folder / "image.npy").write_bytes(b"\x93NUMPY broken")
    with opened_under(site.root) as opened:
        again = _load(site.root, task_3d, tmp_path / "cache")
    assert [Path(p).name for p in opened] == [f"{case['case']}.nii.gz"] * 2
    assert again.cases["train"][0]["image"].shape == case.entry.shape


def test_kfold_members_other_arms_and_resume_reuse_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSEG_CACHE", str(tmp_path / "cache"))
    raw = tiny_experiment(tmp_path, rounds=1, n_cases=6, federation={"rounds": 1, "folds": 2},
                          arms=["federated"])
    experiment = parse_experiment(raw)
    with opened_under(tmp_path / "data") as first:
        run_simulation(experiment, tmp_path / "run")
    assert len(first) == 2 * 6 * 3  # every case of the three sites read once, for both folds
    with opened_under(tmp_path / "data") as resumed:
        run_simulation(experiment, tmp_path / "run", resume=True)
    other = parse_experiment({**raw, "arms": ["standalone", "centralized"]})
    with opened_under(tmp_path / "data") as arms:
        run_simulation(other, tmp_path / "other")
    assert resumed == [] and arms == []


def test_batches_are_the_same_with_and_without_loader_workers(make_site, task_3d, tmp_path):
    site = _site(make_site, cases=8)
    options = dict(patch_size=(4, 4, 4), patches_per_case=2, flip=True, rotate90=True)
    batches = []
    for workers in (0, 2):
        data = _load(site.root, task_3d, tmp_path / "cache", loader_workers=workers, **options)
        batches.append([(b["image"].clone(), b["label"].clone()) for b in data.train_loader(3, seed=11)])
    assert len(batches[0]) == 2 and batches[0][0][0].shape == (6, 1, 4, 4, 4)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*batches))
    other_seed = [b["image"] for b in data.train_loader(3, seed=12)]
    assert not torch.equal(other_seed[0], batches[1][0][0])


def test_patches_are_cut_from_the_case_around_foreground_as_asked(make_site, task_3d, tmp_path):
    site = _site(make_site, cases=4, shape=(16, 16, 16))
    data = _load(site.root, task_3d, tmp_path / "cache", patch_size=(4, 4, 4), foreground_ratio=1.0,
                 patches_per_case=4)
    samples = data.train_loader(1, seed=3).dataset
    for index, case in enumerate(data.cases["train"]):
        image, label = case["image"].numpy(), case["label"].numpy()
        for patch in samples[index]:
            assert patch["image"].shape == (1, 4, 4, 4) and patch["label"].max() > 0
            hits = [(x, y, z) for x in range(13) for y in range(13) for z in range(13)
                    if np.array_equal(image[:, x:x + 4, y:y + 4, z:z + 4], patch["image"].numpy())]
            assert len(hits) == 1 and np.array_equal(label[:, hits[0][0]:hits[0][0] + 4, hits[0][1]:hits[0][1] + 4,
                                                           hits[0][2]:hits[0][2] + 4], patch["label"].numpy())


def test_the_memory_cache_keeps_to_its_budget_and_saves_reads(make_site, task_3d, tmp_path):
    site = _site(make_site, cases=6)
    _load(site.root, task_3d, tmp_path / "cache")
    one_case = 12 * 12 * 12 * 4  # the largest array: image float32, 10^3 padded to 12^3
    data = _load(site.root, task_3d, tmp_path / "cache", memory=2 * one_case)
    cases = [c for split in data.cases.values() for c in split]
    for _ in range(2):
        for case in cases:
            case["image"]
            assert data.store.held_bytes <= 2 * one_case
    assert data.store.reads == 12  # six cases twice: two held at a time never cover six in turn
    roomy = _load(site.root, task_3d, tmp_path / "cache", memory=1 << 20)
    for _ in range(3):
        for case in [c for split in roomy.cases.values() for c in split]:
            case["image"], case["label"]
    assert roomy.store.reads == 12  # read once each, then served from memory


def test_preparing_holds_one_case_at_a_time_not_the_site(make_site, task_3d, tmp_path):
    site = _site(make_site, cases=24, shape=(40, 40, 40))
    peaks = {}
    for cases in (4, 24):
        root = tmp_path / f"first_{cases}"  # a site of the first ``cases`` cases
        for kind in ("images", "labels"):
            (root / kind).mkdir(parents=True)
            for i in range(cases):
                os.symlink(site.root / kind / f"case_{i}.nii.gz", root / kind / f"case_{i}.nii.gz")
        tracemalloc.start()
        try:
            data = _load(root, task_3d, tmp_path / "cache")
            peaks[cases] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # the peak is one case's working memory, whether the site has 4 cases or 24 (6 times the data)
    assert peaks[24] < 1.3 * peaks[4], peaks
    assert peaks[24] < 24 * 40 ** 3 * 4 / 2
    assert sum(sys.getsizeof(c) for s in data.cases.values() for c in s) < 24 * 200


def test_prep_workers_give_the_same_cases_as_preparing_inline(make_site, task_3d, tmp_path):
    site = _site(make_site, cases=5)
    inline = _arrays(_load(site.root, task_3d, tmp_path / "inline"))
    parallel = _arrays(_load(site.root, task_3d, tmp_path / "parallel", workers=2))
    assert inline.keys() == parallel.keys()
    assert all(np.array_equal(inline[k][0], parallel[k][0]) and np.array_equal(inline[k][1], parallel[k][1])
               for k in inline)


def test_problems_of_every_case_are_reported_from_workers_too(make_site, task_3d, tmp_path):
    from fedseg.data.errors import DataError

    site = _site(make_site, cases=4)
    site.raw("labels", "case_1.nii.gz", b"not a nifti")
    site.nifti("labels", "case_2", np.full((10, 10, 10), 9, np.uint8))
    with pytest.raises(DataError) as error:
        _load(site.root, task_3d, tmp_path / "cache", workers=2)
    assert {p.path.name for p in error.value.problems} == {"case_1.nii.gz", "case_2.nii.gz"}


@pytest.mark.parametrize("name, value", [("FEDSEG_LOADER_WORKERS", "-1"), ("FEDSEG_LOADER_WORKERS", "two"),
                                         ("FEDSEG_PREP_WORKERS", "65"), ("FEDSEG_MEMORY_CACHE_MB", "1e3"),
                                         ("FEDSEG_MEMORY_CACHE_MB", "٣")])
def test_settings_from_the_environment_are_checked(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=name):
        data_settings()


def test_cache_location_by_default_by_variable_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "fedseg"
    monkeypatch.setenv("FEDSEG_CACHE", "off")
    off = cache_root()
    assert off.is_dir() and off.name.startswith("fedseg-cache-") and cache_root() == off
    monkeypatch.setenv("FEDSEG_CACHE", str(tmp_path / "mine"))
    assert data_settings().cache == tmp_path / "mine"


def test_the_cache_command_shows_and_clears_the_cache(make_site, task_3d, tmp_path, monkeypatch, capsys):
    import fedseg.cli
    from rich.console import Console

    monkeypatch.setenv("FEDSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fedseg.cli, "console", Console(width=300, color_system=None))
    _load(_site(make_site, cases=4).root, task_3d, tmp_path / "cache")
    assert fedseg.cli.main(["data", "cache"]) == 0
    assert f"{tmp_path / 'cache'}: 4 preprocessed case(s)" in capsys.readouterr().out
    assert fedseg.cli.main(["data", "cache", "--clear"]) == 0
    assert "deleted 4 cached case(s)" in capsys.readouterr().out
    assert not (tmp_path / "cache" / "cases").exists()


def test_a_file_that_cannot_be_looked_at_is_a_problem_of_its_case(make_site, task_3d, tmp_path):
    from fedseg.data.errors import DataError

    site = _site(make_site, cases=4)
    (site.root / "labels" / "case_2.nii.gz").unlink()
    (site.root / "labels" / "case_2.nii.gz").symlink_to(site.root / "labels" / "gone.nii.gz")
    with pytest.raises(DataError) as error:
        _load(site.root, task_3d, tmp_path / "cache")
    assert [p.path.name for p in error.value.problems] == ["case_2.nii.gz"]
    assert "cannot read the file's details" in str(error.value)
