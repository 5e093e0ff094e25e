"""Watching a run: TensorBoard event files for every run, MLflow when the experiment names a server.

Every round engine that ``study.round_engine`` builds (each arm of a simulation, the deployed
federation) reports its rounds here through a ``Tracked`` observer. TensorBoard gets one
event-file folder per arm under ``RUN_DIR/tensorboard/<model>`` (``FL_global``,
``standalone_<site>``, ``centralized``, ``FL_global_fold<i>``) with the same tags in each, so
``tensorboard --logdir RUN_DIR/tensorboard`` overlays the arms, and a site's curves sit together:

- ``site/<site>/train_loss``, ``val_dice``, ``global_val_dice``, ``aggregation_weight``,
  ``seconds`` (its training time), ``update_norm``, ``lr_last``, ``epsilon`` (where reported);
- ``global/val_dice`` (the mean over sites of the global model's validation Dice),
  ``global/round_seconds``, ``global/accepted_sites``, ``global/rejected_sites``.

The step is the round counted from 1, as the console and the report's curves count it. MLflow
(``mlflow_log``) gets the same values per round. Watching never stops a run: a folder that
cannot be written or a tracking server that is down is one warning, and the run goes on
(``metrics.jsonl`` holds every value either way).

Only the coordinator tracks (the process that runs the round engine). The experiment, with
its ``[tracking]`` table, travels to the sites in a deployed job, but a site builds no round
engine and never contacts the tracking URI.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedseg.types import Update

TENSORBOARD_DIR = "tensorboard"
SITE_KEYS = ("train_loss", "val_dice", "global_val_dice", "aggregation_weight", "seconds", "update_norm", "lr_last",
             "epsilon")
"""What metrics.jsonl holds per site and round that is worth a curve."""
MAX_URI = 500
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingConfig:
    """``[tracking]``: where a run can be watched while it runs."""

    tensorboard: bool = True
    """TensorBoard event files in ``RUN_DIR/tensorboard/`` (one folder per arm)."""
    mlflow_uri: str | None = None
    """An MLflow tracking server (``http://host:5000``, ``https://...``) or a ``file:`` store the
    coordinator logs params, per-round metrics and the final report and model to. Credentials
    stay out of the experiment: set MLFLOW_TRACKING_TOKEN (or _USERNAME/_PASSWORD) where the
    coordinator runs."""
    mlflow_experiment: str = "fedseg"
    """The MLflow experiment the run goes into; the MLflow run is named after the fedseg experiment."""

    def __post_init__(self) -> None:
        if not self.mlflow_experiment.strip() or len(self.mlflow_experiment) > 200:
            raise ValueError(f"mlflow_experiment must be a name of 1 to 200 characters, got {self.mlflow_experiment!r:.60}")
        if self.mlflow_uri is not None:
            check_uri(self.mlflow_uri)

    @property
    def remote(self) -> bool:
        """Whether MLflow is a server (a ``file:`` store writes on the coordinator's own disk)."""
        return self.mlflow_uri is not None and not self.mlflow_uri.startswith("file:")


def check_uri(uri: str) -> None:
    """An MLflow tracking URI fedseg accepts: http(s) or file:, printable, without credentials."""
    if len(uri) > MAX_URI or not uri.isprintable() or any(c.isspace() for c in uri):
        raise ValueError(f"mlflow_uri must be a URI of at most {MAX_URI} printable characters without spaces, "
                         f"got {uri!r:.80}")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 address
        raise ValueError(f"mlflow_uri {uri!r:.80} is not a URI ({exc})") from None
    if parts.scheme not in ("http", "https", "file"):
        raise ValueError(f"mlflow_uri must be an MLflow server's http:// or https:// address or a file: store, "
                         f"e.g. mlflow_uri = \"http://127.0.0.1:5000\", got {uri!r:.80}")
    if parts.scheme != "file" and not parts.hostname:
        raise ValueError(f"mlflow_uri {uri!r:.80} names no host, e.g. mlflow_uri = \"http://127.0.0.1:5000\"")
    if parts.username or parts.password:
        raise ValueError("mlflow_uri must not hold credentials (the experiment is saved in the run directory): "
                         "set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/_PASSWORD where the coordinator runs")


def arm_of(run_dir: Path) -> tuple[Path, str]:
    """The run's root folder and the arm's model name of an engine's run directory (an arm's own
    directory is ``RUN_DIR/arms/<model>``; the federation's is ``RUN_DIR`` itself)."""
    run_dir = Path(run_dir)
    if run_dir.parent.name == "arms":
        return run_dir.parent.parent, run_dir.name
    return run_dir, "FL_global"


def round_scalars(records: list[dict[str, Any]]) -> dict[str, float]:
    """A round's metrics.jsonl lines as TensorBoard tags and values (finite numbers only)."""
    scalars: dict[str, float] = {}
    accepted = [r for r in records if "rejected" not in r and isinstance(r.get("site"), str)]
    for record in accepted:
        for key in SITE_KEYS:
            if _finite(record.get(key)):
                scalars[f"site/{record['site']}/{key}"] = float(record[key])
    dice = [float(r["global_val_dice"]) for r in accepted if _finite(r.get("global_val_dice"))]
    if dice:
        scalars["global/val_dice"] = sum(dice) / len(dice)
    if records and _finite(records[0].get("round_seconds")):
        scalars["global/round_seconds"] = float(records[0]["round_seconds"])
    scalars["global/accepted_sites"] = float(len(accepted))
    scalars["global/rejected_sites"] = float(len(records) - len(accepted))
    return scalars


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLog:
    """One arm's event files; the first failure to write is a warning, then it stays quiet."""

    def __init__(self, folder: Path, rounds: int):
        self.folder, self.rounds = folder, rounds
        self._writer: Any = None
        self._failed = False

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._failed:
            return
        try:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter  # tensorboard: only when a run writes

                # purge_step: a resumed run hides what an interrupted try wrote from this round on
                self._writer = SummaryWriter(str(self.folder), purge_step=step)
            for tag, value in sorted(scalars.items()):
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()  # a user watching sees the round now
            if step >= self.rounds:
                self.close()
        except Exception as exc:  # watching must never stop a run (a full disk, a missing package)
            self._failed = True
            log.warning(f"TensorBoard files in {self.folder} cannot be written ({exc}); the run goes on "
                        "without them (metrics.jsonl has every value)")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Tracked:
    """A round observer that forwards to ``inner`` (a progress bar, the deployment's status) and
    writes each finished round to TensorBoard and MLflow."""

    def __init__(self, inner: Any, config: TrackingConfig, experiment: str, params: dict[str, Any],
                 run_dir: Path, rounds: int):
        from fedseg.runtime.mlflow_log import MlflowLog

        self.inner = inner
        root, self.arm = arm_of(run_dir)
        self.tensorboard = TensorBoardLog(root / TENSORBOARD_DIR / self.arm, rounds) if config.tensorboard else None
        self.mlflow = MlflowLog(config, experiment, params, root) if config.mlflow_uri else None

    def planned(self, trainings: int) -> None:
        if self.inner:
            self.inner.planned(trainings)

    def round_started(self, round: int, sites: list[str]) -> None:
        if self.inner:
            self.inner.round_started(round, sites)

    def site_trained(self, round: int, site: str, update: Update) -> None:
        if self.inner:
            self.inner.site_trained(round, site, update)

    def round_finished(self, round: int, records: list[dict]) -> None:
        if self.inner:
            self.inner.round_finished(round, records)
        scalars = round_scalars(records)
        if self.tensorboard:
            self.tensorboard.write(round + 1, scalars)
        if self.mlflow:
            self.mlflow.round(self.arm, round + 1, scalars)

    def replay(self, records: list[dict]) -> None:
        """Rounds that ran elsewhere (a deployed site's standalone model, whose curve came back
        after it trained), as if each had just finished."""
        for round in sorted({r["round"] for r in records if isinstance(r.get("round"), int)}):
            self.round_finished(round, [r for r in records if r.get("round") == round])


class SiteProgress:
    """A deployed run's round observer for 'fedseg status': ``publish(**state)`` gets the last
    finished ``round`` with its records (``last``) and the running round (``current``: its
    number, when it started, and each targeted site's ``training`` or ``trained``)."""

    def __init__(self, publish: Callable[..., None]):
        self.publish = publish
        self.finished: dict[str, Any] = {}
        self.current: dict[str, Any] | None = None

    def planned(self, trainings: int) -> None:
        """Nothing to show before the first round."""

    def round_started(self, round: int, sites: list[str]) -> None:
        self.current = {"round": round, "started": time.time(), "sites": dict.fromkeys(sorted(sites), "training")}
        self._publish()

    def site_trained(self, round: int, site: str, update: Update) -> None:
        if self.current is not None and site in self.current["sites"]:
            self.current["sites"][site] = "trained"
            self._publish()

    def round_finished(self, round: int, records: list[dict]) -> None:
        self.finished, self.current = {"round": round, "last": records}, None
        self._publish()

    def _publish(self) -> None:
        self.publish(**self.finished, **({"current": self.current} if self.current else {}))
