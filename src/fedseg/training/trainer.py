"""The site trainer: local training and evaluation, independent of any transport.

Two verbs, as in monai.fl's ClientAlgo and NVFlare's Client API: ``train(weights, config)``
returns an Update; ``evaluate(weights, split)`` returns per-case metrics. Each round is seeded
from the round config alone, so a resumed run retraces an uninterrupted one exactly.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor

from fedseg.data.dataset import SiteDataset
from fedseg.models.registry import ModelConfig
from fedseg.privacy.config import PrivacyConfig
from fedseg.training.config import TrainingConfig
from fedseg.training.devices import Precision, reproducible, site_training
from fedseg.training.inference import predict_labels, predict_logits
from fedseg.training.local_norm import LocalNorm
from fedseg.training.losses import build_loss
from fedseg.training.metrics import case_metrics
from fedseg.training.networks import NetworkPool, build_site_network  # noqa: F401 (imported from here by others)
from fedseg.training.round_state import RoundFiles, round_of
from fedseg.training.scaffold import SiteControls
from fedseg.training.schedules import RoundLR
from fedseg.training.weights import get_weights, set_weights
from fedseg.types import CaseMetrics, Model, RoundConfig, Update, Weights, mean_dice


class SiteTrainer:
    """Trains and evaluates one network on one site's cached data.

    ``state_dir`` is where a site keeps what must survive a restart but never leaves the site:
    with ``optimizer_state = "keep"``, the optimizer state after each round it trained in; with
    ``privacy.dp = "sample"``, its privacy ledger and DP secret (``training/private.py``), the budget
    covering ``dp_trainings`` rounds and ``dp_fine_tune_epochs`` epochs of fine-tuning. ``device``:
    the site's own choice over ``config.device`` (both resolved by ``training.devices``).

    ``networks``: the pool whose network of this kind the trainer uses, shared with the other
    trainers of the process (``training.networks``; None: a network of its own). Every verb loads
    the weights it works on first; with ``optimizer_state = "keep"`` and a ``state_dir`` the
    optimizer moments are read back from the round's file instead of kept in memory (2 model
    sizes per site otherwise).
    """

    def __init__(self, data: SiteDataset, model: ModelConfig, config: TrainingConfig,
                 state_dir: Path | None = None, privacy: PrivacyConfig | None = None, dp_trainings: int = 1,
                 dp_fine_tune_epochs: int = 0, device: str | None = None, networks: NetworkPool | None = None):
        self.data = data
        self.config = config = site_training(config, data.name, device)
        self.device = torch.device(config.device)
        pool = networks if networks is not None else NetworkPool()
        dp = privacy is not None and privacy.dp == "sample"
        self.network = pool.network(model, data.task, config.loss, self.device, private=dp)
        self.loss = build_loss(config.loss, data.task.n_classes, data.annotated).to(self.device)
        self.roi_size = data.preprocessing.patch_size
        self.state_dir = state_dir
        self._optimizer_files = RoundFiles(state_dir, "optimizer", "optimizer state", "go on with fresh optimizer moments")
        self._optimizer: torch.optim.Optimizer | None = None
        self._private = None
        self.local_norm = LocalNorm(data.name, self.network, state_dir)  # [plan] local_norm (FedBN)
        self._dp = (model, privacy, dp_trainings, dp_fine_tune_epochs) if privacy and privacy.dp == "sample" else None
        if config.amp and self._dp:
            warnings.warn(f"site {data.name}: DP-SGD rounds train in float32 (training.amp: evaluation only)")
        self.controls = SiteControls(data.name, self.network, state_dir, self._dp is not None)  # SCAFFOLD's c_i

    @property
    def private(self):
        """DP-SGD's state (``training.private``), set up at the first training, not before: a site
        whose DP settings cannot work (delta >= 1 / its cases) still joins, so the coordinator can
        say what to change."""
        if self._private is None and self._dp is not None:
            from fedseg.training.private import PrivateTraining  # Opacus: loaded only for DP-SGD

            model, privacy, trainings, fine_tune_epochs = self._dp
            self._private = PrivateTraining(self.data.name, self.network, self.data, model, self.config, privacy,
                                            trainings, fine_tune_epochs, self.state_dir)
        return self._private

    @property
    def name(self) -> str:
        return self.data.name

    def case_counts(self) -> dict[str, int]:
        """Cases per split, as the site declares them when it joins a federation."""
        return {split: len(self.data.cases[split]) for split in ("train", "val", "test")}

    def weights(self) -> Weights:
        """The network's names, shapes and dtypes, as weights (the site checks a received model
        against them); the values are whatever the network last loaded (it may be shared)."""
        return get_weights(self.network)

    def train(self, weights: Weights, config: RoundConfig, control: Weights | None = None) -> Update:
        """Local training from ``weights``; ``config.extra["proximal_mu"]`` adds FedProx's term,
        ``control`` (SCAFFOLD's ``c``) corrects the steps (``training.scaffold``)."""
        set_weights(self.network, self.local_norm.received(weights, config))
        if self.config.optimizer_state == "keep":
            optimizer = self._kept_optimizer(config.round)
        else:
            optimizer = self._new_optimizer()
        update = self.controls.corrected(control, config.round, optimizer, lambda: self._train(config, optimizer))
        self.local_norm.trained(config, update.weights)
        if self.config.optimizer_state == "keep":
            self._optimizer_files.save(config.round, optimizer.state_dict())
            if self.state_dir is not None:  # read back next time (bit for bit), not kept in memory per site
                self._optimizer = None
        return update

    def fine_tune(self, weights: Weights, epochs: int, seed: int) -> Update:
        """FL_local: ``epochs`` epochs on this site's training data from ``weights``, fresh optimizer."""
        set_weights(self.network, weights)
        config = RoundConfig(round=0, seed=seed, local_epochs=epochs, extra={"run_rounds": 1})  # lr: a run of its own
        return self._train(config, self._new_optimizer(), "fine_tune")

    def _train(self, config: RoundConfig, optimizer: torch.optim.Optimizer, what: str = "round") -> Update:
        with reproducible(self.device):  # what a round retraced bit for bit needs on this device
            return self._train_here(config, optimizer, what)

    def _train_here(self, config: RoundConfig, optimizer: torch.optim.Optimizer, what: str) -> Update:
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        self.network.train()
        mu = float(config.extra.get("proximal_mu", 0.0))
        anchor = [p.detach().clone() for p in self.network.parameters()] if mu > 0 else None
        if self.private is not None:  # the training loss is a statistic of the cases: not released
            metrics = self.private.train(what, config, optimizer, self._batch_loss, mu, anchor)
        else:
            batches, steps = self._batches(config)
            lr = RoundLR(self.config, config, steps, self.name)  # [training] lr_schedule, set before each step
            precision = Precision(self.device, self.config.amp)  # [training] amp: a fresh scaler each round
            losses = [self._step(batch, optimizer, mu, anchor, precision) for batch in lr.over(optimizer, batches)]
            metrics = {"train_loss": float(np.mean(losses)), "steps": float(len(losses)), **lr.metrics()}
        if self.config.validate_local and self.data.cases["val"]:
            metrics["val_dice"] = mean_dice(self._evaluate_loaded("val", with_distances=False))
        metrics["seconds"] = time.perf_counter() - started
        return Update(get_weights(self.network), self.data.n_train, metrics)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def _kept_optimizer(self, round: int) -> torch.optim.Optimizer:
        """This site's optimizer, restored after a restart from the last round before ``round``."""
        if self._optimizer is None:
            self._optimizer = self._new_optimizer()
            saved = [p for p in self._optimizer_files.paths() if round_of(p) < round]
            if saved:
                try:
                    self._optimizer.load_state_dict(self._optimizer_files.load(saved[-1]))
                except Exception as exc:  # torch raises many kinds for a state of another optimizer or network
                    raise self._optimizer_files.damaged(saved[-1], str(exc)[:80]) from None
        return self._optimizer

    def evaluate(self, weights: Model, split: str = "test") -> list[CaseMetrics]:
        """Per-case metrics on ``split``; distances (HD95) only for the test split, as they are slow.

        ``weights`` may be a list: an ensemble whose members' probabilities are averaged.
        """
        cases = self.data.cases[split]
        predictions = self._predict(weights, cases)
        return [self._score(case, prediction, with_distances=split == "test")
                for case, prediction in zip(cases, predictions)]

    def case_losses(self, weights: Weights, split: str) -> list[float]:
        """The training loss of each case of ``split`` on the whole preprocessed case, without
        augmentation (sliding windows of the patch size, as evaluation), for membership inference."""
        set_weights(self.network, weights)
        losses = []
        for case in self.data.cases[split]:
            logits = predict_logits(self.network, case["image"].to(self.device), self.roi_size,
                                    self.config.sw_batch_size, self.config.sw_overlap)
            with torch.no_grad():
                losses.append(float(self.loss(logits, case["label"][None].to(self.device))))
        return losses

    def predict_case(self, weights: Model, case: str, split: str = "test") -> tuple[np.ndarray, ...]:
        """(image, truth, prediction) of one preprocessed case as arrays, for pictures of results."""
        item = next(c for c in self.data.cases[split] if c["case"] == case)
        prediction = next(self._predict(weights, [item]))
        return item["image"][0].numpy(), item["label"][0].numpy(), prediction[0].numpy()

    def _predict(self, weights: Model | None, cases: list[dict]) -> Iterator[torch.Tensor]:
        """Label maps of ``cases`` one by one: one model's (None: the network as it is), or the argmax
        of an ensemble's mean probabilities."""
        members = weights if isinstance(weights, list) else [weights]
        return predict_labels(self.network, members, (case["image"] for case in cases), self.config,
                              self.roi_size, self.device)

    def _score(self, case: dict, prediction: torch.Tensor, with_distances: bool) -> CaseMetrics:
        spacing = case["spacing"] or (1.0,) * self.data.task.spatial_dims
        return case_metrics(case["case"], prediction, case["label"], self.data.task.class_names, spacing,
                            with_distances, scored=self.data.annotated)

    def _batches(self, config: RoundConfig):
        """The round's batches (the round config's steps or epochs, else the training config's) and their number."""
        loader = self.data.train_loader(self.config.batch_size, config.seed)
        steps, epochs = config.local_steps, config.local_epochs
        if steps is None and epochs is None:
            steps, epochs = self.config.local_steps, self.config.local_epochs
        if steps is None:
            return itertools.chain.from_iterable(loader for _ in range(epochs)), epochs * len(loader)
        cycles = math.ceil(steps / len(loader))
        return itertools.islice(itertools.chain.from_iterable(loader for _ in range(cycles)), steps), steps

    def _step(self, batch: dict, optimizer: torch.optim.Optimizer, mu: float,
              anchor: list[torch.Tensor] | None, precision: Precision) -> float:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = self._batch_loss(batch)
        if anchor is not None:  # FedProx (Li et al. 2020): stay near the global model
            loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(self.network.parameters(), anchor))
        precision.step(loss, optimizer)
        return float(loss.detach())

    def _batch_loss(self, batch: dict) -> torch.Tensor:
        image = _plain(batch["image"]).to(self.device)
        return self.loss(self.network(image), _plain(batch["label"]).to(self.device))

    def _evaluate_loaded(self, split: str, with_distances: bool) -> list[CaseMetrics]:
        """The current network on ``split`` (validation during training)."""
        cases = self.data.cases[split]
        return [self._score(case, prediction, with_distances)
                for case, prediction in zip(cases, self._predict(None, cases))]


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata before the forward pass: it only costs time there."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor
