"""Hostile-review tests of issue 11's deployed arms (what a site sends back about its own models)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from fedseg.deployed_arms import check_curve
from fedseg.plans.checks import UpdateRejected


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("key", ["train_loss", "val_dice", "global_val_dice"])
def test_a_curve_with_a_non_finite_value_is_refused(key, value):
    # a site's own side drops non-finite values, so only a forged curve carries one; it must not
    # reach the coordinator's metrics.jsonl (json writes it as Infinity/NaN, which is not JSON)
    with pytest.raises(UpdateRejected, match=key):
        check_curve([{"round": 0, key: value}], "site-a", 3)


@given(st.lists(st.fixed_dictionaries({}, optional={"train_loss": st.floats(allow_nan=True, allow_infinity=True),
                                                   "val_dice": st.floats(allow_nan=True, allow_infinity=True)}),
                max_size=3))
def test_an_accepted_curve_holds_only_finite_values_in_range(points):
    points = [{"round": i, **p} for i, p in enumerate(points)]
    try:
        kept = check_curve(points, "site-a", 3)
    except UpdateRejected:
        return
    for point in kept:
        assert math.isfinite(point.get("train_loss", 0.0)) and point.get("train_loss", 0.0) >= 0
        assert 0.0 <= point.get("val_dice", 0.0) <= 1.0
        assert point["site"] == "site-a"
