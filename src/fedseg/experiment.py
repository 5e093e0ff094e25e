"""The experiment file: one TOML that describes a federated run, checked before anything runs.

Every section maps onto a dataclass of the layer that uses it; unknown keys and bad values are
errors that name the file, the section and the key. Relative site paths are relative to the
experiment file. The resolved experiment (absolute paths, defaults filled in) is what a run
directory keeps, and what ``--resume`` compares against.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedseg.data.preprocessing import Preprocessing
from fedseg.data.site_spec import SiteSpec, parse_site
from fedseg.data.splits import SplitFractions
from fedseg.data.task import Task
from fedseg.files import safe_name
from fedseg.models.registry import ModelConfig
from fedseg.plans.base import ComputePlan
from fedseg.plans.client_dp import ClientDP
from fedseg.plans.fedavg import FedAvg
from fedseg.plans.registry import build_plan
from fedseg.privacy import accounting
from fedseg.privacy.config import PrivacyConfig
from fedseg.runtime.intake import GuardConfig
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.runtime.site_app import check_fault
from fedseg.runtime.tracking import TrackingConfig
from fedseg.tables import ConfigError, build_table, check_numbers, read_toml
from fedseg.training.config import TrainingConfig
from fedseg.training.local_norm import local_norm_problem

__all__ = ["ConfigError", "Experiment", "load_experiment", "parse_experiment"]
MAX_SEED = 2**32 - 1
NAME_EXAMPLE = "hippocampus_fedavg"


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
    privacy: PrivacyConfig = PrivacyConfig()
    """Differential privacy, secure aggregation, homomorphic encryption (``[privacy]``)."""
    tracking: TrackingConfig = TrackingConfig()
    """TensorBoard files and an MLflow server to watch the run with (``[tracking]``; the coordinator's only)."""
    arms: tuple[str, ...] = ("federated",)
    plan: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    faults: dict[str, str] = field(default_factory=dict)
    """Simulation only: sites that misbehave on purpose (``{site = "nan" | "random" | "scale:K" | "drop"}``)."""
    """``name`` of the compute plan and its plan-specific options (``[plan]`` table)."""
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        safe_name(self.name, "experiment name", NAME_EXAMPLE)  # it names the run's folder and the FLARE job

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
                                 "recontrast": s.recontrast, "cases": s.cases}) for s in self.sites]
        return data

    def compute_plan(self) -> ComputePlan:
        """A fresh compute plan for this experiment's sites."""
        return experiment_plan(self.plan, self.seed, [s.name for s in self.sites], self.training,
                               self.federation.rounds, self.privacy)

    @property
    def runtime_rounds(self) -> int:
        """Rounds the runtime runs, as the compute plan counts them (cyclic: cycles x sites)."""
        return self.compute_plan().total_rounds

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS = {"task": Task, "splits": SplitFractions, "preprocessing": Preprocessing,
            "model": ModelConfig, "training": TrainingConfig, "federation": FederationConfig,
            "deployment": RoundPolicy, "guard": GuardConfig, "privacy": PrivacyConfig,
            "tracking": TrackingConfig}
TOP_LEVEL = {"name", "seed", "sites", "arms", "plan", "faults", *SECTIONS}
ARMS = ("federated", "standalone", "centralized")


def load_experiment(path: Path) -> Experiment:
    """The experiment in the TOML file at ``path``; a ConfigError naming the file for anything wrong."""
    path = Path(path)
    return parse_experiment(read_toml(path, "experiment file"), source=path)


