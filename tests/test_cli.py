"""The command line as a user meets it: demo, simulate, report, and errors without tracebacks."""

import io
import json
import subprocess
import sys

import pytest
import tomli_w
from rich.console import Console

from fedseg import cli
from tiny_experiment import tiny_experiment


@pytest.fixture
def output(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buffer, width=160, force_terminal=False))
    return buffer


def test_demo_trains_prints_a_table_and_says_where_the_report_is(tmp_path, output):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--rounds", "2", "--cases", "12"]) == 0
    text = output.getvalue()
    for site in ("hospital_a", "hospital_b", "hospital_c", "overall"):
        assert site in text
    assert f"report: {out / 'report.md'}" in text
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"] == 2 and results["overall"]["n_cases"] == 6
    assert sorted(p.name for p in (out / "data").iterdir()) == ["hospital_a", "hospital_b", "hospital_c"]


def test_simulate_then_report_again(tmp_path, output):
    path = tmp_path / "exp.toml"
    path.write_text(tomli_w.dumps(tiny_experiment(tmp_path, rounds=1)))
    assert cli.main(["simulate", str(path), "--out", str(tmp_path / "run")]) == 0
    (tmp_path / "run" / "report.md").unlink()
    assert cli.main(["report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.md").exists()


def test_bad_data_stops_before_training_and_names_the_file(tmp_path, output):
    config = tiny_experiment(tmp_path, rounds=1)
    bad_label = tmp_path / "data" / "hospital_b" / "labels" / "hospital_b_003.png"
    bad_label.unlink()
    path = tmp_path / "exp.toml"
    path.write_text(tomli_w.dumps(config))
    assert cli.main(["simulate", str(path), "--out", str(tmp_path / "run")]) == 1
    text = output.getvalue()
    assert "error:" in text and "nothing was trained" in text
    assert "hospital_b_003.png" in text and "image without label" in text
    assert "Traceback" not in text
    assert not (tmp_path / "run" / "checkpoints" / "global_round_000.pt").exists()


def test_bad_experiment_file_is_one_clear_line(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[task]\nlabels = { background = 0, organ = 1 }\n[training]\nlr = "fast"\n')
    result = subprocess.run([sys.executable, "-m", "fedseg.cli", "simulate", str(path), "--out",
                             str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "lr = 'fast' has the wrong type" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_report_on_a_folder_that_is_not_a_run(tmp_path, output):
    assert cli.main(["report", str(tmp_path)]) == 1
    assert "no results.json" in output.getvalue()


@pytest.mark.slow
def test_full_demo_reaches_a_dice_that_shows_learning(tmp_path, output):
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["overall"]["mean_dice"] > 0.8
    assert all(site["mean_dice"] > 0.6 for site in results["sites"].values())


def test_compare_pairs_the_models_of_two_runs(tmp_path, output):
    config = tiny_experiment(tmp_path, rounds=1)
    paths = {}
    for name, plan in (("fedavg", {"name": "fedavg"}), ("cyclic", {"name": "cyclic"})):
        paths[name] = tmp_path / f"{name}.toml"
        paths[name].write_text(tomli_w.dumps({**config, "plan": plan}))
        assert cli.main(["simulate", str(paths[name]), "--out", str(tmp_path / name)]) == 0
    out = tmp_path / "compare.md"
    assert cli.main(["compare", str(tmp_path / "cyclic"), str(tmp_path / "fedavg"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Paired comparisons against cyclic/FL_global" in text
    assert "| cyclic/FL_global − fedavg/FL_global | overall | 6 |" in text
    assert "cyclic/FL_global" in output.getvalue()

    other = tiny_experiment(tmp_path / "other", rounds=1)
    other["seed"] = 99  # other splits: nothing to pair
    (tmp_path / "other.toml").write_text(tomli_w.dumps(other))
    assert cli.main(["simulate", str(tmp_path / "other.toml"), "--out", str(tmp_path / "reseeded")]) == 0
    assert cli.main(["compare", str(tmp_path / "fedavg"), str(tmp_path / "reseeded")]) == 1
    assert "not scored on the same test cases" in output.getvalue()


def test_deployment_commands_explain_bad_input(tmp_path, output):
    project = tmp_path / "p.toml"
    project.write_text('name = "p"\n[coordinator]\nhost = "localhost"\n[[sites]]\nname = "site_a"\n'
                       '[[admins]]\nname = "me@lab.org"\n')
    assert cli.main(["provision", str(project), "--out", str(tmp_path / "kits")]) == 0
    assert "site_a" in output.getvalue() and "trusted channel" in output.getvalue()
    assert cli.main(["provision", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "k2")]) == 1
    assert cli.main(["server", str(tmp_path / "kits" / "site_a")]) == 1  # a site kit is not the coordinator's
    assert cli.main(["site", str(tmp_path / "kits" / "site_a"), "--data", str(tmp_path / "nowhere")]) == 1
    assert cli.main(["site", str(tmp_path), "--data", str(tmp_path)]) == 1  # not a kit at all
    text = output.getvalue()
    assert "project file not found" in text and "not a server kit" in text
    assert "--data" in text and "does not exist" in text and "not a startup kit" in text
    assert "Traceback" not in text
