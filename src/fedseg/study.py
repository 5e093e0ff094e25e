"""One assembly of a study, for every runtime: sites, site apps, initial weights, the round
engine, the run directory and the results. ``simulate`` and ``deployment`` both build from here,
so a deployed run is put together exactly as its simulation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedseg.data.dataset import SiteDataset, SiteSpec
from fedseg.data.errors import DataError
from fedseg.errors import UserError
from fedseg.evaluation.cross_site import cross_site_matrix, cross_site_records, failures, write_cross_site_csv
from fedseg.evaluation.results import summarise_model
from fedseg.evaluation.statistics import paired_comparisons
from fedseg.experiment import Experiment, parse_experiment
from fedseg.plans.base import ComputePlan
from fedseg.privacy.ledger import kept_secret
from fedseg.runtime.engine import Dispatcher, RoundEngine, RoundObserver
from fedseg.runtime.mlflow_log import finish_tracking
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.secure_sum import SecureSum
from fedseg.runtime.site_app import SiteApp
from fedseg.runtime.tracking import Tracked
from fedseg.tables import read_toml
from fedseg.training.local_norm import scoring_note
from fedseg.types import CaseMetrics, Weights


def load_site(experiment: Experiment, spec: SiteSpec) -> SiteDataset:
    """One site read, checked and preprocessed as ``experiment`` says (raises DataError)."""
    return SiteDataset(spec, experiment.task, experiment.preprocessing, experiment.splits, experiment.seed,
                       experiment.model.downsampling_factor)


def load_sites(experiment: Experiment) -> dict[str, SiteDataset]:
    """Every site read, checked and preprocessed; all sites' problems are reported together."""
    sites, errors = {}, []
    for spec in experiment.sites:
        try:
            sites[spec.name] = load_site(experiment, spec)
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        raise UserError("the data has problems; nothing was trained:\n" + "\n".join(errors))
    return sites


def site_app(experiment: Experiment, data: SiteDataset, state_dir: Path | None = None, pseudonyms: bool = False,
             fault: str | None = None, he_secret: bytes | None = None, device: str | None = None) -> SiteApp:
    """A site's app: its trainer on ``data``, as every runtime builds it (``he_secret``: the
    site's CKKS key, from its kit or the simulation's keys; ``device``: the site's own choice
    over ``[training] device``, placed by the site's position in ``[[sites]]``: ``training.devices``).
    Its trainer shares the process's network of its kind (``training.networks.SHARED``): the
    apps of a process take turns, and an app costs no network."""
    from fedseg.training.devices import placed_device
    from fedseg.training.networks import SHARED
    from fedseg.training.trainer import SiteTrainer  # torch: not needed to parse or check an experiment

    try:
        placed = placed_device(device or experiment.training.device, data.name, [s.name for s in experiment.sites],
                               what="--device" if device else "training.device")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    trainer = SiteTrainer(data, experiment.model, experiment.training, state_dir=state_dir,
                          privacy=experiment.privacy, dp_trainings=trainings(experiment, data.name),
                          dp_fine_tune_epochs=experiment.federation.fine_tune_epochs, device=placed, networks=SHARED)
    return SiteApp(data.name, trainer, pseudonyms=pseudonyms, fault=fault, he_secret=he_secret)


def trainings(experiment: Experiment, site: str) -> int:
    """How many rounds ``site`` trains in the federation (a site's DP budget covers them all); a
    comparison arm's one site or pooled data trains every round."""
    plan, names = experiment.compute_plan(), [spec.name for spec in experiment.sites]
    return sum(site in plan.configure_train(r, names) for r in range(plan.total_rounds)) or experiment.federation.rounds


def initial_weights(experiment: Experiment) -> Weights:
    import torch

    from fedseg.training.networks import build_site_network
    from fedseg.training.weights import get_weights

    torch.manual_seed(experiment.seed)
    return get_weights(build_site_network(experiment.model, experiment.task, experiment.training.loss))


def keep_client_dp_secret(plan: ComputePlan, folder: Path) -> None:
    """Client-level DP's noise secret for this run, kept in ``folder`` (created on first use, owner
    only) and never in the run directory, whose checkpoints others may download: with the secret
    anyone could take the noise out of the published models."""
    if (dp := getattr(plan, "client_dp", None)) is not None:
        dp.secret = int.from_bytes(kept_secret(folder, "client_dp_secret"), "big")


def round_engine(experiment: Experiment, plan: ComputePlan, dispatcher: Dispatcher, run_dir: RunDirectory,
                 sites: list[str], observer: RoundObserver | None = None, federation: bool = False,
                 he_public: bytes | None = None, secrets: Path | None = None) -> RoundEngine:
    """The round engine with the experiment's round policy, guard and classes; for the
    ``federation`` (not a one-site comparison arm) with the experiment's secure sum, if any
    (``he_public``: the consortium's public CKKS context). ``secrets``: where the coordinator keeps
    what must not be in the run directory (default: its ``private`` folder, for a simulation)."""
    keep_client_dp_secret(plan, secrets or run_dir.root / "private")
    privacy = experiment.privacy
    secure = SecureSum(privacy.secure_sum, privacy.clip, he_public) if federation and privacy.secure_sum else None
    observer = Tracked(observer, experiment.tracking, experiment.name, experiment.to_dict(), run_dir.root,
                       plan.total_rounds)  # TensorBoard and MLflow see every round of every arm
    return RoundEngine(plan, dispatcher, run_dir, sites, experiment.deployment, experiment.guard,
                       experiment.federation.validate_global, observer, set(experiment.task.foreground_names),
                       {spec.name: spec.cases for spec in experiment.sites if spec.cases is not None}, secure)


