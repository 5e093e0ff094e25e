"""The comparison arms every paper in the field reports, trained under one budget.

- ``federated``: the compute plan over all sites -> ``FL_global``; with
  ``federation.fine_tune_epochs > 0`` each site then fine-tunes it on its own training data ->
  ``FL_local_<site>`` (Wang et al.'s FL_local).
- ``standalone``: one model per site trained on that site's data only -> ``standalone_<site>``.
- ``centralized``: one model on all sites' training data pooled -> ``centralized``.

Every arm starts from the same initial weights, uses the same model, preprocessing, loss and
optimizer, and gets the same number of rounds of ``local_epochs`` (or ``local_steps``) each, so a
standalone model sees its data as often as that site trains in the federation; the pooled model
sees every case as often. Each arm keeps its own run directory under ``arms/`` and resumes on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from fedseg.data.dataset import SiteDataset
from fedseg.experiment import Experiment
from fedseg.plans.base import ComputePlan
from fedseg.plans.fedavg import FedAvg
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.simulation import SimulationRuntime
from fedseg.seeding import stable_seed
from fedseg.training.trainer import SiteTrainer
from fedseg.types import Weights

ProgressFactory = Callable[[str, int, int], object]
"""``progress(arm, rounds, n_sites)`` -> a context manager that is a RoundObserver."""


@dataclass
class ArmRunner:
    experiment: Experiment
    datasets: dict[str, SiteDataset]
    run_dir: RunDirectory
    initial: Weights
    resume: bool = False
    progress: ProgressFactory | None = None

    def federated(self, plan: ComputePlan, rounds: int) -> dict[str, Weights]:
        trainers = self._trainers(self.datasets, self.run_dir.root)
        models = {"FL_global": self._train("FL_global", plan, trainers, rounds, self.run_dir)}
        epochs = self.experiment.federation.fine_tune_epochs
        if epochs:
            for site, trainer in trainers.items():
                name = f"FL_local_{site}"
                models[name] = self._saved(name)
                if models[name] is None:
                    seed = stable_seed(self.experiment.seed, "fine_tune", site)
                    models[name] = self._save(name, trainer.fine_tune(models["FL_global"], epochs, seed).weights)
        return models

    def standalone(self) -> dict[str, Weights]:
        models = {}
        for site, data in self.datasets.items():
            name = f"standalone_{site}"
            arm_dir = self._arm_dir(name)
            trainers = self._trainers({site: data}, arm_dir.root)
            models[name] = self._train(name, self._single_site_plan(), trainers,
                                       self.experiment.federation.rounds, arm_dir)
        return models

    def centralized(self) -> dict[str, Weights]:
        arm_dir = self._arm_dir("centralized")
        pooled = SiteDataset.pooled("centralized", list(self.datasets.values()))
        trainers = self._trainers({"centralized": pooled}, arm_dir.root)
        return {"centralized": self._train("centralized", self._single_site_plan(), trainers,
                                           self.experiment.federation.rounds, arm_dir)}

    # -------------------------------------------------------------------------------------------
    def _train(self, name: str, plan: ComputePlan, trainers: dict[str, SiteTrainer], rounds: int,
               arm_dir: RunDirectory) -> Weights:
        if (saved := self._saved(name)) is not None:
            return saved
        watch = self.progress(name, rounds, len(trainers)) if self.progress else nullcontext()
        with watch as observer:
            runtime = SimulationRuntime(plan, trainers, arm_dir, observer, self.experiment.federation.validate_global)
            weights = runtime.run(self.initial, rounds, resume=self.resume)
        return self._save(name, weights)

    def _single_site_plan(self) -> ComputePlan:
        training = self.experiment.training
        return FedAvg(seed=self.experiment.seed, local_epochs=training.local_epochs, local_steps=training.local_steps)

    def _trainers(self, datasets: dict[str, SiteDataset], root: Path) -> dict[str, SiteTrainer]:
        return {name: SiteTrainer(data, self.experiment.model, self.experiment.training,
                                  state_dir=root / "sites" / name) for name, data in datasets.items()}

    def _arm_dir(self, name: str) -> RunDirectory:
        arm_dir = RunDirectory(self.run_dir.root / "arms" / name)
        arm_dir.create()
        return arm_dir

    def _saved(self, name: str) -> Weights | None:
        """A model finished before an interruption (only reused when resuming)."""
        exists = (self.run_dir.checkpoints / f"{name}.pt").exists()
        return self.run_dir.load_model(name) if self.resume and exists else None

    def _save(self, name: str, weights: Weights) -> Weights:
        self.run_dir.save_model(name, weights)
        return weights
