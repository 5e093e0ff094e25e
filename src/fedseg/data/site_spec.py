"""Where a site's data lives, as the experiment file declares it (no reading here, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseg.data.acquisition import RECONTRASTS
from fedseg.data.task import Task
from fedseg.files import safe_name
from fedseg.tables import ConfigError


@dataclass(frozen=True)
class SiteSpec:
    """Where a site's data lives; ``shard = (index, count)`` takes one part of a pooled folder.

    ``labels`` declares a site that annotates only some of the task's classes (partial labels):
    class name -> value in this site's label files, names from the task, background included.
    ``name`` becomes folder and file names (checkpoints, the site's state), so it is a ``safe_name``.
    """

    name: str
    path: Path
    shard: tuple[int, int] | None = None
    labels: dict[str, int] | None = None
    recontrast: str | None = None
    """Simulated acquisition difference applied to this site's images (see ``data.acquisition``)."""
    cases: int | None = None
    """The site's number of cases as the consortium agreed; the coordinator refuses a site that
    declares more when it joins (its declaration bounds the weight of its updates)."""

    def __post_init__(self) -> None:
        safe_name(self.name, "site name")
        if self.cases is not None and not (isinstance(self.cases, int) and not isinstance(self.cases, bool)
                                           and 1 <= self.cases <= 10_000_000):
            raise ValueError(f"site {self.name}: cases must be a whole number from 1 to 10000000, "
                             f"got {self.cases!r:.40}")


def site_task(spec: SiteSpec, task: Task) -> Task:
    """The task as this site's label files encode it (its own values for its annotated classes)."""
    if spec.labels is None:
        return task
    unknown = set(spec.labels) - set(task.labels)
    if unknown or task.class_names[0] not in spec.labels:
        raise ValueError(f"site '{spec.name}' labels must name classes of the task {task.class_names}, "
                         f"the background '{task.class_names[0]}' included; got {spec.labels}")
    return Task(dict(spec.labels), task.spatial_dims, task.in_channels,
                {c: n for c, n in task.names.items() if c in spec.labels})


SITE_KEYS = ("name", "path", "shard", "labels", "recontrast", "cases")


def parse_site(entry: Any, index: int, base: Path, task: Task, where: str) -> SiteSpec:
    """One ``[[sites]]`` table of the experiment file ``where``; ConfigError naming the site and key."""
    label = f"[[sites]] #{index + 1}"
    if not isinstance(entry, dict) or "name" not in entry or "path" not in entry:
        raise ConfigError(f"{where}: {label} needs name and path")
    unknown = set(entry) - set(SITE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: {label} has unknown key(s) {sorted(unknown)}; allowed: {', '.join(SITE_KEYS)}")
    if entry.get("recontrast") not in (None, *RECONTRASTS):
        raise ConfigError(f"{where}: {label} recontrast must be one of {list(RECONTRASTS)}, "
                          f"got {entry['recontrast']!r:.40}")
    labels = entry.get("labels")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(v, int) for v in labels.values())):
        raise ConfigError(f"{where}: {label} labels must map class names to integer values, got {labels!r:.80}")
    shard = entry.get("shard")
    if shard is not None:
        if not (isinstance(shard, list) and len(shard) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in shard) and 0 <= shard[0] < shard[1]):
            raise ConfigError(f"{where}: {label} shard must be [index, count] with 0 <= index < count, "
                              f"got {shard!r:.40}")
        shard = tuple(shard)
    try:
        spec = SiteSpec(safe_name(entry["name"], f"{label} name"), _path(entry["path"], base, f"{where}: {label} path"),
                        shard, labels, entry.get("recontrast"), entry.get("cases"))
        site_task(spec, task)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return spec


def _path(value: Any, base: Path, where: str) -> Path:
    """A site's folder or manifest, absolute; relative paths are relative to the experiment file."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ConfigError(f"{where} = {value!r:.60} must be the path of the site's folder or CSV manifest, "
                          "e.g. path = \"data/hospital_a\"")
    try:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    except (OSError, RuntimeError) as exc:  # ~unknown_user, a symlink loop
        raise ConfigError(f"{where} = {value!r:.60} cannot be resolved: {exc}") from None
