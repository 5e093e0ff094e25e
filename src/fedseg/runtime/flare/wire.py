"""What travels between coordinator and sites, as FLARE's FLModel: weights, round instructions,
case counts, scalar metrics and pseudonymous per-case scores, nothing else.

Decoding is strict (a reply from a site is hostile until the engine has checked it): a value of
the wrong type is a ValueError, which the dispatcher turns into a rejected reply. The checks of
ranges, shapes and names are the engine's (``runtime.intake``), the same in both runtimes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedseg.runtime.flare.transfer import FileWeights
from fedseg.types import CaseMetrics, RoundConfig, Update, Weights


def round_config_to_wire(config: RoundConfig) -> dict[str, Any]:
    return {"round": config.round, "seed": config.seed, "local_epochs": config.local_epochs,
            "local_steps": config.local_steps, "extra": dict(config.extra)}


def round_config_from_wire(data: dict[str, Any]) -> RoundConfig:
    return RoundConfig(round=int(data["round"]), seed=int(data["seed"]), local_epochs=data["local_epochs"],
                       local_steps=data["local_steps"], extra=dict(data["extra"]))


def weights_model(weights: Weights | list[Weights], round: int | None = None,
                  meta: dict[str, Any] | None = None) -> FLModel:
    """A model (or an ensemble: a list of models) as an FLModel with ``meta``."""
    params, extra = model_params(weights)
    return FLModel(params_type=ParamsType.FULL, params=params, current_round=round, meta={**(meta or {}), **extra})


ENSEMBLE = "ensemble"
"""An ensemble (the k federations of ``folds = k``) travels as one table: member i's parameter
``name`` under ``ensemble/<i>/<name>``, and the member count in the meta under this key."""
MAX_MEMBERS = 100
FOLD = "fold"
"""The meta key naming which federation (fold) of the job a task belongs to; absent: the only one."""


def model_params(model: Weights | list[Weights] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters and extra meta of a model or an ensemble."""
    if isinstance(model, list):
        return ({f"{ENSEMBLE}/{i}/{name}": value for i, member in enumerate(model) for name, value in member.items()},
                {ENSEMBLE: len(model)})
    return dict(model or {}), {}


def model_from_params(params: Any, meta: Any) -> Weights | list[Weights]:
    """``model_params`` undone; ValueError for an ensemble that does not add up (hostile input)."""
    params = _table(params)
    count = meta.get(ENSEMBLE) if isinstance(meta, dict) else None
    if count is None:
        return params
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= MAX_MEMBERS:
        raise ValueError(f"an ensemble must have 2 to {MAX_MEMBERS} members, the message says {count!r:.20}")
    members: list[dict[str, Any]] = [{} for _ in range(count)]
    indices = {str(i): i for i in range(count)}  # one spelling each: '00' or a non-ASCII digit would collide
    for key, value in params.items():
        head, index, name = (key.split("/", 2) + ["", ""])[:3]
        if head != ENSEMBLE or index not in indices or not name:
            raise ValueError(f"parameter {key[:80]!r} names no member of a {count}-model ensemble")
        members[indices[index]][name] = value
    if not all(members):
        raise ValueError("a member of the ensemble has no parameters")
    return members


def fold_from_wire(meta: Any) -> int | None:
    """The task's fold (None: the job has one federation); ValueError unless a whole number in range."""
    fold = meta.get(FOLD) if isinstance(meta, dict) else None
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < MAX_MEMBERS):
        raise ValueError(f"the task's fold must be a whole number from 0 to {MAX_MEMBERS - 1}, got {fold!r:.20}")
    return fold


ARM_TASKS = ("arms", "share_model", "score_held")
"""A deployed site's comparison arms (``fedseg.deployed_arms``): train them at the site, hand one
over for scoring elsewhere (if the site allows it), score one on the site's own test cases."""

PROTOCOL_TASKS = ("sa_keys", "sa_share", "sa_unmask")
"""Phases of a secure sum whose replies are tables of bytes (keys, encrypted or revealed shares)."""


def payloads_to_wire(task: str, payloads: dict[str, Any]) -> dict[str, Any]:
    """The meta of a task's message: each site's instructions (all sites see all of them: nothing
    in them is secret, encrypted shares are readable by their addressee only)."""
    if task == "train":
        return {"configs": {site: round_config_to_wire(c) for site, c in payloads.items()}}
    return {"payloads": dict(payloads)} if any(p is not None for p in payloads.values()) else {}


