"""A site's side of a secure sum (the coordinator's is ``secure_sum``): the same in both runtimes.

Everything the coordinator sends here is checked before use (types, sizes, that the round's
context is new and stays the same through the round's phases); the protocol's own checks (key
sizes, thresholds, who may be unmasked) are ``privacy.secagg``'s. Before masking, the site turns
its update into its weighted change to the global model it received, clipped where client-level
DP asks: an honest site bounds its own contribution, because the coordinator cannot see it.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from fedseg.plans.checks import UpdateRejected
from fedseg.plans.weighting import Weighting
from fedseg.runtime.secure_sum import CHUNK, MASKED, SPEC, bound_context, flatten, size_of
from fedseg.types import Update, Weights

TASKS = ("sa_keys", "sa_share", "sa_unmask", "he_decrypt")
ROUNDING = 2.0 ** 30
"""A decrypted sum goes back rounded to multiples of 2^-30: CKKS decryptions carry the encryption's
noise, and exact decryptions handed to whoever holds the ciphertexts help recover the key
(Li and Micciancio 2021). Rounding drops most of that noise (about 1e-10 here) at a cost far
below the 1e-6 the sum must keep; it narrows the attack, it does not close it (README)."""
CONTEXT_BYTES = 24
"""An attempt at a round: the run's 16 random bytes and the number of the attempt (never reused)."""


class SecureSite:
    def __init__(self, name: str, template: Weights, he_secret: bytes | None = None):
        self.name, self.template, self.he_secret = name, template, he_secret
        self.length = size_of(template)
        self.contexts: set[bytes] = set()
        """Contexts of rounds this site has taken part in: keys are never made twice for one."""
        self.masking: Any = None
        self.context: bytes | None = None
        self.spec: tuple | None = None
        """The instructions this round's keys were made for: training takes no others."""
        self.encrypted: set[bytes] = set()
        self.decrypted: dict[bytes, bytes] = {}
        """Rounds this site encrypted in, and the digest of the one sum it decrypted for each."""

    def handle(self, task: str, payload: Any) -> Any:
        """The reply to a protocol phase; UpdateRejected when the request cannot be served."""
        if not isinstance(payload, dict):
            raise UpdateRejected(f"task {task!r} needs a table of instructions")
        try:
            if task == "he_decrypt":
                return {"sum": self._decrypt(payload)}
            if task == "sa_keys":
                return self._keys(_context(payload), payload.get("spec"))
            if _context(payload) != self.context or self.masking is None:
                raise UpdateRejected(f"task {task!r} is for a round whose keys this site did not make")
            if task == "sa_share":
                return self.masking.share(payload.get("keys"), payload.get("threshold"))
            if task == "sa_unmask":
                survivors = payload.get("survivors")
                if not isinstance(survivors, list) or not all(isinstance(s, str) for s in survivors):
                    raise UpdateRejected("the survivors must be a list of site names")
                return self.masking.unmask(survivors)
        except ValueError as exc:  # the protocol's checks (privacy.secagg, privacy.homomorphic)
            raise UpdateRejected(str(exc)) from None
        raise UpdateRejected(f"unknown task {str(task)[:40]!r}")

    def protect(self, update: Update, global_weights: Weights, spec: Any) -> Update:
        """``update`` as this round's protected vector: masked, or encrypted; sample count and
        metrics stay in the clear (they give the site's weight)."""
        kind, divisor, clip, weighting = _spec(spec)
        if kind == "masks" and _canonical(spec) != self.spec:
            raise UpdateRejected("the secure-sum instructions of this training task (divisor, clip, weighting) differ "
                                 "from those this site made its keys for: refusing, as other instructions per site "
                                 "could single out one site's update")
        raw = weighting(update, "this site's update")
        if raw > divisor:
            raise UpdateRejected(f"the divisor {divisor:g} is smaller than this site's weight {raw:g}")
        delta = flatten(update.weights, self.template) - flatten(global_weights, self.template)
        norm = float(np.linalg.norm(delta))
        if clip is not None and norm > clip:
            delta *= clip / norm
        vector = delta * (raw / divisor)
        try:
            if kind == "masks":
                if _context(spec) != self.context or self.masking is None:
                    raise UpdateRejected("the training task is for a round whose keys this site did not make")
                received = spec.get("received")
                protected = {MASKED: self.masking.mask(vector, received if isinstance(received, dict) else {})}
            else:
                from fedseg.privacy.homomorphic import encrypt

                chunks = encrypt(vector, self._secret())
                self.encrypted.add(_context(spec))
                protected = {CHUNK.format(i): np.frombuffer(c, np.uint8) for i, c in enumerate(chunks)}
        except ValueError as exc:
            raise UpdateRejected(str(exc)) from None
        return Update(protected, update.n_samples, update.metrics)

    def _keys(self, context: bytes, spec: Any) -> dict[str, bytes]:
        from fedseg.privacy.secagg import SiteMasking

        if context in self.contexts:
            raise UpdateRejected("keys for this round were made already: a round's keys are never made twice")
        if not isinstance(spec, dict) or spec.get("kind") != "masks":
            raise UpdateRejected("keys for masking need the round's secure-sum instructions of kind 'masks'")
        _spec(spec)
        self.contexts.add(context)
        self.spec = _canonical(spec)
        self.masking, self.context = SiteMasking(self.name, bound_context(context, spec)), context
        return self.masking.public_keys()

    def _decrypt(self, payload: dict) -> np.ndarray:
        """The sum of a round this site encrypted in, once: a coordinator that deviates cannot have
        it decrypt other ciphertexts of that round, nor any of other rounds (see the README for
        what it still can: the sites share one key)."""
        from fedseg.privacy.homomorphic import decrypt

        secret, context, chunks = self._secret(), _context(payload), payload.get("chunks")
        if context not in self.encrypted:
            raise UpdateRejected("this site did not encrypt an update in that round: it decrypts only the sum of "
                                 "a round it took part in")
        if payload.get("length") != self.length:
            raise UpdateRejected(f"the sum to decrypt must have this site's model size {self.length}")
        exact = decrypt(chunks, secret, self.length)  # checks the chunks
        digest = hashlib.sha256(b"".join(len(c).to_bytes(8, "big") + c for c in chunks)).digest()
        if self.decrypted.setdefault(context, digest) != digest:
            raise UpdateRejected("this site decrypts one sum once per round; refusing another ciphertext")
        return np.round(exact * ROUNDING) / ROUNDING  # see ROUNDING

    def _secret(self) -> bytes:
        if self.he_secret is None:
            raise UpdateRejected("this site has no secret CKKS key: provision the consortium with homomorphic "
                                 "encryption on, and start the site from its new kit")
        return self.he_secret


