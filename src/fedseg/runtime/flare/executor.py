"""A site's side of a deployed run: FLARE hands it tasks, the site app (``runtime.site_app``, the
same as in simulation) checks what arrived and does the work.

The site's data folder comes from ``fedseg site --data`` through the environment of the job
process; the experiment sent by the coordinator says how to read and train on it, never where
it is. Only weights, case counts, scalar metrics and pseudonymous per-case scores are returned
(``wire``); the task's model is fetched from the coordinator, and a trained update offered for the
coordinator to fetch, through FLARE's download service (``transfer``). When a task fails (a problem with the site's own data, a global model that does not
fit), the reason is written to the site's own log and the coordinator gets a bare error code:
no text that could carry a file name or a patient identifier crosses the wire.
"""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from fedseg.errors import UserError
from fedseg.files import safe_name
from fedseg.runtime.flare import transfer, wire
from fedseg.runtime.flare.processes import DATA_ENV, FAULT_ENV
from fedseg.runtime.site_app import TASKS, SiteApp

SCORED_CASES = ("test", "all")
SCORING_TASKS = ("join", "evaluate")
"""What a site scoring every case (``cases = "all"``) does: its training cases are test cases there."""


class FlareSiteExecutor(Executor):
    def __init__(self, experiment: str, run_name: str = "run", cases: str = "test"):
        if not isinstance(experiment, str) or not isinstance(run_name, str) or cases not in SCORED_CASES:
            raise TypeError("the job's arguments must be the experiment text, the run name and the cases a "
                            f"model is scored on ({' or '.join(SCORED_CASES)})")  # the job's arguments: hostile
        super().__init__()
        self.experiment = experiment
        self.run_name = run_name
        self.cases = cases
        """``all``: a scoring job (``fedseg evaluate --cases all``) scores every case of the site."""
        self._app: SiteApp | None = None
        self.kit = Path()

    def make_site_app(self, site: str, data: Path, state_dir: Path, fault: str | None) -> SiteApp:
        """The site app for ``site`` on its local ``data`` folder (built by the layer above)."""
        raise NotImplementedError("the job must name fedseg.deployment's site executor")

    def fold_app(self, fold: int) -> SiteApp:
        """The site app of fold ``fold``'s federation (``folds = k > 1``; built by the layer above)."""
        raise NotImplementedError("the job must name fedseg.deployment's site executor")

    def arm_task(self, task: str, weights: dict, payload: object) -> object:
        """The reply to one of ``wire.ARM_TASKS`` (the site's comparison arms; built by the layer above)."""
        raise NotImplementedError("the job must name fedseg.deployment's site executor")

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        site = fl_ctx.get_identity_name()
        if task_name not in TASKS and task_name not in wire.ARM_TASKS or (
                self.cases != "test" and task_name not in SCORING_TASKS):  # a scoring job trains nothing
            self.log_error(fl_ctx, f"task {task_name[:40]!r} is not one this job's sites take", fire_event=False)
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            model = FLModelUtils.from_shareable(shareable)
            app = self._site_app(site, fl_ctx, wire.fold_from_wire(model.meta))
            payload = wire.payload_from_wire(task_name, model.meta, site)
            params = model.params or {}
            if task_name != "join" and transfer.REF in model.meta:  # offered once for all sites: fetch it
                job = fl_ctx.get_job_id()
                folder = Path(fl_ctx.get_engine().get_workspace().get_run_dir(job)) / "incoming"
                params = transfer.fetch(self._cell(fl_ctx), transfer.coordinator_cell(job), model.meta[transfer.REF],
                                        folder, abort_signal)
            weights = None if task_name == "join" else wire.model_from_params(params, model.meta)
            reply = (self.arm_task(task_name, weights, payload) if task_name in wire.ARM_TASKS
                     else app.handle(task_name, weights, payload))
            answer = wire.reply_to_wire(task_name, reply)
            if task_name == "train" and answer.params:  # offered for the coordinator to fetch when it can
                _, answer.meta[transfer.REF] = transfer.offer(self._cell(fl_ctx), answer.params, receivers=1,
                                                              idle_s=transfer.UPLOAD_IDLE_S, finish_after=1)
                answer.params = {}
            return FLModelUtils.to_shareable(answer)
        except (UserError, ValueError, KeyError, TypeError) as exc:
            # fire_event=False: the text stays in the site's log, out of FLARE's error collector
            self.log_error(fl_ctx, f"site {site}: task '{task_name}' failed: {exc}", fire_event=False)
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)

    @staticmethod
    def _cell(fl_ctx: FLContext):
        """This site's job cell (FLARE's messaging endpoint of the job process)."""
        return fl_ctx.get_engine().get_cell()

    def _site_app(self, site: str, fl_ctx: FLContext, fold: int | None = None) -> SiteApp:
        if self._app is None:
            data = os.environ.get(DATA_ENV)
            if not data:
                raise UserError(f"no data folder: start the site with 'fedseg site KIT --data FOLDER' "
                                f"({DATA_ENV} is not set)")
            run = safe_name(self.run_name, "the job's run name")  # the job is not trusted to name a folder
            self.kit = Path(fl_ctx.get_engine().get_workspace().get_root_dir())  # the site's kit: its keys
            state_dir = self.kit / "fedseg-state" / run / site
            self._app = self.make_site_app(site, Path(data), state_dir, os.environ.get(FAULT_ENV) or None)
        return self._app if fold is None else self.fold_app(fold)
