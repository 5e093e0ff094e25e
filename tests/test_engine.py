"""The round engine and the coordinator's checks, on fake sites that do not train (issue 8,
findings 1-3: nothing a site sends is used before it is checked in full)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedseg.plans.cyclic import CyclicWeightTransfer
from fedseg.plans.fedavg import FedAvg
from fedseg.plans.fedopt import FedOpt
from fedseg.runtime.engine import RunStopped
from fedseg.runtime.intake import GuardConfig, RoundIntake, check_update
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.simulation import simulation_engine
from fedseg.runtime.site_app import SiteApp
from fedseg.types import CaseMetrics, Update

START = {"a": np.full(4, 0.5, dtype=np.float32), "b": np.ones((2, 2), dtype=np.float32),
         "count": np.array(3, dtype=np.int64)}
DECLARED = {"train": 10, "val": 2, "test": 2}


class Honest:
    """Moves every float parameter by +0.1 (plus a little seeded noise); reports sane numbers."""

    def __init__(self, n=10):
        self.n = n

    def train(self, weights, config):
        rng = np.random.default_rng(config.seed)
        moved = {k: (v + 0.1 + rng.normal(scale=0.01, size=v.shape)).astype(v.dtype)
                 if v.dtype.kind == "f" else v.copy() for k, v in weights.items()}
        return Update(moved, n_samples=self.n, metrics={"train_loss": 0.3, "val_dice": 0.5, "steps": 2.0})

    def evaluate(self, weights, split="test"):
        return [CaseMetrics(f"{split}-1", {"lesion": 0.7}), CaseMetrics(f"{split}-2", {"lesion": 0.6})]

    def case_counts(self):
        return {**DECLARED, "train": self.n}

    def weights(self):
        return {k: v.copy() for k, v in START.items()}


class Hostile(Honest):
    """Sends whatever ``make(update)`` turns an honest update into."""

    def __init__(self, make, declared=None):
        super().__init__()
        self.make, self.declared = make, declared

    def train(self, weights, config):
        return self.make(super().train(weights, config))

    def case_counts(self):
        return self.declared or super().case_counts()


def engine(tmp_path, sites, plan=None, **options):
    apps = {name: SiteApp(name, site) for name, site in sites.items()}
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.create()
    return simulation_engine(plan or FedAvg(seed=0), apps, run_dir, **options), run_dir


def run(tmp_path, hostile, plan=None, rounds=1, **options):
    sites = {"a": Honest(), "b": Honest(), "c": hostile}
    eng, run_dir = engine(tmp_path, sites, plan, policy=RoundPolicy(min_responses=2), **options)
    return eng.run(START, rounds), run_dir


def honest_only(tmp_path, plan=None, rounds=1, **options):
    eng, _ = engine(tmp_path / "honest", {"a": Honest(), "b": Honest()}, plan, **options)
    return eng.run(START, rounds)


def with_key(update, key, value):
    return Update({**update.weights, key: value}, update.n_samples, update.metrics)


BAD_UPDATES = {
    # finding 1: a huge first tensor and a wrong-shaped last one: the first must not be folded in
    "huge then wrong shape": lambda u: Update({"a": np.full(4, 1e6, np.float32), "b": np.ones(3, np.float32),
                                               "count": u.weights["count"]}, u.n_samples, u.metrics),
    "nan": lambda u: with_key(u, "a", np.array([np.nan, 0, 0, 0], np.float32)),
    "inf": lambda u: with_key(u, "b", np.full((2, 2), np.inf, np.float32)),
    "missing key": lambda u: Update({k: v for k, v in u.weights.items() if k != "b"}, u.n_samples, u.metrics),
    "extra key": lambda u: with_key(u, "evil", np.zeros(1, np.float32)),
    "int8 dtype": lambda u: with_key(u, "a", np.ones(4, np.int8)),
    "float64 dtype": lambda u: with_key(u, "a", np.ones(4, np.float64)),
    "not an array": lambda u: with_key(u, "a", [1.0, 2.0, 3.0, 4.0]),
    # finding 3: self-reported weights are bounded
    "n_samples 1e9": lambda u: Update(u.weights, 10**9, u.metrics),
    "n_samples float": lambda u: Update(u.weights, 5.5, u.metrics),
    "n_samples zero": lambda u: Update(u.weights, 0, u.metrics),
    "n_samples bool": lambda u: Update(u.weights, True, u.metrics),
    "val_dice 1e6": lambda u: Update(u.weights, u.n_samples, {**u.metrics, "val_dice": 1e6}),
    "loss nan": lambda u: Update(u.weights, u.n_samples, {**u.metrics, "train_loss": math.nan}),
    "metric text": lambda u: Update(u.weights, u.n_samples, {**u.metrics, "steps": "2"}),
    # finding 7: a metric named like a record field
    "metric round": lambda u: Update(u.weights, u.n_samples, {**u.metrics, "round": 99}),
    "metric site": lambda u: Update(u.weights, u.n_samples, {**u.metrics, "site": "a"}),
}


@pytest.mark.parametrize("name", BAD_UPDATES)
@pytest.mark.parametrize("plan", ["fedavg", "fedadam", "cyclic"])
def test_a_bad_update_is_rejected_whole_and_never_touches_the_model(tmp_path, name, plan):
    make = {"fedavg": lambda: FedAvg(seed=0), "fedadam": lambda: FedOpt(seed=0, server_lr=0.1),
            "cyclic": lambda: CyclicWeightTransfer(seed=0, sites=["a", "b", "c"])}[plan]
    if plan == "cyclic":  # round 2 is c's: its bad model must not become the global model
        eng, run_dir = engine(tmp_path, {"a": Honest(), "b": Honest(), "c": Hostile(BAD_UPDATES[name])}, make())
        with pytest.raises(RunStopped, match="round 3"):
            eng.run(START, 3)
        assert run_dir.last_round()[0] == 1  # rounds 0 and 1 kept, nothing of c's
        return
    final, run_dir = run(tmp_path, Hostile(BAD_UPDATES[name]), make())
    expected = honest_only(tmp_path, make())
    for key in START:
        assert final[key].dtype == START[key].dtype
        np.testing.assert_array_equal(final[key], expected[key], err_msg=key)
    records = {r["site"]: r for r in run_dir.read_metrics()}
    assert "rejected" in records["c"] and "aggregation_weight" not in records["c"]
    assert records["c"].get("round") == 0 and records["c"]["site"] == "c"
    assert set(records["a"]["plan"]["aggregation_weights"]) == {"a", "b"}
    audit = [json.loads(line) for line in (run_dir.root / "received.jsonl").read_text().splitlines()]
    assert [a["verdict"][:9] for a in audit if a["task"] == "train" and a["site"] == "c"] == ["rejected:"]


def test_fedadam_server_state_stays_finite_after_a_nan_update(tmp_path):
    plan = FedOpt(seed=0, server_lr=0.1)
    final, _ = run(tmp_path, Hostile(BAD_UPDATES["nan"]), plan, rounds=3)
    assert all(np.isfinite(v).all() for v in plan.state_dict()["m"].values())
    assert all(np.isfinite(v).all() for v in final.values())


def test_n_samples_is_bounded_by_the_declared_training_cases(tmp_path):
    liar = Hostile(lambda u: Update(u.weights, 11, u.metrics))  # declared 10
    _, run_dir = run(tmp_path, liar)
    assert "10 training case" in next(r for r in run_dir.read_metrics() if r["site"] == "c")["rejected"]
    with pytest.raises(RunStopped, match="declare"):  # a declaration out of range keeps a site out
        eng, _ = engine(tmp_path / "x", {"a": Hostile(lambda u: u, declared={"train": 10**9, "val": 0, "test": 0})})
        eng.run(START, 1)


def test_with_every_update_rejected_the_run_stops_and_says_why(tmp_path):
    eng, run_dir = engine(tmp_path, {"a": Hostile(BAD_UPDATES["nan"]), "b": Hostile(BAD_UPDATES["n_samples 1e9"])})
    with pytest.raises(RunStopped) as error:
        eng.run(START, 2)
    assert "a: update: parameter 'a' has 1 NaN" in str(error.value) and "b: n_samples" in str(error.value)
    assert run_dir.last_round() is None


def test_a_round_needs_min_responses_accepted_updates(tmp_path):
    eng, _ = engine(tmp_path, {"a": Honest(), "b": Hostile(BAD_UPDATES["nan"])})  # default: every site
    with pytest.raises(RunStopped, match="1 of 2 site"):
        eng.run(START, 1)


def scaled(factor):
    return lambda u: Update({k: (START[k] + factor * (v - START[k])).astype(v.dtype) if v.dtype.kind == "f" else v
                             for k, v in u.weights.items()}, u.n_samples, u.metrics)


def test_the_norm_guard_rejects_an_update_far_above_the_rounds_median(tmp_path):
    final, run_dir = run(tmp_path, Hostile(scaled(100)))
    records = {r["site"]: r for r in run_dir.read_metrics()}
    assert "median" in records["c"]["rejected"] and records["c"]["update_norm"] > 50 * records["a"]["update_norm"]
    assert records["a"]["norm_bound"] == pytest.approx(5 * records["b"]["update_norm"], rel=0.2)
    for key in START:
        np.testing.assert_array_equal(final[key], honest_only(tmp_path)[key])


def test_the_norm_guard_can_clip_instead(tmp_path):
    final, run_dir = run(tmp_path, Hostile(scaled(100)), guard=GuardConfig(norm_factor=2.0, norm_action="clip"))
    records = {r["site"]: r for r in run_dir.read_metrics()}
    assert records["c"]["clipped"] and "rejected" not in records["c"]
    moved = math.sqrt(sum(float(np.sum((final[k] - START[k]) ** 2)) for k in ("a", "b")))
    assert moved < 2 * records["a"]["norm_bound"] / 3 + records["a"]["update_norm"]  # c's pull is bounded


def test_without_the_guard_a_scaled_update_takes_over_fedavg(tmp_path):
    """The damage the guard prevents, shown: one site of three scales its change by 100."""
    final, _ = run(tmp_path, Hostile(scaled(100)), guard=GuardConfig(norm_action="off"))
    assert float(np.mean(final["a"] - START["a"])) > 10 * 0.1  # honest sites move it by about 0.1


def test_a_site_refuses_a_global_model_that_does_not_fit_its_network():
    app = SiteApp("a", Honest())
    for bad in ({**START, "a": np.full(4, np.nan, np.float32)}, {"a": START["a"]}, "weights"):
        with pytest.raises(ValueError, match="global model"):
            app.handle("train", bad, None)


def test_site_faults_are_what_they_say(tmp_path):
    from fedseg.types import RoundConfig
    config = RoundConfig(round=0, seed=1, local_epochs=1)
    honest = SiteApp("a", Honest()).handle("train", START, config)
    nan = SiteApp("a", Honest(), fault="nan").handle("train", START, config)
    assert np.isnan(nan.weights["a"]).sum() == 1
    big = SiteApp("a", Honest(), fault="scale:100").handle("train", START, config)
    np.testing.assert_allclose(big.weights["a"] - START["a"], 100 * (honest.weights["a"] - START["a"]), rtol=1e-4)
    with pytest.raises(ValueError, match="scale:K"):
        SiteApp("a", Honest(), fault="exec")


arrays = st.sampled_from([np.float32, np.float64, np.int8, np.int64]).flatmap(
    lambda dtype: st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=6).map(
        lambda xs: np.array(xs).astype(dtype) if dtype in (np.float32, np.float64)
        else np.nan_to_num(np.array(xs), posinf=0, neginf=0).clip(-100, 100).astype(dtype)))
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), arrays)


@settings(max_examples=300, deadline=None)
@given(weights=st.dictionaries(st.sampled_from(["a", "b", "count", "x"]), arrays | anything, max_size=4),
       n=anything, metrics=st.dictionaries(st.text(max_size=12) | st.sampled_from(["val_dice", "train_loss"]),
                                           anything, max_size=3))
def test_random_updates_are_accepted_only_when_they_fit(weights, n, metrics):
    update = Update(weights, n, metrics)
    intake = RoundIntake(FedAvg(seed=0).aggregation(0, START), START, {"s": DECLARED}, GuardConfig())
    verdict = intake.receive("s", update)
    if verdict is None:  # accepted: then it really fits
        check_update(update, START, DECLARED)
        assert weights.keys() == START.keys()
        assert all(np.isfinite(v).all() for v in weights.values() if v.dtype.kind == "f")
    else:
        assert isinstance(verdict, str) and "s" in intake.rejected


def test_the_audit_log_keeps_a_line_for_a_malformed_reply(tmp_path):
    from fedseg.runtime.audit import append_audit

    path = tmp_path / "received.jsonl"
    append_audit(path, "train", "c", 0, Update({"a": "text", ("k",): 1}, 3, {(1, 2): "x"}), {1: object()}, "bad")
    append_audit(path, "train", "c", 0, Update("not weights", 3, {}), {}, None)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["verdict"] for line in lines] == ["rejected: bad", "accepted"]
    assert "'a': 'str'" in str(lines[0]["params"])


def test_a_negative_running_variance_or_counter_is_rejected():
    """Hostile review: a finite, small negative running_var passed every check and made every
    prediction of a batch-norm network NaN."""
    from fedseg.plans.checks import UpdateRejected, check_weights

    template = {"bn.running_var": np.ones(3, np.float32), "bn.num_batches_tracked": np.array(5, np.int64)}
    check_weights(dict(template), template)
    with pytest.raises(UpdateRejected, match="negative"):
        check_weights({**template, "bn.running_var": np.array([1.0, -0.5, 1.0], np.float32)}, template)
    with pytest.raises(UpdateRejected, match="negative"):
        check_weights({**template, "bn.num_batches_tracked": np.array(-2**62, np.int64)}, template)


def test_agreed_case_counts_bound_a_sites_declaration(tmp_path):
    """Hostile review: declaring 10**7 cases (the cap) gave one site almost all the weight; the
    experiment's [[sites]] cases makes the consortium's agreement the bound."""
    from fedseg.runtime.intake import check_declaration

    assert check_declaration({"train": 10, "val": 2, "test": 2}, agreed=14)["train"] == 10
    with pytest.raises(ValueError, match="more than the 14"):
        check_declaration({"train": 10**7 - 4, "val": 2, "test": 2}, agreed=14)
    sites = {"a": Honest(), "b": Honest(), "c": Hostile(lambda u: Update(u.weights, 10**7 - 4, u.metrics),
                                                        declared={"train": 10**7 - 4, "val": 2, "test": 2})}
    eng, run_dir = engine(tmp_path, sites, policy=RoundPolicy(min_responses=2))
    eng.agreed = {"a": 14, "b": 14, "c": 14}
    eng.run(START, 1)
    records = {r["site"]: r for r in run_dir.read_metrics()}
    assert "declared" in records["c"]["rejected"] and "aggregation_weight" not in records["c"]


def test_scores_that_would_break_the_results_are_rejected():
    """Hostile review: duplicate case names or missing classes passed, then crashed the results."""
    from fedseg.runtime.intake import check_cases

    good = [CaseMetrics("x-1", {"lesion": 0.5}, {"lesion": 2.0}, {"lesion": 1.0})]
    assert check_cases(good, DECLARED, {"lesion"}) == good
    for bad in ([good[0], good[0]], [CaseMetrics("x-1", {}, {}, {})],
                [CaseMetrics("x-1", {"lesion": 0.5}, {}, {"lesion": 1.0})]):
        with pytest.raises(ValueError):
            check_cases(bad, DECLARED, {"lesion"})
    with pytest.raises(ValueError, match="not declared"):
        check_cases(good, None, {"lesion"})
    with pytest.raises(ValueError, match="finite"):
        check_update(Update(START, 3, {"seconds": math.inf}), START, DECLARED)
    with pytest.raises(ValueError) as error:
        check_update(Update(START, "n" * 10**6, {}), START, DECLARED)
    assert len(str(error.value)) < 300  # a site's value is cut short in every message


def test_the_norm_guard_uses_recent_rounds_when_a_round_has_fewer_than_three_updates(tmp_path):
    """Hostile review: with one or two updates a round (cyclic transfer, sampling) the round's own
    median cannot tell a scaled update from an honest one; recent rounds' norms can."""
    sites = {"a": Honest(), "b": Honest(), "c": Hostile(scaled(1000))}
    eng, run_dir = engine(tmp_path, sites, CyclicWeightTransfer(seed=0, sites=list(sites)),
                          policy=RoundPolicy(min_responses=1))
    with pytest.raises(RunStopped, match="round 3"):  # c's round has no other update: nothing is left
        eng.run(START, 3)
    records = run_dir.read_metrics()
    assert records[0]["guard"].startswith("inactive") and records[1]["guard"].startswith("inactive")
    assert run_dir.last_round()[0] == 1
    lines = [json.loads(line) for line in (run_dir.root / "received.jsonl").read_text().splitlines()]
    assert any(line["task"] == "guard" and line["site"] == "c" for line in lines)


def test_the_audit_line_is_written_even_for_metadata_nested_too_deep_for_json(tmp_path):
    from fedseg.runtime.audit import append_audit

    deep = {}
    for _ in range(5000):
        deep = {"x": deep}
    append_audit(tmp_path / "received.jsonl", "train", "c", 0, Update(START, 3, {}), deep, None)
    line = json.loads((tmp_path / "received.jsonl").read_text())
    assert line["site"] == "c" and line["verdict"] == "accepted" and len(line["meta"]) < 2000
