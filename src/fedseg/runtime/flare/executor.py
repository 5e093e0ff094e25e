"""A site's side of a deployed run: FLARE hands it tasks, the site trainer does the work.

The site's data folder comes from ``fedseg site --data`` through the environment of the job
process; the experiment sent by the coordinator says how to read and train on it, never where
it is. Only weights, scalar metrics and pseudonymised per-case scores are returned (``wire``).
A problem with the site's own data is reported back as a failed task, with the reason in the
site's log, so the coordinator can go on without the site.
"""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from fedseg.runtime.flare import wire
from fedseg.runtime.flare.apps import SiteApp, load_factory
from fedseg.runtime.flare.processes import DATA_ENV
from fedseg.types import mean_dice


class SiteExecutor(Executor):
    def __init__(self, experiment: str, app_factory: str = "fedseg.deployment:site_app", run_name: str = "run"):
        super().__init__()
        self.experiment = experiment
        self.app_factory = app_factory
        self.run_name = run_name
        self._app: SiteApp | None = None

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        site = fl_ctx.get_identity_name()
        try:
            app = self._site_app(site, fl_ctx)
            model = FLModelUtils.from_shareable(shareable)
            weights = dict(model.params)
            if task_name == "train":
                config = wire.round_config_from_wire(model.meta["configs"][site])
                result = wire.update_to_wire(app.train(weights, config))
            elif task_name == "validate":
                cases = app.evaluate(weights, "val")
                result = FLModel(metrics={"global_val_dice": mean_dice(cases)} if cases else {})
            elif task_name == "evaluate":
                cases = app.evaluate(weights, "test")
                result = FLModel(metrics={"test_cases": len(cases)}, meta={"cases": wire.cases_to_wire(site, cases)})
            else:
                self.log_error(fl_ctx, f"unknown task '{task_name}'")
                return make_reply(ReturnCode.TASK_UNKNOWN)
        except Exception as exc:
            self.log_error(fl_ctx, f"site {site}: task '{task_name}' failed: {exc}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        return FLModelUtils.to_shareable(result)

    def _site_app(self, site: str, fl_ctx: FLContext) -> SiteApp:
        if self._app is None:
            data = os.environ.get(DATA_ENV)
            if not data:
                raise RuntimeError(f"no data folder: start the site with 'fedseg site KIT --data FOLDER' "
                                   f"({DATA_ENV} is not set)")
            state_dir = Path(fl_ctx.get_engine().get_workspace().get_root_dir()) / "fedseg-state" / self.run_name / site
            self._app = load_factory(self.app_factory)(self.experiment, site, Path(data), state_dir)
        return self._app
