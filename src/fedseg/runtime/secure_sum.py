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

import secrets
from collections.abc import Callable
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


class SecureSum:
    """The coordinator's side for a whole run: what kind, and the public key of CKKS."""

    def __init__(self, kind: str, clip: float | None = None, public_context: bytes | None = None):
        if kind not in KINDS:
            raise ValueError(f"secure sum kind must be one of {KINDS}, got {kind!r}")
        if kind == "ckks" and public_context is None:
            raise ValueError("homomorphic encryption needs the consortium's public CKKS context")
        self.kind, self.clip, self.public_context = kind, clip, public_context
        self.run_id = secrets.token_bytes(16)

    def begin(self, plan: Any, round: int, global_weights: Weights, configs: dict[str, RoundConfig],
              declared: dict[str, dict[str, int]], ask: Ask) -> tuple[dict[str, RoundConfig], SecureRound]:
        """The round's training instructions (with each site's part of the protocol) and the
        aggregation that takes the protected updates."""
        if not isinstance(plan, FedAvg):
            raise UpdateRejected(f"a secure sum needs an averaging plan, not {plan.name!r}")
        sites = sorted(configs)
        by = plan.weighting.by
        divisor = float(sum(declared[s]["train"] for s in sites)) if by == "n_samples" else float(len(sites))
        context = self.run_id + round.to_bytes(8, "big")
        spec: dict[str, Any] = {"kind": self.kind, "context": context, "weighted_by": by,
                                "metric_floor": plan.weighting.metric_floor, "divisor": divisor, "clip": self.clip}
        received: dict[str, dict[str, bytes]] = {site: {} for site in sites}
        keys: dict[str, dict[str, bytes]] = {}
        shared: set[str] = set()
        threshold = 0
        if self.kind == "masks":
            from fedseg.privacy.secagg import default_threshold

            threshold = default_threshold(len(sites))
            ask("sa_keys", {site: {"context": context} for site in sites},
                lambda site, reply: keys.__setitem__(site, reply))
            if len(keys) < threshold:
                raise UpdateRejected(f"{len(keys)} of {len(sites)} site(s) sent keys for secure aggregation, "
                                     f"{threshold} needed")

            def route(site: str, reply: Any) -> None:
                if not isinstance(reply, dict) or not set(reply) <= set(keys) - {site}:
                    raise UpdateRejected("the encrypted shares must be addressed to sites that sent keys")
                for peer, ciphertext in reply.items():
                    received[peer][site] = ciphertext
                shared.add(site)

            ask("sa_share", {site: {"context": context, "keys": keys, "threshold": threshold} for site in keys}, route)
        out = {site: RoundConfig(c.round, c.seed, c.local_epochs, c.local_steps,
                                 {**c.extra, "secure_sum": {**spec, "received": received[site]}})
               for site, c in configs.items() if self.kind == "ckks" or site in shared}  # others: not unmaskable
        return out, SecureRound(self, plan, round, global_weights, context, keys, threshold, divisor, ask)


class SecureRound(Aggregation):
    """One round's aggregation of protected updates (the intake checks the rest of each update)."""

    protected = True

    def __init__(self, owner: SecureSum, plan: FedAvg, round: int, global_weights: Weights, context: bytes,
                 keys: dict[str, dict[str, bytes]], threshold: int, divisor: float, ask: Ask):
        self.owner, self.plan, self.round, self.global_weights = owner, plan, round, global_weights
        self.context = context
        self.length, self.divisor, self.ask = size_of(global_weights), divisor, ask
        self.raw: dict[str, float] = {}
        self.chunks: dict[str, list[bytes]] = {}
        self.unmasker = None
        if owner.kind == "masks":
            from fedseg.privacy.secagg import Unmasker

            self.unmasker = Unmasker(keys, threshold, context, self.length)

    def add(self, site: str, update: Update) -> None:
        what = f"update from site {site!r}"
        if site in self.raw:
            raise UpdateRejected(f"{what}: a second update from the same site in one round")
        weight = self.plan.weighting(update, what)
        payload = update.weights
        if self.unmasker is not None:
            if not isinstance(payload, dict) or set(payload) != {MASKED}:
                raise UpdateRejected(f"{what}: a masked update must carry exactly one array, {MASKED!r}")
            try:
                self.unmasker.add(site, payload[MASKED])
            except ValueError as exc:
                raise UpdateRejected(f"{what}: {exc}") from None
        else:
            names = [CHUNK.format(i) for i in range(len(payload))] if isinstance(payload, dict) else []
            if not names or set(payload) != set(names) or not all(
                    isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 1 for v in payload.values()):
                raise UpdateRejected(f"{what}: an encrypted update must be chunks {CHUNK.format(0)!r}, ... of bytes")
            self.chunks[site] = [payload[name].tobytes() for name in names]
        self.raw[site] = weight

    def result(self) -> Weights:
        total = self._unmasked() if self.unmasker is not None else self._decrypted()
        share = sum(self.raw.values()) / self.divisor
        combined = {key: np.asarray(self.global_weights[key], np.float64) + delta / share
                    for key, delta in unflatten(total, self.global_weights).items()}
        for key, value in self.global_weights.items():  # integer buffers: the global model's
            combined.setdefault(key, np.asarray(value))
        total_raw = sum(self.raw.values())
        summary = {"aggregation_weights": {site: w / total_raw for site, w in sorted(self.raw.items())},
                   "secure_sum": self.owner.kind}
        return self.plan.conclude(combined, self.global_weights, self.round, len(self.raw), summary)

    def _unmasked(self) -> np.ndarray:
        survivors = self.unmasker.survivors()
        shares: dict[str, dict[str, bytes]] = {}
        failures = self.ask("sa_unmask", {site: {"context": self.context, "survivors": survivors} for site in survivors},
                            lambda site, reply: shares.__setitem__(site, reply))
        try:
            return self.unmasker.result(shares)
        except ValueError as exc:
            raise UpdateRejected(f"the masks could not be removed: {exc}"
                                 + "".join(f"; {site}: {reason}" for site, reason in sorted(failures.items()))) from None

    def _decrypted(self) -> np.ndarray:
        from fedseg.privacy.homomorphic import HEError, add

        try:
            summed = add(self.chunks, self.owner.public_context, self.length)
        except HEError as exc:
            raise UpdateRejected(f"the encrypted updates could not be summed: {exc}") from None
        found: list[np.ndarray] = []
        problems: dict[str, str] = {}
        for site in sorted(self.chunks):  # one site decrypts the sum; the next if it fails
            def take(site: str, reply: Any) -> None:
                vector = reply.get("sum") if isinstance(reply, dict) else None
                if not (isinstance(vector, np.ndarray) and vector.dtype == np.float64 and vector.shape == (self.length,)
                        and np.isfinite(vector).all()):
                    raise UpdateRejected(f"the decrypted sum must be {self.length} finite float64 values")
                found.append(vector)
            problems.update(self.ask("he_decrypt", {site: {"chunks": summed, "length": self.length}}, take))
            if found:
                return found[0]
        raise UpdateRejected("no site decrypted the sum: "
                             + "; ".join(f"{site}: {reason}" for site, reason in sorted(problems.items())))
