"""The nnU-Net v2 / Medical Segmentation Decathlon layout, read as these datasets are distributed.

A site folder holds ``imagesTr/``, ``labelsTr/`` and ``dataset.json`` (and maybe ``imagesTs/``):

- nnU-Net v2: ``imagesTr/CASE_XXXX.<ending>``, one file per input channel, ``XXXX`` the channel's
  four-digit index from ``0000`` (stacked as channels in that order); ``labelsTr/CASE.<ending>``.
  ``dataset.json``: ``{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
  "numTraining": N, "file_ending": ".nii.gz"}``.
- The Decathlon's own download: ``imagesTr/CASE.nii.gz`` (a 4D file holds its channels), and
  ``dataset.json`` with ``"modality": {"0": "MRI"}`` and ``"labels": {"0": "background", ...}``.
- ``imagesTs/`` has no labels: it is not part of a site's cases (give it to ``fedseg predict``).

dataset.json comes with the download: it is read with a size limit and its types checked, and its
labels and channels are compared with the experiment's [task] (``task_problems``), never used in
its place.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseg.data.case_files import MAX_CHANNEL_FILES, Case, files_by_case
from fedseg.data.errors import Problem
from fedseg.data.readers import case_name
from fedseg.data.task import Task

FOLDERS = ("imagesTr", "labelsTr")
DATASET_JSON = "dataset.json"
MAX_JSON_BYTES = 1 << 20
"""dataset.json is a few hundred bytes; the Decathlon's with its file lists is under 100 KB."""
CHANNEL = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


@dataclass(frozen=True)
class DatasetJson:
    """What fedseg reads from dataset.json: label name -> value, and the channels' names."""

    labels: dict[str, int] | None
    channels: tuple[str, ...] | None


def is_nnunet(root: Path) -> bool:
    return any((root / name).is_dir() for name in FOLDERS) or (root / DATASET_JSON).is_file()


def nnunet_cases(root: Path) -> tuple[list[Case], list[Problem]]:
    """The cases of ``imagesTr/`` + ``labelsTr/``, and every problem with them, per file."""
    problems: list[Problem] = []
    meta = read_dataset_json(root, problems)
    listed = {}
    for kind in FOLDERS:
        if not (root / kind).is_dir():
            problems.append(Problem(root / kind, f"missing folder: an nnU-Net/Decathlon site needs "
                                                 f"{' and '.join(f + '/' for f in FOLDERS)}"))
        else:
            listed[kind] = files_by_case(root / kind, problems)
    if len(listed) < 2:
        return [], problems
    labels = listed["labelsTr"]
    if listed["imagesTr"] and listed["imagesTr"].keys() <= labels.keys():  # the Decathlon's names (case_0001 too)
        images, named = {name: (path,) for name, path in listed["imagesTr"].items()}, set(listed["imagesTr"])
    else:
        images, named = group_channels(listed["imagesTr"], meta.channels if meta else None, problems)
    for name in sorted(images.keys() - labels.keys()):
        first = images[name][0]
        ending = _ending(first, name, case_name(first) != name)
        problems.append(Problem(first, f"image without label: expected {root / 'labelsTr'}/{name}{ending}"))
    for name in sorted(labels.keys() - named):  # a case whose channels are wrong is reported once
        problems.append(Problem(labels[name], f"label without image: expected {root / 'imagesTr'}/{name}_0000"
                                              f"{_ending(labels[name], name)} (one file per channel)"))
    cases = [Case(n, images[n][0], labels[n], channels=images[n] if case_name(images[n][0]) != n else ())
             for n in sorted(images.keys() & labels.keys())]
    return cases, problems


def group_channels(files: dict[str, Path], channel_names: tuple[str, ...] | None,
                   problems: list[Problem]) -> tuple[dict[str, tuple[Path, ...]], set[str]]:
    """Image files by case, channels in order: ``CASE_0000``, ``CASE_0001``, ... (nnU-Net v2), or,
    when no file has such a suffix, one file per case (Decathlon); and every case name the files
    name. A case missing a channel is a problem naming the file it lacks, and is left out."""
    split = {name: CHANNEL.match(name) for name in files}
    if not any(split.values()):
        return {name: (path,) for name, path in files.items()}, set(files)
    for name in sorted(n for n, m in split.items() if m is None):
        problems.append(Problem(files[name], "no channel suffix, while other files here have one (CASE_0000, "
                                             "CASE_0001, ... one file per channel): rename it to "
                                             f"{name}_0000{_ending(files[name], name)}"))
    by_case: dict[str, dict[int, Path]] = {}
    for name, match in split.items():
        if match is not None:
            by_case.setdefault(match["case"], {})[int(match["index"])] = files[name]
    expected = len(channel_names) if channel_names else max(max(c) + 1 for c in by_case.values())
    grouped = {}
    for case, channels in sorted(by_case.items()):
        first = next(iter(channels.values()))
        wanted = range(min(max(expected, max(channels) + 1), MAX_CHANNEL_FILES + 1))
        missing = [i for i in wanted if i not in channels]
        extra = [i for i in channels if i >= expected]
        if missing:
            names = ", ".join(f"{case}_{i:04d}{_ending(first, case, True)}" for i in missing[:5])
            problems.append(Problem(first.parent / f"{case}_{missing[0]:04d}{_ending(first, case, True)}",
                                    f"case '{case}' lacks channel file(s) {names}: every case needs "
                                    f"{expected} channel file(s), _0000 to _{expected - 1:04d}"))
        elif extra:
            problems.append(Problem(channels[extra[0]], f"case '{case}' has channel {extra[0]}, but dataset.json "
                                                        f"names {expected} channel(s): remove the file or add the "
                                                        "channel to channel_names"))
        else:
            grouped[case] = tuple(channels[i] for i in sorted(channels))
    return grouped, set(by_case) | {name for name, match in split.items() if match is None}


