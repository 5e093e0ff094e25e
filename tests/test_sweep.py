"""``fedseg sweep``: the grid, its cells' names, the check of every cell before training, a whole
sweep with its ranked table, resuming it, and hostile names."""

import io
import json
import shutil
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from fedseg import cli, sweep
from fedseg.errors import UserError
from fedseg.sweep import CELL_NAME, cell_names, check_cells, expand_grid, read_grid, run_sweep
from fedseg.sweep_report import sweep_markdown
from fedseg.tables import ConfigError
from tiny_experiment import tiny_experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GRID = """
[[grid]]
"plan.name" = ["fedavg"]
"training.lr" = [0.01, 0.03]

[[grid]]
"plan.name" = ["fedprox"]
"plan.proximal_mu" = [0.1]
"""


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else tomli_w.dumps(data))
    return path


def base_experiment(root: Path, **sections) -> Path:
    config = tiny_experiment(root, rounds=1, n_cases=10, training={"local_steps": 1}, **sections)
    config["sites"] = config["sites"][:2]
    return write(root / "base.toml", config)


# -- the grid -------------------------------------------------------------------------------------

def test_the_grid_is_the_union_of_each_tables_product_and_its_names_are_short_and_unique():
    cells = expand_grid([
        {"plan.name": ["fedavg", "fedprox"], "training.lr": [1e-3, 2e-3]},
        {"plan.name": ["fedavgm"], "plan.server_lr": [1.0, 1.5], "plan.server_momentum": [0.9]},
        {"plan.name": ["fedavg"], "training.lr": [1e-3]},  # a cell of the first table again: once
    ])
    assert len(cells) == 4 + 2
    assert cells[0] == {"plan.name": "fedavg", "training.lr": 1e-3}
    assert cells[-1] == {"plan.name": "fedavgm", "plan.server_lr": 1.5, "plan.server_momentum": 0.9}
    names = cell_names(cells)
    assert names[:2] == ["fedavg-lr=0.001", "fedavg-lr=0.002"]
    assert names[-1] == "fedavgm-server_lr=1.5-server_momentum=0.9"
    assert len(set(names)) == len(names)
    # the same option name in two sections: the full key tells them apart
    assert cell_names([{"training.lr": 0.1, "plan.lr": 0.2}]) == ["training.lr=0.1-plan.lr=0.2"]


@pytest.mark.parametrize("tables, message", [
    ([{"task.labels": [{"background": 0}]}], "section"),
    ([{"seed": [1, 2]}], "same test cases"),
    ([{"plan.name/../x": ["fedavg"]}], "section.key"),
    ([{"training.lr": 0.1}], "non-empty list"),
    ([{"training.lr": []}], "non-empty list"),
    ([{}], "empty"),
    ([{"training.lr": [0.1] * 20, "training.batch_size": list(range(1, 21))}], "more than 256 cells"),
])
def test_a_bad_grid_is_a_config_error_naming_the_table(tables, message):
    with pytest.raises(ConfigError, match=message) as error:
        expand_grid(tables, "grid.toml")
    assert "grid.toml: [[grid]] #1" in str(error.value) or "more than" in str(error.value)


def test_a_grid_file_holds_grid_tables_only(tmp_path):
    with pytest.raises(ConfigError, match=r"\[\[grid\]\] tables only"):
        read_grid(write(tmp_path / "g.toml", 'name = "x"\n[[grid]]\n"training.lr" = [0.1]\n'))
    assert read_grid(write(tmp_path / "g.toml", GRID)) == [
        {"plan.name": "fedavg", "training.lr": 0.01}, {"plan.name": "fedavg", "training.lr": 0.03},
        {"plan.name": "fedprox", "plan.proximal_mu": 0.1}]


VALUE = st.one_of(st.text(max_size=30), st.floats(allow_nan=False), st.integers(), st.booleans(),
                  st.lists(st.text(max_size=5), max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["plan.name", "plan.order", "training.lr", "model.norm"]),
                                VALUE, min_size=1, max_size=3), min_size=1, max_size=8))
def test_hostile_values_give_safe_distinct_folders_inside_the_sweep(cells):
    cells = expand_grid([{key: [value] for key, value in cell.items()} for cell in cells])
    names = cell_names(cells)
    out = Path("/sweeps/out")
    assert len({name.lower() for name in names}) == len(names)
    for name in names:
        assert CELL_NAME.fullmatch(name) and ".." not in name and name.lower() != "baseline"
        assert (out / name).resolve().parent == out


