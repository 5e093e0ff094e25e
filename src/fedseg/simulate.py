"""Run an experiment in the simulation runtime and write its run directory.

The study is assembled by ``study`` (as in deployment); the arms train through the round engine
over in-process site apps, and every model is scored on every site's test cases through the same
engine. Everything a user can get wrong is checked before training starts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedseg.arms import ArmRunner, ProgressFactory
from fedseg.experiment import Experiment
from fedseg.report.markdown import write_report
from fedseg.report.overlays import overlay_figure, pick_examples
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.simulation import InProcessDispatcher
from fedseg.runtime.site_app import SiteApp
from fedseg.study import (initial_weights, load_sites, prepare_run_dir, round_engine, site_app, track_results,
                          write_results)
from fedseg.types import Model


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
        models.update(runner.federated(experiment.compute_plan))
    if "standalone" in experiment.arms:
        models.update(runner.standalone())
    if "centralized" in experiment.arms:
        models.update(runner.centralized())

    apps = {name: site_app(experiment, data) for name, data in datasets.items()}
    scorer = round_engine(experiment, experiment.compute_plan(), InProcessDispatcher(apps), run_dir, list(apps))
    scores, unscored = {}, {}
    for model, weights in models.items():
        scores[model], problems = scorer.evaluate(weights)
        unscored.update({f"{site} ({model})": reason for site, reason in problems.items()})
    final = models.get("FL_global", next(iter(models.values())))  # an ensemble (folds) is not attacked
    membership = scorer.membership(final) if experiment.privacy.membership_attack and isinstance(final, dict) else {}
    results = write_results(run_dir, experiment, scores, started, resume, unscored, membership)
    headline = results["model"]
    _draw_examples(run_dir, headline, models[headline], apps, results)
    write_report(run_dir.root)
    track_results(experiment, run_dir)
    return results


def _draw_examples(run_dir: RunDirectory, model: str, weights: Model, apps: dict[str, SiteApp],
                   results: dict[str, Any]) -> None:
    """Best, median and worst test case of each site under the headline model, as pictures."""
    for site, app in apps.items():
        examples = [(which, case["case"], case["mean_dice"], *app.trainer.predict_case(weights, case["case"]))
                    for which, case in pick_examples(results["sites"][site]["cases"])]
        if examples:
            overlay_figure(site, model, examples, run_dir.figures)
