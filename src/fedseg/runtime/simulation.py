"""In-process simulation: every site app in one process, called one after another.

This is the round engine's in-process dispatcher; the engine itself (``engine``) runs the
rounds, so simulation and deployment share every step and every check. Sites train in sorted
order: on a 2-core machine parallel sites only fight over the cores, and a fixed order keeps
results deterministic. A reply a site app refuses (a global model that does not fit its network)
comes back as a ``Failed`` reply; any other exception is a bug and propagates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedseg.plans.base import ComputePlan
from fedseg.plans.checks import UpdateRejected
from fedseg.runtime.engine import Failed, ReplyHandler, RoundEngine, RoundObserver
from fedseg.runtime.intake import GuardConfig
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.site_app import SiteApp
from fedseg.types import Weights


class InProcessDispatcher:
    retries_help = False  # the same sites given the same work answer the same way

    def __init__(self, apps: Mapping[str, SiteApp]):
        self.apps = dict(apps)

    def available(self) -> set[str]:
        return set(self.apps)

    def dispatch(self, task: str, weights: Weights | None, payloads: dict[str, Any], on_reply: ReplyHandler,
                 timeout: int) -> None:
        for site in sorted(payloads):
            try:
                reply = self.apps[site].handle(task, weights, payloads[site])
            except UpdateRejected as exc:
                reply = Failed(str(exc))
            on_reply(site, reply, {})

    def wait_for(self, sites: set[str], timeout: int) -> None:
        """Nothing to wait for: in-process sites never go away."""


def simulation_engine(plan: ComputePlan, apps: Mapping[str, SiteApp], run_dir: RunDirectory,
                      observer: RoundObserver | None = None, validate_global: bool = True,
                      policy: RoundPolicy = RoundPolicy(), guard: GuardConfig = GuardConfig(),
                      classes: set[str] | None = None) -> RoundEngine:
    """The round engine over in-process site apps."""
    return RoundEngine(plan, InProcessDispatcher(apps), run_dir, list(apps), policy, guard, validate_global,
                       observer, classes)
