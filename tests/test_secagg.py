"""Secure aggregation (fedseg.privacy.secagg): the coordinator gets the exact sum and nothing else,
dropped sites are recovered, and every hostile input is refused with a message naming the site."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from fedseg.privacy import shamir
from fedseg.privacy.fixed_point import decode, encode
from fedseg.privacy.secagg import SecAggError, SiteMasking, Unmasker, default_threshold

CONTEXT = b"run-0001/round-3"
ROOT = Path(__file__).resolve().parents[1]


class Round:
    """One round run by hand: ``shared`` sites share, ``arrive`` sites' masked vectors arrive."""

    def __init__(self, names, threshold=None, context=CONTEXT):
        self.names, self.threshold = list(names), threshold or default_threshold(len(names))
        self.sites = {name: SiteMasking(name, context) for name in names}
        self.keys = {name: site.public_keys() for name, site in self.sites.items()}
        self.unmasker = None

    def share(self, shared=None):
        shared = self.names if shared is None else shared
        self.sent = {name: self.sites[name].share(self.keys, self.threshold) for name in shared}
        return self.sent

    def received(self, name):
        return {sender: out[name] for sender, out in self.sent.items() if sender != name}

    def mask(self, vectors, length):
        self.unmasker = Unmasker(self.keys, self.threshold, CONTEXT, length)
        masked = {name: self.sites[name].mask(vector, self.received(name)) for name, vector in vectors.items()}
        return masked

    def run(self, vectors, arrive=None, shared=None):
        length = len(next(iter(vectors.values())))
        self.share(shared)
        masked = self.mask(vectors, length)
        for name in arrive if arrive is not None else vectors:
            self.unmasker.add(name, masked[name])
        survivors = self.unmasker.survivors()
        self.answers = {name: self.sites[name].unmask(survivors) for name in survivors}
        return self.unmasker.result(self.answers)


def assert_sum(result, vectors):
    want = np.sum(list(vectors), axis=0)
    assert np.max(np.abs(result - want)) <= len(vectors) * 2.0**-33 + 1e-15
    assert np.linalg.norm(result - want) <= 1e-6 * np.linalg.norm(want)


def test_unmasked_sum_equals_the_float_sum_for_realistic_weights():
    rng = np.random.default_rng(0)  # conv weights ~0.05, norm scales ~1, a few running variances ~300
    vectors = {name: np.concatenate([rng.normal(0, 0.05, 5000), rng.normal(1, 0.1, 100), rng.uniform(0, 300, 10)])
               for name in ("site-a", "site-b", "site-c")}
    assert_sum(Round(vectors).run(vectors), vectors.values())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(1, 40), st.integers(0, 2**32 - 1), st.integers(0, max(0, n - default_threshold(n))))))
def test_sum_is_exact_for_any_site_count_vectors_and_drop_outs(case):
    n, length, seed, n_dropped = case
    rng = np.random.default_rng(seed)
    vectors = {f"s{i}": rng.normal(0, 10.0 ** rng.integers(-3, 4), length) for i in range(n)}
    arrive = list(vectors)[n_dropped:]
    result = Round(vectors).run(vectors, arrive=arrive)
    assert_sum(result, [vectors[name] for name in arrive])


@pytest.mark.parametrize("value", [0.0, 0.5, -1234.25])
def test_what_the_coordinator_receives_from_one_site_looks_uniform(value):
    length = 20_000
    vectors = {name: np.full(length, value) for name in ("a", "b", "c")}
    one_round = Round(vectors)
    one_round.share()
    masked = one_round.mask(vectors, length)["b"]

    def p_values(words):
        byte_counts = np.bincount(words.view(np.uint8), minlength=256)
        chi2 = stats.chisquare(byte_counts).pvalue
        ks = stats.kstest(words.astype(np.float64) / 2.0**64, "uniform").pvalue
        return chi2, ks

    assert min(p_values(masked)) > 1e-6  # a uniform vector fails this one time in ~500,000
    assert max(p_values(encode(vectors["b"]))) < 1e-6  # the same test sees the unmasked input


