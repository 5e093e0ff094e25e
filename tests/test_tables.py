"""Checked TOML (fedseg.tables): every number of a document, and keys shown safely in messages."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedseg.tables import ConfigError, check_numbers, key_path


@pytest.mark.parametrize("keys, shown", [
    (("seed",), "seed"), (("training", "lr"), "[training] lr"), (("sites", 0, "shard", 1), "[[sites]] #1 shard[1]"),
    (("task", "labels", "organ"), "[task] labels.organ"), (("arms", 0), "arms[0]"),
    (("task", "labels", "a\x1b[31mred"), '[task] labels."a\\u001b[31mred"'),
])
def test_key_paths_read_like_the_toml_file(keys, shown):
    assert key_path(keys) == shown


numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3))
documents = st.recursive(numbers, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=4), inner, max_size=3), max_leaves=10)


def leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    return [x for item in value for x in leaves(item)] if isinstance(value, list) else [value]


@settings(max_examples=300, deadline=None)
@given(documents)
def test_a_document_passes_exactly_when_all_its_numbers_are_finite_64_bit(document):
    bad = [x for x in leaves(document) if isinstance(x, float) and not math.isfinite(x)
           or isinstance(x, int) and not -(2**63) <= x < 2**63]
    try:
        check_numbers(document, "f.toml")
    except ConfigError as exc:
        assert bad and str(exc).startswith("f.toml: ") and str(exc).isprintable()
        return
    assert not bad
