"""Keys for homomorphic encryption come from provisioning: the secret context in every site kit,
only the public context in the coordinator's; kits without keys are explained."""

from __future__ import annotations

import stat

import numpy as np
import pytest
import tomli_w

from fedseg.errors import UserError
from fedseg.privacy import homomorphic as he
from fedseg.runtime.flare.provision import (HE_PUBLIC_FILE, HE_SECRET_FILE, load_he_context, load_project,
                                            provision)

PROJECT = {"name": "lab", "coordinator": {"host": "localhost"}, "sites": [{"name": "a"}, {"name": "b"}],
           "admins": [{"name": "me@lab.org"}]}


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    root = tmp_path_factory.mktemp("he-kits")
    (root / "PROJECT.toml").write_text(tomli_w.dumps({**PROJECT, "privacy": {"homomorphic": True}}))
    return provision(load_project(root / "PROJECT.toml"), root / "kits")


def test_sites_get_the_secret_context_and_the_coordinator_only_the_public_one(kits):
    assert not (kits["coordinator"] / HE_SECRET_FILE).exists()
    assert not any(path.suffix == ".tenseal" for path in kits["admin"].rglob("*"))
    public = load_he_context(kits["coordinator"], secret=False)
    secrets = [load_he_context(kits[site], secret=True) for site in ("a", "b")]
    assert not he.is_secret(public) and all(map(he.is_secret, secrets)) and secrets[0] == secrets[1]
    assert stat.S_IMODE((kits["a"] / HE_SECRET_FILE).stat().st_mode) & 0o077 == 0
    # the kits work together: sites encrypt, the coordinator adds, a site decrypts
    a, b = np.full(10, 0.25), np.linspace(0, 1, 10)
    summed = he.add({"a": he.encrypt(a, secrets[0]), "b": he.encrypt(b, secrets[1])}, public, 10)
    np.testing.assert_allclose(he.decrypt(summed, secrets[1], 10), a + b, atol=1e-9)


def test_a_kit_without_keys_says_to_provision_with_homomorphic(kits):
    with pytest.raises(UserError, match=r"has no he_secret.tenseal.*\[privacy\] homomorphic = true"):
        load_he_context(kits["admin"], secret=True)
    with pytest.raises(UserError, match="has no he_public.tenseal"):
        load_he_context(kits["a"], secret=False)


def test_a_coordinator_kit_holding_the_secret_key_is_refused(kits, tmp_path):
    (tmp_path / HE_PUBLIC_FILE).write_bytes((kits["a"] / HE_SECRET_FILE).read_bytes())
    with pytest.raises(UserError, match="coordinator must never have it"):
        load_he_context(tmp_path, secret=False)
    (tmp_path / HE_SECRET_FILE).write_bytes(b"damaged")
    with pytest.raises(UserError, match="damaged"):
        load_he_context(tmp_path, secret=True)


@pytest.mark.parametrize("privacy, message", [
    ({"homomorphic": "yes"}, "must be true or false"), ({"homomorfic": True}, "unknown key")])
def test_bad_privacy_settings_are_explained(tmp_path, privacy, message):
    path = tmp_path / "PROJECT.toml"
    path.write_text(tomli_w.dumps({**PROJECT, "privacy": privacy}))
    with pytest.raises(UserError, match=message):
        load_project(path)


def test_homomorphic_is_off_unless_asked(tmp_path):
    path = tmp_path / "PROJECT.toml"
    path.write_text(tomli_w.dumps(PROJECT))
    assert load_project(path).homomorphic is False
