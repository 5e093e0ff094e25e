"""Names that become folders (experiments, sites) cannot leave their folder, and FLARE accepts them."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nvflare.apis.utils.format_check import name_check

from fedseg.files import SAFE_NAME, safe_name


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="./\\-_ aZ09\x00\n~:"), st.sampled_from(["..", ".", "", "a/..", "~"])))
def test_a_name_is_rejected_or_stays_inside_its_folder(tmp_path_factory, value):
    folder = tmp_path_factory.getbasetemp().resolve() / "runs"
    try:
        name = safe_name(value, "site name")
    except ValueError as exc:
        assert "site name" in str(exc) and "e.g. 'hospital_a'" in str(exc)
        return
    joined = (folder / name).resolve()
    assert joined.parent == folder and joined.name == name


@settings(max_examples=300, deadline=None)
@given(st.from_regex(SAFE_NAME, fullmatch=True))
def test_every_valid_name_is_a_valid_flare_site_and_job_name(name):
    assert safe_name(name, "site name") == name
    assert not name_check(name, "client")[0] and not name_check(name, "job_name")[0]


@pytest.mark.parametrize("value", ["../../../x", "x/../../../../ESCAPED", "", ".", "..", "a b", "a.b", "-a",
                                   "a\n", "x" * 65, 3, None])
def test_the_names_of_the_review_are_rejected(value):
    with pytest.raises(ValueError, match="is not a valid name"):
        safe_name(value, "experiment name")
