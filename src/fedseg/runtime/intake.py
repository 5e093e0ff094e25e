"""What the coordinator accepts from a site, checked in full before anything is used.

Sites are honest-but-curious by default and any one of them may be broken or compromised, so a
reply is data to be checked, never trusted: an update must have exactly the global model's
parameter names, shapes and dtypes with finite values (``plans.checks.check_weights``), a whole
number of training samples between 1 and the training cases the site declared when it joined,
and only the metrics a site trainer reports, each finite and in its range. A rejected update
never touches the aggregate; the reason goes to metrics.jsonl, the audit log and the report.

The update-norm guard then compares each accepted update's distance from the global model with
the round's median distance: one far above ``norm_factor`` times the median is clipped to that
bound or rejected (``norm_action``). It needs every update of the round before the first can be
folded in, so with the guard on the coordinator holds the round's updates (one model per site);
with ``norm_action = "off"`` the averaging plans stream as before. SCAFFOLD's control variates
(keys under ``types.CONTROL_PREFIX``) move in other units than the model (about ``1 / (K lr)`` times
further), so they have a guard of their own (``control_norms``, the same factor and action): in one
norm over both, the controls would set the median and let a site move the model unnoticed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedseg.plans.base import Aggregation
from fedseg.plans.checks import UpdateRejected, check_weights
from fedseg.plans.robust import distance, shrink
from fedseg.types import CONTROL_PREFIX, CaseMetrics, Update, Weights

MAX_CASES = 10_000_000
"""More cases than any site declares: a larger declaration is a broken or hostile site."""
UNIT = (0.0, 1.0)
NONNEGATIVE = (0.0, math.inf)
TRAIN_METRICS: dict[str, tuple[float, float]] = {
    "train_loss": NONNEGATIVE, "val_dice": UNIT, "steps": NONNEGATIVE, "seconds": NONNEGATIVE,
    "epsilon": NONNEGATIVE, "lr_last": NONNEGATIVE}
"""The metrics a site trainer reports with an update, and their ranges (a Dice may also be NaN);
``lr_last``: the lr of its last local step (``[training] lr_schedule``)."""
VALIDATE_METRICS = {"global_val_dice": UNIT}
MEMBERSHIP_METRICS = {"membership_auc": UNIT, "train_cases": NONNEGATIVE, "test_cases": NONNEGATIVE}
"""A site's result of the membership-inference attack on the final model (``privacy.membership``)."""
NAN_ALLOWED = {"val_dice", "global_val_dice", "membership_auc"}
"""Dice of a site's validation cases is NaN when no case holds a scored class; other metrics are numbers."""
SPLITS = ("train", "val", "test")
NORM_ACTIONS = ("reject", "clip", "off")


@dataclass(frozen=True)
class GuardConfig:
    """``[guard]``: the update-norm guard of the coordinator (both runtimes)."""

    norm_factor: float = 5.0
    """An update farther from the global model than this times the round's median distance is an outlier."""
    norm_action: str = "reject"
    """``reject`` the outlier, ``clip`` its difference to the bound, or ``off`` (FedAvg then streams)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.norm_factor) and self.norm_factor >= 1):
            raise ValueError(f"norm_factor must be a finite number >= 1, got {self.norm_factor}")
        if self.norm_action not in NORM_ACTIONS:
            raise ValueError(f"norm_action must be one of {list(NORM_ACTIONS)}, got {self.norm_action!r}")


def check_declaration(reply: Any, agreed: int | None = None) -> dict[str, int]:
    """A site's case counts as declared when it joins: ``{"train": n, "val": n, "test": n}``, in all
    no more than the ``agreed`` number of cases (``[[sites]] cases``) when the experiment gives one."""
    if not isinstance(reply, dict) or set(reply) != set(SPLITS):
        raise UpdateRejected(f"a declaration must give exactly the case counts {list(SPLITS)}")
    for split, count in reply.items():
        if not _whole(count) or not 0 <= count <= MAX_CASES:
            raise UpdateRejected(f"declared {split} cases must be a whole number in [0, {MAX_CASES}], "
                                 f"got {shown(count)}")
    if reply["train"] < 1:
        raise UpdateRejected("a site that trains must declare at least one training case")
    if agreed is not None and sum(reply.values()) > agreed:
        raise UpdateRejected(f"declared {sum(reply.values())} cases, more than the {agreed} the experiment's "
                             "[[sites]] cases agrees for this site")
    return {split: int(count) for split, count in reply.items()}


def check_update(update: Any, global_weights: Weights | None, declared: dict[str, int] | None) -> Update:
    """``update`` if the coordinator may use it, else UpdateRejected with the reason. Without
    ``global_weights`` (a protected update of a secure sum) its weights are the sum's to check."""
    if not isinstance(update, Update):
        raise UpdateRejected(f"expected an update, got {type(update).__name__}")
    if declared is None:
        raise UpdateRejected("the site has not declared its cases")
    n = update.n_samples
    if not _whole(n) or not 1 <= n <= declared["train"]:
        raise UpdateRejected(f"n_samples must be a whole number from 1 to the {declared['train']} training "
                             f"case(s) the site declared, got {shown(n)}")
    check_metrics(update.metrics, TRAIN_METRICS)
    if global_weights is not None:
        check_weights(update.weights, global_weights)
    return update


