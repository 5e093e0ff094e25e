"""The comparison arms of a deployed run: each site trains its own standalone and FL_local models
with the simulation's code (``arms.ArmRunner``, in its state folder ``fedseg-state/<run>/<site>/arms``),
so they are the simulated models bit for bit, and keeps them there.

Every model is then scored on every site's test cases by the round engine's ``evaluate``, one model
at a time: a site started with ``--share-models score`` (the default) hands a model to the
coordinator, which checks it as any update, sends it to every site to score and forgets it (it is
never written to the run directory); a site started with ``--share-models none`` scores its models
on its own test cases only, and the results say why the other sites did not.
"""

from __future__ import annotations

import math
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedseg.arms import ArmRunner
from fedseg.data.dataset import SiteDataset
from fedseg.errors import UserError
from fedseg.experiment import Experiment
from fedseg.plans.checks import UpdateRejected, check_weights
from fedseg.runtime.engine import RoundEngine
from fedseg.runtime.intake import TRAIN_METRICS, VALIDATE_METRICS, check_cases, check_metrics
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.site_app import SiteApp
from fedseg.runtime.tracking import Tracked
from fedseg.study import initial_weights
from fedseg.types import CaseMetrics, Update, Weights

SHARE_CHOICES = ("score", "none")
"""``fedseg site --share-models``: hand models to the coordinator for scoring elsewhere, or not."""
CURVE_METRICS = {**{key: TRAIN_METRICS[key] for key in ("train_loss", "val_dice")}, **VALIDATE_METRICS}
"""All of a standalone model's training record that leaves its site: these scalars per round, with
their ranges as the intake checks them in a training reply (the report's learning curves, written to
``arms/<model>/metrics.jsonl`` as in simulation)."""


def site_models(experiment: Experiment, site: str) -> list[str]:
    """The models ``site`` trains and keeps in a deployed run (none: the federated arm alone)."""
    local = experiment.federation.fine_tune_epochs or experiment.plan.get("local_norm") is True
    return ([f"FL_local_{site}"] if "federated" in experiment.arms and local else []) + (
        [f"standalone_{site}"] if "standalone" in experiment.arms else [])


