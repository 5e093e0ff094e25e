"""Whole-image prediction: sliding windows of the training patch size, or one forward pass; the
label maps of one model or of an ensemble (evaluation, pictures of results and ``fedseg predict``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from fedseg.training.config import TrainingConfig
from fedseg.training.devices import Precision, reproducible
from fedseg.training.losses import logits_to_probabilities, probabilities_to_labels
from fedseg.training.weights import set_weights
from fedseg.types import Weights


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


def predict_labels(network: nn.Module, members: list[Weights | None], images: Iterable[torch.Tensor],
                   config: TrainingConfig, roi_size: tuple[int, ...] | None,
                   device: torch.device) -> Iterator[torch.Tensor]:
    """Class-index maps ``[1, *spatial]`` of ``images``, one image at a time (an image is read when
    its turn comes, so a split's images are never all in memory): one model's (``[None]``: the
    network as it is), or the argmax of an ensemble's mean probabilities (members' weights set in turn)."""
    for index, image in enumerate(images):
        total = None
        with reproducible(device), Precision(device, config.amp).autocast():
            for member in members:
                if member is not None and (index == 0 or len(members) > 1):  # one model: set once
                    set_weights(network, member)
                p = predict_probabilities(network, image.to(device), config.loss, roi_size,
                                          config.sw_batch_size, config.sw_overlap).float().cpu()
                total = p if total is None else total + p
        yield probabilities_to_labels(total[None] / len(members), config.loss)[0]
