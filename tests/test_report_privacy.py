"""The report's privacy section (issue 10): mechanisms, epsilon per site, attack AUC, epsilon per round;
names and numbers from the sites shown as text only; no section for a run written without privacy."""

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedseg.evaluation.text import printable
from fedseg.report.html import render
from fedseg.report.markdown import write_report
from fedseg.report.privacy import epsilon_per_round, privacy_section
from test_report_injection import OWN_TAGS, Page, check_page, write_run

HOSTILE = ("<script>alert(1)</script>", "a|b", "[x](javascript:alert(1))", "![s](/etc/hostname)")
SAMPLE_DP = {"mode": "sample", "target_epsilon": 8.0, "delta": 1e-5, "accountant": "rdp", "max_grad_norm": 1.0,
             "clip": None, "noise_multiplier": 0.93}


def privacy(sites, dp=SAMPLE_DP, mechanisms=("sample-level DP (DP-SGD)", "secure aggregation (pairwise masks)"),
            epsilon=None, auc=None):
    return {"mechanisms": list(mechanisms), "dp": dp,
            "epsilon": epsilon if epsilon is not None else {s: 3.1 + i for i, s in enumerate(sites)} if dp else {},
            "membership_auc": auc if auc is not None else {s: 0.52 + 0.1 * i for i, s in enumerate(sites)},
            "membership_cases": {s: [10 + i, 4] for i, s in enumerate(sites)}}


def epsilon_lines(sites, rounds=3):
    return [{"round": r, "site": s, "epsilon": (r + 1) * (1.0 + i)} for r in range(rounds) for i, s in enumerate(sites)]


def run_with(tmp_path, sites, results_privacy, metrics=()):
    run = write_run(tmp_path, {s: [f"c{i}a", f"c{i}b"] for i, s in enumerate(sites)}, models=("FL_global",))
    results = json.loads((run / "results.json").read_text())
    if results_privacy is not None:
        results["privacy"] = results_privacy
    (run / "results.json").write_text(json.dumps(results))
    with (run / "metrics.jsonl").open("a") as out:
        out.writelines(json.dumps(line) + "\n" for line in metrics)
    write_report(run)
    return run


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def privacy_table(page):
    return next(t for t in page.tables if t[0][0] == "site" and "attack AUC" in t[0])


def test_sample_dp_section_has_mechanisms_epsilon_delta_auc_and_the_figure(tmp_path):
    sites = ["hospital_a", "hospital_b"]
    run = run_with(tmp_path, sites, privacy(sites), epsilon_lines(sites))
    report = (run / "report.md").read_text()
    section = report.split("## Privacy")[1].split("\n## ")[0]
    assert report.index("## Test Dice") < report.index("## Privacy") < report.index("## Test metrics per site")
    assert "- sample-level DP (DP-SGD)" in section and "- secure aggregation (pairwise masks)" in section
    assert "noise multiplier 0.93" in section and "RDP accountant" in section and "δ = 1e-05" in section
    assert "| site | ε spent / target | δ | attack AUC | cases attacked (train / test) |" in section
    assert "| hospital_a | 3.10 / 8 | 1e-05 | 0.520 | 10 / 4 |" in section
    assert "| hospital_b | 4.10 / 8 | 1e-05 | **0.620** | 11 / 4 |" in section  # above 0.6: bold, leaks
    assert "0.5 means it cannot tell members from non-members" in section and "not a proof of privacy" in section
    assert "](figures/privacy_epsilon.png)" in section
    width, height = png_size(run / "figures" / "privacy_epsilon.png")
    assert width > 300 and height > 200
    page = check_page(run)  # the figure embedded, nothing else
    assert ["hospital_b", "4.10 / 8", "1e-05", "0.620", "11 / 4"] in privacy_table(page)
    assert "<h2>Privacy</h2>" in (run / "report.html").read_text()


def test_hostile_site_names_and_mechanisms_are_text_in_the_section_and_figure(tmp_path):
    sites = list(HOSTILE)
    run = run_with(tmp_path, sites, privacy(sites, mechanisms=["<img src=x onerror=alert(1)>", "[m](javascript:x)"]),
                   epsilon_lines(sites, rounds=2))
    page = check_page(run)  # only the report's own tags, one cell per column in every row
    rows = privacy_table(page)[1:]
    assert sorted(row[0] for row in rows) == sorted(printable(s) for s in sites)
    assert all(len(row) == 5 for row in rows)
    assert "<img src=x onerror=alert(1)>" in page.items and "[m](javascript:x)" in page.items
    assert (run / "figures" / "privacy_epsilon.png").is_file()
    assert "javascript:" not in "".join(attrs.get("src", "") for _, attrs in page.tags)


def test_a_run_without_privacy_has_no_section_and_no_figure(tmp_path):
    run = run_with(tmp_path, ["a"], None, epsilon_lines(["a"]))
    assert "Privacy" not in (run / "report.md").read_text()
    assert not (run / "figures" / "privacy_epsilon.png").exists()