def payload_from_wire(task: str, meta: dict[str, Any], site: str) -> Any:
    if task == "train":
        return round_config_from_wire(meta["configs"][site])
    return meta.get("payloads", {}).get(site)


def reply_to_wire(task: str, reply: Any) -> FLModel:
    """A site app's reply to ``task`` as an FLModel."""
    if task in PROTOCOL_TASKS:
        return FLModel(metrics={"entries": float(len(reply))}, meta={"reply": dict(reply)})
    if task == "he_decrypt":
        return FLModel(params_type=ParamsType.FULL, params=dict(reply))
    if task == "share_model":
        return weights_model(reply)
    if task == "arms":
        return FLModel(metrics={"models": float(len(reply["models"]))},
                       meta={"models": list(reply["models"]), "shared": bool(reply["shared"]),
                             "curves": dict(reply.get("curves", {}))})
    if task == "train":
        return FLModel(params_type=ParamsType.FULL, params=dict(reply.weights),
                       metrics={k: float(v) for k, v in reply.metrics.items()}, meta={"n_samples": reply.n_samples})
    # FLARE refuses an FLModel with neither params nor metrics: join and an empty validation carry a count
    if task == "join":
        return FLModel(metrics={"cases": float(sum(reply.values()))}, meta={"declared": dict(reply)})
    if task == "validate":
        return FLModel(metrics={k: float(v) for k, v in reply.items()} or {"no_val_cases": 1.0})
    if task == "membership":
        return FLModel(metrics={k: float(v) for k, v in reply.items()})
    return FLModel(metrics={"test_cases": len(reply)}, meta={"cases": [c.as_dict() for c in reply]})


def reply_from_wire(task: str, model: FLModel) -> Any:
    """The reply to ``task`` that ``model`` carries; ValueError/TypeError/KeyError when it does not fit."""
    meta = model.meta if isinstance(model.meta, dict) else {}
    if task in PROTOCOL_TASKS:
        reply = _table(meta["reply"])
        if not all(isinstance(v, bytes) for v in reply.values()):
            raise ValueError("a secure-sum reply must be a table of bytes")
        return reply
    if task == "he_decrypt":
        return _table(model.params)
    if task in ("train", "share_model"):  # a shared model as an Update: the audit keeps its shapes, not values
        params = model.params
        if task == "train" and isinstance(params, FileWeights):  # fetched into a file: arrays by construction
            return Update(weights=params, n_samples=meta["n_samples"], metrics=_table(model.metrics))
        if not isinstance(params, dict) or not all(isinstance(v, np.ndarray) for v in params.values()):
            raise ValueError("the parameters must be arrays")
        if task == "share_model":  # its own model or its ensemble (folds)
            return Update(weights=model_from_params(params, meta), n_samples=0, metrics={})
        return Update(weights=dict(params), n_samples=meta["n_samples"], metrics=_table(model.metrics))
    if task == "arms":
        names, shared = _list(meta["models"]), meta["shared"]
        if not all(isinstance(n, str) for n in names) or not isinstance(shared, bool):
            raise ValueError("an arms reply must list model names and say whether they are shared")
        return {"models": names, "shared": shared, "curves": _table(meta.get("curves", {}))}
    if task == "join":
        return _table(meta["declared"])
    if task == "validate":
        metrics = _table(model.metrics)
        return {} if metrics == {"no_val_cases": 1.0} else metrics
    if task in ("evaluate", "score_held"):
        return cases_from_wire(meta["cases"])
    if task == "membership":
        return _table(model.metrics)
    raise ValueError(f"unknown task {task!r}")


def cases_from_wire(items: Any) -> list[CaseMetrics]:
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("per-case scores must be a list of tables")
    return [CaseMetrics(case=i["case"], dice=_floats(i["dice"]), hd95=_floats(i["hd95"]),
                        bbox_coverage=_floats(i["bbox_coverage"]), failed=[str(c) for c in _list(i["failed"])])
            for i in items]


def _table(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("expected a table with text keys")
    return dict(value)


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value


def _floats(values: Any) -> dict[str, float]:
    values = _table(values)
    out = {}
    for key, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"score {key!r} is not a number")
        out[key] = math.nan if value is None else float(value)
    return out
