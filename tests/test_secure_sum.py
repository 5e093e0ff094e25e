"""Secure sums through the round engine (simulation): the coordinator gets the sum, not the updates.

The cryptography is tested in test_secagg.py and test_homomorphic.py; here: a masked or encrypted
round gives the plain FedAvg model, a site lost after masking is recovered, the coordinator
records nothing but masked vectors, and a site refuses instructions it cannot trust.
"""

import json

import numpy as np
import pytest
from tiny_experiment import tiny_experiment

from fedseg.experiment import parse_experiment
from fedseg.plans.checks import UpdateRejected
from fedseg.runtime.run_directory import RunDirectory
from fedseg.runtime.simulation import InProcessDispatcher
from fedseg.study import initial_weights, load_sites, round_engine, site_app


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    plain = parse_experiment(tiny_experiment(root, rounds=1, guard={"norm_action": "off"}))
    return root, plain, load_sites(plain)


def experiment_with(root, **privacy):
    return parse_experiment(tiny_experiment(root, rounds=1, guard={"norm_action": "off"}, privacy=privacy,
                                            deployment={"min_responses": 2}))


def one_round(experiment, datasets, run_root, sites=None, dispatcher_class=InProcessDispatcher, he_keys=None):
    apps = {name: site_app(experiment, data, he_secret=he_keys and he_keys[0])
            for name, data in datasets.items() if sites is None or name in sites}
    run_dir = RunDirectory(run_root)
    run_dir.create()
    engine = round_engine(experiment, experiment.compute_plan(), dispatcher_class(apps), run_dir, sorted(apps),
                          federation=True, he_public=he_keys and he_keys[1])
    return engine.run(initial_weights(experiment), 1), run_dir


def relative(a, b):
    keys = [k for k in a if np.issubdtype(np.asarray(a[k]).dtype, np.floating)]
    num = sum(float(np.sum((np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) ** 2)) for k in keys)
    return (num / sum(float(np.sum(np.asarray(a[k], np.float64) ** 2)) for k in keys)) ** 0.5


@pytest.fixture(scope="module")
def plain_round(tiny, tmp_path_factory):
    root, plain, datasets = tiny
    return one_round(plain, datasets, tmp_path_factory.mktemp("plain"))[0]


def test_a_masked_round_gives_the_plain_fedavg_model_and_the_coordinator_sees_only_masks(tiny, plain_round, tmp_path):
    root, _, datasets = tiny
    masked, run_dir = one_round(experiment_with(root, secure_aggregation=True), datasets, tmp_path)
    assert relative(plain_round, masked) < 1e-6
    lines = [json.loads(line) for line in (run_dir.root / "received.jsonl").read_text().splitlines()]
    trained = [line for line in lines if line["task"] == "train"]
    assert len(trained) == 3 and all(set(line["params"]) == {"masked"} for line in trained)
    assert all(line["params"]["masked"][0] == "uint64" for line in trained)
    assert {line["task"] for line in lines} >= {"sa_keys", "sa_share", "sa_unmask"}
    records = run_dir.read_metrics()
    assert records[0]["plan"]["secure_sum"] == "masks" and all("update_norm" not in r for r in records)


class LosesOneUpdate(InProcessDispatcher):
    """The network loses hospital_c's masked update after the site masked it."""

    def dispatch(self, task, weights, payloads, on_reply, timeout):
        if task != "train":
            return super().dispatch(task, weights, payloads, on_reply, timeout)
        kept = {site: payload for site, payload in payloads.items() if site != "hospital_c"}
        self.apps["hospital_c"].handle(task, weights, payloads["hospital_c"])  # it trained and masked
        return super().dispatch(task, weights, kept, on_reply, timeout)


def test_a_site_lost_after_masking_is_recovered(tiny, tmp_path):
    root, plain, datasets = tiny
    two_sites, _ = one_round(plain, datasets, tmp_path / "plain", sites={"hospital_a", "hospital_b"})
    recovered, run_dir = one_round(experiment_with(root, secure_aggregation=True), datasets, tmp_path / "masked",
                                   dispatcher_class=LosesOneUpdate)
    assert relative(two_sites, recovered) < 1e-6
    assert run_dir.read_metrics()[0]["missing_sites"] == ["hospital_c"]


def test_an_encrypted_round_gives_the_plain_fedavg_model(tiny, plain_round, tmp_path):
    from fedseg.privacy.homomorphic import make_keys

    root, _, datasets = tiny
    encrypted, run_dir = one_round(experiment_with(root, homomorphic=True), datasets, tmp_path, he_keys=make_keys())
    assert relative(plain_round, encrypted) < 1e-6
    lines = [json.loads(line) for line in (run_dir.root / "received.jsonl").read_text().splitlines()]
    trained = [line for line in lines if line["task"] == "train"]
    assert len(trained) == 3 and all(set(line["params"]) and all(k.startswith("ckks/") for k in line["params"]) for line in trained)


def test_a_site_refuses_instructions_it_cannot_trust(tiny):
    root, _, datasets = tiny
    app = site_app(experiment_with(root, secure_aggregation=True), datasets["hospital_a"])
    context = b"r" * 24
    spec = {"kind": "masks", "weighted_by": "n_samples", "metric_floor": 0.05, "divisor": 30.0, "clip": None}
    app.handle("sa_keys", None, {"context": context, "spec": spec})
    with pytest.raises(UpdateRejected, match="never made twice"):
        app.handle("sa_keys", None, {"context": context, "spec": spec})
    with pytest.raises(UpdateRejected, match="24 bytes"):
        app.handle("sa_keys", None, {"context": b"short"})
    with pytest.raises(UpdateRejected, match="did not make"):
        app.handle("sa_share", None, {"context": b"x" * 24, "keys": {}, "threshold": 2})
    with pytest.raises(UpdateRejected, match="needs a table"):
        app.handle("sa_unmask", None, ["hospital_a"])
    with pytest.raises(UpdateRejected, match="no secret CKKS key"):
        app.handle("he_decrypt", None, {"chunks": [], "length": app.secure.length})