def read_dataset_json(root: Path, problems: list[Problem]) -> DatasetJson | None:
    """dataset.json's labels and channel names (None where absent or wrong: a problem says why)."""
    path = root / DATASET_JSON
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_JSON_BYTES:
        problems.append(Problem(path, f"{path.stat().st_size:,} bytes, more than the {MAX_JSON_BYTES:,} a "
                                      "dataset.json needs: is it the right file?"))
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:  # undecodable, not JSON, an integer of 5000 digits
        problems.append(Problem(path, f"not a JSON file ({str(exc)[:120]}); fix or remove it"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(path, f"holds a JSON {type(data).__name__}, not an object"))
        return None
    return DatasetJson(_labels(data.get("labels"), path, problems),
                       _channels(data.get("channel_names", data.get("modality")), path, problems))


def task_problems(root: Path, task: Task) -> list[Problem]:
    """Where the site's dataset.json disagrees with the experiment's [task] (labels, channels)."""
    problems: list[Problem] = []
    meta = read_dataset_json(root, problems) if is_nnunet(root) else None
    path = root / DATASET_JSON
    if meta and meta.labels is not None:
        by_value = {v: k for k, v in task.labels.items()}
        for name, value in meta.labels.items():
            if value not in by_value:
                problems.append(Problem(path, f"labels: '{name}' = {value} is not declared in [task] labels "
                                              f"{task.labels}: declare it, or check the label values"))
            elif by_value[value].casefold() != name.casefold():
                problems.append(Problem(path, f"labels: value {value} is '{name}' here but '{by_value[value]}' "
                                              "in [task] labels: check that the classes are the same"))
    if meta and meta.channels is not None and len(meta.channels) != task.in_channels:
        problems.append(Problem(path, f"names {len(meta.channels)} channel(s) {list(meta.channels)} but "
                                      f"task.in_channels is {task.in_channels}: set task.in_channels to match"))
    return problems


def _labels(value: Any, path: Path, problems: list[Problem]) -> dict[str, int] | None:
    """nnU-Net v2's ``{"name": value}`` or the Decathlon's ``{"value": "name"}``."""
    if value is None:
        return None
    if isinstance(value, dict) and 0 < len(value) <= 1000:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            return {str(k)[:100]: int(v) for k, v in value.items()}
        if all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in value.items()):
            return {v[:100]: int(k) for k, v in value.items()}
        if any(isinstance(v, list) for v in value.values()):
            problems.append(Problem(path, "labels: region-based labels (a class as a list of values) are not "
                                          "supported; declare one value per class"))
            return None
    problems.append(Problem(path, f"labels must map class names to integer values, e.g. "
                                  f'{{"background": 0, "liver": 1}}; got {str(value)[:80]}'))
    return None


def _channels(value: Any, path: Path, problems: list[Problem]) -> tuple[str, ...] | None:
    if value is None:
        return None
    keys = [str(i) for i in range(len(value))] if isinstance(value, dict) else []
    if not (isinstance(value, dict) and 0 < len(value) <= MAX_CHANNEL_FILES and sorted(value) == sorted(keys)
            and all(isinstance(v, str) for v in value.values())):
        problems.append(Problem(path, f"channel_names must map \"0\", \"1\", ... to channel names, e.g. "
                                      f'{{"0": "T2", "1": "ADC"}}; got {str(value)[:80]}'))
        return None
    return tuple(value[k][:100] for k in keys)


def _ending(path: Path, name: str, channel: bool = False) -> str:
    """The file's suffix after its case name (``.nii.gz``), channel suffix dropped when ``channel``."""
    stem = len(name) + (5 if channel else 0)
    return path.name[stem:]
