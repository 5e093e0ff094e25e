"""The coordinator's phases of pairwise masking (``privacy.secagg``) in a secure sum: keys and
shares before training, unmasking after it.

Every reply is checked when it arrives, so that a hostile or broken site is refused by name and
the others go on without it: advertised keys must be well formed, give a shared secret and be
the site's own (not another site's); shares must go to exactly every other site that advertised
keys, each of the protocol's size (a site that leaves a peer out would make masks that do not
cancel, and the sum would be noise); an unmask answer that the others show to be wrong is left
out while enough answers remain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedseg.plans.checks import UpdateRejected
from fedseg.privacy.secagg import CIPHERTEXT_BYTES, SecAggError, Unmasker, default_threshold
from fedseg.privacy.secagg_keys import check_advertised
from fedseg.runtime.secure_sum import Ask


def share_keys(ask: Ask, sites: list[str], context: bytes, spec: dict[str, Any]
               ) -> tuple[dict[str, dict[str, bytes]], int, dict[str, dict[str, bytes]]]:
    """(the advertised keys, the threshold, {site that shared: the shares addressed to it})."""
    threshold = default_threshold(len(sites))
    keys: dict[str, dict[str, bytes]] = {}

    def advertised(site: str, reply: Any) -> None:
        try:
            keys[site] = check_advertised(site, reply, keys)
        except SecAggError as exc:
            raise UpdateRejected(str(exc)) from None

    ask("sa_keys", {site: {"context": context, "spec": spec} for site in sites}, advertised)
    if len(keys) < threshold:
        raise UpdateRejected(f"{len(keys)} of {len(sites)} site(s) sent keys for secure aggregation, "
                             f"{threshold} needed")
    received: dict[str, dict[str, bytes]] = {site: {} for site in keys}
    shared: set[str] = set()

    def route(site: str, reply: Any) -> None:
        peers = set(keys) - {site}
        if not isinstance(reply, dict) or set(reply) != peers:
            raise UpdateRejected(f"the encrypted shares must be addressed to exactly the {len(peers)} other site(s) "
                                 "that sent keys")
        if not all(isinstance(value, bytes) and len(value) == CIPHERTEXT_BYTES for value in reply.values()):
            raise UpdateRejected(f"each encrypted share must be {CIPHERTEXT_BYTES} bytes")
        for peer, ciphertext in reply.items():
            received[peer][site] = ciphertext
        shared.add(site)

    ask("sa_share", {site: {"context": context, "keys": keys, "threshold": threshold} for site in keys}, route)
    if len(shared) < threshold:
        raise UpdateRejected(f"{len(shared)} of {len(keys)} site(s) shared their keys' shares, {threshold} needed")
    return keys, threshold, {site: received[site] for site in sorted(shared)}


def unmask(unmasker: Unmasker, ask: Ask, context: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """The sum of the survivors' vectors, and the sites whose answers were left out (with why)."""
    survivors = unmasker.survivors()
    shares: dict[str, Any] = {}
    failures = ask("sa_unmask", {site: {"context": context, "survivors": survivors} for site in survivors},
                   lambda site, reply: shares.__setitem__(site, reply))
    left_out: dict[str, str] = {}
    while True:
        try:
            return unmasker.result(shares), left_out
        except SecAggError as exc:
            named = [site for site in exc.sites if site in shares]
            if not named or len(shares) - len(named) < unmasker.threshold:
                reasons = {**failures, **left_out}
                raise UpdateRejected(f"the masks could not be removed: {exc}" + "".join(
                    f"; {site}: {reason}" for site, reason in sorted(reasons.items()))) from None
            for site in named:
                left_out[site] = str(exc)
                del shares[site]
