"""Secure aggregation: the coordinator learns the sum of the sites' vectors, never one site's vector.

SecAgg (Bonawitz et al., CCS 2017) over the full graph, for an honest-but-curious coordinator that relays
every message and sites that may drop out; objects live one round (fresh keys); the caller moves the
dicts and arrays; the threshold is a majority. U1: the sites that shared, U2: whose masked vectors came:
  1. advertise  ``SiteMasking(site, context).public_keys()``; the coordinator relays all of them.
  2. share      ``share(keys, threshold)``: Shamir shares of the self-mask seed b and of the mask key
                s_sk, one AES-GCM ciphertext per peer; the coordinator relays each to its addressee.
  3. mask       ``mask(vector, received)``: y = encode(x) + PRG(b) + sum_j +-PRG(k_ij) in Z_2^64.
  4. unmask     ``unmask(survivors)``: shares of b_j for j in U2 and of s_sk_j for j in U1 \\ U2.
The coordinator's ``Unmasker`` sums what ``add`` receives and ``result(shares)`` removes the masks;
``context`` (run id and round) is bound into every key derivation and every ciphertext.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Callable

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedseg.privacy import shamir
from fedseg.privacy.fixed_point import decode, encode
from fedseg.privacy.secagg_keys import (SecAggError, agree, check_context, check_keys, check_name, fields, kdf,
                                        kind, name, names, pair_mask, private, public, self_mask)

__all__ = ["SecAggError", "SiteMasking", "Unmasker", "default_threshold", "encode", "decode"]

CIPHERTEXT_BYTES = 12 + 2 * shamir.SHARE_BYTES + 16  # to a peer in ``share``: nonce, shares of b and s_sk, tag
ANSWER_BYTES = 1 + shamir.SHARE_BYTES  # one entry of an ``unmask`` answer: b"b" or b"s", then the share
_TRIES = 1000  # subsets of shares tried to tell which share is wrong


def default_threshold(n: int) -> int:
    """Shares needed to unmask: a majority of the n sites, at least 2."""
    return max(2, n // 2 + 1)


class SiteMasking:
    """One site's side of one round: call public_keys, share, mask, unmask in this order."""

    def __init__(self, site: str, context: bytes):
        self.site, self.context = check_name(site), check_context(context)
        self._c, self._s, self._b = X25519PrivateKey.generate(), X25519PrivateKey.generate(), os.urandom(32)
        self._shared: tuple[dict, int, dict[str, bytes]] | None = None
        self._shares: dict[str, tuple[int, int]] = {}
        self._u1: list[str] | None = None
        self._answered: tuple[frozenset[str], dict[str, bytes]] | None = None

    def public_keys(self) -> dict[str, bytes]:
        return {"c": public(self._c), "s": public(self._s), "b_commit": hashlib.sha256(self._b).digest()}

    def share(self, keys: dict[str, dict[str, bytes]], threshold: int) -> dict[str, bytes]:
        """{peer: ciphertext of this site's shares for that peer}, for every site in ``keys`` but this one."""
        if self._shared is not None:
            if (keys, threshold) == self._shared[:2]:
                return dict(self._shared[2])
            raise SecAggError(f"site {self.site} already shared its keys this round with other keys or threshold")
        checked = check_keys(keys, threshold)
        if checked.get(self.site) != self.public_keys():
            raise SecAggError(f"the relayed keys of site {self.site} itself are missing or changed", [self.site])
        xs = {site: index + 1 for index, site in enumerate(checked)}
        b_shares = shamir.split(int.from_bytes(self._b, "big"), threshold, list(xs.values()))
        s_shares = shamir.split(int.from_bytes(private(self._s), "big"), threshold, list(xs.values()))
        self._shares[self.site] = (b_shares[xs[self.site]], s_shares[xs[self.site]])
        out: dict[str, bytes] = {}
        for peer in sorted(xs.keys() - {self.site}):
            nonce, plain = os.urandom(12), shamir.to_bytes(b_shares[xs[peer]]) + shamir.to_bytes(s_shares[xs[peer]])
            out[peer] = nonce + self._aead(checked, peer).encrypt(nonce, plain, self._ad(self.site, peer))
        if 2 * threshold <= len(checked):  # else two groups answering unmask differently reveal b and s_sk
            raise SecAggError(f"site {self.site}: the threshold {threshold} is not a majority of the "
                              f"{len(checked)} sites; secure aggregation needs more than half")
        self._keys, self._threshold = checked, threshold
        self._shared = ({site: dict(value) for site, value in keys.items()}, threshold, out)
        return dict(out)

    def mask(self, vector: np.ndarray, received: dict[str, bytes]) -> np.ndarray:
        """This site's vector in fixed point plus its masks (uint64); ``received`` = the ciphertexts
        the other sites addressed to it (their senders and this site are U1)."""
        if self._shared is None:
            raise SecAggError(f"site {self.site} must share its keys before masking")
        if self._u1 is not None:
            raise SecAggError(f"site {self.site} already masked a vector this round; a site masks once per round")
        encoded = encode(vector)
        if not isinstance(received, dict) or len(received) > len(self._keys):
            raise SecAggError(f"site {self.site}: received shares must be a dict of at most {len(self._keys)} "
                              f"sender -> ciphertext, not {kind(received)}")
        shares = {}
        for sender, ciphertext in received.items():
            if sender == self.site or sender not in self._keys:
                raise SecAggError(f"site {self.site} received shares from {name(sender)}, "
                                  f"which is not a peer of this round", [str(sender)])
            if not isinstance(ciphertext, bytes) or len(ciphertext) != CIPHERTEXT_BYTES:
                raise SecAggError(f"the shares from site {sender} must be {CIPHERTEXT_BYTES} bytes, "
                                  f"not {kind(ciphertext)}", [sender])
            try:
                plain = self._aead(self._keys, sender).decrypt(ciphertext[:12], ciphertext[12:],
                                                               self._ad(sender, self.site))
                shares[sender] = (shamir.from_bytes(plain[:shamir.SHARE_BYTES]),
                                  shamir.from_bytes(plain[shamir.SHARE_BYTES:]))
            except (InvalidTag, ValueError):
                raise SecAggError(f"the shares from site {sender} to site {self.site} do not decrypt or are not "
                                  f"valid shares (tampered, or not for this round)", [sender]) from None
        u1 = sorted({self.site, *shares})
        if len(u1) < self._threshold:
            raise SecAggError(f"site {self.site}: only {len(u1)} sites shared keys ({', '.join(u1)}); "
                              f"secure aggregation needs at least the threshold of {self._threshold}", u1)
        masked = encoded + self_mask(self._b, self.context, len(encoded))
        for peer in u1:
            if peer != self.site:
                pairwise = pair_mask(self._s, self._keys[peer]["s"], self.site, peer, self.context, len(encoded))
                (np.add if self.site < peer else np.subtract)(masked, pairwise, out=masked)
        self._shares.update(shares)
        self._u1 = u1
        return masked

    def unmask(self, survivors: list[str]) -> dict[str, bytes]:
        """{j: b"b" + share of b_j} for j in U2 = ``survivors``, {j: b"s" + share of s_sk_j} for j in
        U1 \\ U2. Answered once per round: a second call must name the same survivors."""
        if self._u1 is None:
            raise SecAggError(f"site {self.site} must mask before it can help unmask")
        if not isinstance(survivors, list | tuple) or not all(isinstance(s, str) for s in survivors) \
                or len(set(survivors)) != len(survivors):
            raise SecAggError(f"site {self.site}: survivors must be a list of distinct site names, not "
                              f"{kind(survivors)}")
        u2 = frozenset(survivors)
        if self._answered is not None:
            if self._answered[0] == u2:
                return dict(self._answered[1])
            raise SecAggError(f"site {self.site} already answered unmask for survivors {sorted(self._answered[0])}"
                              f"; refusing another set ({names(u2)}): that would unmask a vector")
        if not u2 <= set(self._u1):
            raise SecAggError(f"site {self.site}: survivors {names(u2 - set(self._u1))} did not share keys "
                              f"with it this round", sorted(u2 - set(self._u1)))
        if self.site not in u2:
            raise SecAggError(f"site {self.site} is not among the survivors ({names(u2)}), it does not unmask")
        if len(u2) < self._threshold:
            raise SecAggError(f"site {self.site}: {len(u2)} survivors ({names(u2)}) are fewer than the "
                              f"threshold of {self._threshold}; refusing to unmask", sorted(u2))
        answer = {j: b"b" + shamir.to_bytes(self._shares[j][0]) if j in u2 else
                  b"s" + shamir.to_bytes(self._shares[j][1]) for j in self._u1}
        self._answered = (u2, answer)
        return dict(answer)

    def _aead(self, keys: dict[str, dict[str, bytes]], peer: str) -> AESGCM:
        return AESGCM(kdf(agree(self._c, keys[peer]["c"], peer), b"share", self.context, self.site, peer))

    def _ad(self, sender: str, receiver: str) -> bytes:
        return fields(sender.encode(), receiver.encode(), self.context)


