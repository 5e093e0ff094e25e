"""An experiment file run for real across institutions: what the FLARE adapter builds and calls.

The adapter (``runtime/flare``) asks for a coordinator app and a site app by name; these
factories make them from the same experiment file ``fedseg simulate`` reads, so the plan, the
model, the preprocessing and the trainer are the ones simulation uses. What differs: each site
reads the data folder given to ``fedseg site --data`` (the ``path`` of its ``[[sites]]`` entry is
ignored there), and the run directory is written on the coordinator, without the example
overlays (they are pictures of patients' images, which stay at the sites).

Only the ``federated`` arm runs in deployment, with ``folds = 1`` and no fine-tuning: standalone
and FL_local models live at one site each, and centralized training needs pooled data.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from fedseg.data.errors import DataError
from fedseg.errors import UserError
from fedseg.experiment import Experiment, parse_experiment
from fedseg.plans.base import ComputePlan
from fedseg.report.markdown import write_report
from fedseg.runtime.run_directory import RunDirectory
from fedseg.simulate import initial_weights, load_site, prepare_run_dir, write_results
from fedseg.training.trainer import SiteTrainer
from fedseg.types import CaseMetrics, Weights


def deployable(experiment: Experiment) -> Experiment:
    """``experiment`` if it can run in deployment, else a UserError that says what to change."""
    where = experiment.source or "experiment"
    if tuple(experiment.arms) != ("federated",):
        raise UserError(f"{where}: deployment runs the 'federated' arm only; set arms = [\"federated\"] "
                        "(standalone and centralized arms need every site's data in one place: simulate them)")
    if experiment.federation.folds != 1 or experiment.federation.fine_tune_epochs:
        raise UserError(f"{where}: deployment does not yet run folds > 1 or fine_tune_epochs > 0; "
                        "set [federation] folds = 1 and fine_tune_epochs = 0")
    return experiment


def parse_text(text: str) -> Experiment:
    return parse_experiment(tomllib.loads(text))


@dataclass
class Coordinator:
    experiment: Experiment

    def __post_init__(self) -> None:
        self.name = self.experiment.name
        self.sites = [site.name for site in self.experiment.sites]
        self.rounds = self.experiment.runtime_rounds
        self.validate_global = self.experiment.federation.validate_global
        self.policy = self.experiment.deployment
        self.started = time.perf_counter()

    def compute_plan(self) -> ComputePlan:
        return self.experiment.compute_plan()

    def initial_weights(self) -> Weights:
        return initial_weights(self.experiment)

    def prepare(self, run_dir: RunDirectory, resume: bool) -> None:
        if (run_dir.root / "experiment.toml").exists() and not resume:
            raise UserError(f"the coordinator already holds a run named '{self.name}'; submit with --resume "
                            "to continue it, or give the experiment another name")
        prepare_run_dir(run_dir, self.experiment, resume)

    def finish(self, run_dir: RunDirectory, test_cases: dict[str, list[CaseMetrics]], resumed: bool) -> None:
        if not test_cases:
            raise UserError("no site returned test scores; the final model is in the run directory")
        write_results(run_dir, self.experiment, {"FL_global": dict(sorted(test_cases.items()))}, self.started,
                      resumed)
        write_report(run_dir.root)


def coordinator_app(experiment: str) -> Coordinator:
    return Coordinator(deployable(parse_text(experiment)))


def site_app(experiment: str, site: str, data: Path, state_dir: Path) -> SiteTrainer:
    """The site trainer of ``site`` on the local folder ``data``, as simulation would build it."""
    parsed = parse_text(experiment)
    specs = {spec.name: spec for spec in parsed.sites}
    if site not in specs:
        raise UserError(f"site '{site}' is not in the experiment's [[sites]] ({sorted(specs)}); "
                        "the experiment's site names must match the names in PROJECT.toml")
    try:
        dataset = load_site(parsed, replace(specs[site], path=Path(data)))
    except DataError as exc:
        raise UserError(f"site '{site}': {exc}") from None
    return SiteTrainer(dataset, parsed.model, parsed.training, state_dir=state_dir)