def test_a_site_dropping_after_sharing_is_recovered_exactly():
    rng = np.random.default_rng(1)
    vectors = {name: rng.normal(0, 0.1, 300) for name in ("a", "b", "c", "d")}
    one_round = Round(vectors)  # threshold 3
    result = one_round.run(vectors, arrive=["a", "b", "d"])  # c masked, its vector never arrived
    assert_sum(result, [vectors[name] for name in "abd"])
    for answer in one_round.answers.values():  # for each site: its seed's share or its key's, never both
        assert {site: value[:1] for site, value in answer.items()} == {"a": b"b", "b": b"b", "c": b"s", "d": b"b"}


def test_a_site_that_never_shared_is_not_in_the_sum_and_cannot_join_later():
    rng = np.random.default_rng(2)
    vectors = {name: rng.normal(0, 0.1, 50) for name in ("a", "b", "c", "d")}
    one_round = Round(vectors)
    present = {name: vectors[name] for name in "abc"}
    assert_sum(one_round.run(present, shared=["a", "b", "c"]), present.values())
    late = Round(vectors)  # d shares, but its shares reach no one (lost): d is not in the others' U1
    late.share()
    late.unmasker = Unmasker(late.keys, late.threshold, CONTEXT, 50)
    for name in "abcd":
        received = {sender: value for sender, value in late.received(name).items() if sender != "d"}
        late.unmasker.add(name, late.sites[name].mask(vectors[name], received))
    with pytest.raises(SecAggError, match="survivors d did not share keys with it"):
        late.sites["a"].unmask(late.unmasker.survivors())


def test_fewer_survivors_than_the_threshold_is_refused():
    vectors = {name: np.ones(10) for name in ("a", "b", "c", "d")}
    one_round = Round(vectors)  # threshold 3
    one_round.share()
    masked = one_round.mask(vectors, 10)
    for name in "ab":
        one_round.unmasker.add(name, masked[name])
    with pytest.raises(SecAggError, match="2 survivors .* fewer than the threshold of 3"):
        one_round.sites["a"].unmask(["a", "b"])
    with pytest.raises(SecAggError, match="only 2 masked vectors arrived"):
        one_round.unmasker.result({})


def test_unmask_is_answered_once_per_round():
    vectors = {name: np.ones(10) for name in ("a", "b", "c", "d")}
    one_round = Round(vectors)
    one_round.share()
    one_round.mask(vectors, 10)
    site = one_round.sites["a"]
    first = site.unmask(["a", "b", "c", "d"])
    assert site.unmask(["d", "c", "b", "a"]) == first  # a retry of the same request
    with pytest.raises(SecAggError, match="already answered unmask .* would unmask a vector"):
        site.unmask(["a", "b", "c"])  # "d dropped": d's key share would strip d's masks off its vector
    with pytest.raises(SecAggError, match="already masked"):
        site.mask(np.zeros(10), one_round.received("a"))


def shared_round(names=("a", "b", "c"), length=8):
    vectors = {name: np.full(length, 0.25) for name in names}
    one_round = Round(vectors)
    one_round.share()
    return one_round, vectors


def test_a_tampered_misaddressed_or_replayed_ciphertext_is_refused_naming_the_sender():
    one_round, vectors = shared_round()
    received = one_round.received("a")
    tampered = bytearray(received["b"])
    tampered[40] ^= 1
    for bad, message in [(bytes(tampered), "from site b to site a do not decrypt"),
                         (one_round.sent["b"]["c"], "from site b to site a do not decrypt"),  # meant for c
                         (received["b"][:-1], "from site b must be 160 bytes, not a bytes of length 159"),
                         ("text", "from site b must be 160 bytes, not a str")]:
        with pytest.raises(SecAggError, match=message) as caught:
            one_round.sites["a"].mask(vectors["a"], {**received, "b": bad})
        assert caught.value.sites == ("b",)
    other_round = Round(vectors)  # same names, another round's keys: nothing decrypts
    with pytest.raises(SecAggError, match="from site c to site a do not decrypt"):
        one_round.sites["a"].mask(vectors["a"], {"c": other_round.share()["c"]["a"]})
    with pytest.raises(SecAggError, match="from 'z', which is not a peer"):
        one_round.sites["a"].mask(vectors["a"], {**received, "z": received["b"]})
    assert one_round.sites["a"].mask(vectors["a"], received).dtype == np.uint64  # nothing above used up the round


