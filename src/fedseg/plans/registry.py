"""Compute plans by name, with their plan-specific options checked: known to the plan, of the
right type, applicable to the chosen aggregator, and possible for the federation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedseg.plans.base import ComputePlan
from fedseg.plans.cyclic import CyclicWeightTransfer, SingleWeightTransfer
from fedseg.plans.fedavg import FedAvg
from fedseg.plans.fedopt import FedAvgM, FedOpt
from fedseg.plans.fedprox import FedProx
from fedseg.plans.scaffold import Scaffold

AVERAGING = ("weighted_by", "metric_floor", "fraction", "min_sites", "aggregator", "trim", "clip_factor",
             "local_norm")
SERVER = ("server_lr", "beta1", "tau")
OPTIONS: dict[str, tuple[str, ...]] = {
    "fedavg": AVERAGING,
    "fedprox": (*AVERAGING, "proximal_mu"),
    "fedadam": (*AVERAGING, *SERVER, "beta2"),
    "fedyogi": (*AVERAGING, *SERVER, "beta2"),
    "fedadagrad": (*AVERAGING, *SERVER),  # Adagrad sums squares: no beta2
    "fedavgm": (*AVERAGING, "server_lr", "server_momentum"),
    "scaffold": (*AVERAGING, "server_lr"),
    "cyclic": ("order",),  # the number of cycles is the federation's rounds
    "single_transfer": ("order",),
}
PLANS = tuple(OPTIONS)
TYPES: dict[str, type] = {
    "weighted_by": str, "metric_floor": float, "fraction": float, "min_sites": int, "aggregator": str,
    "trim": float, "clip_factor": float, "proximal_mu": float, "server_lr": float, "beta1": float,
    "beta2": float, "tau": float, "order": str, "server_momentum": float, "local_norm": bool}
EXPECTED = {str: "a string", int: "a whole number", float: "a finite number", bool: "true or false"}
UNWEIGHTED_EXCLUDES = ("weighted_by", "metric_floor")


def build_plan(name: str, seed: int, site_names: Sequence[str], local_epochs: int, local_steps: int | None,
               options: dict[str, Any], *, rounds: int) -> ComputePlan:
    """The plan ``name`` for a federation of ``site_names``; ``options`` are its plan-specific keys
    and ``rounds`` the federation's rounds (for ``cyclic``: its cycles through the sites;
    ``single_transfer`` visits each site once). The plan's ``total_rounds`` says how many
    runtime rounds that makes."""
    allowed = _allowed_options(name)
    for key in sorted(options, key=str):
        if key not in allowed:
            raise ValueError(f"unknown option '{key}' for plan '{name}'; allowed: {', '.join(allowed) or 'none'}")
    typed = {key: _typed(key, value) for key, value in options.items()}
    common = {"seed": seed, "local_epochs": local_epochs, "local_steps": local_steps, **typed}
    if name == "cyclic":
        return CyclicWeightTransfer(sites=list(site_names), cycles=rounds, **common)
    if name == "single_transfer":
        return SingleWeightTransfer(sites=list(site_names), **common)
    aggregator = typed.get("aggregator", "mean")
    for key in UNWEIGHTED_EXCLUDES:
        if key in typed and aggregator in ("median", "trimmed_mean"):
            raise ValueError(f"{key} does not apply to aggregator = '{aggregator}', which counts every site once; "
                             "remove it or use aggregator = 'mean' or 'clipped_mean'")
    if name == "scaffold" and aggregator != "mean":
        raise ValueError(f"plan 'scaffold' needs aggregator = 'mean': its control variates are updated from the "
                         f"sites' mean, which a robust rule ({aggregator!r}) replaces; remove aggregator, or keep "
                         "it with fedavg, fedprox or fedavgm")
    if name == "fedavg":
        plan = FedAvg(rounds=rounds, **common)
    elif name == "fedavgm":
        plan = FedAvgM(rounds=rounds, **common)
    elif name == "scaffold":
        plan = Scaffold(rounds=rounds, sites=len(site_names), **common)
    elif name == "fedprox":
        plan = FedProx(rounds=rounds, **common)
    else:
        plan = FedOpt(optimizer=name.removeprefix("fed"), rounds=rounds, **common)
    plan.check_sites(len(site_names))
    return plan


def _typed(key: str, value: Any) -> Any:
    """``value`` of option ``key`` if it has the option's type (an integer is a fine float)."""
    kind = TYPES[key]
    if kind is float:
        ok = ((isinstance(value, float) and math.isfinite(value))
              or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1e300))
    else:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        raise ValueError(f"{key} = {str(repr(value))[:60]} has the wrong type; expected {EXPECTED[kind]}")
    return float(value) if kind is float else value


def _allowed_options(name: Any) -> tuple[str, ...]:
    if not isinstance(name, str) or name not in OPTIONS:
        raise ValueError(f"plan must be one of {PLANS}, got {str(repr(name))[:60]}")
    return OPTIONS[name]
