"""The run directory every runtime writes and the report reads.

Writes are atomic (temporary file, then rename), so a run killed at any instant leaves either
the previous or the new file, never half of one. A checkpoint can still be damaged afterwards (a
full disk, a copy cut short): resume then warns and falls back to the newest readable one.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedseg.files import torch_save_atomic, write_text_atomic
from fedseg.training.weights import from_tensors, to_tensors
from fedseg.types import Weights

CHECKPOINT = re.compile(r"global_round_(\d+)\.pt$")


class RunDirectory:
    """``experiment.toml``, ``checkpoints/``, ``metrics.jsonl``, ``results.json``, report files."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.metrics_path = self.root / "metrics.jsonl"
        self.figures = self.root / "figures"

    def create(self) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    # --- global model after each round -------------------------------------------------------
    def save_round(self, round: int, weights: Weights, plan_state: dict[str, Any]) -> Path:
        """Checkpoint a round: the plan state's numpy arrays as tensors, the rest as a JSON string."""
        path = self.checkpoints / f"global_round_{round:03d}.pt"
        arrays: dict[str, torch.Tensor] = {}
        state = json.dumps(_pull_arrays(plan_state, arrays))
        torch_save_atomic({"round": round, "model": to_tensors(weights), "plan_state": state, "plan_arrays": arrays},
                           path)
        return path

    def last_round(self) -> tuple[int, Weights, dict[str, Any]] | None:
        """The newest readable round's (round, weights, plan state), or None if there is none.

        Unreadable newer checkpoints are skipped with one warning that names them: their rounds
        are run again (and their checkpoints rewritten)."""
        rounds = sorted((int(m.group(1)) for p in self.checkpoints.glob("global_round_*.pt")
                         if (m := CHECKPOINT.search(p.name))), reverse=True)
        skipped: list[str] = []
        for round in rounds:
            path = self.checkpoints / f"global_round_{round:03d}.pt"
            try:
                loaded = _read_checkpoint(path, round)
            except Exception as exc:  # torch, pickle, zip and our own checks: any damage means "skip"
                skipped.append(f"{path.name} ({_damage(path, exc)})")
                continue
            if skipped:
                warnings.warn(f"unreadable checkpoint(s) in {self.checkpoints}: {'; '.join(skipped)}; resuming "
                              f"after round {round} from {path.name}, later rounds are run again", stacklevel=2)
            return loaded
        if skipped:
            warnings.warn(f"no readable checkpoint in {self.checkpoints} ({'; '.join(skipped)}): the run starts "
                          "again from round 0", stacklevel=2)
        return None

    def save_model(self, name: str, weights: Weights) -> Path:
        """A final model as a plain state dict, loadable with ``network.load_state_dict(torch.load(p))``."""
        path = self.checkpoints / f"{name}.pt"
        torch_save_atomic(to_tensors(weights), path)
        return path

    def load_model(self, name: str) -> Weights | None:
        """A saved final model; None if it is missing or unreadable (with a warning: it is made again)."""
        path = self.checkpoints / f"{name}.pt"
        if not path.exists():
            return None
        try:
            saved = torch.load(path, weights_only=True)
            if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
                raise ValueError("not a state dict of tensors")
            return from_tensors(saved)
        except Exception as exc:  # torch, pickle, zip: any damage means "make it again"
            warnings.warn(f"saved model {path} is unreadable ({_damage(path, exc)}); it is made again",
                          stacklevel=2)
            return None

    # --- metrics.jsonl -----------------------------------------------------------------------
    def append_metrics(self, records: list[dict[str, Any]]) -> None:
        with self.metrics_path.open("a") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return records

    def drop_metrics_after(self, round: int) -> None:
        """Forget lines of rounds that never completed (written before a kill, redone on resume)."""
        kept = [r for r in self.read_metrics() if r.get("round", -1) <= round]
        write_text_atomic(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    # --- JSON files --------------------------------------------------------------------------
    def write_json(self, name: str, data: Any) -> Path:
        path = self.root / name
        write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.root / name).read_text())


def _damage(path: Path, exc: Exception) -> str:
    """What is wrong with a file that could not be loaded, in a few words."""
    if path.is_file() and path.stat().st_size == 0:
        return "empty file"
    return f"{type(exc).__name__}: {exc}" if str(exc) else f"cut short or corrupt ({type(exc).__name__})"


def _read_checkpoint(path: Path, round: int) -> tuple[int, Weights, dict[str, Any]]:
    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or saved.get("round") != round:
        raise ValueError(f"not a checkpoint of round {round}")
    arrays = from_tensors(saved.get("plan_arrays", {}))  # absent in checkpoints of older versions
    state = _put_arrays(json.loads(saved["plan_state"]), arrays)
    if not isinstance(state, dict):
        raise ValueError("its plan state is not a table")
    return round, from_tensors(saved["model"]), state


ARRAY = "__array__"
"""Placeholder key for an array of a plan's state in the checkpoint's JSON; plans must not use it."""


def _pull_arrays(value: Any, arrays: dict[str, torch.Tensor]) -> Any:
    """``value`` with each numpy array (in dicts and lists) moved to ``arrays`` as a tensor, leaving a
    placeholder (numpy scalars come back as 0-d arrays)."""
    if isinstance(value, (np.ndarray, np.number, np.bool_)):
        key = str(len(arrays))
        arrays.update(to_tensors({key: value}))
        return {ARRAY: key}
    if isinstance(value, dict):
        return {k: _pull_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pull_arrays(v, arrays) for v in value]
    return value


def _put_arrays(value: Any, arrays: Weights) -> Any:
    """The inverse of ``_pull_arrays``."""
    if isinstance(value, dict):
        if value.keys() == {ARRAY}:
            return arrays[value[ARRAY]]
        return {k: _put_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_put_arrays(v, arrays) for v in value]
    return value
