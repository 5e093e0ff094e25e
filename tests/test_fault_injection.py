"""Fault injection end to end on the demo's three synthetic sites (issue 8): one site scales its
change to the global model by 100. Plain FedAvg is taken over by it; with the norm guard, the final
test Dice stays within 0.02 of the clean run. (benchmarks/fault_injection.py measures every fault
under every defence; measured 2026-11-26: clean 0.936, unguarded 0.265, guarded 0.921.)"""

import dataclasses

import pytest

from fedseg.demo import demo_experiment
from fedseg.runtime.intake import GuardConfig
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.simulate import run_simulation

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    experiment = demo_experiment(tmp_path_factory.mktemp("demo-data"))  # the demo as users run it
    return dataclasses.replace(experiment, deployment=RoundPolicy(min_responses=2))


def dice(base, out, fault=None, guard="reject", plan=None):
    faulty = base.sites[-1].name
    experiment = dataclasses.replace(base, faults={faulty: fault} if fault else {},
                                     guard=GuardConfig(norm_action=guard), plan=plan or {"name": "fedavg"})
    return run_simulation(experiment, out)["overall"]["mean_dice"]


@pytest.mark.slow
def test_one_scaled_site_takes_over_fedavg_and_the_guards_keep_the_clean_dice(base, tmp_path):
    clean = dice(base, tmp_path / "clean")
    assert clean > 0.85  # the federation learns
    unguarded = dice(base, tmp_path / "unguarded", "scale:100", guard="off")
    guarded = dice(base, tmp_path / "guarded", "scale:100")
    assert unguarded < clean - 0.3, (clean, unguarded)
    assert abs(guarded - clean) <= 0.02, (clean, guarded)
