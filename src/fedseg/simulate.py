"""Run an experiment in the simulation runtime and write its run directory.

Ties the layers together: sites' data, trainers, the compute plan, the runtime, the test-set
evaluation and the report. Everything a user can get wrong is checked before training starts.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from fedseg.arms import ArmRunner, ProgressFactory
from fedseg.data.dataset import SiteDataset, SiteSpec
from fedseg.data.errors import DataError
from fedseg.errors import UserError
from fedseg.evaluation.cross_site import cross_site_matrix, cross_site_records, failures, write_cross_site_csv
from fedseg.evaluation.results import summarise_model
from fedseg.evaluation.statistics import paired_comparisons
from fedseg.experiment import Experiment, parse_experiment
from fedseg.report.markdown import write_report
from fedseg.report.overlays import overlay_figure, pick_examples
from fedseg.runtime.run_directory import RunDirectory
from fedseg.training.trainer import Model, SiteTrainer, build_site_network
from fedseg.training.weights import get_weights
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


def initial_weights(experiment: Experiment) -> Weights:
    torch.manual_seed(experiment.seed)
    return get_weights(build_site_network(experiment.model, experiment.task, experiment.training.loss))


def run_simulation(experiment: Experiment, out: Path, resume: bool = False,
                   progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Train every arm, evaluate every model on every site's test cases, write results and report."""
    started = time.perf_counter()
    run_dir = RunDirectory(out)
    prepare_run_dir(run_dir, experiment, resume)
    datasets = load_sites(experiment)
    runner = ArmRunner(experiment, datasets, run_dir, initial_weights(experiment), resume, progress)
    models: dict[str, Model] = {}
    if "federated" in experiment.arms:
        models.update(runner.federated(experiment.compute_plan, experiment.runtime_rounds))
    if "standalone" in experiment.arms:
        models.update(runner.standalone())
    if "centralized" in experiment.arms:
        models.update(runner.centralized())

    evaluators = {name: SiteTrainer(data, experiment.model, experiment.training) for name, data in datasets.items()}
    scores = {model: {site: evaluators[site].evaluate(weights, "test") for site in sorted(evaluators)}
              for model, weights in models.items()}
    results = write_results(run_dir, experiment, scores, started, resume)
    headline = results["model"]
    _draw_examples(run_dir, headline, models[headline], evaluators, results)
    write_report(run_dir.root)
    return results


def write_results(run_dir: RunDirectory, experiment: Experiment, scores: dict[str, dict[str, list[CaseMetrics]]],
                  started: float, resumed: bool) -> dict[str, Any]:
    """cross_site.csv and results.json from every model's per-site test scores (simulated or deployed)."""
    headline = "FL_global" if "FL_global" in scores else next(iter(scores))
    records, results = [], {}
    for model, per_site in scores.items():
        records.extend(cross_site_records(model, per_site))
        if model == headline:
            results = summarise_model(model, per_site)
    write_cross_site_csv(records, run_dir.root / "cross_site.csv")
    results.update(
        experiment=experiment.name, rounds=experiment.federation.rounds, arms=list(experiment.arms),
        models=list(scores), matrix=cross_site_matrix(records), failures=failures(records),
        comparisons=paired_comparisons(records, reference=headline, seed=experiment.seed) if len(scores) > 1 else [],
        wall_time_s=time.perf_counter() - started, resumed=resumed,
        train_seconds=sum(r.get("seconds", 0.0) for r in run_dir.read_metrics()))
    run_dir.write_json("results.json", results)
    return results


def _draw_examples(run_dir: RunDirectory, model: str, weights: Model, evaluators: dict[str, SiteTrainer],
                   results: dict[str, Any]) -> None:
    """Best, median and worst test case of each site under the headline model, as pictures."""
    for site, trainer in evaluators.items():
        examples = [(which, case["case"], case["mean_dice"], *trainer.predict_case(weights, case["case"]))
                    for which, case in pick_examples(results["sites"][site]["cases"])]
        if examples:
            overlay_figure(site, model, examples, run_dir.figures / f"examples_{site}.png")


def prepare_run_dir(run_dir: RunDirectory, experiment: Experiment, resume: bool) -> None:
    saved = run_dir.root / "experiment.toml"
    if saved.exists():
        if not resume:
            raise UserError(f"{run_dir.root} already holds a run; pass --resume to continue it, "
                            "or choose another --out")
        previous = parse_experiment(tomllib.loads(saved.read_text()), source=saved)
        if previous.to_dict() != experiment.to_dict():
            raise UserError(f"{saved} differs from the experiment given; --resume continues the same "
                            "experiment only: use the same file, or another --out for a new run")
    run_dir.create()
    saved.write_text(experiment.to_toml())
