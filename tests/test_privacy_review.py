"""A security review of the privacy mechanisms: a hostile site and a coordinator that deviates.

Each test is an attack that worked before its fix: a hostile reply ends as that site's rejection
(never a traceback, never a silently corrupted model), and the coordinator cannot isolate one
site's update by giving sites different instructions or asking for decryptions off-protocol.
"""

import numpy as np
import pytest
from test_secure_sum import experiment_with, one_round, relative
from tiny_experiment import tiny_experiment

from fedseg.experiment import parse_experiment
from fedseg.plans.checks import UpdateRejected
from fedseg.plans.client_dp import ClientDP
from fedseg.plans.fedavg import FedAvg
from fedseg.privacy.fixed_point import encode
from fedseg.runtime.engine import RunStopped
from fedseg.runtime.secure_site import SecureSite
from fedseg.runtime.secure_sum import MASKED, SecureSum
from fedseg.runtime.simulation import InProcessDispatcher
from fedseg.study import load_sites
from fedseg.types import RoundConfig, Update


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    plain = parse_experiment(tiny_experiment(root, rounds=1, guard={"norm_action": "off"}))
    return root, plain, load_sites(plain)


@pytest.fixture(scope="module")
def two_sites(tiny, tmp_path_factory):
    """Plain FedAvg of hospital_a and hospital_b: what a round must give when hospital_c is refused."""
    root, plain, datasets = tiny
    return one_round(plain, datasets, tmp_path_factory.mktemp("two"), sites={"hospital_a", "hospital_b"})[0]


class Hostile(InProcessDispatcher):
    """hospital_c's replies to ``task`` pass through ``change(reply)``."""

    def __init__(self, apps, task, change):
        super().__init__(apps)
        self.task, self.change = task, change

    def dispatch(self, task, weights, payloads, on_reply, timeout):
        def relay(site, reply, meta):
            return on_reply(site, self.change(reply) if site == "hospital_c" and task == self.task else reply, meta)
        return super().dispatch(task, weights, payloads, relay, timeout)


def hostile(task, change):
    return lambda apps: Hostile(apps, task, change)


def rejected(run_dir, task):
    return [line for line in (run_dir.root / "received.jsonl").read_text().splitlines()
            if f'"task": "{task}"' in line and '"site": "hospital_c"' in line and "rejected" in line]


def test_a_site_whose_declaration_was_refused_is_left_out_of_a_secure_round(tiny, two_sites, tmp_path):
    root, _, datasets = tiny  # was: KeyError in the divisor (a traceback)
    model, run_dir = one_round(experiment_with(root, secure_aggregation=True), datasets, tmp_path,
                               dispatcher_class=hostile("join", lambda reply: {"train": -1, "val": 0, "test": 0}))
    assert relative(two_sites, model) < 1e-6


@pytest.mark.parametrize("keys", [{"c": b"x" * 5, "s": bytes(32), "b_commit": bytes(32)},
                                  {"c": bytes(32), "s": bytes(range(32)), "b_commit": bytes(range(1, 33))}])
def test_bad_advertised_keys_reject_that_site_only(tiny, two_sites, tmp_path, keys):
    root, _, datasets = tiny  # was: every site refused to share, then a SecAggError traceback
    model, run_dir = one_round(experiment_with(root, secure_aggregation=True), datasets, tmp_path,
                               dispatcher_class=hostile("sa_keys", lambda reply: keys))
    assert relative(two_sites, model) < 1e-6
    assert rejected(run_dir, "sa_keys")


@pytest.mark.parametrize("change", [lambda reply: {k: v for k, v in reply.items() if k != "hospital_a"},
                                    lambda reply: {k: v + b"x" * 10_000 for k, v in reply.items()}])
def test_shares_not_for_every_peer_are_refused(tiny, two_sites, tmp_path, change):
    root, _, datasets = tiny  # was: the masks did not cancel and the model became noise, silently
    model, run_dir = one_round(experiment_with(root, secure_aggregation=True), datasets, tmp_path,
                               dispatcher_class=hostile("sa_share", change))
    assert relative(two_sites, model) < 1e-6
    assert rejected(run_dir, "sa_share")


