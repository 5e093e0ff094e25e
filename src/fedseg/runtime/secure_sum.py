"""Secure sums: the coordinator learns the weighted sum of the sites' updates, never one update.

Written once for both mechanisms and both runtimes; the round engine runs it in place of the
plan's aggregation when ``[privacy] secure_aggregation`` or ``homomorphic`` is on:

- every site turns its change to the global model into one vector (the floating-point parameters
  in name order), clips it where client-level DP asks, multiplies it by its own averaging weight
  divided by a public divisor, and protects it: pairwise masks (``masks``,
  ``privacy.secagg``: extra phases ``sa_keys`` and ``sa_share`` before training, ``sa_unmask``
  after it) or CKKS encryption (``ckks``, ``privacy.homomorphic``: one site decrypts the sum);
- the sample count and metrics stay in the clear and are checked as usual; they give each site's
  weight, so the coordinator divides the sum by the total weight and hands the mean to the plan
  (FedAvg casts it, FedOpt takes its server step, client-level DP adds its noise).

What the coordinator can no longer check: the values of an update (a masked vector is uniform
noise), hence no norm guard and no robust rule. What it still checks: the shape and type of what
arrives, the declared sample count, the metrics, and that enough sites survive to unmask.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedseg.plans.base import Aggregation
from fedseg.plans.checks import UpdateRejected
from fedseg.plans.fedavg import FedAvg
from fedseg.types import RoundConfig, Update, Weights

KINDS = ("masks", "ckks")
MASKED = "masked"
CHUNK = "ckks/{:05d}"
Ask = Callable[[str, dict[str, Any], Callable[[str, Any], None]], dict[str, str]]
"""``ask(task, payloads, use) -> failures``: send a task to sites, ``use(site, reply)`` each reply."""


def float_keys(template: Weights) -> list[str]:
    return sorted(key for key, value in template.items() if np.issubdtype(np.asarray(value).dtype, np.floating))


def flatten(weights: Weights, template: Weights) -> np.ndarray:
    """The floating-point parameters of ``weights`` as one float64 vector, in name order."""
    return np.concatenate([np.asarray(weights[key], np.float64).ravel() for key in float_keys(template)])


def unflatten(vector: np.ndarray, template: Weights) -> dict[str, np.ndarray]:
    """``vector`` cut back into ``template``'s floating-point parameters (float64)."""
    out, start = {}, 0
    for key in float_keys(template):
        shape = np.shape(template[key])
        size = int(np.prod(shape))
        out[key] = vector[start:start + size].reshape(shape)
        start += size
    return out


def size_of(template: Weights) -> int:
    return sum(int(np.asarray(template[key]).size) for key in float_keys(template))


SPEC = ("kind", "weighted_by", "metric_floor", "divisor", "clip")
"""The instructions of a secure sum every site must get alike (``bound_context``)."""


def bound_context(context: bytes, spec: dict[str, Any]) -> bytes:
    """The round's context bound to its instructions: masks and shares are made under it, so a
    site given other instructions (a huge divisor, a tiny clip: its contribution shrunk to nothing,
    which would leave one site's update as the 'sum') cannot unmask with the others."""
    return context + hashlib.sha256(json.dumps([spec[key] for key in SPEC]).encode()).digest()


class SecureSum:
    """The coordinator's side for a whole run: what kind, and the public key of CKKS."""

    def __init__(self, kind: str, clip: float | None = None, public_context: bytes | None = None):
        if kind not in KINDS:
            raise ValueError(f"secure sum kind must be one of {KINDS}, got {kind!r}")
        if kind == "ckks" and public_context is None:
            raise ValueError("homomorphic encryption needs the consortium's public CKKS context")
        self.kind, self.clip, self.public_context = kind, clip, public_context
        self.run_id, self.attempts = secrets.token_bytes(16), 0

    def begin(self, plan: Any, round: int, global_weights: Weights, configs: dict[str, RoundConfig],
              declared: dict[str, dict[str, int]], ask: Ask) -> tuple[dict[str, RoundConfig], SecureRound]:
        """The round's training instructions (with each site's part of the protocol) and the
        aggregation that takes the protected updates."""
        if not isinstance(plan, FedAvg):
            raise UpdateRejected(f"a secure sum needs an averaging plan, not {plan.name!r}")
        sites = sorted(site for site in configs if site in declared)  # the others' updates would be refused
        by = plan.weighting.by
        divisor = float(sum(declared[s]["train"] for s in sites)) if by == "n_samples" else float(len(sites))
        self.attempts += 1  # a new context for every attempt at a round: keys are never made twice for one
        context = self.run_id + self.attempts.to_bytes(8, "big")
        spec: dict[str, Any] = {"kind": self.kind, "weighted_by": by, "metric_floor": plan.weighting.metric_floor,
                                "divisor": divisor, "clip": self.clip}
        keys: dict[str, dict[str, bytes]] = {}
        received: dict[str, dict[str, bytes]] = {site: {} for site in sites}
        threshold = 0
        if self.kind == "masks":
            from fedseg.runtime.secure_masks import share_keys

            keys, threshold, received = share_keys(ask, sites, context, spec)  # only sites that shared can train
        out = {site: RoundConfig(c.round, c.seed, c.local_epochs, c.local_steps,
                                 {**c.extra, "secure_sum": {**spec, "context": context, "received": received[site]}})
               for site, c in configs.items() if site in received}
        return out, SecureRound(self, plan, round, global_weights, bound_context(context, spec), keys, threshold,
                                divisor, ask, context, set(out))


