"""Whole-image prediction: sliding windows of the training patch size, or one forward pass."""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from fedseg.training.losses import logits_to_probabilities


@torch.no_grad()
def predict_probabilities(network: nn.Module, image: torch.Tensor, loss: str, roi_size: tuple[int, ...] | None,
                          sw_batch_size: int = 4, overlap: float = 0.25) -> torch.Tensor:
    """Class probabilities ``[C, *spatial]`` for one channel-first image ``[C, *spatial]``."""
    return logits_to_probabilities(predict_logits(network, image, roi_size, sw_batch_size, overlap), loss)[0]


@torch.no_grad()
def predict_logits(network: nn.Module, image: torch.Tensor, roi_size: tuple[int, ...] | None,
                   sw_batch_size: int = 4, overlap: float = 0.25) -> torch.Tensor:
    """The network's output ``[1, C, *spatial]`` for one image ``[C, *spatial]``, whole or in windows."""
    network.eval()
    batch = image[None]
    if roi_size is None:
        return torch.as_tensor(network(batch))
    return torch.as_tensor(sliding_window_inference(batch, roi_size, sw_batch_size, network, overlap=overlap,
                                                    mode="gaussian"))