def tampered(answer):
    site = sorted(answer)[0]
    data = bytearray(answer[site])
    data[-1] ^= 1
    return {**answer, site: bytes(data)}


def test_a_wrong_unmask_answer_is_left_out(tiny, tmp_path):
    root, plain, datasets = tiny  # was: the round stopped although the other answers sufficed
    three = one_round(plain, datasets, tmp_path / "plain")[0]
    model, run_dir = one_round(experiment_with(root, secure_aggregation=True), datasets, tmp_path / "masked",
                               dispatcher_class=hostile("sa_unmask", tampered))
    assert relative(three, model) < 1e-6
    assert "hospital_c" in run_dir.read_metrics()[0]["plan"]["unmask_answers_left_out"]


def test_a_bad_ciphertext_rejects_only_its_site(tiny, two_sites, tmp_path):
    from fedseg.privacy.homomorphic import make_keys

    root, _, datasets = tiny  # was: the sum failed and the round stopped
    def cut(update):
        return Update({k: v[:100] for k, v in update.weights.items()}, update.n_samples, update.metrics)
    model, run_dir = one_round(experiment_with(root, homomorphic=True), datasets, tmp_path, he_keys=make_keys(),
                               dispatcher_class=hostile("train", cut))
    assert relative(two_sites, model) < 1e-6
    assert rejected(run_dir, "train")


class DropsFirstAttempt(InProcessDispatcher):
    """A network: the first training attempt loses two replies, so the round is run again."""

    retries_help = True

    def dispatch(self, task, weights, payloads, on_reply, timeout):
        if task == "train" and not getattr(self, "lost", False):
            self.lost = True
            payloads = {site: payloads[site] for site in ["hospital_a"]}
        return super().dispatch(task, weights, payloads, on_reply, timeout)


def test_a_retried_masked_round_makes_fresh_keys(tiny, tmp_path):
    root, plain, datasets = tiny  # was: every site refused the retry's keys ("never made twice")
    three = one_round(plain, datasets, tmp_path / "plain")[0]
    model, _ = one_round(experiment_with(root, secure_aggregation=True), datasets, tmp_path / "masked",
                         dispatcher_class=DropsFirstAttempt)
    assert relative(three, model) < 1e-6


def test_an_update_from_a_site_not_asked_to_train_is_refused():
    from fedseg.privacy.homomorphic import make_keys

    template = {"w": np.zeros(8, np.float32)}
    configs = {site: RoundConfig(0, 1) for site in ("a", "b")}
    secure = SecureSum("ckks", public_context=make_keys()[1])
    _, aggregation = secure.begin(FedAvg(seed=1), 0, template, configs, {s: {"train": 5} for s in "abc"},
                                  lambda *args: {})
    with pytest.raises(UpdateRejected, match="not asked to train"):
        aggregation.add("c", Update({}, 3, {}))


def masked_round(specs):
    """Three sites make keys under one set of instructions and share; each then gets ``specs[site]``."""
    template = {"w": np.zeros(6, np.float32)}
    sites = {name: SecureSite(name, template) for name in "abc"}
    context = b"c" * 24
    honest = {"kind": "masks", "weighted_by": "n_samples", "metric_floor": 0.05, "divisor": 30.0, "clip": None}
    keys = {name: site.handle("sa_keys", {"context": context, "spec": honest}) for name, site in sites.items()}
    sent = {name: site.handle("sa_share", {"context": context, "keys": keys, "threshold": 2})
            for name, site in sites.items()}
    for name, site in sites.items():
        received = {sender: out[name] for sender, out in sent.items() if sender != name}
        spec = {**honest, **specs.get(name, {}), "context": context, "received": received}
        site.protect(Update({"w": np.full(6, 0.1, np.float32)}, 10, {}), template, spec)


@pytest.mark.parametrize("other", [{"divisor": 1e300}, {"clip": 1e-300}])
def test_instructions_that_differ_per_site_are_refused(other):
    """A coordinator that shrinks every other site's contribution to nothing would get one site's
    update as the 'sum': a site refuses instructions other than those it made its keys for."""
    masked_round({})
    with pytest.raises(UpdateRejected, match="instructions .* keys"):
        masked_round({"b": other, "c": other})


