"""Seeded train/val/test splits, sharding of pooled data, and the shapes SiteDataset serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedseg.data.errors import DataError
from fedseg.data.partition import shard_cases
from fedseg.data.site import Case, discover_cases
from fedseg.data.splits import SplitFractions, assign_splits


def make_cases(n: int, split: str | None = None, prefix: str = "case") -> list[Case]:
    return [Case(f"{prefix}_{i:03d}", Path(f"/x/images/{prefix}_{i:03d}.nii.gz"),
                 Path(f"/x/labels/{prefix}_{i:03d}.nii.gz"), split) for i in range(n)]


def names(by_split: dict[str, list[Case]]) -> dict[str, list[str]]:
    return {s: [c.name for c in cases] for s, cases in by_split.items()}


# --- assign_splits -------------------------------------------------------------------------------

def test_splits_are_deterministic_for_a_seed():
    cases = make_cases(30)
    first = names(assign_splits(cases, SplitFractions(), seed=7, site="a"))
    again = names(assign_splits(list(reversed(cases)), SplitFractions(), seed=7, site="a"))
    assert first == again  # the input order does not matter either


def test_splits_differ_for_another_seed_and_another_site():
    cases = make_cases(30)
    base = names(assign_splits(cases, SplitFractions(), seed=7, site="a"))
    assert names(assign_splits(cases, SplitFractions(), seed=8, site="a")) != base
    assert names(assign_splits(cases, SplitFractions(), seed=7, site="b")) != base


@pytest.mark.parametrize("n", [3, 10, 31])
def test_splits_are_disjoint_and_cover_all_cases(n):
    cases = make_cases(n)
    by_split = assign_splits(cases, SplitFractions(0.6, 0.2, 0.2), seed=1, site="s")
    seen = [c.name for split in by_split.values() for c in split]
    assert sorted(seen) == sorted(c.name for c in cases)
    assert len(seen) == len(set(seen))
    assert all(by_split[s] for s in ("train", "val", "test"))  # each non-zero fraction gets a case


def test_split_sizes_follow_the_fractions():
    by_split = assign_splits(make_cases(100), SplitFractions(0.7, 0.1, 0.2), seed=0, site="s")
    assert {s: len(c) for s, c in by_split.items()} == {"train": 70, "val": 10, "test": 20}


def test_zero_fraction_gives_an_empty_split():
    by_split = assign_splits(make_cases(10), SplitFractions(0.8, 0.2, 0.0), seed=0, site="s")
    assert by_split["test"] == [] and len(by_split["val"]) == 2


def test_manifest_splits_are_kept_and_only_free_cases_are_shuffled():
    fixed_test = make_cases(3, "test", prefix="t")
    fixed_train = make_cases(2, "train", prefix="tr")
    free = make_cases(10, prefix="free")
    by_split = assign_splits(fixed_test + fixed_train + free, SplitFractions(0.5, 0.0, 0.5), seed=3, site="s")

    assert {c.name for c in fixed_test} <= {c.name for c in by_split["test"]}
    assert {c.name for c in fixed_train} <= {c.name for c in by_split["train"]}
    assert by_split["val"] == []
    free_in_test = [c for c in by_split["test"] if c.split is None]
    assert len(free_in_test) == 5  # the fractions apply to the cases the manifest leaves free


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (0.9, 0.2, -0.1)])
def test_bad_fractions_are_rejected(fractions):
    with pytest.raises(ValueError, match="add up to 1"):
        SplitFractions(*fractions)


def test_site_dataset_respects_the_manifest_split_column(make_site, task_3d, build_dataset):
    site = make_site()
    for i in range(5):
        site.nifti_case(f"c{i}")
    manifest = site.root / "cases.csv"
    manifest.write_text("image,label,split\n" + "".join(
        f"images/c{i}.nii.gz,labels/c{i}.nii.gz,{split}\n"
        for i, split in enumerate(["test", "train", "val", "train", "test"])))

    dataset = build_dataset(manifest, task_3d, fractions=(0.2, 0.2, 0.6))

    assert {s: [c["case"] for c in v] for s, v in dataset.cases.items()} == {
        "train": ["c1", "c3"], "val": ["c2"], "test": ["c0", "c4"]}


def test_site_dataset_splits_are_reproducible(nifti_site, task_3d, build_dataset):
    def split_names(seed):
        dataset = build_dataset(nifti_site.root, task_3d, seed=seed)
        return {s: [c["case"] for c in v] for s, v in dataset.cases.items()}

    assert split_names(0) == split_names(0)
    assert sorted(sum(split_names(0).values(), [])) == [f"case_{i:02d}" for i in range(6)]


# --- shard_cases ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, count", [(10, 3), (260, 3), (7, 7), (5, 2)])
def test_shards_are_disjoint_near_equal_and_cover_all_cases(n, count):
    cases = make_cases(n)
    parts = [shard_cases(cases, i, count, seed=11) for i in range(count)]
    all_names = [c.name for part in parts for c in part]
    assert sorted(all_names) == [c.name for c in cases]
    assert len(all_names) == len(set(all_names))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shards_are_the_same_whatever_order_the_site_lists_its_cases():
    cases = make_cases(20)
    shuffled = [cases[i] for i in np.random.default_rng(0).permutation(20)]
    for i in range(3):
        assert {c.name for c in shard_cases(cases, i, 3, seed=5)} == {c.name for c in shard_cases(shuffled, i, 3, seed=5)}
    assert {c.name for c in shard_cases(cases, 0, 3, seed=5)} != {c.name for c in shard_cases(cases, 0, 3, seed=6)}


def test_shard_index_out_of_range():
    with pytest.raises(ValueError, match=r"shard index must be in \[0, 3\), got 3"):
        shard_cases(make_cases(5), 3, 3, seed=0)


def test_site_datasets_of_a_sharded_folder_are_disjoint(make_site, task_3d, build_dataset):
    site = make_site()
    for i in range(9):
        site.nifti_case(f"c{i}", shape=(6, 6, 6), label=np.pad(np.ones((2, 2, 2), np.uint8), 2))
    shards = [build_dataset(site.root, task_3d, shard=(i, 3), fractions=(1.0, 0.0, 0.0)) for i in range(3)]
    per_shard = [{c["case"] for c in d.cases["train"]} for d in shards]
    assert [len(s) for s in per_shard] == [3, 3, 3]
    assert set.union(*per_shard) == {c.name for c in discover_cases("s", site.root)}


# --- what SiteDataset serves -------------------------------------------------------------------------

def test_patch_size_gives_training_batches_of_patch_shape(make_site, task_2d, build_dataset):
    site = make_site()
    for i, size in enumerate((20, 24, 28, 32)):
        site.png_case(f"c{i}", size=size)

    dataset = build_dataset(site.root, task_2d, fractions=(1.0, 0.0, 0.0), patch_size=(12, 12), patches_per_case=2)
    batches = list(dataset.train_loader(batch_size=2, seed=0))

    assert sum(b["image"].shape[0] for b in batches) == 8  # 4 cases x 2 patches
    for batch in batches:
        assert tuple(batch["image"].shape[1:]) == (1, 12, 12)
        assert tuple(batch["label"].shape[1:]) == (1, 12, 12)
        assert set(torch.unique(batch["label"]).tolist()) <= {0, 1}


def test_training_batches_are_reproducible_for_a_seed(make_site, task_2d, build_dataset):
    site = make_site()
    for i in range(4):
        site.png_case(f"c{i}", size=24)
    dataset = build_dataset(site.root, task_2d, fractions=(1.0, 0.0, 0.0), patch_size=(8, 8), flip=True)

    def draw(seed):
        return torch.cat([b["image"] for b in dataset.train_loader(batch_size=2, seed=seed)])

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


@pytest.mark.parametrize("resize_mode", ["pad_crop", "resize"])
def test_spatial_size_gives_uniform_shapes(resize_mode, make_site, task_2d, build_dataset):
    site = make_site()
    for i, size in enumerate((18, 24, 40, 50)):
        site.png_case(f"c{i}", size=size, mask=np.pad(np.ones((6, 6), bool), (size - 6) // 2))

    dataset = build_dataset(site.root, task_2d, fractions=(0.5, 0.25, 0.25), spatial_size=(32, 32),
                            resize_mode=resize_mode)

    items = [c for split in dataset.cases.values() for c in split]
    assert len(items) == 4
    assert {tuple(c["image"].shape) for c in items} == {(1, 32, 32)}
    assert {tuple(c["label"].shape) for c in items} == {(1, 32, 32)}
    batch = next(iter(dataset.train_loader(batch_size=2, seed=0)))
    assert tuple(batch["image"].shape) == (2, 1, 32, 32)


def test_different_shapes_without_spatial_or_patch_size_are_reported(make_site, task_2d, build_dataset):
    site = make_site()
    for i, size in enumerate((16, 16, 40, 40)):  # after padding to a multiple of 16: 16x16 and 48x48
        site.png_case(f"c{i}", size=size)

    with pytest.raises(DataError) as caught:
        build_dataset(site.root, task_2d, fractions=(1.0, 0.0, 0.0))

    (problem,) = caught.value.problems
    assert "2 different shapes" in problem.message
    assert "(16, 16)" in problem.message and "(48, 48)" in problem.message
    assert "preprocessing.spatial_size" in problem.message and "patch_size" in problem.message


def test_whole_images_are_padded_to_a_multiple_of_16(nifti_site, task_3d, build_dataset):
    dataset = build_dataset(nifti_site.root, task_3d, fractions=(1.0, 0.0, 0.0))
    assert {tuple(c["image"].shape) for c in dataset.cases["train"]} == {(1, 16, 16, 16)}
    # labels keep their class indices through preprocessing
    assert {int(v) for c in dataset.cases["train"] for v in torch.unique(torch.as_tensor(c["label"]))} == {0, 1, 2}


def test_pooled_dataset_holds_every_sites_cases_under_distinct_names(png_site, make_site, task_2d,
                                                                     build_dataset):
    from fedseg.data.dataset import SiteDataset

    twin = make_site("twin_site")
    for i in range(6):
        twin.png_case(f"case_{i:02d}")  # the same case names as png_site
    one, two = build_dataset(png_site.root, task_2d), build_dataset(twin.root, task_2d)
    pooled = SiteDataset.pooled("centralized", [one, two])
    for split in ("train", "val", "test"):
        names = [c["case"] for c in pooled.cases[split]]
        assert len(names) == len(one.cases[split]) + len(two.cases[split]) == len(set(names))
        assert {n.split("/")[0] for n in names} == {"png_site", "twin_site"}
    assert pooled.n_train == one.n_train + two.n_train
    batch = next(iter(pooled.train_loader(batch_size=2, seed=0)))
    assert batch["image"].shape[0] == 2
