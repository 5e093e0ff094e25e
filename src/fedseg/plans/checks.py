"""What a compute plan accepts: weights shaped exactly like the global model, and sane weights.

Everything a site sends is hostile until checked. A plan checks an update in full before any
part of it is used, so a rejected update leaves the round's aggregate untouched. The
coordinator's intake (``runtime``) and a site receiving a global model use the same checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedseg.types import Weights

NONNEGATIVE = ("running_var",)
"""Float buffers that hold variances (batch norm's running statistics): never below zero."""
MAX_LISTED = 5
"""Parameter names listed in a message; the rest are counted."""


class UpdateRejected(ValueError):
    """An update (or model) the plan will not use; the message says why and which parameter."""


def check_weights(weights: Weights, template: Weights, what: str = "update") -> None:
    """Raise ``UpdateRejected`` unless ``weights`` has exactly ``template``'s parameter names,
    and per parameter a numpy array of its shape and dtype with only finite values."""
    if not isinstance(weights, Mapping):
        raise UpdateRejected(f"{what}: expected a table of parameters, got {type(weights).__name__}")
    missing = [key for key in template if key not in weights]
    extra = [key for key in weights if key not in template]
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"unexpected {_names(extra)}"] if extra else [])
        raise UpdateRejected(f"{what}: parameter names differ from the global model's: {'; '.join(parts)}")
    for key, expected in template.items():
        value = weights[key]
        if not isinstance(value, np.ndarray):
            raise UpdateRejected(f"{what}: parameter {_name(key)} is a {type(value).__name__}, not an array")
        if value.shape != expected.shape:
            raise UpdateRejected(f"{what}: parameter {_name(key)} has shape {value.shape}, expected {expected.shape}")
        if value.dtype != expected.dtype:
            raise UpdateRejected(f"{what}: parameter {_name(key)} has dtype {value.dtype}, expected {expected.dtype}")
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            raise UpdateRejected(f"{what}: parameter {_name(key)} has {bad} NaN or infinite value(s)")
        if (value.dtype.kind in "iu" or str(key).endswith(NONNEGATIVE)) and value.size and value.min() < 0:
            # a negative variance makes every prediction NaN; counters (num_batches_tracked) count up
            raise UpdateRejected(f"{what}: parameter {_name(key)} has negative values, which it cannot hold")


def check_weight(weight: Any, what: str = "update") -> float:
    """An averaging weight as a float: a finite real number >= 0 (0 leaves the update out)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise UpdateRejected(f"{what}: averaging weight must be a number, got {type(weight).__name__}")
    weight = float(weight)
    if not (math.isfinite(weight) and weight >= 0):
        raise UpdateRejected(f"{what}: averaging weight must be finite and >= 0, got {weight}")
    return weight


def _name(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def _names(keys: list[Any]) -> str:
    listed = ", ".join(_name(k) for k in sorted(keys, key=str)[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return listed + (f" and {more} more" if more > 0 else "")
