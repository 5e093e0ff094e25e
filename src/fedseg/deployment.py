"""An experiment file run for real across institutions: the coordinator and site classes a job runs.

FLARE starts the two classes named here (``COMPONENTS``, fixed in code; each kit's allow-list
admits exactly these), with the experiment's text as their argument. They assemble the study with
``study``, as simulation does, and run it through the round engine with FLARE as the dispatcher,
so the plan, the checks, the model, the preprocessing and the trainer are the ones simulation
uses. What differs: each site reads the data folder given to ``fedseg site --data`` (the ``path``
of its ``[[sites]]`` entry is ignored there), scores leave a site under pseudonyms, and the run
directory is written on the coordinator without the example overlays (they are pictures of
patients' images, which stay at the sites).

The ``federated`` arm runs one federation, or with ``folds = k`` one per fold in turn (each site
re-splits its cases for the fold as in simulation; tasks name their fold) and FL_global is their
ensemble; ``standalone`` models and FL_local (fine-tuning, FedBN) are trained at each site and
scored as ``deployed_arms`` says; ``centralized`` training needs pooled data and is refused.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from fedseg.arms import federations, folded
from fedseg.data.dataset import SiteDataset
from fedseg.data.errors import DataError
from fedseg.deployed_arms import SiteArms, score_site_models
from fedseg.errors import UserError
from fedseg.experiment import Experiment, parse_experiment
from fedseg.external import every_case_tested
from fedseg.files import safe_name, write_text_atomic
from fedseg.report.markdown import write_report
from fedseg.runtime.flare.controller import FlareController
from fedseg.runtime.flare.executor import FlareSiteExecutor
from fedseg.runtime.flare.job import Components
from fedseg.runtime.flare.processes import DEVICE_ENV, MAX_EPSILON_ENV, SHARE_MODELS_ENV
from fedseg.runtime.flare.provision import load_he_context
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.site_app import SiteApp
from fedseg.runtime.tracking import SiteProgress
from fedseg.study import (initial_weights, load_site, prepare_run_dir, round_engine, site_app, track_results,
                          write_results)
from fedseg.tables import loads_toml


def deployable(experiment: Experiment) -> Experiment:
    """``experiment`` if it can run in deployment, else a UserError that says what to change."""
    where = experiment.source or "experiment"
    if "federated" not in experiment.arms or "centralized" in experiment.arms:
        raise UserError(f"{where}: deployment runs the 'federated' arm, and 'standalone' beside it; set arms = "
                        "[\"federated\"] or [\"federated\", \"standalone\"] (the centralized arm needs every "
                        "site's data in one place: simulate it)")
    if experiment.tracking.mlflow_uri and not experiment.tracking.remote:
        raise UserError(f"{where}: [tracking] mlflow_uri must be an MLflow server's http(s):// address in deployment "
                        "(a file: store would be written on the coordinator's own disk)")
    if experiment.faults:
        raise UserError(f"{where}: faults are simulated only; in deployment a site injects one itself "
                        "('fedseg site KIT --data DIR --fault ...'): remove the faults table")
    return experiment


MLFLOW_SERVERS_ENV = "FEDSEG_MLFLOW_SERVERS"
"""The MLflow servers (``host`` or ``host:port``, comma-separated) the coordinator's operator lets a
job log to: the MLflow client sends the coordinator's credentials to whatever server it is given."""


def allowed_tracking(experiment: Experiment, warn: Callable[[str], None]) -> Experiment:
    """``experiment`` without its ``mlflow_uri`` (and a warning saying why) unless the coordinator's
    operator lists that server in ``FEDSEG_MLFLOW_SERVERS``: the job, not the operator, names it."""
    uri = experiment.tracking.mlflow_uri
    if uri is None:
        return experiment
    parts = urlsplit(uri)
    allowed = {name.strip().lower() for name in os.environ.get(MLFLOW_SERVERS_ENV, "").split(",") if name.strip()}
    host = (parts.hostname or "").lower()
    if host and (host in allowed or f"{host}:{parts.port}" in allowed):
        return experiment
    warn(f"[tracking] mlflow_uri {uri[:120]!r} is not among the MLflow servers this coordinator's operator allows "
         f"({MLFLOW_SERVERS_ENV}={','.join(sorted(allowed)) or 'unset'}); the run goes on without MLflow. To log "
         f"there, start the coordinator with {MLFLOW_SERVERS_ENV}={host}:{parts.port or ''} in its environment")
    return replace(experiment, tracking=replace(experiment.tracking, mlflow_uri=None))


