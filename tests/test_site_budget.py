"""A site's own privacy budget (``fedseg site --max-epsilon``): the coordinator's job cannot raise it,
and renaming a run does not give the site a fresh budget."""

import pytest
from tiny_experiment import tiny_experiment

from fedseg.consortium import run_site
from fedseg.deployment import site_budget
from fedseg.errors import UserError
from fedseg.experiment import parse_experiment


def experiment(tmp_path, arms=("federated",), folds=1, **privacy):
    return parse_experiment(tiny_experiment(tmp_path, rounds=1, privacy=privacy, arms=list(arms),
                                            federation={"folds": folds}))


def test_a_job_without_sample_level_dp_or_over_the_cap_is_refused(tmp_path):
    with pytest.raises(UserError, match="trains only under sample-level DP"):
        site_budget(experiment(tmp_path), "hospital_a", 8.0, tmp_path / "state", "run1")
    with pytest.raises(UserError, match="exceed this site's --max-epsilon 8: lower \\[privacy\\] epsilon to at most 8"):
        site_budget(experiment(tmp_path, dp="sample", epsilon=1e9), "hospital_a", 8.0, tmp_path / "state", "run1")
    assert not (tmp_path / "state" / "dp_runs.json").exists()


def test_runs_add_up_and_a_resumed_run_counts_once(tmp_path):
    state = tmp_path / "state"
    five = experiment(tmp_path, dp="sample", epsilon=5.0)
    site_budget(five, "hospital_a", 8.0, state, "first")
    site_budget(five, "hospital_a", 8.0, state, "first")  # the same run resumed
    with pytest.raises(UserError, match="lower \\[privacy\\] epsilon to at most 3"):
        site_budget(five, "hospital_a", 8.0, state, "renamed")
    site_budget(experiment(tmp_path, dp="sample", epsilon=3.0), "hospital_a", 8.0, state, "renamed")


def test_a_standalone_arm_spends_the_budget_twice(tmp_path):
    """The site trains two models of the same cases (federated and standalone), each to epsilon."""
    state = tmp_path / "state"
    both = experiment(tmp_path, ("federated", "standalone"), dp="sample", epsilon=5.0)
    with pytest.raises(UserError, match="2 times: each model it trains.*at most 4"):
        site_budget(both, "hospital_a", 8.0, state, "arms")
    site_budget(experiment(tmp_path, ("federated", "standalone"), dp="sample", epsilon=4.0), "hospital_a", 8.0,
                state, "arms")
    with pytest.raises(UserError, match="at most 0"):
        site_budget(experiment(tmp_path, dp="sample", epsilon=0.5), "hospital_a", 8.0, state, "next")


def test_each_fold_spends_the_budget_again(tmp_path):
    """k folds: k federations over the same cases, each to epsilon (and a standalone model beside)."""
    with pytest.raises(UserError, match="4 times: each model it trains.*at most 2"):
        site_budget(experiment(tmp_path, ("federated", "standalone"), folds=3, dp="sample", epsilon=2.5),
                    "hospital_a", 8.0, tmp_path / "state", "folds")
    site_budget(experiment(tmp_path, ("federated", "standalone"), folds=3, dp="sample", epsilon=2.0), "hospital_a",
                8.0, tmp_path / "state", "folds")


def test_a_damaged_record_is_an_error_not_a_fresh_budget(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "dp_runs.json").write_text("[1, 2")
    with pytest.raises(UserError, match="is damaged"):
        site_budget(experiment(tmp_path, dp="sample", epsilon=1.0), "hospital_a", 8.0, state, "run")


@pytest.mark.parametrize("cap", [0.0, -1.0, float("nan"), float("inf")])
def test_the_cap_must_be_a_positive_number(tmp_path, cap):
    from fedseg.runtime.flare.provision import load_project, provision
    from consortium_harness import write_project

    kits = provision(load_project(write_project(tmp_path / "p.toml", "p", ["hospital_a"], [1, 2])), tmp_path / "kits")
    with pytest.raises(UserError, match="--max-epsilon must be a finite number > 0"):
        run_site(kits["hospital_a"], tmp_path, max_epsilon=cap)


def test_the_cap_reaches_the_site_process_and_nothing_else_sets_it(tmp_path, monkeypatch):
    from fedseg.runtime.flare.processes import MAX_EPSILON_ENV, site_environment

    monkeypatch.setenv(MAX_EPSILON_ENV, "1e9")  # left over in the operator's shell: not the site's choice
    assert MAX_EPSILON_ENV not in site_environment(tmp_path)
    assert float(site_environment(tmp_path, max_epsilon=4.0)[MAX_EPSILON_ENV]) == 4.0
