"""Conversion between a torch module's state and the numpy weight dictionaries plans work on."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedseg.types import Weights


def get_weights(module: nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def set_weights(module: nn.Module, weights: Weights) -> None:
    state = module.state_dict()
    missing = state.keys() - weights.keys()
    unexpected = weights.keys() - state.keys()
    if missing or unexpected:
        raise ValueError(f"weights do not fit the network: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}; is the model config the same everywhere?")
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})


def to_tensors(weights: Weights) -> dict[str, torch.Tensor]:
    """Tensor copies of the same shapes (``np.ascontiguousarray`` would make 0-d arrays 1-d)."""
    return {k: torch.from_numpy(np.array(v, order="C")) for k, v in weights.items()}


def from_tensors(state: dict[str, torch.Tensor]) -> Weights:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