def check_metrics(metrics: Any, allowed: dict[str, tuple[float, float]]) -> dict[str, float]:
    if not isinstance(metrics, dict):
        raise UpdateRejected("metrics must be a table of numbers")
    for key, value in metrics.items():
        if key not in allowed:
            raise UpdateRejected(f"unknown metric {shown(key)}; a site reports only {sorted(allowed)}")
        low, high = allowed[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UpdateRejected(f"metric {key!r} must be a number, got {type(value).__name__}")
        if math.isnan(value) and key in NAN_ALLOWED:
            continue
        if not (math.isfinite(value) and low <= value <= high):
            raise UpdateRejected(f"metric {key!r} = {shown(value)} is not a finite number in [{low}, {high}]")
    return metrics


def check_cases(cases: Any, declared: dict[str, int] | None, classes: set[str] | None = None) -> list[CaseMetrics]:
    """Per-case test scores: distinct case names, no more cases than the site declared, every case
    scored for exactly the task's classes (Dice, HD95, coverage), each score in range or NaN."""
    if not isinstance(cases, list) or not all(isinstance(c, CaseMetrics) for c in cases):
        raise UpdateRejected("test scores must be a list of per-case scores")
    if declared is None:
        raise UpdateRejected("the site has not declared its cases")
    if len(cases) > declared["test"]:
        raise UpdateRejected(f"{len(cases)} scored cases, but the site declared {declared['test']} test case(s)")
    names = [case.case for case in cases]
    if not all(isinstance(n, str) and 0 < len(n) <= 200 for n in names) or len(set(names)) != len(names):
        raise UpdateRejected("case names must be distinct, non-empty text of at most 200 characters")
    for case in cases:
        tables = ((case.dice, UNIT), (case.bbox_coverage, UNIT), (case.hd95, (0.0, math.inf)))
        if not all(isinstance(t, dict) for t, _ in tables) or not isinstance(case.failed, list):
            raise UpdateRejected(f"case {shown(case.case)}: scores must be tables")
        wrong = classes is not None and not all(set(t) == classes for t, _ in tables)
        if wrong or not set(case.failed) <= set(case.dice):
            raise UpdateRejected(f"case {shown(case.case)}: scores must cover exactly the task's classes "
                                 f"{sorted(classes or case.dice)}")
        for table, (low, high) in tables:
            for name, value in table.items():
                number = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
                if not (number and (math.isnan(value) or low <= value <= high)):
                    raise UpdateRejected(f"case {shown(case.case)}: score {shown(value)} of {shown(name)} is outside "
                                         f"[{low}, {high}]")
    return cases


def shown(value: Any) -> str:
    """A value a site sent, as it may appear in a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class RoundIntake:
    """Takes one round's replies as they arrive: checks each, guards norms, feeds the aggregation.

    ``receive`` returns None for an accepted update or the reason it was rejected. ``finish``
    applies the norm guard (when on), folds the held updates in site order and returns the
    next global model.
    """

    def __init__(self, aggregation: Aggregation, global_weights: Weights, declared: dict[str, dict[str, int]],
                 guard: GuardConfig, history: list[float] = (), control_history: list[float] = ()):
        self.aggregation, self.global_weights, self.declared, self.guard = aggregation, global_weights, declared, guard
        self.history, self.control_history = list(history), list(control_history)
        """Recent rounds' accepted update norms (the last few): the reference when this round has fewer than 3."""
        self.model = {k: v for k, v in global_weights.items() if not str(k).startswith(CONTROL_PREFIX)}
        self.controls = {k: v for k, v in global_weights.items() if str(k).startswith(CONTROL_PREFIX)}
        self.accepted: dict[str, dict[str, Any]] = {}
        """Per accepted site: n_samples and metrics (the update's weights are not kept here)."""
        self.rejected: dict[str, str] = {}
        self.norms: dict[str, float] = {}
        """Per site: its model's distance from the global model (controls apart, in ``control_norms``)."""
        self.control_norms: dict[str, float] = {}
        self.refused_late: dict[str, str] = {}
        self._held: dict[str, Update] = {}

    def receive(self, site: str, update: Any) -> str | None:
        if site in self.accepted or site in self.rejected:
            return "a second reply in the same round"
        protected = getattr(self.aggregation, "protected", False)  # masked or encrypted: no values to see
        try:
            update = check_update(update, None if protected else self.global_weights, self.declared.get(site))
        except UpdateRejected as exc:
            self.rejected[site] = str(exc)
            return self.rejected[site]
        if not protected:
            self.norms[site] = distance(update.weights, self.model)
            if self.controls:
                self.control_norms[site] = distance(update.weights, self.controls)
        if self.guard.norm_action == "off" or protected:
            try:
                self.aggregation.add(site, update)  # the plan checks again (e.g. a site it did not schedule)
            except UpdateRejected as exc:
                self.rejected[site] = str(exc)
                return self.rejected[site]
        else:
            self._held[site] = update
        self.accepted[site] = {"n_samples": int(update.n_samples), **update.metrics}
        return None

    def finish(self) -> tuple[Weights, dict[str, Any]]:
        """The next global model and what the guard did (``norm_bound``, ``clipped`` sites and their
        norms, or ``guard`` when it had too few norms to compare)."""
        report: dict[str, Any] = {}
        if self._held:
            bounds = {what: self._bound(norms, history, key, report) for what, norms, history, key in (
                ("update", self.norms, self.history, "norm_bound"),
                ("control", self.control_norms, self.control_history, "control_norm_bound")) if norms}
            for site in sorted(self._held):
                update = self._held.pop(site)
                over = {what: (norms[site], bound) for what, (norms, bound) in bounds.items() if norms[site] > bound}
                if over and self.guard.norm_action == "reject":
                    what, (norm, bound) = next(iter(over.items()))
                    self._refuse(site, f"{what} norm {norm:.4g} is more than {self.guard.norm_factor:g} times "
                                       f"the round's median ({bound / self.guard.norm_factor:.4g})")
                    continue
                if over:
                    scale = min(bound / norm for norm, bound in over.values())
                    update = Update(shrink(update.weights, self.global_weights, scale), update.n_samples,
                                    update.metrics)
                    report.setdefault("clipped", {})[site] = self.norms[site]
                try:
                    self.aggregation.add(site, update)
                except UpdateRejected as exc:
                    self._refuse(site, str(exc))
        if not self.accepted and not self.rejected:
            raise UpdateRejected("no site sent an update (a site whose task failed keeps the reason in its own log)")
        if not self.accepted:
            raise UpdateRejected("every update of the round was rejected: "
                                 + "; ".join(f"{site}: {reason}" for site, reason in sorted(self.rejected.items())))
        return self.aggregation.result(), report

    def _bound(self, norms: dict[str, float], history: list[float], key: str, report: dict[str, Any]
               ) -> tuple[dict[str, float], float]:
        """``norms`` and the guard's bound for them (inf, said in ``report``, with fewer than 3 to compare)."""
        reference = list(norms.values()) if len(norms) >= 3 else [*norms.values(), *history]
        if len(reference) < 3:  # one of two cannot be told from the other
            report["guard"] = "inactive: fewer than 3 update norms to compare (this round's and recent ones)"
            return norms, math.inf
        report[key] = self.guard.norm_factor * float(np.median(reference))
        return norms, report[key]

    def _refuse(self, site: str, reason: str) -> None:
        """Reject an update that was accepted on arrival (by the guard, or the plan when folding it in)."""
        self.rejected[site] = self.refused_late[site] = reason
        del self.accepted[site]