def unbounded_sites(experiment: Experiment) -> list[str]:
    """Sites whose FedAvg weight rests on their own word alone: the plan weights by ``n_samples``
    and the experiment states no agreed ``[[sites]] cases`` for them."""
    plan = experiment.plan
    by_size = plan.get("weighted_by", "n_samples") == "n_samples" and plan.get("aggregator", "mean") in (
        "mean", "clipped_mean") and plan["name"] not in ("cyclic", "single_transfer")
    return [site.name for site in experiment.sites if site.cases is None] if by_size else []


def parse_text(text: str) -> Experiment:
    return parse_experiment(loads_toml(text, "the job's experiment"))


def site_budget(experiment: Experiment, site: str, cap: float, state: Path, run: str) -> None:
    """A site started with ``--max-epsilon`` trains a run only under sample-level DP whose epsilon
    (once per model it trains: each fold's federation and a standalone arm), added to what its other runs were
    allowed (basic composition, kept in ``state/dp_runs.json``; a resumed run counts once), stays
    within ``cap``; else a UserError in the site's log."""
    privacy, record = experiment.privacy, state / "dp_runs.json"
    if privacy.dp != "sample":
        raise UserError(f"site '{site}' trains only under sample-level DP (it was started with --max-epsilon "
                        f"{cap:g}): set [privacy] dp = \"sample\" and epsilon <= {cap:g}")
    try:
        runs = json.loads(record.read_text()) if record.exists() else {}
        runs = {str(name): float(value) for name, value in runs.items()}
    except (ValueError, TypeError, AttributeError):
        raise UserError(f"{record} is damaged: this site's record of the budgets its runs were allowed; restore "
                        "it (deleting it forgets what earlier runs spent)") from None
    others = sum(value for name, value in runs.items() if name != run)
    # each fold's federation and a standalone model: another release of the same cases
    models = experiment.federation.folds + ("standalone" in experiment.arms)
    if others + models * privacy.epsilon > cap + 1e-9:
        raise UserError(f"site '{site}': epsilon {privacy.epsilon:g} for run '{run}'"
                        f"{f' ({models} times: each model it trains on the same cases)' if models > 1 else ''} and "
                        f"{others:g} "
                        f"for its other runs exceed this site's --max-epsilon {cap:g}: lower [privacy] epsilon to at "
                        f"most {max(cap - others, 0) / models:g}")
    state.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record, json.dumps({**runs, run: models * privacy.epsilon}, indent=2) + "\n")


class Coordinator(FlareController):
    """The coordinator of one deployed run: the federated arm through the round engine, then
    every site's test scores of the final model, results and report; with ``evaluate`` (a job of
    ``fedseg evaluate --admin``) it trains nothing and scores the job's model (``external_deployment``)."""

    def __init__(self, experiment: str, resume: bool = False, evaluate: dict | None = None):
        super().__init__(experiment, resume)
        self.evaluate = evaluate

    def run_study(self) -> None:
        if self.evaluate is not None:
            from fedseg.external_deployment import score_only

            return score_only(self, self.evaluate)
        started = time.perf_counter()
        experiment = allowed_tracking(deployable(parse_text(self.experiment)), self.warning)
        run_dir = RunDirectory(self.runs_root() / safe_name(experiment.name, "experiment name"))
        resume = self.resuming(run_dir)
        prepare_run_dir(run_dir, experiment, resume,  # refuses a directory that holds another run
                        hint=f"the coordinator already holds a run named '{experiment.name}'; submit with --resume "
                             "to continue it, or give the experiment another name")
        self.run_dir = run_dir  # from here on this job owns the run directory
        rounds = experiment.runtime_rounds
        self.set_state("running", rounds=rounds)
        he_public = load_he_context(self.kit(), secret=False) if experiment.privacy.homomorphic else None
        secrets = self.kit() / "fedseg-state" / run_dir.root.name  # not in the download
        members = []
        for fold, name, arm_dir in federations(experiment, run_dir):  # one, or one per fold as in simulation
            self.fold = fold
            progress = SiteProgress(lambda fold=fold, **state: self.set_state("running", rounds=rounds, fold=fold,
                                                                              **state))
            engine = round_engine(experiment, experiment.compute_plan(), self, arm_dir,
                                  [s.name for s in experiment.sites], federation=True, he_public=he_public,
                                  secrets=secrets if fold is None else secrets / f"fold{fold}", observer=progress)
            if resume and (run_dir.checkpoints / f"{name}.pt").exists():  # a fold finished before an interruption
                members.append(run_dir.load_model(name))
                continue
            engine.join(set(engine.sites))
            self.check_delta(experiment, engine.declared)
            members.append(engine.run(initial_weights(experiment), rounds, resume=resume))
            run_dir.save_model(name, members[-1])
        self.fold, weights = None, members[0] if len(members) == 1 else members
        if len(members) > 1:  # the ensemble is scored by an engine of the run directory itself, as in simulation
            engine = round_engine(experiment, experiment.compute_plan(), self, run_dir,
                                  [s.name for s in experiment.sites], federation=True, he_public=he_public,
                                  secrets=secrets)
        scores, unscored = engine.evaluate(weights)
        if unscored:
            self.warning(f"no test scores from {sorted(unscored)}: {unscored}; the report leaves them out")
        if not scores:
            raise UserError("no site returned usable test scores; the final model is in the run directory")
        membership = engine.membership(weights) if experiment.privacy.membership_attack and len(members) == 1 else {}
        scores, template = {"FL_global": scores}, initial_weights(experiment)
        arms, arms_unscored = score_site_models(engine, experiment, weights, resume, template)
        write_results(run_dir, experiment, {**scores, **arms}, started, resume, {**unscored, **arms_unscored},
                      membership)
        write_report(run_dir.root)
        track_results(experiment, run_dir)  # MLflow, when the experiment names a server: the coordinator only

    @staticmethod
    def check_delta(experiment: Experiment, declared: dict[str, dict[str, int]]) -> None:
        """Sample-level DP's delta against each site's declared training cases (said here: a site's
        own refusal stays in its log)."""
        if experiment.privacy.dp == "sample":
            cases = {site: d["train"] for site, d in declared.items()}
            if too_few := {site: n for site, n in cases.items() if not experiment.privacy.delta_fits(n)}:
                raise UserError(f"privacy.delta = {experiment.privacy.delta:g} must be below 1 / (a site's training "
                                f"cases), and these sites declared fewer: {too_few}: set [privacy] delta below "
                                f"{1 / max(cases.values()):.3g}")