def test_path_separators_dots_and_the_baseline_name_are_replaced():
    cells = [{"plan.name": value} for value in ("../../etc", "a/b", "..", "baseline", "BASELINE", "[x](y)", "")]
    names = cell_names(cells)
    assert all("/" not in name and "\\" not in name and ".." not in name for name in names)
    assert "baseline" not in {name.lower() for name in names}
    assert names[1].startswith("a_b-") and len(names[1]) == len("a_b-") + 8  # a digest of the values


# -- checking every cell before anything trains -------------------------------------------------

def test_a_bad_cell_stops_the_sweep_before_training_naming_the_cell_and_the_key(tmp_path, monkeypatch):
    base = base_experiment(tmp_path)
    grid = write(tmp_path / "grid.toml", GRID + '\n[[grid]]\n"plan.name" = ["fedavg"]\n"plan.server_lr" = [2.0]\n')
    monkeypatch.setattr(sweep, "run_simulation", lambda *a, **k: pytest.fail("a cell trained"))
    with pytest.raises(ConfigError) as error:
        run_sweep(base, grid, tmp_path / "out")
    assert "cell 'fedavg-server_lr=2.0'" in str(error.value) and "server_lr" in str(error.value)
    assert str(grid) in str(error.value) and not (tmp_path / "out").exists()


def test_cells_run_the_federated_arm_and_the_baseline_the_comparison_arms(tmp_path):
    base = base_experiment(tmp_path, arms=["federated", "centralized"])
    cells = read_grid(write(tmp_path / "grid.toml", GRID))
    experiments, baseline = check_cells(base, cells, cell_names(cells))
    assert {e.arms for e in experiments.values()} == {("federated",)}
    assert experiments["fedavg-lr=0.03"].training.lr == 0.03
    assert experiments["fedprox-proximal_mu=0.1"].plan == {"name": "fedprox", "proximal_mu": 0.1}
    assert baseline.arms == ("centralized",)
    only_federated = base_experiment(tmp_path / "f")
    assert check_cells(only_federated, cells, cell_names(cells))[1] is None


def test_the_example_grid_fits_the_cross_domain_example():
    cells = read_grid(EXAMPLES / "hippocampus_sweep.toml")
    experiments, baseline = check_cells(EXAMPLES / "hippocampus_cross_domain.toml", cells, cell_names(cells))
    assert {e.plan["name"] for e in experiments.values()} == {"fedavg", "fedprox", "fedadam", "fedavgm", "scaffold"}
    assert experiments["fedavg-norm=batch-local_norm=true"].plan["local_norm"] is True
    assert len(experiments) == 12
    assert baseline.arms == ("standalone",)


def test_the_hospitals_example_grid_fits_its_base_experiment():
    """The README's plan comparison on the 2D hospitals as a sweep: every cell is an experiment."""
    cells = read_grid(EXAMPLES / "hospitals2d_sweep.toml")
    experiments, baseline = check_cells(EXAMPLES / "hospitals2d_fedavg.toml", cells, cell_names(cells))
    assert [e.plan["name"] for e in experiments.values()].count("scaffold") == 2
    assert experiments["scaffold-norm=batch-local_norm=true"].model.norm == "batch"
    assert baseline.arms == ("standalone", "centralized")


# -- a whole sweep --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A sweep of 2 cells against standalone and centralized arms, run through the command line."""
    root = tmp_path_factory.mktemp("sweep")
    base = base_experiment(root, arms=["federated", "standalone", "centralized"])
    grid = write(root / "grid.toml", '[[grid]]\n"plan.name" = ["fedavg"]\n"training.lr" = [0.01, 0.03]\n')
    buffer = io.StringIO()
    original, cli.console = cli.console, Console(file=buffer, width=160)
    try:
        assert cli.main(["sweep", str(base), "--grid", str(grid), "--out", str(root / "out")]) == 0, buffer.getvalue()
    finally:
        cli.console = original
    return root, base, grid, buffer.getvalue()


