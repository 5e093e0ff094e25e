"""What a networked round does when sites are slow or gone: wait at most ``round_timeout``, accept the
round when ``min_responses`` of the targeted sites answered, otherwise run it again.

Kept free of any transport so it can be unit-tested and read in one place. Simulation never
needs it: in-process sites cannot drop out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundPolicy:
    round_timeout: int = 1800
    """Seconds a round waits for the targeted sites; a site that has not answered by then is left
    out of the round (it may train again in a later one). 0 waits for ever (not advised)."""
    min_responses: int | None = None
    """Updates a round needs; fewer after the timeout and the round is run again. None: every
    targeted site (no drop-outs tolerated)."""
    round_retries: int = 2
    """How often a round that missed ``min_responses`` is run again before the run stops."""

    def __post_init__(self) -> None:
        if self.round_timeout < 0:
            raise ValueError(f"round_timeout must be >= 0 seconds, got {self.round_timeout}")
        if self.min_responses is not None and self.min_responses < 1:
            raise ValueError(f"min_responses must be >= 1, got {self.min_responses}")
        if self.round_retries < 0:
            raise ValueError(f"round_retries must be >= 0, got {self.round_retries}")

    def needed(self, targeted: int) -> int:
        """Updates a round sent to ``targeted`` sites needs (never more than were asked)."""
        return targeted if self.min_responses is None else min(self.min_responses, targeted)

    def accepts(self, targeted: int, received: int) -> bool:
        return received >= self.needed(targeted) and received > 0
