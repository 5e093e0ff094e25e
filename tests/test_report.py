"""report.md and report.html of a run directory: every section, figure and model, and nothing empty."""

import re
import struct

import pytest

from fedseg.experiment import parse_experiment
from fedseg.report.markdown import write_report
from fedseg.simulate import run_simulation
from tiny_experiment import tiny_experiment

SITES = ("hospital_a", "hospital_b", "hospital_c")
MODELS = ["FL_global", *[f"FL_local_{s}" for s in SITES], *[f"standalone_{s}" for s in SITES], "centralized"]
FIGURES = ("cross_site_dice.png", "dice_boxplot.png", "learning_curve.png",
           "examples_hospital_a.png", "examples_hospital_b.png", "examples_hospital_c.png")


@pytest.fixture(scope="module")
def all_arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    config = tiny_experiment(root, rounds=2, arms=["federated", "standalone", "centralized"],
                             federation={"rounds": 2, "fine_tune_epochs": 1})
    run_simulation(parse_experiment(config), root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def federated_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_one")
    run_simulation(parse_experiment(tiny_experiment(root, rounds=1)), root / "run")
    return root / "run"


def png_size(path):
    """(width, height) from the PNG header, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_report_has_settings_matrices_statistics_and_failures(all_arms):
    report = (all_arms / "report.md").read_text()
    assert "This run trained 3 arms" in report and "2 rounds of 3 local optimisation steps" in report
    assert "Wall time" in report and "```toml" in report and 'name = "tiny"' in report
    assert "| **overall** | 6 |" in report  # the headline model's table is still there
    assert "| model | hospital_a | hospital_b | hospital_c | overall |" in report
    for heading in ("### Dice", "### HD95 (mm)", "### bounding-box coverage", "## Statistics", "## Failures",
                    "## Learning curves"):
        assert heading in report
    for model in MODELS:
        assert f"| {model} |" in report
    assert "| reference − model | site | pairs | mean difference [95% CI] | paired t-test p | Wilcoxon p |" in report
    assert "paired t-test" in report and "Wilcoxon signed-rank" in report and "bootstrap 95%" in report
    assert re.search(r"- (No failures: FL_global|FL_global failed on \d+ of 6 cases)", report)


def test_figures_are_real_pngs_and_linked_from_the_report(all_arms):
    report = (all_arms / "report.md").read_text()
    for name in FIGURES:
        path = all_arms / "figures" / name
        width, height = png_size(path)
        assert width > 300 and height > 200 and path.stat().st_size > 10_000, name
        assert f"](figures/{name})" in report


def test_html_is_self_contained(all_arms):
    page = (all_arms / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(?:src|href)="(?!data:|#)', page)  # nothing fetched from disk or the network
    assert page.count("<table>") >= 5  # headline, three matrices, statistics
    assert "FL_local_hospital_a" in page and "<h2>Statistics</h2>" in page


def test_rewriting_the_report_gives_the_same_markdown(all_arms):
    before = (all_arms / "report.md").read_text()
    assert write_report(all_arms) == all_arms / "report.md"
    assert (all_arms / "report.md").read_text() == before


def test_a_single_model_report_has_no_comparisons(federated_only):
    report = (federated_only / "report.md").read_text()
    assert "This run trained one arm" in report
    assert "## Statistics" not in report and "reference − model" not in report
    assert "## Every model on every site" not in report
    assert "| metric | hospital_a | hospital_b | hospital_c | overall |" in report
    assert "| HD95 (mm) |" in report and "## Failures" in report
    assert not (federated_only / "figures" / "cross_site_dice.png").exists()
    page = (federated_only / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # box plot, learning curves, 3 sites' examples
