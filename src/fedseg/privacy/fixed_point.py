"""Fixed-point encoding of real vectors into the ring Z_2^64, the ring secure aggregation masks in.

A value x becomes round(x * 2^32) as a 64-bit two's-complement integer; sums in the ring wrap like
int64, so a sum decodes correctly while its true value stays within +-2^31 (2 sites at the limit
of 2^30 each, or e.g. 1,000 sites of values up to about 2 million). Each encoded value is off by
at most 2^-33 (rounding), a sum of n by at most n * 2^-33.
"""

from __future__ import annotations

import numpy as np

SCALE = 2.0**32
"""One unit of the ring is 2^-32."""
LIMIT = 2.0**30
"""Largest magnitude ``encode`` accepts."""


def encode(vector: np.ndarray) -> np.ndarray:
    """A 1-D real vector as uint64 ring elements; ValueError for non-finite or too large values."""
    if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.dtype.kind not in "fiu":
        raise ValueError(f"secure aggregation encodes a 1-D real numpy vector, not {_describe(vector)}")
    values = vector.astype(np.float64, copy=False)
    bad = ~np.isfinite(values)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(f"cannot encode a non-finite value ({values[index]} at index {index}) in fixed point")
    large = np.abs(values) > LIMIT
    if large.any():
        index = int(np.argmax(large))
        raise ValueError(f"cannot encode {values[index]!r} at index {index} in fixed point: "
                         f"secure aggregation takes values with |x| <= 2^30; scale the update down")
    return np.rint(values * SCALE).astype(np.int64).view(np.uint64)


def decode(ring: np.ndarray) -> np.ndarray:
    """Ring elements (a sum of encoded vectors) back to float64."""
    if not isinstance(ring, np.ndarray) or ring.dtype != np.uint64:
        raise ValueError(f"fixed-point decoding takes a uint64 numpy array, not {_describe(ring)}")
    return ring.view(np.int64).astype(np.float64) / SCALE


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"