def test_a_site_decrypts_once_per_round_and_only_where_it_encrypted():
    from fedseg.privacy.homomorphic import make_keys

    secret, _ = make_keys()
    template = {"w": np.zeros(6, np.float32)}
    site = SecureSite("a", template, secret)
    spec = {"kind": "ckks", "weighted_by": "n_samples", "metric_floor": 0.05, "divisor": 30.0, "clip": None,
            "context": b"r" * 24}
    own = site.protect(Update({"w": np.full(6, 0.1, np.float32)}, 10, {}), template, spec).weights
    other = site.protect(Update({"w": np.full(6, 0.2, np.float32)}, 10, {}), template, {**spec, "context": b"s" * 24})
    chunks = lambda update: [value.tobytes() for _, value in sorted(update.items())]  # noqa: E731
    ask = {"chunks": chunks(own), "length": 6, "context": b"r" * 24}
    assert np.allclose(site.handle("he_decrypt", ask)["sum"], 0.1 / 3)
    assert np.allclose(site.handle("he_decrypt", ask)["sum"], 0.1 / 3)  # the same request: nothing new
    with pytest.raises(UpdateRejected, match="once"):
        site.handle("he_decrypt", {**ask, "chunks": chunks(other.weights)})
    for payload in ({**ask, "context": b"t" * 24}, {"chunks": chunks(own), "length": 6}):
        with pytest.raises(UpdateRejected, match="context|did not encrypt"):
            site.handle("he_decrypt", payload)


class Fixed:
    def noise_multiplier(self, *args):
        return 1.0

    def epsilon_spent(self, *args):
        return 1.0


def test_client_dp_noise_is_fresh_for_a_different_mean():
    """The same noise on two different means of one round would give away their difference
    (e.g. one site's clipped update, if a round is released twice with another set of sites)."""
    dp = ClientDP(1.0, 1.0, 1e-5, 1.0, 3, Fixed())
    first, second = {"w": np.zeros(1000)}, {"w": np.full(1000, 0.5)}
    noise = lambda combined: dp.noised(combined, 0, 3)["w"] - combined["w"]  # noqa: E731
    assert np.array_equal(noise(first), noise(first))  # a resumed run is reproducible
    assert not np.allclose(noise(first), noise(second))
    assert dp.secret.bit_length() > 64


def test_a_site_escaping_the_clip_under_a_secure_sum_stops_the_round(tiny, tmp_path):
    root, _, datasets = tiny

    def escape(update):  # masked + encode(x) adds x to the sum: a change far beyond the clip
        return Update({MASKED: update.weights[MASKED] + encode(np.full(update.weights[MASKED].size, 0.5))},
                      update.n_samples, update.metrics)
    experiment = parse_experiment(tiny_experiment(
        root, rounds=1, guard={"norm_action": "off"}, deployment={"min_responses": 2}, plan={"weighted_by": "uniform"},
        privacy={"secure_aggregation": True, "dp": "client", "epsilon": 8.0, "delta": 1e-2, "clip": 10.0}))
    one_round(experiment, datasets, tmp_path / "honest")  # an honest round stays within the clip
    with pytest.raises(RunStopped, match="clip"):
        one_round(experiment, datasets, tmp_path / "hostile", dispatcher_class=hostile("train", escape))


def test_a_site_shares_only_under_a_majority_threshold():
    """With a threshold of half the sites or fewer, a coordinator that names a site a survivor to one
    half and dropped to the other gets both of its secrets, hence its update."""
    from fedseg.privacy.secagg import SecAggError, SiteMasking

    sites = {name: SiteMasking(name, b"c" * 24) for name in "abcd"}
    keys = {name: site.public_keys() for name, site in sites.items()}
    assert len(sites["a"].share(keys, 3)) == 3
    with pytest.raises(SecAggError, match="not a majority"):
        sites["b"].share(keys, 2)
