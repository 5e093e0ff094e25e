"""What the FLARE components need from fedseg, as protocols: the adapter knows the plan and the
site trainer only through these, and builds them with a factory named in the job's settings
(``module:function``, as FLARE itself names components), so the layers above the runtime stay
above it.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from fedseg.plans.base import ComputePlan
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import CaseMetrics, RoundConfig, Update, Weights


class CoordinatorApp(Protocol):
    name: str
    sites: list[str]
    rounds: int
    validate_global: bool
    policy: RoundPolicy

    def compute_plan(self) -> ComputePlan: ...

    def initial_weights(self) -> Weights: ...

    def prepare(self, run_dir: RunDirectory, resume: bool) -> None:
        """Check the run directory against this experiment and record the experiment in it."""

    def finish(self, run_dir: RunDirectory, test_cases: dict[str, list[CaseMetrics]], resumed: bool) -> None:
        """Write results and report from the final model's per-site test scores."""


class SiteApp(Protocol):
    def train(self, weights: Weights, config: RoundConfig) -> Update: ...

    def evaluate(self, weights: Weights, split: str = "test") -> list[CaseMetrics]: ...


def load_factory(reference: str):
    """The function ``module:function`` names: for the coordinator ``f(experiment_toml) ->
    CoordinatorApp``, for a site ``f(experiment_toml, site, data_folder, state_dir) -> SiteApp``."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
