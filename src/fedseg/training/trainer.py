"""The site trainer: local training and evaluation, independent of any transport.

Two verbs, as in monai.fl's ClientAlgo and NVFlare's Client API: ``train(weights, config)``
returns an Update; ``evaluate(weights, split)`` returns per-case metrics. Each round is seeded
from the round config alone, so a resumed run retraces an uninterrupted one exactly.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor

from fedseg.data.dataset import SiteDataset
from fedseg.data.task import Task
from fedseg.models.registry import ModelConfig, build_network
from fedseg.training.inference import predict_labels
from fedseg.training.losses import LOSSES, build_loss, output_channels
from fedseg.training.metrics import case_metrics
from fedseg.training.weights import get_weights, set_weights
from fedseg.types import CaseMetrics, RoundConfig, Update, Weights, mean_dice

OPTIMIZERS = ("adam",)


@dataclass(frozen=True)
class TrainingConfig:
    """Local optimisation; ``batch_size`` counts cases, each giving ``patches_per_case`` patches."""

    loss: str = "dice_ce"
    optimizer: str = "adam"
    lr: float = 2e-4
    weight_decay: float = 0.0
    batch_size: int = 4
    local_epochs: int = 1
    local_steps: int | None = None
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    validate_local: bool = True
    """Score the locally trained model on the site's validation cases (``val_dice`` in the update)."""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"training.loss must be one of {LOSSES}, got '{self.loss}'")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer must be one of {OPTIMIZERS}, got '{self.optimizer}'")
        if self.lr <= 0 or self.batch_size < 1 or self.local_epochs < 1:
            raise ValueError("training.lr must be > 0, training.batch_size and training.local_epochs >= 1")
        if self.local_steps is not None and self.local_steps < 1:
            raise ValueError(f"training.local_steps must be >= 1 when given, got {self.local_steps}")


def build_site_network(model: ModelConfig, task: Task, loss: str) -> torch.nn.Module:
    """The network every site and the coordinator share for this task and loss."""
    return build_network(model, task.spatial_dims, task.in_channels, output_channels(loss, task.n_classes))


class SiteTrainer:
    """Trains and evaluates one network on one site's cached data."""

    def __init__(self, data: SiteDataset, model: ModelConfig, config: TrainingConfig):
        self.data = data
        self.config = config
        self.device = torch.device(config.device)
        self.network = build_site_network(model, data.task, config.loss).to(self.device)
        self.loss = build_loss(config.loss, data.task.n_classes)
        self.roi_size = data.preprocessing.patch_size

    @property
    def name(self) -> str:
        return self.data.name

    def train(self, weights: Weights, config: RoundConfig) -> Update:
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        set_weights(self.network, weights)
        self.network.train()
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.config.lr,
                                     weight_decay=self.config.weight_decay)
        losses = [self._step(batch, optimizer) for batch in self._batches(config)]
        metrics = {"train_loss": float(np.mean(losses)), "steps": float(len(losses))}
        if self.config.validate_local and self.data.cases["val"]:
            metrics["val_dice"] = mean_dice(self._evaluate_loaded("val", with_distances=False))
        metrics["seconds"] = time.perf_counter() - started
        return Update(get_weights(self.network), self.data.n_train, metrics)

    def evaluate(self, weights: Weights, split: str = "test") -> list[CaseMetrics]:
        """Per-case metrics on ``split``; distances (HD95) only for the test split, as they are slow."""
        set_weights(self.network, weights)
        return self._evaluate_loaded(split, with_distances=split == "test")

    def _batches(self, config: RoundConfig):
        loader = self.data.train_loader(self.config.batch_size, config.seed)
        steps = config.local_steps or self.config.local_steps
        if steps is None:
            epochs = config.local_epochs or self.config.local_epochs
            return itertools.chain.from_iterable(loader for _ in range(epochs))
        cycles = math.ceil(steps / len(loader))
        return itertools.islice(itertools.chain.from_iterable(loader for _ in range(cycles)), steps)

    def _step(self, batch: dict, optimizer: torch.optim.Optimizer) -> float:
        image = _plain(batch["image"]).to(self.device)
        label = _plain(batch["label"]).to(self.device)
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.network(image), label)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def _evaluate_loaded(self, split: str, with_distances: bool) -> list[CaseMetrics]:
        class_names = self.data.task.class_names
        results = []
        for case in self.data.cases[split]:
            prediction = predict_labels(self.network, case["image"].to(self.device), self.config.loss,
                                        self.roi_size, self.config.sw_batch_size, self.config.sw_overlap)
            spacing = case["spacing"] or (1.0,) * self.data.task.spatial_dims
            results.append(case_metrics(case["case"], prediction.cpu(), case["label"], class_names, spacing,
                                        with_distances))
        return results


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata before the forward pass: it only costs time there."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor
