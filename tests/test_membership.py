"""The loss-threshold membership-inference attack's AUC on known answers, and its properties."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedseg.privacy.membership import attack_auc


def pairwise_auc(members, nonmembers):
    """The definition: P(member loss < non-member loss) + P(tie) / 2, over all pairs."""
    wins = sum((m < n) + 0.5 * (m == n) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def test_known_answers():
    assert attack_auc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0  # every member below every non-member
    assert attack_auc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0  # the attack is exactly wrong
    assert attack_auc([0.4, 0.4], [0.4, 0.4, 0.4]) == 0.5  # identical: a coin toss
    assert attack_auc([0.1, 0.3, 0.5, 0.7], [0.1, 0.3, 0.5, 0.7]) == 0.5
    # ties count one half: pairs (0.2 < 0.5), (0.2 < 0.2 tie), (0.5 tie 0.5), (0.5 > 0.2)
    assert attack_auc([0.2, 0.5], [0.5, 0.2]) == pytest.approx(0.5)
    assert attack_auc([0.2, 0.2], [0.2, 0.5]) == pytest.approx((0.5 + 1 + 0.5 + 1) / 4)
    assert attack_auc([1.0, 2.0, 3.0], [1.5, 2.5]) == pytest.approx(pairwise_auc([1.0, 2.0, 3.0], [1.5, 2.5]))


@pytest.mark.parametrize("members, nonmembers, message", [
    ([], [0.1], "at least one member loss"),
    ([0.1], [], "at least one non-member loss"),
    ([float("nan")], [0.1], "member losses must be finite"),
    ([0.1], [float("inf")], "non-member losses must be finite"),
])
def test_bad_inputs_are_clear_errors(members, nonmembers, message):
    with pytest.raises(ValueError, match=message):
        attack_auc(members, nonmembers)


losses = st.lists(st.floats(0, 10, allow_nan=False) | st.sampled_from([0.0, 1.0, 2.0]), min_size=1, max_size=30)


@given(losses, losses)
def test_auc_is_the_pairwise_probability_in_unit_range_and_antisymmetric(members, nonmembers):
    auc = attack_auc(members, nonmembers)
    assert 0.0 <= auc <= 1.0
    assert auc == pytest.approx(pairwise_auc(members, nonmembers), abs=1e-9)
    assert attack_auc(nonmembers, members) == pytest.approx(1 - auc, abs=1e-9)
    # only the order of the losses matters (doubling is exact in floating point)
    assert math.isclose(attack_auc(np.array(members) * 2, np.array(nonmembers) * 2), auc, abs_tol=1e-9)
