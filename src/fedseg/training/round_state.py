"""What a site keeps by round in its state folder, and nowhere else: its optimizer moments
(``optimizer_state = "keep"``), SCAFFOLD's control variate c_i, FedBN's normalisation.

One file per round, ``<kind>_round_NNNN.pt``, written atomically; the last ``KEEP`` rounds stay (a
resumed run or a retried round needs at most the one before the last), so a restarted site takes
the state of the last round before the one it is asked to train, as an uninterrupted site would.
A file that cannot be read back is an error that names it and says what deleting it costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedseg.errors import UserError
from fedseg.types import Weights

KEEP = 2
"""Rounds kept: a resume needs at most the one before the last."""


class RoundFiles:
    """One kind of per-round state in ``state_dir`` (None: nothing is written)."""

    def __init__(self, state_dir: Path | None, kind: str, what: str, instead: str):
        self.state_dir, self.kind = state_dir, kind
        self.what, self.instead = what, instead
        """For errors: "this site's saved <what> ...; delete it to <instead>"."""

    def paths(self) -> list[Path]:
        """The saved files, oldest round first."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return []
        return sorted(self.state_dir.glob(f"{self.kind}_round_*.pt"), key=round_of)

    def save(self, round: int, state: Any) -> None:
        """``state`` (a torch-saveable object) as this round's, keeping only the last ``KEEP`` rounds."""
        if self.state_dir is None:
            return
        from fedseg.files import torch_save_atomic

        torch_save_atomic(state, self.state_dir / f"{self.kind}_round_{round:04d}.pt")
        for old in self.paths()[:-KEEP]:
            old.unlink()

    def load(self, path: Path) -> Any:
        import torch

        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # torch raises many kinds for a truncated or foreign file
            raise self.damaged(path, str(exc)[:80]) from None

    def damaged(self, path: Path, why: str = "another shape or type") -> UserError:
        return UserError(f"{path}: this site's saved {self.what} is damaged or does not fit its network ({why}); delete it to {self.instead} "
                         "(the run then differs from an uninterrupted one), or restore it")


class KeptByRound:
    """Arrays a site keeps by round, in memory and in its state folder (read back at first use and
    checked against ``template``: key -> (shape, dtype name))."""

    def __init__(self, files: RoundFiles, template: dict[str, tuple[tuple[int, ...], str]]):
        self.files, self.template = files, template
        self._kept: dict[int, Weights] | None = None

    def before(self, round: int | None) -> Weights | None:
        """The values of the last round before ``round`` (None: of the last round), or None if none."""
        kept = self._rounds()
        rounds = [r for r in kept if round is None or r < round]
        return kept[max(rounds)] if rounds else None

    def keep(self, round: int, values: Weights) -> None:
        kept = self._rounds()
        kept[round] = values
        for old in sorted(kept)[:-KEEP]:
            del kept[old]
        if self.files.state_dir is not None and round in kept:  # else older than the rounds kept
            from fedseg.training.weights import to_tensors

            self.files.save(round, to_tensors(values))

    def _rounds(self) -> dict[int, Weights]:
        if self._kept is None:
            self._kept = {round_of(path): self._load(path) for path in self.files.paths()[-KEEP:]}
        return self._kept

    def _load(self, path: Path) -> Weights:
        loaded = self.files.load(path)
        values = {str(k): t.numpy() for k, t in loaded.items()} if isinstance(loaded, dict) else {}
        if {k: (tuple(v.shape), str(v.dtype)) for k, v in values.items()} != self.template:
            raise self.files.damaged(path)
        return {k: np.asarray(v) for k, v in values.items()}


def round_of(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])
