"""CKKS sums of sites' updates (privacy.homomorphic): exact enough, the coordinator never decrypts,
and every chunk a site or the coordinator sends is checked before use."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedseg.privacy import homomorphic as he

LENGTH = 2 * he.SLOTS + 123
"""Three chunks, the last one partly filled."""


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return he.make_keys()


@pytest.fixture(scope="module")
def uploads(keys) -> tuple[dict[str, np.ndarray], dict[str, list[bytes]]]:
    rng = np.random.default_rng(0)
    updates = {f"site-{i}": rng.normal(0.0, 1e-3, LENGTH) / 2 for i in range(2)}
    return updates, {site: he.encrypt(update, keys[0]) for site, update in updates.items()}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("n_sites", [2, 3, 4])
def test_the_decrypted_sum_is_the_float_sum_within_1e_6(keys, n_sites):
    secret, public = keys
    rng = np.random.default_rng(n_sites)
    weights = rng.dirichlet(np.ones(n_sites))
    updates = {f"s{i}": w * rng.normal(0.0, 1e-3, LENGTH) for i, w in enumerate(weights)}
    updates["s0"][:5] = [9.0, -9.0, 1e-9, 0.0, 3.5]  # large and tiny values, kept
    summed = he.add({site: he.encrypt(u, secret) for site, u in updates.items()}, public, LENGTH)
    got = he.decrypt(summed, secret, LENGTH)
    assert got.dtype == np.float64 and got.shape == (LENGTH,)
    assert relative_error(got, sum(updates.values())) < 1e-6  # measured: about 1e-9 to 1e-8


def test_typical_updates_keep_the_precision_relative_to_their_own_size(keys, uploads):
    """Updates of typical size 1e-3 (no large values): error below 1e-6 of their largest value."""
    updates, encrypted = uploads
    got = he.decrypt(he.add(encrypted, keys[1], LENGTH), keys[0], LENGTH)
    assert relative_error(got, sum(updates.values())) < 1e-6  # measured: about 1e-8


def test_slots_are_packed_fully(keys):
    assert he.SLOTS == he.POLY_MODULUS_DEGREE // 2
    assert len(he.encrypt(np.zeros(he.SLOTS), keys[0])) == 1
    assert len(he.encrypt(np.zeros(he.SLOTS + 1), keys[0])) == 2


def test_the_public_context_holds_no_secret_and_cannot_decrypt(keys, uploads):
    secret, public = keys
    assert he.is_secret(secret) and not he.is_secret(public)
    summed = he.add(uploads[1], public, LENGTH)
    with pytest.raises(he.HEError, match="secret context"):
        he.decrypt(summed, public, LENGTH)
    vector = ts.ckks_vector_from(ts.context_from(public), summed[0])  # TenSEAL itself, past our checks
    with pytest.raises(ValueError, match="secret_key"):
        vector.decrypt()


def test_add_refuses_a_context_with_the_secret_key(keys, uploads):
    with pytest.raises(he.HEError, match="coordinator must only ever have the public context"):
        he.add(uploads[1], keys[0], LENGTH)


def test_encryptions_of_the_same_vector_differ(keys):
    vector = np.linspace(-1, 1, 100)
    first, second = he.encrypt(vector, keys[0]), he.encrypt(vector, keys[0])
    assert first[0] != second[0]
    np.testing.assert_allclose(he.decrypt(first, keys[0], 100), he.decrypt(second, keys[0], 100), atol=1e-9)


def _refused(keys, uploads, bad_chunks, match: str) -> None:
    sites = {**uploads[1], "evil\u202e": bad_chunks}
    with pytest.raises(he.HEError, match=match) as caught:
        he.add(sites, keys[1], LENGTH)
    assert caught.value.site == "evil\u202e" and "site 'evil\\u202e'" in str(caught.value)


def test_truncated_garbage_and_empty_ciphertexts_are_refused_naming_the_site(keys, uploads):
    good = uploads[1]["site-0"]
    _refused(keys, uploads, [good[0][:-40], *good[1:]], "ciphertext 0 is not a ciphertext")
    _refused(keys, uploads, [good[0], b"\x00garbage" * 50, good[2]], "ciphertext 1 is not a ciphertext")
    _refused(keys, uploads, [good[0], good[1], b""], "ciphertext 2 is 0 bytes")
    _refused(keys, uploads, [good[0], good[1], good[2] * 2], r"is \d+ bytes")


def test_wrong_counts_types_and_slot_counts_are_refused_naming_the_site(keys, uploads):
    good = uploads[1]["site-0"]
    _refused(keys, uploads, good[:2], "sent 2 ciphertext")
    _refused(keys, uploads, good + good[:1], "sent 4 ciphertext")
    _refused(keys, uploads, tuple(good), "instead of a list")
    _refused(keys, uploads, [good[0], good[1].hex(), good[2]], "ciphertext 1 is str")
    _refused(keys, uploads, [good[0], good[1], good[0]], "holds 2048 values, not 123")


def test_ciphertexts_of_other_parameters_are_refused_naming_the_site(keys, uploads):
    other_primes = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=he.POLY_MODULUS_DEGREE,
                              coeff_mod_bit_sizes=[50, 30], encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    other_primes.global_scale = 2.0 ** he.SCALE_BITS
    foreign = ts.ckks_vector(other_primes, np.zeros(he.SLOTS)).serialize()
    assert len(foreign) <= he.MAX_CHUNK_BYTES
    _refused(keys, uploads, [foreign, *uploads[1]["site-0"][1:]], "ciphertext 0 is not a ciphertext of these")
    flare_default = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40],
                               encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    flare_default.global_scale = 2.0 ** 40
    with pytest.raises(he.HEError, match="other CKKS parameters"):
        he.add(uploads[1], flare_default.serialize(save_secret_key=False), LENGTH)


def test_a_ciphertext_under_a_foreign_key_makes_the_sum_undecryptable(keys, uploads):
    """Same parameters, another key: the coordinator cannot tell (it has no key), the sites can."""
    foreign_secret, _ = he.make_keys()
    sites = {**uploads[1], "evil": he.encrypt(uploads[0]["site-0"], foreign_secret)}
    summed = he.add(sites, keys[1], LENGTH)
    with pytest.raises(he.HEError, match="another key") as caught:
        he.decrypt(summed, keys[0], LENGTH)
    assert caught.value.site == "coordinator"


def test_decrypt_checks_what_the_coordinator_sends(keys, uploads):
    summed = he.add(uploads[1], keys[1], LENGTH)
    with pytest.raises(he.HEError, match="coordinator's sum sent 2 ciphertext"):
        he.decrypt(summed[:2], keys[0], LENGTH)
    with pytest.raises(he.HEError, match="coordinator's sum, ciphertext 0 is not a ciphertext"):
        he.decrypt([b"junk", *summed[1:]], keys[0], LENGTH)


@pytest.mark.parametrize("vector, match", [
    (np.array([0.0, np.nan]), "non-finite"), (np.array([np.inf]), "non-finite"),
    (np.array([1e3]), "magnitude 1e\\+03"), (np.zeros((2, 2)), "1-D"), (np.zeros(0), "1-D"),
    ([0.0, 1.0], "numpy array"), (np.array([1 + 1j]), "real numbers")])
def test_encrypt_refuses_what_cannot_be_summed(keys, vector, match):
    with pytest.raises(he.HEError, match=match):
        he.encrypt(vector, keys[0])


def test_encrypt_needs_the_secret_context_and_contexts_must_be_bytes(keys):
    with pytest.raises(he.HEError, match="secret context"):
        he.encrypt(np.zeros(3), keys[1])
    with pytest.raises(he.HEError, match="not a TenSEAL context"):
        he.is_secret(b"not a context")
    with pytest.raises(he.HEError, match="must be the bytes"):
        he.add({"a": []}, "public", 3)  # type: ignore[arg-type]
    with pytest.raises(he.HEError, match="positive integer"):
        he.add({"a": []}, keys[1], 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mangled_upload_is_refused_or_summed_never_crashes(keys, uploads, data):
    chunk = uploads[1]["site-1"][0]
    kind = data.draw(st.sampled_from(["cut", "flip", "random", "splice"]))
    if kind == "cut":
        bad = chunk[:data.draw(st.integers(0, len(chunk) - 1))]
    elif kind == "flip":
        at = data.draw(st.integers(0, len(chunk) - 1))
        bad = chunk[:at] + bytes([chunk[at] ^ data.draw(st.integers(1, 255))]) + chunk[at + 1:]
    elif kind == "random":
        bad = data.draw(st.binary(min_size=0, max_size=200))
    else:
        bad = chunk[:data.draw(st.integers(0, 300))] + data.draw(st.binary(max_size=100))
    sites = {**uploads[1], "evil": [bad, *uploads[1]["site-1"][1:]]}
    try:
        summed = he.add(sites, keys[1], LENGTH)
    except he.HEError as error:
        assert error.site == "evil" and "site 'evil'" in str(error)
    else:
        assert len(summed) == he.chunk_count(LENGTH)
