"""The experiment file: one TOML that describes a federated run, checked before anything runs.

Every section maps onto a dataclass of the layer that uses it; unknown keys and bad values are
errors that name the file, the section and the key. Relative site paths are relative to the
experiment file. The resolved experiment (absolute paths, defaults filled in) is what a run
directory keeps, and what ``--resume`` compares against.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedseg.data.acquisition import RECONTRASTS
from fedseg.data.dataset import SiteSpec, site_task
from fedseg.data.preprocessing import Preprocessing
from fedseg.data.splits import SplitFractions
from fedseg.data.task import Task
from fedseg.errors import UserError
from fedseg.models.registry import ModelConfig
from fedseg.plans.base import ComputePlan
from fedseg.plans.registry import build_plan
from fedseg.runtime.intake import GuardConfig
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.runtime.site_app import check_fault
from fedseg.training.trainer import TrainingConfig



class ConfigError(UserError):
    """The experiment file is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = 10
    """Rounds of the averaging plans; for ``cyclic``, full cycles through the sites."""
    validate_global: bool = True
    """Evaluate the global model on each site's validation cases after every round."""
    fine_tune_epochs: int = 0
    """FL_local: after federated training each site fine-tunes the global model this many epochs."""
    folds: int = 1
    """k > 1: k federations on k train/val re-splits of every site; FL_global is their ensemble."""

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.folds < 1:
            raise ValueError(f"folds must be >= 1, got {self.folds}")
        if self.fine_tune_epochs < 0:
            raise ValueError(f"fine_tune_epochs must be >= 0, got {self.fine_tune_epochs}")


@dataclass(frozen=True)
class Experiment:
    name: str
    seed: int
    task: Task
    sites: tuple[SiteSpec, ...]
    splits: SplitFractions = SplitFractions()
    preprocessing: Preprocessing = Preprocessing()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    federation: FederationConfig = FederationConfig()
    deployment: RoundPolicy = RoundPolicy()
    """The round policy: timeout and minimum responses. In simulation a rejected update counts as missing."""
    guard: GuardConfig = GuardConfig()
    """The coordinator's update-norm guard (``[guard]``)."""
    arms: tuple[str, ...] = ("federated",)
    plan: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    faults: dict[str, str] = field(default_factory=dict)
    """Simulation only: sites that misbehave on purpose (``{site = "nan" | "random" | "scale:K"}``)."""
    """``name`` of the compute plan and its plan-specific options (``[plan]`` table)."""
    source: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment as plain TOML-able data (absolute paths, no None values)."""
        data: dict[str, Any] = {"name": self.name, "seed": self.seed, "arms": list(self.arms)}
        for section in SECTIONS:
            data[section] = _plain(dataclasses.asdict(getattr(self, section)))
        data["preprocessing"].pop("extra", None)
        data["plan"] = dict(self.plan)
        if self.faults:
            data["faults"] = dict(self.faults)
        data["sites"] = [_plain({"name": s.name, "path": str(s.path), "shard": s.shard, "labels": s.labels,
                                 "recontrast": s.recontrast}) for s in self.sites]
        return data

    def compute_plan(self) -> ComputePlan:
        """A fresh compute plan for this experiment's sites."""
        return experiment_plan(self.plan, self.seed, [s.name for s in self.sites], self.training,
                               self.federation.rounds)

    @property
    def runtime_rounds(self) -> int:
        """Rounds the runtime runs, as the compute plan counts them (cyclic: cycles x sites)."""
        return self.compute_plan().total_rounds

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS = {"task": Task, "splits": SplitFractions, "preprocessing": Preprocessing,
            "model": ModelConfig, "training": TrainingConfig, "federation": FederationConfig,
            "deployment": RoundPolicy, "guard": GuardConfig}
TOP_LEVEL = {"name", "seed", "sites", "arms", "plan", "faults", *SECTIONS}
ARMS = ("federated", "standalone", "centralized")


def load_experiment(path: Path) -> Experiment:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: experiment file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_experiment(data, source=path)


