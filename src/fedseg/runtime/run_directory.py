"""The run directory every runtime writes and the report reads.

Writes are atomic (temporary file, then rename), so a run killed at any instant leaves either
the previous or the new file, never half of one: resume trusts whatever checkpoint it finds.
"""

from __future__ import annotations

import json
import os
import re
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
        """The newest completed round's (round, weights, plan state), or None if there is none."""
        rounds = sorted(int(m.group(1)) for p in self.checkpoints.glob("global_round_*.pt")
                        if (m := CHECKPOINT.search(p.name)))
        if not rounds:
            return None
        saved = torch.load(self.checkpoints / f"global_round_{rounds[-1]:03d}.pt", weights_only=True)
        arrays = from_tensors(saved.get("plan_arrays", {}))  # absent in checkpoints of older versions
        return saved["round"], from_tensors(saved["model"]), _put_arrays(json.loads(saved["plan_state"]), arrays)

    def save_model(self, name: str, weights: Weights) -> Path:
        """A final model as a plain state dict, loadable with ``network.load_state_dict(torch.load(p))``."""
        path = self.checkpoints / f"{name}.pt"
        torch_save_atomic(to_tensors(weights), path)
        return path

    def load_model(self, name: str) -> Weights:
        return from_tensors(torch.load(self.checkpoints / f"{name}.pt", weights_only=True))

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