def finished_round(names="abc", arrive="abc"):
    one_round, vectors = shared_round(names)
    masked = one_round.mask(vectors, 8)
    for name in arrive:
        one_round.unmasker.add(name, masked[name])
    answers = {name: one_round.sites[name].unmask(list(arrive)) for name in arrive}
    return one_round, answers


def flip(share: bytes) -> bytes:
    return share[:-1] + bytes([share[-1] ^ 1])


@pytest.mark.parametrize("owner, what", [("b", "self-mask seed"), ("c", "mask key")])
def test_a_wrong_share_is_caught_by_the_commitment_or_the_public_key(owner, what):
    one_round, answers = finished_round("abcde", arrive="abde")  # threshold 3, c dropped
    bad = {**answers, "d": {**answers["d"], owner: flip(answers["d"][owner])}}
    with pytest.raises(SecAggError, match=f"{what} of site {owner} from d are wrong") as caught:
        one_round.unmasker.result(bad)  # four shares, three needed: the other three name d
    assert caught.value.sites == ("d",)
    with pytest.raises(SecAggError, match=f"{what} of site {owner} from a, b, d do not reconstruct"):
        one_round.unmasker.result({name: bad[name] for name in "abd"})
    with pytest.raises(SecAggError, match="not below the field's prime"):
        one_round.unmasker.result({**answers, "d": {**answers["d"], owner: answers["d"][owner][:1] + b"\xff" * 66}})
    assert one_round.unmasker.result(answers) == pytest.approx(np.full(8, 1.0))  # the honest answers
    assert one_round.unmasker.result({name: answers[name] for name in "abe"}) == pytest.approx(np.full(8, 1.0))


def test_answers_that_do_not_fit_the_survivors_are_refused():
    one_round, answers = finished_round(("a", "b", "c", "d"), arrive=("a", "b", "d"))
    cases = [({**answers, "c": answers["a"]}, "at most 3 survivors"),
             ({"a": answers["a"], "x": answers["b"]}, "from 'x', which are not survivors"),
             ({"a": answers["a"], "b": answers["b"]}, "answers from 2 survivors .* at least the threshold of 3"),
             ({**answers, "a": {k: v for k, v in answers["a"].items() if k != "b"}}, "answer of site a must hold"),
             ({**answers, "a": {**answers["a"], "c": b"b" + answers["a"]["c"][1:]}}, "for site c must be 67 bytes starting with b's'"),
             ({**answers, "a": {k: v for k, v in answers["a"].items() if k != "c"}}, "sites a name other dropped sites"),
             ({**answers, "a": [1, 2]}, "answer of site a must hold .* not a list of length 2")]
    for shares, message in cases:
        with pytest.raises(SecAggError, match=message):
            one_round.unmasker.result(shares)


def test_the_coordinator_refuses_a_duplicate_a_stranger_and_a_wrong_dtype_or_shape():
    one_round, vectors = shared_round()
    masked = one_round.mask(vectors, 8)
    unmasker = one_round.unmasker
    unmasker.add("a", masked["a"])
    for site, value, message in [("a", masked["a"], "site a sent its masked vector twice"),
                                 ("z", masked["b"], "from 'z', which is not a site of this round"),
                                 ("b", masked["b"].astype(np.float64), "uint64 array of shape \\(8,\\), not an array of dtype float64"),
                                 ("b", masked["b"][:7], "not an array of dtype uint64 and shape \\(7,\\)"),
                                 ("b", masked["b"].reshape(2, 4), "shape \\(2, 4\\)"),
                                 ("b", list(masked["b"]), "not a list")]:
        with pytest.raises(SecAggError, match=message):
            unmasker.add(site, value)
    assert unmasker.survivors() == ["a"]


