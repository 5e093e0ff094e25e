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
    network.eval()
    batch = image[None]
    if roi_size is None:
        logits = network(batch)
    else:
        logits = sliding_window_inference(batch, roi_size, sw_batch_size, network, overlap=overlap,
                                          mode="gaussian")
    return logits_to_probabilities(torch.as_tensor(logits), loss)[0]
