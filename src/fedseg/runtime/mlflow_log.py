"""A run in MLflow: params from the resolved experiment, metrics per round, the final artifacts.

One MLflow run per fedseg run, named after the experiment, in the MLflow experiment
``[tracking] mlflow_experiment``. Its id is kept in ``RUN_DIR/tracking.json``, so every arm of a
simulation and a resumed run log into the same MLflow run. Metric keys are the TensorBoard tags
(``site/<site>/train_loss``, ``global/val_dice``) with step = round (from 1); another arm's keys
start with its model name (``standalone_<site>/site/<site>/train_loss``). At the end:
``report.md``, ``report.html``, ``results.json``, ``cross_site.csv``, ``checkpoints/FL_global.pt``
and the headline model's test Dice (``test/mean_dice``, ``test/site/<site>/mean_dice``).

MLflow never stops a run: the first call that fails (a server that is down, a store that refuses)
is one warning naming the URI, and this process logs nothing more to it. HTTP retries are kept
short unless MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT say otherwise, so a
server that is down costs the run seconds, once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedseg.files import write_text_atomic
from fedseg.runtime.tracking import TrackingConfig

TRACKING_FILE = "tracking.json"
"""Where a run directory keeps its MLflow run's id (and the URI it belongs to)."""
ARTIFACTS = ("report.md", "report.html", "results.json", "cross_site.csv", "checkpoints/FL_global.pt")
HEADLINE = "FL_global"
MAX_VALUE = 1000
_down: set[str] = set()
"""URIs this process found unusable: warned about once, not tried again."""
log = logging.getLogger(__name__)


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved experiment as MLflow params: ``training.lr``, ``plan.name``, ``sites.<name>.cases``."""
    params: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(flat_params(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            params[name] = ",".join(str(v["name"]) for v in value)
            for entry in value:
                params.update(flat_params({k: v for k, v in entry.items() if k != "name"}, f"{name}.{entry['name']}."))
        else:
            params[name] = (json.dumps(value) if isinstance(value, list) else str(value))[:MAX_VALUE]
    return {re.sub(r"[^\w\-. /]", "_", key)[:250]: value for key, value in params.items()}


class MlflowLog:
    """The coordinator's MLflow run of one fedseg run (created on the first round it logs)."""

    def __init__(self, config: TrackingConfig, experiment: str, params: dict[str, Any], root: Path):
        self.uri, self.mlflow_experiment = str(config.mlflow_uri), config.mlflow_experiment
        self.experiment, self.params, self.root = experiment, params, Path(root)
        self._client: Any = None
        self._run_id: str | None = None

    def round(self, arm: str, step: int, scalars: dict[str, float]) -> None:
        """One round's values of ``arm``'s engine."""
        prefix = "" if arm == HEADLINE else f"{arm}/"
        self._safely(lambda: self._log({prefix + tag: value for tag, value in scalars.items()}, step))

    def finish(self) -> None:
        """The final artifacts and test Dice; the MLflow run is marked finished."""
        self._safely(self._finish)

    # ---------------------------------------------------------------------------------------------
    def _safely(self, action: Callable[[], None]) -> None:
        if self.uri in _down:
            return
        try:
            action()
        except Exception as exc:  # watching must never stop a run: any failure of MLflow is a warning
            _down.add(self.uri)
            log.warning(f"MLflow at {self.uri} cannot be used ({str(exc)[:300]}); the run goes on without MLflow "
                        f"(its values are in {self.root / 'metrics.jsonl'} and {self.root / 'tensorboard'})")

    def _run(self) -> str:
        """The MLflow run of this run directory: the one ``tracking.json`` names, else a new one."""
        if self._run_id is not None:
            return self._run_id
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self._client = client = MlflowClient(tracking_uri=self.uri)
        kept = _read_kept(self.root / TRACKING_FILE)
        if kept.get("mlflow_uri") == self.uri and isinstance(kept.get("run_id"), str):
            self._run_id = kept["run_id"]
            client.update_run(self._run_id, status="RUNNING")
            return self._run_id
        found = client.get_experiment_by_name(self.mlflow_experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(self.mlflow_experiment)
        run = client.create_run(experiment_id, run_name=self.experiment, tags={"fedseg_experiment": self.experiment})
        self._run_id = run.info.run_id
        params = [Param(key, value) for key, value in sorted(flat_params(self.params).items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            client.log_batch(self._run_id, params=params[start:start + 100])
        write_text_atomic(self.root / TRACKING_FILE, json.dumps({"mlflow_uri": self.uri, "run_id": self._run_id},
                                                                indent=2) + "\n")
        return self._run_id

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        run_id, now = self._run(), int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in sorted(values.items()) if math.isfinite(value)]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
            self._client.log_batch(run_id, metrics=metrics[start:start + 1000])

    def _finish(self) -> None:
        run_id = self._run()
        results = _read_kept(self.root / "results.json")
        final = {"test/mean_dice": (results.get("overall") or {}).get("mean_dice")}
        for site, summary in (results.get("sites") or {}).items():
            if isinstance(summary, dict):
                final[f"test/site/{site}/mean_dice"] = summary.get("mean_dice")
        self._log({key: float(value) for key, value in final.items() if isinstance(value, (int, float))}, 0)
        for name in ARTIFACTS:
            if (self.root / name).is_file():
                folder = Path(name).parent.as_posix()
                self._client.log_artifact(run_id, str(self.root / name), None if folder == "." else folder)
        self._client.set_terminated(run_id, "FINISHED")


def _read_kept(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def finish_tracking(config: TrackingConfig, experiment: str, params: dict[str, Any], root: Path) -> None:
    """After the report is written: the run's artifacts to MLflow, when the experiment names one."""
    if config.mlflow_uri:
        MlflowLog(config, experiment, params, root).finish()
