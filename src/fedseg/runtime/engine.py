"""The round engine: the only place a federated round is run, in simulation and in deployment.

It owns the whole protocol: resume after the last checkpointed round, who trains (the plan's
``configure_train``), sending the work out, checking every reply as it arrives (``intake``),
folding accepted updates into the plan's aggregation, the records of the round, the global
model's validation, the checkpoint, and the final scoring on every site's test cases. A
``Dispatcher`` is the only thing that differs between runtimes: in-process site apps
(``simulation.InProcessDispatcher``) or FLARE sites
(``flare.controller.FlareController``). Because both go through this code, "deployed equals
simulated" holds by construction, and every check is written once.

Sites declare their case counts once ("join") before they first train; an update's sample count
is bounded by that declaration. Rounds follow the round policy: a round that has fewer accepted
updates than ``min_responses`` is run again where that can help (a network), else the run stops
with the reasons.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fedseg.errors import UserError
from fedseg.plans.base import ComputePlan
from fedseg.plans.checks import UpdateRejected
from fedseg.runtime.audit import AUDIT_FILE, append_audit
from fedseg.runtime.intake import (MEMBERSHIP_METRICS, VALIDATE_METRICS, GuardConfig, RoundIntake, check_cases,
                                   check_declaration, check_metrics)
from fedseg.runtime.records import round_records
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.runtime.secure_sum import Ask, SecureSum
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import CaseMetrics, Update, Weights


@dataclass(frozen=True)
class Failed:
    """A reply that could not be used: the site reported an error, or its message did not decode."""

    reason: str


ReplyHandler = Callable[[str, Any, dict], str | None]
"""``handler(site, reply, transport_meta)`` -> None when accepted, else the reason it was rejected."""


class Dispatcher(Protocol):
    """Moves work to sites and replies back; the engine decides everything else."""

    retries_help: bool
    """Whether running a failed round again can change its outcome (a network: yes; in-process: no)."""

    def available(self) -> set[str]: ...

    def dispatch(self, task: str, weights: Weights | None, payloads: dict[str, Any], on_reply: ReplyHandler,
                 timeout: int) -> None:
        """Send ``task`` with ``weights`` and each site's payload; call ``on_reply`` for each reply as
        it arrives (never two at once); return when all answered or ``timeout`` seconds passed."""

    def wait_for(self, sites: set[str], timeout: int) -> None: ...


class RoundObserver(Protocol):
    """Progress hooks (a progress bar, a log); the engine works without one."""
    def planned(self, trainings: int) -> None: ...

    def round_started(self, round: int, sites: list[str]) -> None: ...

    def site_trained(self, round: int, site: str, update: Update) -> None: ...

    def round_finished(self, round: int, records: list[dict]) -> None: ...


HISTORY = 6
"""Accepted update norms of recent rounds the norm guard keeps as its reference for small rounds."""


class RunStopped(UserError):
    """A round could not be completed; the message says why and what to do."""


class RoundEngine:
    def __init__(self, plan: ComputePlan, dispatcher: Dispatcher, run_dir: RunDirectory, sites: list[str],
                 policy: RoundPolicy = RoundPolicy(), guard: GuardConfig = GuardConfig(),
                 validate_global: bool = True, observer: RoundObserver | None = None,
                 classes: set[str] | None = None, agreed: dict[str, int] | None = None,
                 secure: SecureSum | None = None):
        self.plan, self.dispatcher, self.run_dir = plan, dispatcher, run_dir
        self.sites, self.policy, self.guard = sorted(sites), policy, guard
        self.validate_global, self.observer, self.classes = validate_global, observer, classes
        self._last_norms: list[float] = []
        self._last_control_norms: list[float] = []  # SCAFFOLD's controls have a norm guard of their own
        self.agreed, self.secure = agreed or {}, secure
        """Sites' case counts as the experiment agrees them (``[[sites]] cases``), where it does."""
        self.declared: dict[str, dict[str, int]] = {}
        self.join_failures: dict[str, str] = {}
        self.on_round: Callable[[int, list[dict]], None] = lambda round, records: None
        """Called after each checkpointed round (deployment publishes progress with it)."""

    # -- the run ---------------------------------------------------------------------------------
    def run(self, initial_weights: Weights, rounds: int, resume: bool = False) -> Weights:
        """Train ``rounds`` rounds (continuing after the last checkpoint with ``resume``); the final model."""
        weights, start = initial_weights, 0
        if resume and (last := self.run_dir.last_round()) is not None:
            done, weights, plan_state = last
            self.plan.load_state_dict(plan_state)
            start = done + 1
            kept = [r for r in self.run_dir.read_metrics() if r.get("round", done + 1) <= done and "rejected" not in r]
            self._last_norms = [r["update_norm"] for r in kept if "update_norm" in r][-HISTORY:]
            self._last_control_norms = [r["control_norm"] for r in kept if "control_norm" in r][-HISTORY:]
        self.run_dir.drop_metrics_after(start - 1)  # lines of a round that never finished
        if self.observer:
            self.observer.planned(sum(len(self.plan.configure_train(r, self.sites)) for r in range(start, rounds)))
        for round in range(start, rounds):
            weights = self._round(round, weights)
        return weights

    def _round(self, round: int, weights: Weights) -> Weights:
        started = time.perf_counter()
        chosen = self.plan.configure_train(round, self.sites)
        sent = self.plan.outgoing(round, weights)  # updates are checked against it (SCAFFOLD: model + controls)
        if self.observer:
            self.observer.round_started(round, list(chosen))
        for attempt in range(self.policy.round_retries + 1):
            self.join(set(chosen))  # a site back after a drop-out declares itself before it trains
            intake = RoundIntake(self.plan.aggregation(round, sent), sent, self.declared, self.guard, self._last_norms,
                                 self._last_control_norms)
            configs = {site: config for site, config in chosen.items() if site in self.dispatcher.available()}

            def take(site: str, update: Any, intake=intake) -> None:
                if (reason := intake.receive(site, update)) is not None:
                    raise UpdateRejected(reason)
                if self.observer:
                    self.observer.site_trained(round, site, update)

            try:
                if self.secure is not None:  # extra phases before training; the sum replaces the plan's aggregation
                    configs, intake.aggregation = self.secure.begin(self.plan, round, sent, configs,
                                                                    self.declared, self.ask(round))
                on_update = self._handler("train", take, intake.rejected, round)
                self.dispatcher.dispatch("train", sent, configs, on_update, self.policy.round_timeout)
                (new_weights, guarded), problem = intake.finish(), None
            except UpdateRejected as exc:
                new_weights, guarded, problem = None, {}, str(exc)
            for site, reason in intake.refused_late.items():  # the arrival line said "accepted"
                self._audit("guard", site, round, None, {}, reason)
            if new_weights is not None and self.policy.accepts(len(chosen), len(intake.accepted)):
                break
            problem = problem or (f"{len(intake.accepted)} of {len(chosen)} site(s) sent a usable update, "
                                  f"{self.policy.needed(len(chosen))} needed")
            if not self.dispatcher.retries_help or attempt == self.policy.round_retries:
                reasons = {site: self.join_failures.get(site, reason) for site, reason in intake.rejected.items()}
                if reasons and all("NaN or infinite" in reason for reason in reasons.values()):
                    problem += " (every update has NaN or infinite values: training diverged; lower [training] lr)"
                raise RunStopped(f"round {round + 1}: {problem}" + _reasons(reasons) +
                                 ("; check that the sites are running ('fedseg status'), then submit again with "
                                  "--resume" if self.dispatcher.retries_help else ""))
            self.dispatcher.wait_for(set(chosen), self.policy.round_timeout)
        missing = sorted(set(chosen) - set(intake.accepted) - set(intake.rejected))
        records = round_records(round, intake, self.plan.round_summary(), guarded, missing)
        norms = [intake.norms[site] for site in sorted(intake.accepted) if site in intake.norms]  # none: a secure sum
        self._last_norms = [*self._last_norms, *norms][-HISTORY:]
        controls = [intake.control_norms[site] for site in sorted(intake.accepted) if site in intake.control_norms]
        self._last_control_norms = [*self._last_control_norms, *controls][-HISTORY:]
        if self.validate_global:
            self._validate(new_weights, records)
        if records:
            records[0]["round_seconds"] = time.perf_counter() - started
        self.run_dir.append_metrics(records)  # metrics first: a resume drops lines past the last checkpoint
        self.run_dir.save_round(round, new_weights, self.plan.state_dict())
        if self.observer:
            self.observer.round_finished(round, records)
        self.on_round(round, records)
        return new_weights

    # -- joining, validation, final scores -------------------------------------------------------
    def join(self, sites: set[str]) -> None:
        """Ask sites that have not declared their case counts yet to do so."""
        missing = {site: None for site in sorted(sites - set(self.declared)) if site in self.dispatcher.available()}

        def declare(site: str, reply: Any) -> None:
            self.declared[site] = check_declaration(reply, self.agreed.get(site))
            self.join_failures.pop(site, None)

        if missing:
            failures: dict[str, str] = {}
            self.dispatcher.dispatch("join", None, missing, self._handler("join", declare, failures),
                                     self.policy.round_timeout)
            self.join_failures.update({site: f"could not join: {reason}" for site, reason in failures.items()})

    def _validate(self, weights: Weights, records: list[dict[str, Any]]) -> None:
        """The new global model on the validation cases of each site that trained this round."""
        by_site = {record["site"]: record for record in records if "rejected" not in record}

        def score(site: str, reply: Any) -> None:
            by_site[site].update(check_metrics(reply, VALIDATE_METRICS))

        self.dispatcher.dispatch("validate", weights, dict.fromkeys(by_site), self._handler("validate", score, {}),
                                 self.policy.round_timeout)

    def evaluate(self, weights: Any, sites: list[str] | None = None) -> tuple[dict[str, list[CaseMetrics]], dict]:
        """Every available site's per-case test scores of ``weights``, and the reasons of sites
        whose scores were rejected or missing."""
        targets = [site for site in (sites or self.sites) if site in self.dispatcher.available()]
        self.join(set(targets))
        scores: dict[str, list[CaseMetrics]] = {}
        problems: dict[str, str] = {}

        def keep(site: str, reply: Any) -> None:
            scores[site] = check_cases(reply, self.declared.get(site), self.classes)

        self.dispatcher.dispatch("evaluate", weights, dict.fromkeys(targets), self._handler("evaluate", keep, problems),
                                 self.policy.round_timeout)
        for site in sorted(set(self.sites) - set(scores) - set(problems)):
            problems[site] = "offline or did not answer"
        return dict(sorted(scores.items())), problems

    def ask(self, round: int | None, weights: Any = None, timeout: int | None = None) -> Ask:
        """``ask(task, payloads, use)``: a protocol phase (secure sums, a deployed site's arms) sending
        ``weights``, audited and checked like every reply; the reasons of sites that failed it."""
        def ask(task: str, payloads: dict[str, Any], use: Callable[[str, Any], None]) -> dict[str, str]:
            failures: dict[str, str] = {}
            self.dispatcher.dispatch(task, weights, payloads, self._handler(task, use, failures, round),
                                     self.policy.round_timeout if timeout is None else timeout)
            return failures
        return ask

    def membership(self, weights: Weights) -> dict[str, dict[str, float]]:
        """Each available site's membership-inference attack on ``weights`` (its AUC and case counts)."""
        found: dict[str, dict[str, float]] = {}
        self.dispatcher.dispatch("membership", weights, {site: None for site in self.sites if site in
                                                         self.dispatcher.available()},
                                 self._handler("membership", lambda site, reply: found.__setitem__(
                                     site, check_metrics(reply, MEMBERSHIP_METRICS)), {}), self.policy.round_timeout)
        return dict(sorted(found.items()))

    def _handler(self, task: str, use: Callable[[str, Any], None], rejected: dict[str, str],
                 round: int | None = None) -> ReplyHandler:
        """A reply handler: ``use(site, reply)`` takes a reply or raises UpdateRejected; a refused
        or failed reply's reason goes to ``rejected``; every reply is audited with its verdict."""
        def on_reply(site: str, reply: Any, meta: dict) -> str | None:
            try:
                if isinstance(reply, Failed):
                    raise UpdateRejected(reply.reason)
                use(site, reply)
                verdict = None
            except UpdateRejected as exc:
                verdict = rejected[site] = str(exc)
            self._audit(task, site, round, reply, meta, verdict)
            return verdict
        return on_reply

    def _audit(self, task: str, site: str, round: int | None, reply: Any, meta: dict, verdict: str | None) -> None:
        append_audit(self.run_dir.root / AUDIT_FILE, task, site, round, reply, meta, verdict)


def _reasons(rejected: dict[str, str]) -> str:
    return "".join(f"\n  {site}: {reason}" for site, reason in sorted(rejected.items()))
