"""In-process simulation: every site in one process, seeded, checkpointed after each round.

The runtime only moves weights: the plan decides who trains and how updates combine, the site
trainers train. Only the sites the plan picks for a round train, get a metrics line (with their
``aggregation_weight``) and, with ``validate_global``, validate the new global model; the
round's first line also keeps the plan's whole ``round_summary`` under ``plan``.
``resume=True`` continues after the last checkpointed round; because each round's randomness
comes from the plan's round config, the result equals an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from fedseg.plans.base import ComputePlan
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import CaseMetrics, RoundConfig, Update, Weights, mean_dice


class Site(Protocol):
    """What the runtime needs of a site: the trainer's two verbs."""

    def train(self, weights: Weights, config: RoundConfig) -> Update: ...

    def evaluate(self, weights: Weights, split: str = "test") -> list[CaseMetrics]: ...


class RoundObserver(Protocol):
    """Progress hooks (a progress bar, a log); the runtime works without one."""

    def round_started(self, round: int, sites: list[str]) -> None: ...

    def site_trained(self, round: int, site: str, update: Update) -> None: ...

    def round_finished(self, round: int, records: list[dict]) -> None: ...


class SimulationRuntime:
    def __init__(self, plan: ComputePlan, sites: Mapping[str, Site], run_dir: RunDirectory,
                 observer: RoundObserver | None = None, validate_global: bool = True):
        self.plan = plan
        self.sites = dict(sites)
        self.run_dir = run_dir
        self.observer = observer
        self.validate_global = validate_global

    def run(self, initial_weights: Weights, rounds: int, resume: bool = False) -> Weights:
        """Train for ``rounds`` rounds and return the final global weights."""
        weights, start = initial_weights, 0
        if resume and (last := self.run_dir.last_round()) is not None:
            done, weights, plan_state = last
            self.plan.load_state_dict(plan_state)
            self.run_dir.drop_metrics_after(done)
            start = done + 1
        elif resume:
            self.run_dir.drop_metrics_after(-1)
        for round in range(start, rounds):
            weights = self._round(round, weights)
        return weights

    def _round(self, round: int, weights: Weights) -> Weights:
        configs = self.plan.configure_train(round, sorted(self.sites))
        if self.observer:
            self.observer.round_started(round, list(configs))
        updates: dict[str, Update] = {}
        for site, config in configs.items():
            updates[site] = self.sites[site].train(weights, config)
            if self.observer:
                self.observer.site_trained(round, site, updates[site])
        weights = self.plan.aggregate_train(round, weights, updates)
        summary = self.plan.round_summary()
        records = [self._record(round, site, update, weights) for site, update in updates.items()]
        for record in records:
            if (weight := summary.get("aggregation_weights", {}).get(record["site"])) is not None:
                record["aggregation_weight"] = weight
        if records and summary:
            records[0]["plan"] = summary
        self.run_dir.append_metrics(records)
        self.run_dir.save_round(round, weights, self.plan.state_dict())
        if self.observer:
            self.observer.round_finished(round, records)
        return weights

    def _record(self, round: int, site: str, update: Update, global_weights: Weights) -> dict:
        record = {"round": round, "site": site, "n_samples": update.n_samples, **update.metrics}
        if self.validate_global:
            started = time.perf_counter()
            cases = self.sites[site].evaluate(global_weights, "val")
            if cases:
                record["global_val_dice"] = mean_dice(cases)
                record["global_val_seconds"] = time.perf_counter() - started
        return record