class SecureRound(Aggregation):
    """One round's aggregation of protected updates (the intake checks the rest of each update)."""

    protected = True

    def __init__(self, owner: SecureSum, plan: FedAvg, round: int, global_weights: Weights, bound: bytes,
                 keys: dict[str, dict[str, bytes]], threshold: int, divisor: float, ask: Ask, context: bytes,
                 expected: set[str]):
        self.owner, self.plan, self.round, self.global_weights = owner, plan, round, global_weights
        self.context, self.expected = context, expected
        self.length, self.divisor, self.ask = size_of(global_weights), divisor, ask
        self.raw: dict[str, float] = {}
        self.unmasker = self.encrypted = None
        self.left_out: dict[str, str] = {}
        if owner.kind == "masks":
            from fedseg.privacy.secagg import Unmasker

            self.unmasker = Unmasker(keys, threshold, bound, self.length)
        else:
            from fedseg.privacy.homomorphic import EncryptedSum, HEError

            try:
                self.encrypted = EncryptedSum(owner.public_context, self.length)
            except HEError as exc:
                raise UpdateRejected(f"the coordinator's public CKKS context cannot be used: {exc}") from None

    def add(self, site: str, update: Update) -> None:
        what = f"update from site {site!r}"
        if site not in self.expected:
            raise UpdateRejected(f"{what}: the site was not asked to train in this round")
        if site in self.raw:
            raise UpdateRejected(f"{what}: a second update from the same site in one round")
        weight = self.plan.weighting(update, what)
        payload = update.weights
        if self.unmasker is not None:
            if not isinstance(payload, Mapping) or set(payload) != {MASKED}:  # a dict, or fetched to a file
                raise UpdateRejected(f"{what}: a masked update must carry exactly one array, {MASKED!r}")
            try:
                self.unmasker.add(site, payload[MASKED])
            except ValueError as exc:
                raise UpdateRejected(f"{what}: {exc}") from None
        else:
            from fedseg.privacy.homomorphic import HEError

            names = [CHUNK.format(i) for i in range(len(payload))] if isinstance(payload, Mapping) else []
            if not names or set(payload) != set(names) or not all(
                    isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 1 for v in payload.values()):
                raise UpdateRejected(f"{what}: an encrypted update must be chunks {CHUNK.format(0)!r}, ... of bytes")
            try:
                self.encrypted.add(site, [payload[name].tobytes() for name in names])
            except HEError as exc:
                raise UpdateRejected(f"{what}: {exc}") from None
        self.raw[site] = weight

    def result(self) -> Weights:
        total = self._unmasked() if self.unmasker is not None else self._decrypted()
        share = sum(self.raw.values()) / self.divisor
        self._check_clip(total, share)
        combined = {key: np.asarray(self.global_weights[key], np.float64) + delta / share
                    for key, delta in unflatten(total, self.global_weights).items()}
        for key, value in self.global_weights.items():  # integer buffers: the global model's
            combined.setdefault(key, np.asarray(value))
        total_raw = sum(self.raw.values())
        summary = {"aggregation_weights": {site: w / total_raw for site, w in sorted(self.raw.items())},
                   "secure_sum": self.owner.kind}
        if self.left_out:
            summary["unmask_answers_left_out"] = self.left_out
        return self.plan.conclude(combined, self.global_weights, self.round, len(self.raw), summary)

    def _check_clip(self, total: np.ndarray, share: float) -> None:
        """Every site holds its own change to the clip, so their weighted mean is within it too: a
        mean beyond it (with room for the fixed-point and CKKS rounding) shows a site that did not."""
        clip = self.owner.clip
        if clip is None or not len(total):
            return
        slack = math.sqrt(self.length) * (len(self.raw) * 2.0**-32 + 2.0**-30 + 1e-7 * float(np.max(np.abs(total))))
        norm = float(np.linalg.norm(total)) / share
        if norm > clip * (1 + 1e-9) + slack / share:
            raise UpdateRejected(f"the mean change of the sites' updates has norm {norm:.4g}, beyond the clip {clip:g} "
                                 "each site's change is held to: at least one site did not clip its update (the secure "
                                 "sum hides which); the round is refused. Run without the secure sum to find it with "
                                 "the norm guard, or leave sites out")

    def _unmasked(self) -> np.ndarray:
        from fedseg.runtime.secure_masks import unmask

        total, self.left_out = unmask(self.unmasker, self.ask, self.context)
        return total

    def _decrypted(self) -> np.ndarray:
        from fedseg.privacy.homomorphic import HEError

        try:
            summed = self.encrypted.result()
        except HEError as exc:
            raise UpdateRejected(f"the encrypted updates could not be summed: {exc}") from None
        found: list[np.ndarray] = []
        problems: dict[str, str] = {}
        for site in sorted(self.raw):  # one site decrypts the sum; the next if it fails
            def take(site: str, reply: Any) -> None:
                vector = reply.get("sum") if isinstance(reply, dict) else None
                if not (isinstance(vector, np.ndarray) and vector.dtype == np.float64 and vector.shape == (self.length,)
                        and np.isfinite(vector).all()):
                    raise UpdateRejected(f"the decrypted sum must be {self.length} finite float64 values")
                found.append(vector)
            problems.update(self.ask("he_decrypt", {site: {"chunks": summed, "length": self.length,
                                                           "context": self.context}}, take))
            if found:
                return found[0]
        raise UpdateRejected("no site decrypted the sum: "
                             + "; ".join(f"{site}: {reason}" for site, reason in sorted(problems.items())))
