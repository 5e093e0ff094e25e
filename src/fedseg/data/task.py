"""What is being segmented: the global label set, dimensionality and input channels."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

from fedseg.tables import check_range

MAX_LABEL = 2**31 - 1
"""Label values are stored as integers of at most 32 bits."""


@dataclass(frozen=True)
class Task:
    """``labels`` maps class names to the values stored in label files; background must be 0."""

    labels: dict[str, int]
    spatial_dims: int = 3
    in_channels: int = 1

    def __post_init__(self) -> None:
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