def parse_experiment(data: dict[str, Any], source: Path | None = None) -> Experiment:
    where = str(source) if source else "experiment"
    base = source.parent.resolve() if source else Path.cwd()
    unknown = set(data) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    if "task" not in data:
        raise ConfigError(f"{where}: missing [task] section, e.g. [task] labels = {{ background = 0, organ = 1 }}")
    sections = {name: _build(cls, data.get(name, {}), name, where) for name, cls in SECTIONS.items()}
    try:
        sections["preprocessing"].check_dims(sections["task"].spatial_dims)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    sites = tuple(_site(entry, i, base, where) for i, entry in enumerate(data.get("sites", [])))
    if not sites:
        raise ConfigError(f"{where}: no sites; add [[sites]] tables with name and path")
    for site in sites:
        try:
            site_task(site, sections["task"])
        except ValueError as exc:
            raise ConfigError(f"{where}: [[sites]] {exc}") from None
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: site names must be unique, got {names}")
    seed = data.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"{where}: seed must be an integer, got {seed!r}")
    name = data.get("name", source.stem if source else "experiment")
    arms = data.get("arms", ["federated"])
    if not (isinstance(arms, list) and arms and set(arms) <= set(ARMS) and len(set(arms)) == len(arms)):
        raise ConfigError(f"{where}: arms must be a non-empty list of distinct values from {list(ARMS)}, got {arms!r}")
    if "centralized" in arms and any(site.labels is not None for site in sites):
        raise ConfigError(f"{where}: the 'centralized' arm pools all sites' labels, which needs every site "
                          "fully annotated: remove 'centralized' from arms or the sites' labels tables")
    plan = _plan(data.get("plan", {}), seed, sites, sections, where)
    faults = _faults(data.get("faults", {}), names, where)
    return Experiment(name=str(name), seed=seed, sites=sites, arms=tuple(arms), plan=plan, faults=faults,
                      source=source,
                      **sections)


def _plan(table: Any, seed: int, sites: tuple[SiteSpec, ...], sections: dict, where: str) -> dict[str, Any]:
    """The ``[plan]`` table, checked by building the plan once for these sites."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [plan] must be a table with a name, e.g. [plan] name = \"fedavg\"")
    plan = {"name": "fedavg", **table}
    if "cycles" in plan:
        raise ConfigError(f"{where}: [plan] cycles is set by [federation] rounds (the number of cycles); remove it")
    try:
        experiment_plan(plan, seed, [s.name for s in sites], sections["training"], sections["federation"].rounds)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: [plan] {exc}") from None
    return plan


def _faults(table: Any, names: list[str], where: str) -> dict[str, str]:
    """The ``faults`` table: site name -> a fault of ``runtime.site_app.FAULTS``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: faults must be a table of site = fault, e.g. faults = {{ {names[0]} = \"nan\" }}")
    for site, fault in table.items():
        if site not in names:
            raise ConfigError(f"{where}: faults names {site!r}, which is not a site of the experiment ({names})")
        try:
            check_fault(fault if isinstance(fault, str) else repr(fault))
        except ValueError as exc:
            raise ConfigError(f"{where}: faults.{site}: {exc}") from None
    return dict(table)


def experiment_plan(plan: dict[str, Any], seed: int, site_names: list[str], training: TrainingConfig,
                    rounds: int) -> ComputePlan:
    """The compute plan an experiment's ``[plan]`` table describes, over ``rounds`` = [federation]
    rounds (for cyclic: cycles; the plan's ``total_rounds`` counts the runtime rounds)."""
    options = {k: v for k, v in plan.items() if k != "name"}
    return build_plan(plan["name"], seed, site_names, training.local_epochs, training.local_steps, options,
                      rounds=rounds)


def _site(entry: Any, index: int, base: Path, where: str) -> SiteSpec:
    label = f"[[sites]] #{index + 1}"
    if not isinstance(entry, dict) or "name" not in entry or "path" not in entry:
        raise ConfigError(f"{where}: {label} needs name and path")
    allowed = ("name", "path", "shard", "labels", "recontrast")
    unknown = set(entry) - set(allowed)
    if unknown:
        raise ConfigError(f"{where}: {label} has unknown key(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    if entry.get("recontrast") not in (None, *RECONTRASTS):
        raise ConfigError(f"{where}: {label} recontrast must be one of {list(RECONTRASTS)}, "
                          f"got {entry['recontrast']!r}")
    labels = entry.get("labels")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(v, int) for v in labels.values())):
        raise ConfigError(f"{where}: {label} labels must map class names to integer values, got {labels!r}")
    shard = entry.get("shard")
    if shard is not None:
        if not (isinstance(shard, list) and len(shard) == 2 and all(isinstance(v, int) for v in shard)
                and 0 <= shard[0] < shard[1]):
            raise ConfigError(f"{where}: {label} shard must be [index, count] with 0 <= index < count, got {shard}")
        shard = tuple(shard)
    path = Path(str(entry["path"])).expanduser()
    return SiteSpec(str(entry["name"]), path if path.is_absolute() else (base / path).resolve(), shard, labels,
                    entry.get("recontrast"))


def _build(cls: type, table: Any, section: str, where: str):
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{section}] must be a table")
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: [{section}] unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key, value in table.items():
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"{where}: [{section}] {key} = {value!r} has the wrong type; expected {_describe(hints[key])}")
    values = {k: tuple(v) if isinstance(v, list) and "tuple" in str(hints[k]) else v for k, v in table.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: [{section}] {exc}") from None


def _type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "nothing")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