def _context(payload: dict) -> bytes:
    context = payload.get("context")
    if not isinstance(context, bytes) or len(context) != CONTEXT_BYTES:
        raise UpdateRejected(f"a round's context must be {CONTEXT_BYTES} bytes")
    return context


def _canonical(spec: dict) -> tuple:
    return tuple(spec.get(key) for key in SPEC)


def _spec(spec: Any) -> tuple[str, float, float | None, Weighting]:
    """The coordinator's secure-sum instructions, checked."""
    if not isinstance(spec, dict) or spec.get("kind") not in ("masks", "ckks"):
        raise UpdateRejected("the secure-sum instructions must name kind 'masks' or 'ckks'")
    divisor, clip = spec.get("divisor"), spec.get("clip")
    if not isinstance(divisor, float) or not (math.isfinite(divisor) and divisor >= 1):
        raise UpdateRejected("the secure-sum divisor must be a finite number >= 1")
    if clip is not None and not (isinstance(clip, float) and math.isfinite(clip) and clip > 0):
        raise UpdateRejected("the clipping bound must be a finite number > 0")
    try:
        weighting = Weighting(spec.get("weighted_by"), spec.get("metric_floor"))
    except (TypeError, ValueError) as exc:
        raise UpdateRejected(f"the secure-sum weighting is not valid: {exc}") from None
    return spec["kind"], divisor, clip, weighting