class Unmasker:
    """The coordinator's side of one round. ``keys``: the advertised keys exactly as relayed to every
    site for ``share`` (share points follow their sorted names); ``length``: the vector's length."""

    def __init__(self, keys: dict[str, dict[str, bytes]], threshold: int, context: bytes, length: int):
        self._keys, self.threshold, self.context = check_keys(keys, threshold), threshold, check_context(context)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise SecAggError(f"the vector length must be a positive integer, not {kind(length)}")
        self.length, self._x = length, {site: index + 1 for index, site in enumerate(self._keys)}
        self._sum = np.zeros(length, dtype=np.uint64)
        self._added: list[str] = []

    def add(self, site: str, masked: np.ndarray) -> None:
        """Add one site's masked vector (uint64, shape (length,)) to the running sum."""
        if not isinstance(site, str) or site not in self._keys:
            raise SecAggError(f"a masked vector from {name(site)}, which is not a site of this round")
        if site in self._added:
            raise SecAggError(f"site {site} sent its masked vector twice this round", [site])
        if not isinstance(masked, np.ndarray) or masked.dtype != np.uint64 or masked.shape != (self.length,):
            raise SecAggError(f"the masked vector of site {site} must be a uint64 array of shape ({self.length},), "
                              f"not {kind(masked)}", [site])
        np.add(self._sum, masked, out=self._sum)
        self._added.append(site)

    def survivors(self) -> list[str]:
        """U2: the sites whose masked vectors arrived, sorted; send it to them for ``unmask``."""
        return sorted(self._added)

    def result(self, shares: dict[str, dict[str, bytes]]) -> np.ndarray:
        """The float64 sum of the survivors' vectors, from the ``unmask`` answers of at least
        ``threshold`` survivors ({survivor: answer}). Leaves this object unchanged: after an error
        naming sites, it can be called again without their answers."""
        survivors = self.survivors()
        if len(survivors) < self.threshold:
            raise SecAggError(f"only {len(survivors)} masked vectors arrived ({names(survivors)}); secure "
                              f"aggregation needs at least the threshold of {self.threshold}", survivors)
        answers, dropped = self._check_answers(shares, survivors)
        total = self._sum.copy()
        for site in survivors:
            commit = self._keys[site]["b_commit"]
            seed = self._recover(answers, site, "self-mask seed", lambda v: hashlib.sha256(v).digest() == commit)
            np.subtract(total, self_mask(seed, self.context, self.length), out=total)
        for site in dropped:
            advertised = self._keys[site]["s"]
            raw = self._recover(answers, site, "mask key",
                                lambda v: public(X25519PrivateKey.from_private_bytes(v)) == advertised)
            key = X25519PrivateKey.from_private_bytes(raw)
            for survivor in survivors:  # the survivor added +PRG(k) if survivor < site, else -PRG(k)
                mask = pair_mask(key, self._keys[survivor]["s"], site, survivor, self.context, self.length)
                (np.subtract if survivor < site else np.add)(total, mask, out=total)
        return decode(total)

    def _check_answers(self, shares: object, survivors: list[str]) -> tuple[dict[str, dict[str, int]], list[str]]:
        """Answers parsed to share values, and the dropped sites (U1 \\ U2) all answers agree on."""
        if not isinstance(shares, dict) or len(shares) > len(survivors):
            raise SecAggError(f"unmask answers must be a dict of at most {len(survivors)} survivors' answers, "
                              f"not {kind(shares)}")
        strangers = [responder for responder in shares if responder not in survivors]
        if strangers:
            raise SecAggError(f"unmask answers from {', '.join(map(name, strangers))}, which are not survivors")
        if len(shares) < self.threshold:
            raise SecAggError(f"unmask answers from {len(shares)} survivors ({names(shares)}); at least the "
                              f"threshold of {self.threshold} are needed", sorted(shares))
        answers, dropped = {}, {}
        for responder in sorted(shares):
            answer = shares[responder]
            if not isinstance(answer, dict) or not set(survivors) <= set(answer) <= set(self._keys):
                raise SecAggError(f"the unmask answer of site {responder} must hold a share for every survivor "
                                  f"and only for sites of this round, not {kind(answer)}", [responder])
            answers[responder] = {}
            for site, data in answer.items():
                tag = b"b" if site in survivors else b"s"
                if not isinstance(data, bytes) or len(data) != ANSWER_BYTES or data[:1] != tag:
                    raise SecAggError(f"the share site {responder} sent for site {site} must be {ANSWER_BYTES} "
                                      f"bytes starting with {tag!r}, not {kind(data)}", [responder])
                try:
                    answers[responder][site] = shamir.from_bytes(data[1:])
                except ValueError as error:
                    raise SecAggError(f"the share site {responder} sent for site {site}: {error}", [responder]) from None
            dropped[responder] = frozenset(answer) - set(survivors)
        common = Counter(dropped.values()).most_common(1)[0][0]
        odd = sorted(responder for responder, sites in dropped.items() if sites != common)
        if odd:
            raise SecAggError(f"sites {names(odd)} name other dropped sites than the others do ({names(common)}); "
                              f"leave their answers out", odd)
        return answers, sorted(common)

    def _recover(self, answers: dict[str, dict[str, int]], owner: str, what: str,
                 check: Callable[[bytes], bool]) -> bytes:
        """The 32-byte secret of ``owner`` that passes ``check``; a wrong share is named when the
        other shares reconstruct the secret without it."""
        points = {responder: (self._x[responder], values[owner]) for responder, values in answers.items()}
        for subset in itertools.islice(itertools.combinations(sorted(points), self.threshold), _TRIES):
            polynomial = dict(points[responder] for responder in subset)
            secret = shamir.interpolate(polynomial)
            if secret < 2**256 and check(secret.to_bytes(32, "big")):
                wrong = [r for r, (x, y) in points.items() if shamir.interpolate(polynomial, at=x) != y]
                if wrong:
                    raise SecAggError(f"the shares of the {what} of site {owner} from {names(wrong)} are wrong (the "
                                      f"other shares reconstruct it); leave their answers out", wrong)
                return secret.to_bytes(32, "big")
        raise SecAggError(f"the shares of the {what} of site {owner} from {names(points)} do not reconstruct what "
                          f"site {owner} advertised: at least one share is wrong", sorted(points))