class SiteArms:
    """A deployed site's side of the arms: ``handle(task, weights, payload)`` for ``wire.ARM_TASKS``."""

    def __init__(self, experiment: Experiment, data: SiteDataset, app: SiteApp, state_dir: Path, share: str,
                 fold_app: Callable[[int], SiteApp] | None = None):
        if share not in SHARE_CHOICES:
            raise UserError(f"--share-models must be one of {', '.join(SHARE_CHOICES)}, got {share!r}")
        # MLflow is the coordinator's: a job's mlflow_uri never makes the site process connect anywhere
        experiment = replace(experiment, tracking=replace(experiment.tracking, mlflow_uri=None))
        self.experiment, self.data, self.app, self.share, self.fold_app = experiment, data, app, share, fold_app
        self.run_dir = RunDirectory(state_dir / "arms")  # the site's own: never sent anywhere

    def handle(self, task: str, weights: dict, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise UpdateRejected(f"task '{task}' needs a table of instructions")
        if task == "arms":
            return self.train(weights, payload.get("resume"))
        name = payload.get("model")
        if not isinstance(name, str) or name not in site_models(self.experiment, self.app.name):
            raise UpdateRejected(f"site '{self.app.name}' holds no model named {str(name)[:60]!r}")
        folds = self.experiment.federation.folds
        stored = [f"{name}_fold{fold}" for fold in range(folds)] if folds > 1 and name.startswith("FL_local_") else [
            name]  # FL_local of k folds: the ensemble of one model per fold, as in simulation
        members = [self.run_dir.load_model(one) for one in stored]
        if any(member is None for member in members):
            raise UpdateRejected(f"site '{self.app.name}' has not trained {name} yet")
        model = members[0] if len(members) == 1 else members
        if task == "share_model":
            if self.share != "score":
                raise UpdateRejected(f"site '{self.app.name}' keeps its models (--share-models {self.share})")
            return model
        return self.app.handle("evaluate", model)  # score_held: checked and scored as any model

    def train(self, fl_global: dict, resume: Any) -> dict[str, Any]:
        """Train (or, resuming, reuse) this site's FL_local and standalone models from ``fl_global``."""
        if not isinstance(resume, bool):
            raise UpdateRejected("the arms task must say resume = true/false")
        folds = self.experiment.federation.folds
        members = fl_global if isinstance(fl_global, list) else [fl_global]
        if len(members) != folds or (folds > 1 and self.fold_app is None):
            raise UpdateRejected(f"FL_global must be {folds} model(s), one per fold; {len(members)} arrived")
        for member in members:
            self.app.check_model(member)
        site, names = self.app.name, site_models(self.experiment, self.app.name)
        self.run_dir.create()
        runner = ArmRunner(self.experiment, {site: self.data}, self.run_dir, initial_weights(self.experiment), resume)
        if f"FL_local_{site}" in names:  # from each fold's FL_global, by the trainer of that fold's federation
            for fold, member in enumerate(members):
                runner.fl_local(site, member, (self.app if folds == 1 else self.fold_app(fold)).trainer, fold)
        curves = {}
        if f"standalone_{site}" in names:
            runner.standalone()
            records = RunDirectory(self.run_dir.root / "arms" / f"standalone_{site}").read_metrics()
            curves[f"standalone_{site}"] = [{"round": r["round"], **{k: float(r[k]) for k in CURVE_METRICS
                                                                     if math.isfinite(r.get(k, math.nan))}}
                                            for r in records if "rejected" not in r]
        return {"models": names, "shared": self.share == "score", "curves": curves}


def score_site_models(engine: RoundEngine, experiment: Experiment, fl_global: Weights, resume: bool,
                      template: Weights) -> tuple[dict[str, dict[str, list[CaseMetrics]]], dict[str, str]]:
    """Each site trains its arms; then each of their models' per-site test scores (in the
    simulation's order: every FL_local, then every standalone) and the reasons of missing scores."""
    sites = [spec.name for spec in experiment.sites]
    expected = {site: site_models(experiment, site) for site in sites}
    held: dict[str, bool] = {}  # site -> shares its models

    rounds, timeout = experiment.federation.rounds, engine.policy.round_timeout

    def trained(site: str, reply: Any) -> None:
        if reply["models"] != expected[site]:
            raise UpdateRejected(f"trained {reply['models']}, not the experiment's {expected[site]}")
        if not set(reply["curves"]) <= {name for name in expected[site] if name.startswith("standalone_")}:
            raise UpdateRejected(f"learning curves of models it does not train: {sorted(reply['curves'])[:5]}")
        curves = {name: check_curve(points, site, rounds) for name, points in reply["curves"].items()}
        held[site] = reply["shared"]
        for name, points in curves.items():  # the curves only: the model stays at the site
            arm = RunDirectory(engine.run_dir.root / "arms" / name)
            arm.root.mkdir(parents=True, exist_ok=True)
            arm.metrics_path.unlink(missing_ok=True)  # a resumed run sends the whole curve again
            arm.append_metrics(points)
            Tracked(None, experiment.tracking, experiment.name, experiment.to_dict(), arm.root, rounds).replay(points)

    failed = engine.ask(None, fl_global, timeout * (rounds + 1))(  # a site trains up to rounds + 1 rounds' worth
        "arms", {s: {"resume": resume} for s in sites if expected[s] and s in engine.dispatcher.available()}, trained)
    scores: dict[str, dict[str, list[CaseMetrics]]] = {}
    unscored: dict[str, str] = {}
    for prefix in ("FL_local", "standalone"):
        for owner in sites:
            name = f"{prefix}_{owner}"
            if name not in expected[owner]:
                continue
            if owner not in held:
                reason = f"{owner} did not train it: {failed.get(owner, 'offline or did not answer')}"
                unscored.update({f"{site} ({name})": reason for site in sites})
                continue
            count = experiment.federation.folds if prefix == "FL_local" else 1
            found, problems = (_shared(engine, owner, name, template, count) if held[owner] else
                               _held(engine, owner, name, [s for s in sites if s != owner]))
            unscored.update({f"{site} ({name})": reason for site, reason in problems.items()})
            if found:
                scores[name] = found
    return scores, unscored


def check_curve(points: Any, site: str, rounds: int) -> list[dict[str, Any]]:
    """A standalone model's learning curve from ``site``: at most one point per round, each round in
    range, only ``CURVE_METRICS`` and in their ranges; the points as metrics records of ``site``."""
    if not isinstance(points, list) or len(points) > rounds:
        raise UpdateRejected(f"a learning curve must be a list of at most {rounds} rounds")
    seen: set[int] = set()
    for point in points:
        if not isinstance(point, dict) or not set(point) <= {"round", *CURVE_METRICS}:
            raise UpdateRejected(f"a learning curve's point may hold round and {', '.join(CURVE_METRICS)} only")
        round = point.get("round")
        if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round < rounds or round in seen:
            raise UpdateRejected(f"a learning curve's round must be distinct and in 0..{rounds - 1}, got {round!r}")
        seen.add(round)
        metrics = check_metrics({key: value for key, value in point.items() if key != "round"}, CURVE_METRICS)
        if bad := [key for key, value in metrics.items() if not math.isfinite(value)]:  # NaN Dice: dropped at the site
            raise UpdateRejected(f"learning curve: {', '.join(bad)} must be finite (a site leaves such values out)")
    return [{**point, "site": site} for point in points]


def _ask(engine: RoundEngine, task: str, owner: str, name: str) -> tuple[Any, str | None]:
    """One model's ``task`` sent to its owner: (reply, None) or (None, why not)."""
    got: dict[str, Any] = {}
    payloads = {owner: {"model": name}} if owner in engine.dispatcher.available() else {}
    failed = engine.ask(None)(task, payloads, got.__setitem__)  # a protocol phase: audited, checked, timed out
    return got.get(owner), None if owner in got else failed.get(owner, "offline or did not answer")


def _shared(engine: RoundEngine, owner: str, name: str, template: Weights, count: int) -> tuple[dict, dict[str, str]]:
    """The model (an ensemble of ``count`` > 1) fetched from its owner, checked, scored by every site, dropped."""
    reply, why = _ask(engine, "share_model", owner, name)
    if why is not None:
        return {}, {site: f"{owner} did not hand {name} over: {why}" for site in engine.sites}
    try:
        if not isinstance(reply, Update):
            raise UpdateRejected("a shared model must be a table of parameters")
        members = reply.weights if isinstance(reply.weights, list) else [reply.weights]
        if len(members) != count:
            raise UpdateRejected(f"{owner}'s {name} must be {count} model(s) (one per fold), it sent {len(members)}")
        for member in members:
            check_weights(member, template, f"{owner}'s {name}")
    except UpdateRejected as exc:
        return {}, dict.fromkeys(engine.sites, str(exc))
    return engine.evaluate(reply.weights)


def _held(engine: RoundEngine, owner: str, name: str, others: list[str]) -> tuple[dict, dict[str, str]]:
    """A model its owner keeps: scored on the owner's test cases only."""
    reason = f"{owner} keeps its models at the site (fedseg site --share-models none): scored at {owner} only"
    problems = dict.fromkeys(others, reason)
    reply, why = _ask(engine, "score_held", owner, name)
    try:
        if why is not None:
            raise UpdateRejected(why)
        return {owner: check_cases(reply, engine.declared.get(owner), engine.classes)}, problems
    except UpdateRejected as exc:
        return {}, {**problems, owner: str(exc)}
