"""Seeds derived from named parts, identical in every process (unlike Python's salted hash)."""

from __future__ import annotations

import zlib

import numpy as np


def stable_seed(*parts: object) -> int:
    """A 32-bit seed that depends only on ``parts`` (ints taken as they are, others by CRC32)."""
    words = [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])
