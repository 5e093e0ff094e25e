"""What is being segmented: the global label set, dimensionality and input channels.

A class is found in label maps (NIfTI, PNG, NRRD) by its stored value and in DICOM SEG segments,
RTSTRUCT ROIs and 3D Slicer segment names by its name: the class's own name, or the names given
for it. ``labels = { background = 0, liver = "Liver" }`` declares a class by its DICOM name (a list
gives several spellings); such a class stores the value of its position in ``labels`` (here 1).
``names = { liver = ["Liver", "LIVER_GTV"] }`` gives names to a class declared with a value. Names
compare with whitespace collapsed and case folded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

from fedseg.tables import check_range

MAX_LABEL = 2**31 - 1
"""Label values are stored as integers of at most 32 bits."""


@dataclass(frozen=True)
class Task:
    """``labels`` maps class names to the values stored in label files; background must be 0."""

    labels: dict[str, int]
    spatial_dims: int = 3
    in_channels: int = 1
    names: dict[str, Any] = field(default_factory=dict)
    """Class -> the names its segments/ROIs carry in DICOM SEG, RTSTRUCT or .seg.nrrd files."""

    def __post_init__(self) -> None:
        if not isinstance(self.labels, dict) or not isinstance(self.names, dict):
            raise ValueError(f"task.labels and task.names must be tables, got {self.labels!r:.60}, {self.names!r:.60}")
        labels, names = _split_named(dict(self.labels), dict(self.names))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "names", names)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"task.spatial_dims must be 2 or 3, got {self.spatial_dims}")
        check_range("task.in_channels", self.in_channels, 1, 64)
        if any(not isinstance(k, str) or not k.strip() for k in self.labels):
            raise ValueError(f"task.labels names must be non-empty, got {list(self.labels)}")
        values = list(self.labels.values())
        if 0 not in values:
            raise ValueError(f"task.labels must map a background class to 0, got {self.labels}")
        if any(not isinstance(v, Integral) or isinstance(v, bool) or not 0 <= v <= MAX_LABEL for v in values):
            raise ValueError(f"task.labels values must be integers from 0 to {MAX_LABEL} as stored in the label files, "
                             f"got {self.labels}")
        if len(set(values)) != len(values) or len(values) < 2:
            raise ValueError(f"task.labels needs at least two classes with distinct values, got {self.labels}")

        unknown = set(self.names) - set(self.labels)
        if unknown:
            raise ValueError(f"task.names gives names for {sorted(unknown)}, which task.labels does not declare "
                             f"(classes: {list(self.labels)})")
        self.dicom_names  # noqa: B018 -- a DICOM name given to two classes is an error now, not at reading

    @property
    def dicom_names(self) -> dict[str, int]:
        """``name_key(name)`` -> stored value, for every class's names (its own name by default); a name
        two classes claim is an error."""
        found: dict[str, int] = {}
        for cls, value in self.labels.items():
            for name in self.names.get(cls, (cls,)):
                key = name_key(name)
                if found.get(key, value) != value:
                    raise ValueError(f"task: the DICOM name '{name}' is given to two classes; give each class its "
                                     "own names")
                found[key] = value
        return found

    @property
    def class_values(self) -> list[int]:
        """Stored label values in class-index order (background first)."""
        return sorted(self.labels.values())

    @property
    def class_names(self) -> list[str]:
        by_value = {v: k for k, v in self.labels.items()}
        return [by_value[v] for v in self.class_values]

    @property
    def foreground_names(self) -> list[str]:
        return self.class_names[1:]

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def name_key(name: str) -> str:
    """How a segment or ROI name is compared with the task's: whitespace runs collapsed, case folded
    ("Liver", " liver ", "LIVER" are one name)."""
    return " ".join(str(name).split()).casefold()


def _name_list(cls: str, value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, (list, tuple)) or not items or len(items) > 64
            or any(not isinstance(n, str) or not n.strip() or len(n) > 64 for n in items)):
        raise ValueError(f"{where} {cls} = {value!r:.80}: give a DICOM segment/ROI name or a list of 1 to 64 "
                         "names (non-empty text, at most 64 characters each, as DICOM allows)")
    return tuple(items)


def _split_named(labels: dict[str, Any], names: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
    """``labels`` with classes declared by name given their position as value, and every class's names."""
    resolved = {cls: _name_list(cls, value, "task.names") for cls, value in names.items()}
    taken = {v for v in labels.values() if isinstance(v, Integral) and not isinstance(v, bool)}
    for position, (cls, value) in enumerate(list(labels.items())):
        if isinstance(value, (str, list, tuple)):
            if cls in resolved:
                raise ValueError(f"task: class '{cls}' is named both in task.labels and task.names; keep one")
            resolved[cls] = _name_list(cls, value, "task.labels")
            if position in taken:
                raise ValueError(f"task.labels: '{cls}' is declared by name, so it stores the value of its position "
                                 f"({position}), which another class already uses; give it a value instead "
                                 f"({cls} = N) and its names in task.names ({cls} = {list(resolved[cls])})")
            labels[cls] = position
            taken.add(position)
    return labels, resolved