def test_a_sweep_writes_a_ranked_table_with_the_ratio_to_centralized(finished_sweep):
    root, _, _, printed = finished_sweep
    out = root / "out"
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["finished"] and [c["rank"] for c in summary["cells"]] == [1, 2]
    assert {c["cell"] for c in summary["cells"]} == {"fedavg-lr=0.01", "fedavg-lr=0.03"}
    means = [c["mean_dice"] for c in summary["cells"]]
    assert means == sorted(means, reverse=True)
    centralized = summary["baseline"]["mean_dice"]["centralized"]
    standalone = summary["baseline"]["mean_dice"]
    assert set(standalone) == {"centralized", "standalone_hospital_a", "standalone_hospital_b"}
    best_standalone = max(["standalone_hospital_a", "standalone_hospital_b"], key=standalone.get)
    assert summary["baseline"]["best_standalone"] == best_standalone
    for cell in summary["cells"]:
        assert cell["ratio_to_centralized"] == pytest.approx(cell["mean_dice"] / centralized)
        assert cell["budget"] == {"value": 1, "unit": "steps"}
        assert [point[0] for point in cell["curve"]] == [1.0] and 0 <= cell["curve"][0][1] <= 1
        versus = cell["vs"]["centralized"]
        assert versus["n_pairs"] == 4 and "wilcoxon_p" in versus
        assert set(cell["vs"]) == {"centralized", "standalone_hospital_a", "standalone_hospital_b"}
    text = (out / "sweep.md").read_text()
    best = summary["cells"][0]
    assert "| rank | cell | settings | budget | FL_global test Dice | ratio to centralized |" in text
    assert f"| 1 | {best['cell']} | plan.name = fedavg, training.lr = " in text
    assert f"| {best['ratio_to_centralized']:.3f} |" in text
    assert "− centralized: difference (Wilcoxon p)" in text
    assert f"− {best_standalone} (best standalone): difference" in text
    assert "## Cross-site test Dice" in text
    assert f"## Paired comparisons against {best['cell']}/FL_global" in text
    assert "baseline/standalone_hospital_a" in text
    assert (out / "sweep.png").stat().st_size > 1000
    assert f"1. {best['cell']}: FL_global test Dice" in printed and "x centralized" in printed


def test_resume_keeps_finished_cells_and_finishes_an_interrupted_one(finished_sweep, tmp_path, monkeypatch):
    root, base, grid, _ = finished_sweep
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    with pytest.raises(UserError, match="--resume"):
        run_sweep(base, grid, out)
    (out / "fedavg-lr=0.03" / "results.json").unlink()  # as if it was stopped during its evaluation
    kept = {path: path.stat().st_mtime_ns for folder in ("baseline", "fedavg-lr=0.01")
            for path in (out / folder).rglob("*") if path.is_file()}
    calls = []
    original = sweep.run_simulation
    monkeypatch.setattr(sweep, "run_simulation",
                        lambda experiment, run_dir, **kw: calls.append((run_dir.name, kw["resume"]))
                        or original(experiment, run_dir, **kw))
    summary = run_sweep(base, grid, out, resume=True)
    assert calls == [("fedavg-lr=0.03", True)]
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert (out / "fedavg-lr=0.03" / "results.json").exists()
    assert [c["cell"] for c in summary["cells"]] == [c["cell"] for c in json.loads(
        (root / "out" / "sweep.json").read_text())["cells"]]


def test_a_finished_cell_of_other_settings_stops_the_sweep_before_anything_trains(finished_sweep, tmp_path,
                                                                                 monkeypatch):
    root, base, grid, _ = finished_sweep
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    (out / "fedavg-lr=0.01" / "results.json").unlink()  # this cell would train first ...
    saved = out / "fedavg-lr=0.03" / "experiment.toml"  # ... but this one ran with another lr
    saved.write_text(saved.read_text().replace("lr = 0.03", "lr = 0.05"))
    monkeypatch.setattr(sweep, "run_simulation", lambda *a, **k: pytest.fail("a cell trained"))
    with pytest.raises(UserError, match="fedavg-lr=0.03 holds a finished run with other settings"):
        run_sweep(base, grid, out, resume=True)


def test_hostile_text_is_escaped_in_the_table():
    summary = {"experiment": "x/[link](http://e)", "grid": "<script>.toml", "baseline": None,
               "cells": [{"rank": 1, "cell": "a|b", "budget": {"value": 2, "unit": "epochs"}, "mean_dice": 0.5,
                          "ratio_to_centralized": None, "vs": {}, "curve": [],
                          "overrides": {"plan.order": "[click](http://evil) | <img src=x> **bold**"}}]}
    text = sweep_markdown(summary, [])
    assert "[link](" not in text and "[click](" not in text and "<img" not in text and "<script>" not in text
    assert "**bold**" not in text and "a|b" not in text
    table_row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert table_row.count(" | ") == 4  # rank, cell, settings, budget, Dice: no column added
