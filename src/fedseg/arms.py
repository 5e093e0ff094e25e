"""The comparison arms every paper in the field reports, trained under one budget.

- ``federated``: the compute plan over all sites -> ``FL_global``; with
  ``federation.fine_tune_epochs > 0`` each site then fine-tunes it on its own training data ->
  ``FL_local_<site>`` (Wang et al.'s FL_local). With ``[plan] local_norm`` (FedBN) ``FL_local_<site>``
  is ``FL_global`` with that site's own normalisation (``training.local_norm``), fine-tuned if asked.
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
from typing import TYPE_CHECKING

from fedseg.data.dataset import SiteDataset
from fedseg.experiment import Experiment
from fedseg.plans.base import ComputePlan
from fedseg.plans.fedavg import FedAvg
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.simulation import InProcessDispatcher
from fedseg.runtime.site_app import SiteApp
from fedseg.seeding import stable_seed
from fedseg.study import round_engine, site_app
from fedseg.types import Model, Weights

if TYPE_CHECKING:
    from fedseg.training.trainer import SiteTrainer

ProgressFactory = Callable[[str], object]
"""``progress(arm)`` -> a context manager that is a RoundObserver."""


@dataclass
class ArmRunner:
    """Trains an experiment's arms into one run directory, reusing finished models on resume."""

    experiment: Experiment
    datasets: dict[str, SiteDataset]
    run_dir: RunDirectory
    initial: Weights
    resume: bool = False
    progress: ProgressFactory | None = None
    he_keys: tuple[bytes, bytes] | None = None
    """(secret, public) CKKS contexts of a simulated consortium with ``[privacy] homomorphic``."""

    def __post_init__(self) -> None:
        if self.experiment.privacy.homomorphic and self.he_keys is None:
            from fedseg.privacy.homomorphic import make_keys

            self.he_keys = make_keys()

    def federated(self, make_plan: Callable[[], ComputePlan]) -> dict[str, Model]:
        """FL_global (with ``federation.folds = k > 1``: the ensemble of k federations, each on
        its own train/val re-split of every site, as Sarma et al.'s 5 averaged submodels) and,
        with ``fine_tune_epochs`` or ``local_norm``, each site's FL_local (one per ensemble member)."""
        members: list[tuple[Weights, dict[str, SiteApp]]] = []
        for fold, name, arm_dir in federations(self.experiment, self.run_dir):
            datasets = {site: folded(self.experiment, data, fold) for site, data in self.datasets.items()}
            apps = self._apps(datasets, arm_dir.root)
            members.append((self._train(name, make_plan(), apps, arm_dir, federation=True), apps))
        models: dict[str, Model] = {"FL_global": _one_or_all([weights for weights, _ in members])}
        epochs, local_norm = self.experiment.federation.fine_tune_epochs, self.experiment.plan.get("local_norm") is True
        for site in list(self.datasets) if epochs or local_norm else []:
            tuned = [self.fl_local(site, weights, apps[site].trainer, fold)
                     for fold, (weights, apps) in enumerate(members)]
            models[f"FL_local_{site}"] = _one_or_all(tuned)
        return models

    def fl_local(self, site: str, weights: Weights, trainer: SiteTrainer, fold: int = 0) -> Weights:
        """``site``'s FL_local from fold ``fold``'s FL_global: fine-tuned by ``trainer`` (the site's
        own, which trained in that federation) and/or given the site's own normalisation (FedBN).
        The same code at a deployed site (``deployed_arms``) as in simulation."""
        epochs, local_norm = self.experiment.federation.fine_tune_epochs, self.experiment.plan.get("local_norm") is True
        name = f"FL_local_{site}" + (f"_fold{fold}" if self.experiment.federation.folds > 1 else "")
        if (saved := self._saved(name)) is None:
            local = trainer.local_norm.own(weights) if local_norm else weights  # FedBN: its own norm
            seed = stable_seed(self.experiment.seed, "fine_tune", site, fold)
            saved = self._save(name, trainer.fine_tune(local, epochs, seed).weights if epochs else local)
        return saved

    def standalone(self) -> dict[str, Weights]:
        models = {}
        for site, data in self.datasets.items():
            name = f"standalone_{site}"
            arm_dir = self._arm_dir(name)
            apps = self._apps({site: data}, arm_dir.root)
            models[name] = self._train(name, self._single_site_plan(), apps, arm_dir)
        return models

    def centralized(self) -> dict[str, Weights]:
        arm_dir = self._arm_dir("centralized")
        pooled = SiteDataset.pooled("centralized", list(self.datasets.values()))
        apps = self._apps({"centralized": pooled}, arm_dir.root)
        return {"centralized": self._train("centralized", self._single_site_plan(), apps, arm_dir)}

    # -------------------------------------------------------------------------------------------
    def _train(self, name: str, plan: ComputePlan, apps: dict[str, SiteApp], arm_dir: RunDirectory,
               federation: bool = False) -> Weights:
        """Run ``plan`` for its ``total_rounds`` (or reuse the saved model when resuming)."""
        if (saved := self._saved(name)) is not None:
            return saved
        with self.progress(name) if self.progress else nullcontext() as observer:
            engine = round_engine(self.experiment, plan, InProcessDispatcher(apps), arm_dir, list(apps), observer,
                                  federation, self.he_keys[1] if self.he_keys else None)
            weights = engine.run(self.initial, plan.total_rounds, resume=self.resume)
        return self._save(name, weights)

    def _single_site_plan(self) -> ComputePlan:
        training = self.experiment.training
        return FedAvg(seed=self.experiment.seed, local_epochs=training.local_epochs, local_steps=training.local_steps,
                      rounds=self.experiment.federation.rounds)

    def _apps(self, datasets: dict[str, SiteDataset], root: Path) -> dict[str, SiteApp]:
        return {name: site_app(self.experiment, data, state_dir=root / "sites" / name,
                               fault=self.experiment.faults.get(name), he_secret=self.he_keys and self.he_keys[0])
                for name, data in datasets.items()}

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


def federations(experiment: Experiment, run_dir: RunDirectory) -> list[tuple[int | None, str, RunDirectory]]:
    """The federations of the federated arm as (fold, model name, run directory): FL_global in
    ``run_dir`` itself, or with ``folds = k > 1`` one per fold in ``arms/FL_global_fold<i>`` (created).
    Simulation and deployment lay them out alike."""
    folds = experiment.federation.folds
    if folds == 1:
        return [(None, "FL_global", run_dir)]
    found = []
    for fold in range(folds):
        arm_dir = RunDirectory(run_dir.root / "arms" / f"FL_global_fold{fold}")
        arm_dir.create()
        found.append((fold, f"FL_global_fold{fold}", arm_dir))
    return found


def folded(experiment: Experiment, data: SiteDataset, fold: int | None) -> SiteDataset:
    """``data`` as fold ``fold`` of the experiment's federations sees it (None: as it is)."""
    return data if fold is None else data.fold(fold, experiment.federation.folds, experiment.seed)


def _one_or_all(members: list[Weights]) -> Model:
    """A single model as itself, several as an ensemble."""
    return members[0] if len(members) == 1 else members