def test_no_sum_of_one_site():
    site = SiteMasking("a", CONTEXT)
    keys = {"a": site.public_keys()}
    with pytest.raises(SecAggError, match="threshold must be an integer >= 2"):
        site.share({**keys, "b": SiteMasking("b", CONTEXT).public_keys()}, 1)
    with pytest.raises(SecAggError, match="dict of 2 to"):
        site.share(keys, 2)
    with pytest.raises(SecAggError, match="threshold must be an integer >= 2"):
        Unmasker(keys, 1, CONTEXT, 4)
    one_round, vectors = shared_round(("a", "b"))
    with pytest.raises(SecAggError, match="only 1 sites shared keys .* threshold of 2"):
        one_round.sites["a"].mask(vectors["a"], {})  # b's shares withheld: a alone would be a sum of one


def test_relayed_keys_are_checked():
    sites = {name: SiteMasking(name, CONTEXT) for name in "abc"}
    keys = {name: site.public_keys() for name, site in sites.items()}
    cases = [({**keys, "a": sites["b"].public_keys()}, "sites a and b advertise the same key c"),
             ({**keys, "a": {**keys["a"], "b_commit": bytes(32)}}, "relayed keys of site a itself are missing or changed"),
             ({k: v for k, v in keys.items() if k != "a"}, "relayed keys of site a itself are missing"),
             ({**keys, "b": {**keys["b"], "s": b"x" * 31}}, "key s of site b must be 32 bytes"),
             ({**keys, "b": {"c": keys["b"]["c"]}}, "keys of site b must be a dict with exactly the entries c, s, b_commit"),
             ({"a": keys["a"], "c": keys["c"], "b\n": keys["b"]}, "site name must be printable"),
             ({**keys, "d": {"c": bytes(32), "s": bytes(range(32)), "b_commit": bytes(range(1, 33))}},
              "site d gives no shared secret")]
    for relayed, message in cases:
        with pytest.raises(SecAggError, match=message):
            sites["a"].share(relayed, 2)
    with pytest.raises(SecAggError, match="round context must be 1 to 1024 bytes"):
        SiteMasking("a", "run-1/round-3")


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.one_of(st.text(max_size=3), st.integers()),
                       st.one_of(st.binary(max_size=200), st.dictionaries(st.text(max_size=2), st.binary(max_size=70)),
                                 st.integers(), st.none()), max_size=5))
def test_hostile_messages_give_only_secagg_errors(message):
    one_round, vectors = shared_round()
    masked = one_round.mask({name: vectors[name] for name in "bc"}, 8)
    for name in "bc":
        one_round.unmasker.add(name, masked[name])
    for call in (lambda: one_round.sites["a"].mask(vectors["a"], message),
                 lambda: one_round.unmasker.result(message),
                 lambda: SiteMasking("b", CONTEXT).share(message, 2),
                 lambda: Unmasker(message, 2, CONTEXT, 8)):
        with pytest.raises(SecAggError):
            call()


def test_fixed_point_round_trip_and_limits():
    values = np.array([0.0, -0.0, 1.0, -1.0, 2.0**-34, -(2.0**30), 2.0**30, 123.456789, -7e-9])
    assert np.all(np.abs(decode(encode(values)) - values) <= 2.0**-33)
    assert encode(np.array([-1.0]))[0] == 2**64 - 2**32  # two's complement
    for bad, message in [(np.array([np.nan]), "non-finite"), (np.array([1.0, -np.inf]), "non-finite .* index 1"),
                         (np.array([2.0**30 + 1]), "\\|x\\| <= 2\\^30"), (np.zeros((2, 2)), "1-D real")]:
        with pytest.raises(ValueError, match=message):
            encode(bad)


def test_shamir_any_threshold_shares_give_the_secret_and_fewer_do_not():
    secret = int.from_bytes(bytes(range(32)), "big")
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    assert shamir.interpolate({x: shares[x] for x in (5, 2, 4)}) == secret
    assert shamir.interpolate({x: shares[x] for x in (1, 3)}) != secret
    with pytest.raises(ValueError, match="threshold 6"):
        shamir.split(secret, 6, [1, 2, 3, 4, 5])


def test_the_benchmark_runs():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "secure_aggregation.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratio to plain FedAvg upload" in result.stdout, result.stdout
