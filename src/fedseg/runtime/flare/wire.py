"""What travels between coordinator and sites, as FLARE's FLModel: weights, round instructions,
scalar metrics and per-case scores, nothing else.

Test cases are named by their position in the site's sorted test split (``<site>-case-007``),
not by file name: file names can carry patient identifiers, and the paired statistics only need
a name that is the same for every model.
"""

from __future__ import annotations

import math
from typing import Any

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedseg.types import CaseMetrics, RoundConfig, Update, Weights


def round_config_to_wire(config: RoundConfig) -> dict[str, Any]:
    return {"round": config.round, "seed": config.seed, "local_epochs": config.local_epochs,
            "local_steps": config.local_steps, "extra": dict(config.extra)}


def round_config_from_wire(data: dict[str, Any]) -> RoundConfig:
    return RoundConfig(round=int(data["round"]), seed=int(data["seed"]), local_epochs=data["local_epochs"],
                       local_steps=data["local_steps"], extra=dict(data["extra"]))


def weights_model(weights: Weights, round: int | None = None, meta: dict[str, Any] | None = None) -> FLModel:
    return FLModel(params_type=ParamsType.FULL, params=dict(weights), current_round=round, meta=meta or {})


def update_to_wire(update: Update) -> FLModel:
    return FLModel(params_type=ParamsType.FULL, params=dict(update.weights),
                   metrics={k: float(v) for k, v in update.metrics.items()}, meta={"n_samples": update.n_samples})


def update_from_wire(model: FLModel) -> Update:
    return Update(weights=dict(model.params), n_samples=int(model.meta["n_samples"]), metrics=dict(model.metrics or {}))


def cases_to_wire(site: str, cases: list[CaseMetrics]) -> list[dict[str, Any]]:
    """Per-case scores under pseudonyms, in the order of the site's sorted test cases."""
    order = sorted(cases, key=lambda c: c.case)
    return [CaseMetrics(f"{site}-case-{i:03d}", c.dice, c.hd95, c.bbox_coverage, c.failed).as_dict()
            for i, c in enumerate(order)]


def cases_from_wire(items: list[dict[str, Any]]) -> list[CaseMetrics]:
    return [CaseMetrics(case=i["case"], dice=_floats(i["dice"]), hd95=_floats(i["hd95"]),
                        bbox_coverage=_floats(i["bbox_coverage"]), failed=list(i["failed"])) for i in items]


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {k: math.nan if v is None else float(v) for k, v in values.items()}
