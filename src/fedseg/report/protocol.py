"""The top of the report: what was trained and compared, under which budget, and how long it took.

Values come from the experiment as run and results.json: each is escaped (``markdown_text``)."""

from __future__ import annotations

from fedseg.evaluation.text import markdown_text as _md


def protocol(experiment: dict, results: dict) -> str:
    """One paragraph from the experiment as run (``experiment.toml`` as a dict) and ``results.json``."""
    if isinstance(external := results.get("external"), dict):  # fedseg evaluate: nothing was trained
        return (f"External validation: this run trained nothing; it scored the model "
                f"{_md(results.get('model', '?'))} (file {_md(external.get('file', '?'))}, SHA-256 "
                f"{_md(external.get('sha256', '?'))}) on {'all' if external.get('cases') == 'all' else 'the held-out test'}"
                f" cases of every site.")
    training, federation = experiment.get("training", {}), experiment.get("federation", {})
    arms = [_arm(arm, experiment, len(experiment.get("sites", []))) for arm in experiment.get("arms", ["federated"])]
    steps = training.get("local_steps")
    budget = f"{_md(steps)} local optimisation steps" if steps else _count(training.get("local_epochs", 1),
                                                                           "local epoch")
    settings = (f"model {_md(experiment.get('model', {}).get('name', '?'))}, loss {_md(training.get('loss', '?'))}, "
                f"optimizer {_md(training.get('optimizer', '?'))} (lr {_md(training.get('lr', '?'))}), "
                f"batch size {_md(training.get('batch_size', '?'))}, seed {_md(experiment.get('seed', '?'))}")
    rounds = _count(federation.get("rounds", results.get("rounds", "?")), "round")
    n_models = len(results.get("models", [results["model"]]))
    notes = results.get("plan_notes")  # how the plan's models are scored (FedBN: training.local_norm)
    notes = "".join(f" {_md(note)}" for note in notes if isinstance(note, str)) if isinstance(notes, list) else ""
    if len(arms) == 1:
        return (f"This run trained one arm, {arms[0]}: {rounds} of {budget} per site ({settings}). "
                f"{'Its model' if n_models == 1 else f'Each of its {n_models} models'} was then tested on the "
                f"held-out test cases of every site.{notes}")
    return (f"This run trained {len(arms)} arms: {'; '.join(arms)}. Every arm started from the same initial "
            f"weights and ran {rounds} of {budget} per site, with the same preprocessing and settings ({settings}). "
            f"Each of the {n_models} models was then tested on the held-out test cases of every site.{notes}")


def _arm(arm: str, experiment: dict, n_sites: int) -> str:
    if arm == "federated":
        plan, epochs = experiment.get("plan", {}), experiment.get("federation", {}).get("fine_tune_epochs", 0)
        text = f"**federated** ({_md(plan.get('name', 'fedavg'))} over the {n_sites} sites → `FL_global`"
        if plan.get("local_norm") is True:
            text += ", and with each site's own normalisation → `FL_local_<site>`"
            if epochs:
                text += f", fine-tuned for {_count(epochs, 'epoch')} on that site's data"
        elif epochs:
            text += (f", which each site then fine-tuned for {_count(epochs, 'epoch')} on its own data "
                     "→ `FL_local_<site>`")
        return text + ")"
    if arm == "standalone":
        return "**standalone** (one model per site, trained on that site's data only → `standalone_<site>`)"
    if arm == "centralized":
        return "**centralized** (one model trained on all sites' training data pooled → `centralized`)"
    return f"**{_md(arm)}**"


def timing(results: dict) -> str:
    if "external" in results:
        return f"Wall time {results.get('wall_time_s', 0):.1f} s (scoring the model at every site)."
    return (f"Wall time {results.get('wall_time_s', 0):.1f} s (training every arm, testing every model); "
            f"training at the federated arm's sites took {results.get('train_seconds', 0):.1f} s summed over sites.")


def _count(n, noun: str) -> str:
    return f"{_md(n)} {noun}" if n == 1 else f"{_md(n)} {noun}s"