def parse_experiment(data: dict[str, Any], source: Path | None = None) -> Experiment:
    where = str(source) if source else "experiment"
    base = source.parent.resolve() if source else Path.cwd()
    check_numbers(data, where)
    unknown = set(data) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    if "task" not in data:
        raise ConfigError(f"{where}: missing [task] section, e.g. [task] labels = {{ background = 0, organ = 1 }}")
    sections = {name: build_table(cls, data.get(name, {}), name, where) for name, cls in SECTIONS.items()}
    try:
        _check_sizes(sections["preprocessing"], sections["model"], sections["task"].spatial_dims)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    entries = data.get("sites", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: no sites; add [[sites]] tables with name and path")
    sites = tuple(parse_site(entry, i, base, sections["task"], where) for i, entry in enumerate(entries))
    names = [s.name for s in sites]
    if len({n.lower() for n in names}) != len(names):
        raise ConfigError(f"{where}: site names must be unique, also ignoring case (they name folders), got {names}")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{where}: seed must be an integer from 0 to {MAX_SEED}, got {seed!r:.40}")
    name = _name(data, source, where)
    arms = data.get("arms", ["federated"])
    if not (isinstance(arms, list) and arms and all(isinstance(a, str) for a in arms) and set(arms) <= set(ARMS)
            and len(set(arms)) == len(arms)):
        raise ConfigError(f"{where}: arms must be a non-empty list of distinct values from {list(ARMS)}, "
                          f"got {arms!r:.80}")
    if "centralized" in arms and any(site.labels is not None for site in sites):
        raise ConfigError(f"{where}: the 'centralized' arm pools all sites' labels, which needs every site "
                          "fully annotated: remove 'centralized' from arms or the sites' labels tables")
    plan = _plan(data.get("plan", {}), seed, sites, sections, where)
    faults = _faults(data.get("faults", {}), names, where)
    if plan.get("local_norm") is True and (problem := local_norm_problem(sections["model"].norm,
                                                                         sections["privacy"].dp)):
        raise ConfigError(f"{where}: {problem}")
    try:
        sections["privacy"].check_with(plan["name"], plan, sections["guard"].norm_action, sections["model"].norm,
                                       len(sites), sections["model"].name)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Experiment(name=name, seed=seed, sites=sites, arms=tuple(arms), plan=plan, faults=faults,
                      source=source, **sections)


def _name(data: dict[str, Any], source: Path | None, where: str) -> str:
    """The top-level ``name``, else the file's stem: it names the run's folder, so a ``safe_name``."""
    if "name" in data:
        try:
            return safe_name(data["name"], "top-level name", NAME_EXAMPLE)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    stem = source.stem if source else "experiment"
    try:
        return safe_name(stem, "experiment name")
    except ValueError:
        example = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:64] or NAME_EXAMPLE
        raise ConfigError(f"{where}: the file name {stem!r} cannot name the experiment (the name becomes the run's "
                          f"folder): add a top-level name of letters, digits, '_' and '-', e.g. "
                          f"name = \"{example}\"") from None


def _check_sizes(preprocessing: Preprocessing, model: ModelConfig, spatial_dims: int) -> None:
    """The sizes agree with the task's dimensions, and what reaches the network fits the model."""
    preprocessing.check_dims(spatial_dims)
    if preprocessing.patch_size is not None:
        model.check_input_size(preprocessing.patch_size, "preprocessing.patch_size")
    elif preprocessing.spatial_size is not None:  # whole images, padded to the model's factor
        factor = model.downsampling_factor
        padded = tuple(-(-size // factor) * factor for size in preprocessing.spatial_size)
        model.check_input_size(padded, "preprocessing.spatial_size (padded to the model's factor)")


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
                    rounds: int, privacy: PrivacyConfig = PrivacyConfig()) -> ComputePlan:
    """The compute plan an experiment's ``[plan]`` table describes, over ``rounds`` = [federation]
    rounds (for cyclic: cycles; the plan's ``total_rounds`` counts the runtime rounds), with
    client-level DP when ``privacy`` asks for it."""
    options = {k: v for k, v in plan.items() if k != "name"}
    built = build_plan(plan["name"], seed, site_names, training.local_epochs, training.local_steps, options,
                       rounds=rounds)
    if privacy.dp == "client" and isinstance(built, FedAvg):  # the [privacy] check allows averaging plans only
        built.client_dp = ClientDP(privacy.clip, privacy.epsilon, privacy.delta,
                                   built.sampling.count(len(site_names)) / len(site_names), built.total_rounds,
                                   accounting, privacy.accountant)
    return built


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
