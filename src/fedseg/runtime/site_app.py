"""One site's side of every round, the same in simulation and deployment.

A site app answers the engine's four tasks: ``join`` (its case counts per split), ``train``,
``validate`` (the global model's Dice on its validation cases) and ``evaluate`` (per-case test
scores). It checks the model it receives exactly as the coordinator checks updates (names,
shapes, dtypes of its own network, finite values) before it trains on or scores it; SCAFFOLD's
control variate, sent beside the model under ``types.CONTROL_PREFIX``, is split off and checked the
same way against the network's float keys, then handed to the trainer. Where scores
leave the site (deployment), test cases are named by pseudonyms: their position in the site's
sorted test split (``<site>-case-007``), never file names, which may carry patient identifiers.

``fault`` makes the site misbehave on purpose, for robustness studies and the tests of the
coordinator's guards: ``nan`` (a NaN in its update), ``random`` (random weights of the right
shapes), ``scale:K`` (its change to the global model multiplied by K), ``drop`` (it trains, masks
or encrypts its update, then drops out before sending it: the case secure aggregation must
recover from). It is a site-side setting only: nothing the coordinator sends can switch it on.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fedseg.plans.checks import UpdateRejected, check_weights
from fedseg.plans.robust import shrink
from fedseg.plans.scaffold import float_keys, split_controls
from fedseg.runtime.secure_site import TASKS as SECURE_TASKS
from fedseg.runtime.secure_site import SecureSite
from fedseg.seeding import stable_seed
from fedseg.types import CaseMetrics, RoundConfig, Update, Weights, mean_dice

TASKS = ("join", "train", "validate", "evaluate", "membership", *SECURE_TASKS)
FAULTS = ("nan", "random", "scale:K", "drop")


class Trainer(Protocol):
    """What a site app needs of the site trainer (``training.trainer.SiteTrainer``)."""

    def train(self, weights: Weights, config: RoundConfig, control: Weights | None = None) -> Update: ...

    def evaluate(self, weights: Any, split: str = "test") -> list[CaseMetrics]: ...

    def case_losses(self, weights: Weights, split: str) -> list[float]: ...

    def case_counts(self) -> dict[str, int]: ...

    def weights(self) -> Weights: ...


def check_fault(fault: str | None) -> str | None:
    """``fault`` if it is one of FAULTS (``scale:K`` with a finite K), else ValueError."""
    if fault is None or fault in ("nan", "random", "drop"):
        return fault
    kind, _, factor = fault.partition(":")
    try:
        ok = kind == "scale" and np.isfinite(float(factor))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"fault must be one of nan, random, scale:K (e.g. scale:100), drop, got {fault!r}")
    return fault


class SiteApp:
    def __init__(self, name: str, trainer: Trainer, pseudonyms: bool = False, fault: str | None = None,
                 he_secret: bytes | None = None):
        self.name, self.trainer, self.pseudonyms, self.fault = name, trainer, pseudonyms, check_fault(fault)
        self.template = shapes_of(trainer.weights())
        """The names, shapes and dtypes a received model must have (no values: a site app costs no model copy)."""
        self.attacked = False
        self.secure = SecureSite(name, self.template, he_secret)
        """The site's side of secure sums (``he_secret``: its CKKS key from the kit, if any)."""

    def handle(self, task: str, weights: Any, payload: Any = None) -> Any:
        """The reply to ``task``; UpdateRejected when what arrived cannot be used."""
        if task == "join":
            return self.trainer.case_counts()
        if task not in TASKS:
            raise UpdateRejected(f"unknown task {str(task)[:40]!r}")
        if task in SECURE_TASKS:
            return self.secure.handle(task, payload)
        if isinstance(weights, list) and task in ("train", "membership"):  # ensembles are scored, not trained
            raise UpdateRejected(f"task '{task}' takes one model, not an ensemble of {len(weights)}")
        received, control = weights, None
        if task == "train" and isinstance(weights, dict):
            weights, control = self._controls(weights)
        for member in weights if isinstance(weights, list) else [weights]:
            self.check_model(member)
        if task == "train":
            if not isinstance(payload, RoundConfig):
                raise UpdateRejected("a training task needs round instructions")
            trained = (self.trainer.train(weights, payload) if control is None else
                       self.trainer.train(weights, payload, control=control))
            update = self._misbehave(trained, received, payload)
            if "secure_sum" in payload.extra:
                update = self.secure.protect(update, weights, payload.extra["secure_sum"])
            if self.fault == "drop":
                raise UpdateRejected("the site dropped out after training (fault injection: 'drop')")
            return update
        if task == "validate":
            cases = self.trainer.evaluate(weights, "val")
            return {"global_val_dice": mean_dice(cases)} if cases else {}
        if task == "membership":
            return self._membership(weights)
        cases = self.trainer.evaluate(weights, "test")
        return pseudonymous(self.name, cases) if self.pseudonyms else cases

    def _membership(self, weights: Weights) -> dict[str, float]:
        """The loss-threshold attack on this site's training vs test cases: one AUC leaves the site,
        no case's loss, and only once per run (it is a statistic of the training cases that no DP
        budget covers: asked again with other weights, it would tell more)."""
        from fedseg.privacy.membership import attack_auc

        if self.attacked:
            raise UpdateRejected("this site scores the membership attack once per run")
        self.attacked = True
        members, others = self.trainer.case_losses(weights, "train"), self.trainer.case_losses(weights, "test")
        auc = attack_auc(members, others) if members and others else float("nan")
        return {"membership_auc": auc, "train_cases": float(len(members)), "test_cases": float(len(others))}

    def _controls(self, weights: Weights) -> tuple[Weights, Weights | None]:
        """The model and SCAFFOLD's control variate (None when none came), checked like the model."""
        model, control = split_controls(weights)
        if control:
            check_weights(control, float_keys(self.template), "the coordinator's SCAFFOLD control variate")
        return model, control or None

    def check_model(self, weights: Any) -> None:
        """The global model fits this site's network and is finite."""
        if not isinstance(weights, dict):
            raise UpdateRejected("the global model must be a table of parameters")
        check_weights(weights, self.template, "global model")

    def _misbehave(self, update: Update, global_weights: Weights, config: RoundConfig) -> Update:
        if self.fault in (None, "drop"):
            return update
        weights = {key: np.array(value) for key, value in update.weights.items()}
        floats = [key for key, value in weights.items() if np.issubdtype(value.dtype, np.floating)]
        if self.fault == "nan":
            weights[floats[0]].flat[0] = np.nan
        elif self.fault == "random":
            rng = np.random.default_rng(stable_seed(config.seed, "fault"))
            for key in floats:
                weights[key] = rng.standard_normal(weights[key].shape).astype(weights[key].dtype)
        else:  # the change to the global model multiplied by K: the same move as the guard's clipping
            weights = shrink(weights, global_weights, float(self.fault.partition(":")[2]))
        return Update(weights, update.n_samples, update.metrics)


def shapes_of(weights: Weights) -> Weights:
    """``weights`` as read-only arrays of their shapes and dtypes that hold one value each (zero)."""
    return {key: np.broadcast_to(np.zeros((), np.asarray(value).dtype), np.shape(value))
            for key, value in weights.items()}


def pseudonymous(site: str, cases: list[CaseMetrics]) -> list[CaseMetrics]:
    """Per-case scores renamed ``<site>-case-NNN`` by their position in the sorted test split."""
    order = sorted(cases, key=lambda c: c.case)
    return [CaseMetrics(f"{site}-case-{i:03d}", c.dice, c.hd95, c.bbox_coverage, c.failed)
            for i, c in enumerate(order)]