def prepare_run_dir(run_dir: RunDirectory, experiment: Experiment, resume: bool, hint: str = "") -> None:
    """Create ``run_dir`` for ``experiment``, or check that it holds the same experiment when resuming."""
    saved = run_dir.root / "experiment.toml"
    if saved.exists():
        if not resume:
            raise UserError(hint or f"{run_dir.root} already holds a run; pass --resume to continue it, "
                                    "or choose another --out")
        try:
            previous = parse_experiment(read_toml(saved, "saved experiment"), source=saved)
        except UserError as exc:
            raise UserError(f"{saved} is damaged ({exc}); it cannot be compared with the experiment given: "
                            "restore it from your experiment file (the same file continues the run) "
                            "or start a new run with another --out") from None
        if run_identity(previous) != run_identity(experiment):
            raise UserError(f"{saved} differs from the experiment given; --resume continues the same "
                            "experiment only: use the same file, or another --out for a new run")
    run_dir.create()
    saved.write_text(experiment.to_toml())


def run_identity(experiment: Experiment) -> dict[str, Any]:
    """What ``--resume`` compares: the experiment without ``[tracking]`` (how a run is watched) and
    ``[training] device`` (where it runs: a run may go on on another machine, or one saved before
    ``auto`` was the default; on another device it differs in the last bits)."""
    data = {key: value for key, value in experiment.to_dict().items() if key != "tracking"}
    data["training"] = {key: value for key, value in data["training"].items() if key != "device"}
    return data


def track_results(experiment: Experiment, run_dir: RunDirectory) -> None:
    """The finished run's report, results and FL_global to MLflow, when the experiment names a server."""
    finish_tracking(experiment.tracking, experiment.name, experiment.to_dict(), run_dir.root)


def privacy_results(experiment: Experiment, metrics: list[dict], membership: dict[str, dict[str, float]]) -> dict:
    """What protected the run and what it spent: ``results.json["privacy"]``."""
    privacy = experiment.privacy
    dp, spent = None, {}
    if privacy.dp != "off":
        last_plan = [r["plan"]["client_dp"] for r in metrics if "client_dp" in r.get("plan", {})]
        dp = {"mode": privacy.dp, "target_epsilon": privacy.epsilon, "delta": privacy.delta,
              "accountant": privacy.accountant, "max_grad_norm": privacy.max_grad_norm if privacy.dp == "sample"
              else None, "clip": privacy.clip, "noise_multiplier": last_plan[-1]["noise_multiplier"] if last_plan
              else None}
        spent = ({"federation": last_plan[-1]["epsilon"]} if last_plan else {}) if privacy.dp == "client" else {
            r["site"]: r["epsilon"] for r in metrics if "epsilon" in r and "site" in r}
    return {"mechanisms": privacy.mechanisms, "dp": dp, "epsilon": dict(sorted(spent.items())),
            "membership_auc": {site: m["membership_auc"] for site, m in membership.items()},
            "membership_cases": {site: [int(m["train_cases"]), int(m["test_cases"])] for site, m in membership.items()}}


def write_results(run_dir: RunDirectory, experiment: Experiment, scores: dict[str, dict[str, list[CaseMetrics]]],
                  started: float, resumed: bool, unscored: dict[str, str] | None = None,
                  membership: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """cross_site.csv and results.json from every model's per-site test scores (simulated or deployed);
    ``unscored``: sites whose scores were rejected or missing, with the reason; ``membership``: each
    site's membership-inference attack on the headline model."""
    headline = "FL_global" if "FL_global" in scores else next(iter(scores))
    records, results = [], {}
    for model, per_site in scores.items():
        records.extend(cross_site_records(model, per_site))
        if model == headline:
            results = summarise_model(model, per_site)
    write_cross_site_csv(records, run_dir.root / "cross_site.csv")
    metrics = run_dir.read_metrics()
    results.update(
        experiment=experiment.name, rounds=experiment.federation.rounds, arms=list(experiment.arms),
        models=list(scores), matrix=cross_site_matrix(records), failures=failures(records),
        comparisons=paired_comparisons(records, reference=headline, seed=experiment.seed) if len(scores) > 1 else [],
        wall_time_s=time.perf_counter() - started, resumed=resumed,
        train_seconds=sum(r.get("seconds", 0.0) for r in metrics),
        rejected_updates=[{"round": r["round"], "site": r["site"], "reason": r["rejected"]}
                          for r in metrics if "rejected" in r],
        unscored_sites=dict(sorted((unscored or {}).items())),
        plan_notes=[scoring_note(experiment.federation.fine_tune_epochs)] if experiment.plan.get("local_norm") else [],
        privacy=privacy_results(experiment, metrics, membership or {}))
    run_dir.write_json("results.json", results)
    return results
