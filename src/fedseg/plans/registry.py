"""Compute plans by name, with their plan-specific options checked against what each accepts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedseg.plans.base import ComputePlan
from fedseg.plans.cyclic import CyclicWeightTransfer, SingleWeightTransfer
from fedseg.plans.fedavg import FedAvg
from fedseg.plans.fedopt import FedOpt
from fedseg.plans.fedprox import FedProx

AVERAGING = ("weighted_by", "metric_floor", "fraction", "min_sites")
SERVER = ("server_lr", "beta1", "tau")
OPTIONS: dict[str, tuple[str, ...]] = {
    "fedavg": AVERAGING,
    "fedprox": (*AVERAGING, "proximal_mu"),
    "fedadam": (*AVERAGING, *SERVER, "beta2"),
    "fedyogi": (*AVERAGING, *SERVER, "beta2"),
    "fedadagrad": (*AVERAGING, *SERVER),  # Adagrad sums squares: no beta2
    "cyclic": ("cycles", "order"),
    "single_transfer": ("order",),
}
PLANS = tuple(OPTIONS)
CYCLIC = {"cyclic": CyclicWeightTransfer, "single_transfer": SingleWeightTransfer}


def build_plan(name: str, seed: int, site_names: Sequence[str], local_epochs: int, local_steps: int | None,
               options: dict[str, Any]) -> ComputePlan:
    """The plan ``name`` for a federation of ``site_names``; ``options`` are its plan-specific keys."""
    allowed = _allowed_options(name)
    for key in sorted(options):
        if key not in allowed:
            raise ValueError(f"unknown option '{key}' for plan '{name}'; allowed: {', '.join(allowed) or 'none'}")
    common = {"seed": seed, "local_epochs": local_epochs, "local_steps": local_steps, **options}
    if name in CYCLIC:
        return CYCLIC[name](sites=list(site_names), **common)
    if name == "fedavg":
        plan = FedAvg(**common)
    elif name == "fedprox":
        plan = FedProx(**common)
    else:
        plan = FedOpt(optimizer=name.removeprefix("fed"), **common)
    plan.sampling.check_available(len(site_names))
    return plan


def runtime_rounds(name: str, rounds: int, n_sites: int) -> int:
    """Runtime rounds of a run: ``rounds`` for the averaging plans; for ``cyclic`` ``rounds`` counts
    cycles of one site per runtime round; ``single_transfer`` visits each site once."""
    _allowed_options(name)
    if name == "cyclic":
        return rounds * n_sites
    return n_sites if name == "single_transfer" else rounds


def _allowed_options(name: str) -> tuple[str, ...]:
    if name not in OPTIONS:
        raise ValueError(f"plan must be one of {PLANS}, got '{name}'")
    return OPTIONS[name]
