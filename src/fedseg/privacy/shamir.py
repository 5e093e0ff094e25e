"""Shamir secret sharing over the prime field of P-521 (p = 2^521 - 1, a Mersenne prime), large
enough for any 32-byte secret (a seed, an X25519 private key). Pure arithmetic on Python ints."""

from __future__ import annotations

import secrets

PRIME = 2**521 - 1
SHARE_BYTES = 66
"""A share's value, big-endian."""


def split(secret: int, threshold: int, xs: list[int]) -> dict[int, int]:
    """Shares of ``secret`` at the points ``xs``: any ``threshold`` of them give it back, fewer
    say nothing about it (a fresh random polynomial of degree threshold - 1 per call)."""
    if not 0 <= secret < PRIME:
        raise ValueError("the secret must be an integer in [0, 2^521 - 1)")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ValueError(f"share points must be distinct and non-zero: {xs}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and the number of shares ({len(xs)})")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _horner(coefficients, x) for x in xs}


def interpolate(points: dict[int, int], at: int = 0) -> int:
    """The polynomial through ``points`` (x -> y) evaluated at ``at``; at 0 this is the secret."""
    total = 0
    for xi, yi in points.items():
        numerator = denominator = 1
        for xj in points:
            if xj != xi:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total = (total + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    """A share's value from its bytes; ValueError when it is not a field element."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, not {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("a share's value is not below the field's prime 2^521 - 1")
    return value


def _horner(coefficients: list[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value
