"""Secure aggregation's key material: the checks of advertised keys (hostile input), X25519 key
agreement, HKDF key derivation bound to the round's context, and the ChaCha20 mask generator."""

from __future__ import annotations

import struct

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedseg.errors import printable

KEY_NAMES = ("c", "s", "b_commit")
"""Advertised per site: X25519 public keys for share encryption (c) and masks (s), SHA-256 of b."""
MAX_SITES, MAX_NAME, MAX_CONTEXT = 10_000, 256, 1024


class SecAggError(ValueError):
    """An input of the protocol (mostly from another party) is wrong; ``sites`` names who sent it."""

    def __init__(self, message: str, sites: list[str] | tuple[str, ...] = ()):
        super().__init__(message)
        self.sites = tuple(sites)


def check_keys(keys: object, threshold: object) -> dict[str, dict[str, bytes]]:
    """The advertised keys of a round, checked and copied, sorted by site name (x = 1 + index)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
        raise SecAggError(f"the secure-aggregation threshold must be an integer >= 2 (a sum of one site "
                          f"would be that site's vector), not {printable(repr(threshold))[:40]}")
    if not isinstance(keys, dict) or not threshold <= len(keys) <= MAX_SITES:
        raise SecAggError(f"keys must be a dict of {threshold} to {MAX_SITES} sites' public keys "
                          f"(at least the threshold), not {kind(keys)}")
    owners: dict[tuple[str, bytes], str] = {}
    for site in sorted(keys, key=str):
        advertised = _entries(check_name(site), keys[site])
        for entry in KEY_NAMES:
            value = advertised[entry]
            if (entry, value) in owners:
                raise SecAggError(f"sites {owners[entry, value]} and {site} advertise the same key {entry}",
                                  [owners[entry, value], site])
            owners[entry, value] = site
    return {site: dict(keys[site]) for site in sorted(keys)}


def check_advertised(site: str, advertised: object, others: dict[str, dict[str, bytes]]) -> dict[str, bytes]:
    """One site's advertised keys as they arrive at the coordinator, before it relays them: the
    entries and their sizes, keys that give a shared secret, none advertised already by ``others``."""
    advertised = _entries(check_name(site), advertised)
    for entry in ("c", "s"):
        agree(X25519PrivateKey.generate(), advertised[entry], site)
    for other, keys in others.items():
        same = [entry for entry in KEY_NAMES if keys.get(entry) == advertised[entry]]
        if same and other != site:
            raise SecAggError(f"site {site} advertises the key {same[0]} of site {other}", [site])
    return dict(advertised)


def _entries(site: str, advertised: object) -> dict[str, bytes]:
    if not isinstance(advertised, dict) or set(advertised) != set(KEY_NAMES):
        raise SecAggError(f"the public keys of site {site} must be a dict with exactly the entries "
                          f"{', '.join(KEY_NAMES)}, not {kind(advertised)}", [site])
    for entry in KEY_NAMES:
        value = advertised[entry]
        if not isinstance(value, bytes) or len(value) != 32:
            raise SecAggError(f"the key {entry} of site {site} must be 32 bytes, not {kind(value)}", [site])
    return advertised


def check_name(site: object) -> str:
    if not isinstance(site, str) or not 0 < len(site) <= MAX_NAME or printable(site) != site:
        raise SecAggError(f"a site name must be printable text of 1 to {MAX_NAME} characters, not {name(site)}")
    return site


def check_context(context: object) -> bytes:
    if not isinstance(context, bytes) or not 0 < len(context) <= MAX_CONTEXT:
        raise SecAggError(f"the round context must be 1 to {MAX_CONTEXT} bytes (run id and round), "
                          f"not {kind(context)}")
    return context


def public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def agree(own: X25519PrivateKey, peer_public: bytes, peer: str) -> bytes:
    """X25519 with a peer's advertised key; a key of small order is that peer's error."""
    try:
        return own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise SecAggError(f"the advertised key of site {peer} gives no shared secret (a key of small order)",
                          [peer]) from None


def kdf(secret: bytes, purpose: bytes, context: bytes, *sites: str) -> bytes:
    """A 32-byte key for one purpose, bound to the round's context and the (unordered) pair of sites."""
    info = fields(b"fedseg-secagg-v1", purpose, context, *(site.encode() for site in sorted(sites)))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def fields(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: no two different lists of parts give the same bytes."""
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def prg(key: bytes, length: int) -> np.ndarray:
    """``length`` uint64 words of ChaCha20 keystream (little-endian) under a 32-byte key."""
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * length)), dtype="<u8")


def self_mask(seed: bytes, context: bytes, length: int) -> np.ndarray:
    return prg(kdf(seed, b"self", context), length)


def pair_mask(own: X25519PrivateKey, peer_public: bytes, site: str, peer: str, context: bytes,
              length: int) -> np.ndarray:
    """PRG(k_ij), the same at both sites of the pair: ``site`` adds it if site < peer, else subtracts."""
    return prg(kdf(agree(own, peer_public, peer), b"mask", context, site, peer), length)


def kind(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    if isinstance(value, bytes | dict | list | tuple):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def name(value: object) -> str:
    """A name from another party, fit for a message (escaped, cut short)."""
    text = printable(value if isinstance(value, str) else repr(value))
    return repr(text if len(text) <= 60 else text[:57] + "...")


def names(sites: object) -> str:
    """Site names for a message: escaped, sorted, each cut short."""
    return ", ".join(sorted(printable(str(site))[:60] for site in sites)) or "none"