def test_no_mechanism_says_only_weights_travel_and_shows_the_attack(tmp_path):
    run = run_with(tmp_path, ["a"], privacy(["a"], dp=None, mechanisms=[]))
    section = (run / "report.md").read_text().split("## Privacy")[1].split("\n## ")[0]
    assert "weights travel, data stays" in section and "ε" not in section
    assert "| site | attack AUC | cases attacked (train / test) |" in section and "| a | 0.520 | 10 / 4 |" in section
    assert not (run / "figures" / "privacy_epsilon.png").exists() and "privacy_epsilon" not in section


def test_client_dp_shows_the_federations_epsilon_and_its_rounds():
    dp = {**SAMPLE_DP, "mode": "client", "max_grad_norm": None, "clip": 0.5, "accountant": "prv"}
    results = {"privacy": privacy(["a", "b"], dp=dp, mechanisms=["client-level DP"], epsilon={"federation": 2.5})}
    records = [{"round": r, "site": "a", "plan": {"client_dp": {"epsilon": r + 0.5}}} for r in range(3)]
    lines = privacy_section(results, records, ["![epsilon](figures/privacy_epsilon.png)", ""])
    text = "\n".join(lines)
    assert "| a | 2.50 / 8 | 1e-05 | 0.520 | 10 / 4 |" in text and "| b | 2.50 / 8 |" in text
    assert "(federation)" in text and "clipped to L2 norm 0.5" in text and "PRV accountant" in text
    assert "to their mean (noise multiplier 0.93); the privacy unit is a whole site" in text
    assert "![epsilon](figures/privacy_epsilon.png)" in text
    assert epsilon_per_round(records) == ({}, [(1, 0.5), (2, 1.5), (3, 2.5)])


def test_numbers_that_are_not_numbers_in_range_are_shown_as_invalid():
    results = {"privacy": privacy(["a", "b", "c"], epsilon={"a": "1e9", "b": float("inf"), "c": -1.0},
                                  auc={"a": 7.0, "b": None, "c": True})}
    results["privacy"]["membership_cases"] = {"a": [1, "x"], "b": [1, 2, 3], "c": [True, 4]}
    results["privacy"]["dp"] = {**SAMPLE_DP, "noise_multiplier": None}  # not known: not shown
    text = "\n".join(privacy_section(results, []))
    assert "noise multiplier" not in text and "Gaussian noise); the privacy unit is one case" in text
    assert "| a | invalid / 8 | 1e-05 | invalid | invalid |" in text
    assert "| b | ∞ / 8 | 1e-05 | n/a | invalid |" in text
    assert "| c | invalid / 8 | 1e-05 | invalid | invalid |" in text


@pytest.mark.parametrize("privacy_value, key", [([], "privacy"), ({"epsilon": [1.0]}, "privacy.epsilon"),
                                                ({"dp": {"mode": "patch"}}, "privacy.dp.mode"),
                                                ({"mechanisms": "dp"}, "privacy.mechanisms")])
def test_a_malformed_privacy_entry_is_an_error_naming_the_key(privacy_value, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        privacy_section({"privacy": privacy_value}, [])


def test_epsilon_per_round_ignores_records_it_cannot_use():
    records = [{"round": 0, "site": "a", "epsilon": 1.0}, {"round": 1, "site": "a", "epsilon": 2.0},
               {"round": "1", "site": "b", "epsilon": 1.0}, {"round": True, "site": "b", "epsilon": 1.0},
               {"round": 0, "site": "b", "epsilon": float("nan")}, {"round": 0, "site": 3, "epsilon": 1.0},
               {"round": 0, "site": "b", "epsilon": -1.0}, {"round": 0, "plan": "x"}, ["not", "a", "record"],
               {"round": 2, "site": "a", "plan": {"client_dp": {"epsilon": None}}}]
    assert epsilon_per_round(records) == ({"a": [(1, 1.0), (2, 2.0)]}, [])


values = st.one_of(st.none(), st.floats(allow_nan=True), st.integers(), st.text(max_size=5), st.booleans())


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(st.characters(codec=None), max_size=12), st.tuples(values, values, values),
                       min_size=1, max_size=4),
       st.lists(st.text(st.characters(codec=None), max_size=12), max_size=3))
def test_random_names_and_values_never_make_a_tag_or_a_column_of_their_own(entries, mechanisms):
    results = {"privacy": {"mechanisms": mechanisms, "dp": SAMPLE_DP,
                           "epsilon": {s: e for s, (e, _, _) in entries.items()},
                           "membership_auc": {s: a for s, (_, a, _) in entries.items()},
                           "membership_cases": {s: [c, 1] for s, (_, _, c) in entries.items()}}}
    page = Page(render("\n".join(privacy_section(results, []))))
    assert {tag for tag, _ in page.tags} <= OWN_TAGS
    (table,) = page.tables
    assert len(table) == 1 + len(entries) and {len(row) for row in table} == {5}
    assert sorted(row[0] for row in table[1:]) == sorted(printable(s).strip(" ") for s in entries)