class Site(FlareSiteExecutor):
    """A site of a deployed run: its site app on its own data folder."""

    def make_site_app(self, site: str, data: Path, state_dir: Path, fault: str | None) -> SiteApp:
        parsed = parse_text(self.experiment)
        specs = {spec.name: spec for spec in parsed.sites}
        if site not in specs:
            raise UserError(f"site '{site}' is not in the experiment's [[sites]] ({sorted(specs)}); "
                            "the experiment's site names must match the names in PROJECT.toml")
        try:
            dataset = load_site(parsed, replace(specs[site], path=Path(data)))
        except DataError as exc:
            raise UserError(f"site '{site}': {exc}") from None
        if self.cases == "all":  # a scoring job of 'fedseg evaluate --cases all': every case is scored
            dataset = every_case_tested(dataset)
        if os.environ.get(MAX_EPSILON_ENV):
            cap = float(os.environ[MAX_EPSILON_ENV])
            site_budget(parsed, site, cap, self.kit / "fedseg-state", state_dir.parent.name)
        he_secret = load_he_context(self.kit, secret=True) if parsed.privacy.homomorphic else None
        self.folds: dict[int, SiteApp] = {}

        def app_on(data: SiteDataset, state: Path) -> SiteApp:
            return site_app(parsed, data, state_dir=state, pseudonyms=True, fault=fault, he_secret=he_secret,
                            device=os.environ.get(DEVICE_ENV) or None)  # fedseg site --device

        self.parsed, self.dataset, self.state_dir, self.app_on = parsed, dataset, state_dir, app_on
        app = app_on(dataset, state_dir)
        self.arms = SiteArms(parsed, dataset, app, state_dir, os.environ.get(SHARE_MODELS_ENV) or "score",
                             self.fold_app)
        return app

    def fold_app(self, fold: int) -> SiteApp:
        """The site app of fold ``fold``: the site's cases re-split as in simulation, its own state folder."""
        folds = self.parsed.federation.folds
        if not 0 <= fold < folds or folds == 1:
            raise UserError(f"a task for fold {fold}, but the experiment has {folds} fold(s)")
        if fold not in self.folds:
            self.folds[fold] = self.app_on(folded(self.parsed, self.dataset, fold), self.state_dir / f"fold{fold}")
        return self.folds[fold]

    def arm_task(self, task: str, weights: dict, payload: object) -> object:
        return self.arms.handle(task, weights, payload)


COMPONENTS = Components(controller=f"{__name__}.{Coordinator.__name__}", executor=f"{__name__}.{Site.__name__}")
"""What every job runs and every kit allows: the two classes above, nothing else."""
