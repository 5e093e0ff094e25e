"""Sample-level differential privacy at one site: DP-SGD (Abadi et al. 2016) with Opacus, where the
privacy unit is a case (a patient), never a patch.

How a step treats a case:
- **Sampling.** Each training case is in a step's batch independently with probability
  ``q = batch_size / n_train`` (Poisson sampling, as Opacus's DPDataLoader), so batches vary in size
  and may be empty; an epoch is ``ceil(1 / q)`` steps. The accountant assumes exactly this.
- **Patches and augmentation.** A sampled case is augmented and cut into its
  ``patches_per_case`` patches as in non-private training. That is a random function of the one
  case already in the batch: it changes what the case contributes, never which cases contribute.
- **One gradient per case.** Opacus's GradSampleModule gives every patch's gradient; the ``k``
  patches of a case are summed into the case's gradient (the gradient of the sum of its patches'
  losses), and Opacus's DPOptimizer clips each case's gradient to ``max_grad_norm``, adds Gaussian
  noise of standard deviation ``noise_multiplier * max_grad_norm`` to the sum and divides by the
  expected batch size. FedProx's proximal term and Adam's moments act on the noisy gradient: they
  do not read the data (post-processing).
- **Budget.** The noise multiplier is chosen before training so that the whole run (``trainings``
  rounds of the configured epochs or steps, plus the fine-tuning epochs) spends ``(epsilon, delta)``.
  The site's ledger counts the steps it has released; it refuses to train past the budget.
- **Secret randomness.** Sampling, augmentation, dropout and noise are drawn from a per-site secret
  (``os.urandom``, kept in ``state_dir``) mixed with a digest of the request (round, seed, steps,
  proximal weight, incoming weights). The coordinator, which chooses the round seed, cannot predict
  the noise. The same request gives the same update (a resumed run is bit-identical), so answering
  it again releases nothing new and is counted once; a different request is a new release, counted.
  Noise is drawn in Opacus's secure mode (against floating-point attacks on the Gaussian's low
  bits) from torch's generator seeded by an HMAC of the secret: reproducible, not a cryptographic
  generator (Opacus's own secure mode would use torchcsprng, which fedseg does not install).
- Not covered by the guarantee: the training loss (not reported under DP), validation and test
  scores (of cases that are not trained on), and timing.

Opacus and fedseg's networks (checked by ``tests/test_private_training.py``): MONAI's ``UNet``
(convolutions, transposed convolutions, PReLU, instance norm without affine parameters, residual
units) and ``BasicUNet`` (convolutions, transposed-convolution up-sampling) work in 2D and 3D:
Opacus has grad samplers for convolutions and norms and computes the rest (PReLU, transposed
convolutions) with functorch; per-case gradients equal per-case backward passes. ``SegResNet``
does not: its residual blocks add in place onto a layer's output (``x += identity``), which
Opacus's backward hooks refuse ("a view ... is being modified inplace"), so fedseg refuses it
and names UNet or BasicUNet. (Opacus issue #671 reports DPOptimizer stopping on MONAI 3D
segmentation networks because a parameter had no per-sample gradient; the test above checks that
every parameter of fedseg's UNet and BasicUNet gets one, and the right one.)
Batch norm mixes the cases of a batch (refused by ``PrivacyConfig.check_with``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.data import list_data_collate
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer

from fedseg.data.dataset import SiteDataset
from fedseg.errors import UserError
from fedseg.models.registry import ModelConfig
from fedseg.privacy.accounting import epsilon_spent, noise_multiplier
from fedseg.privacy.config import PrivacyConfig, dp_network_problem, largest_delta
from fedseg.privacy.ledger import PrivacyLedger, kept_secret
from fedseg.training.config import TrainingConfig
from fedseg.training.devices import reproducible
from fedseg.training.schedules import RoundLR, varies
from fedseg.types import RoundConfig

MAX_STEPS = 10_000_000


class BudgetExhausted(UserError):
    """A site was asked to train past its privacy budget."""


class PrivateTraining:
    """DP-SGD for one site's network: the noise multiplier, the ledger, and the private steps."""

    def __init__(self, site: str, network: torch.nn.Module, data: SiteDataset, model: ModelConfig,
                 training: TrainingConfig, privacy: PrivacyConfig, trainings: int, fine_tune_epochs: int,
                 state_dir: Path | None):
        if problem := dp_network_problem(model.name):
            raise UserError(problem)
        n = data.n_train
        if not privacy.delta_fits(n):
            raise UserError(f"site {site}: privacy.delta = {privacy.delta:g} must be below 1 / (its {n} training "
                            f"cases) = {1 / n:.3g}, or one case could be released whole: set privacy.delta to at "
                            f"most {largest_delta(n):g}")
        self.site, self.network, self.data, self.training, self.privacy = site, network, data, training, privacy
        self.sample_rate = min(1.0, training.batch_size / n)
        self.steps_per_epoch = math.ceil(1 / self.sample_rate)
        self.expected_batch = max(1, round(self.sample_rate * n))
        self.budget = trainings * self.steps_of(RoundConfig(round=0, seed=0)) + fine_tune_epochs * self.steps_per_epoch
        if self.budget < 1:
            raise UserError(f"site {site}: privacy.dp = \"sample\" with no training planned (dp_trainings = "
                            f"{trainings}, fine-tuning epochs = {fine_tune_epochs}): there is no budget to divide")
        self.ledger = PrivacyLedger(state_dir, {
            "site": site, "epsilon": privacy.epsilon, "delta": privacy.delta, "sample_rate": self.sample_rate,
            "accountant": privacy.accountant, "budget_steps": self.budget})
        if self.ledger.noise_multiplier is None:  # a restarted site keeps the one it trained with
            try:
                self.ledger.noise_multiplier = noise_multiplier(privacy.epsilon, privacy.delta, self.sample_rate,
                                                                self.budget, privacy.accountant)
            except ValueError as exc:
                raise UserError(f"site {site}: {exc}") from None
        self.noise_multiplier = self.ledger.noise_multiplier
        self.secret = kept_secret(state_dir)
        try:  # once per network: DP-SGD sites of one process share theirs (``training.networks``)
            if not hasattr(network, "autograd_grad_sample_hooks"):  # Opacus's own mark of a network with its hooks
                GradSampleModule(network, batch_first=True, loss_reduction="mean", strict=True)  # hooks stay on it
        except NotImplementedError as exc:  # a layer with buffers, e.g. batch norm's running statistics
            first = exc.args[0][0] if exc.args and isinstance(exc.args[0], list) and exc.args[0] else exc
            raise UserError(f"privacy.dp = \"sample\" cannot train this network: Opacus refuses layers whose "
                            f"buffers carry statistics of the batch's cases ({str(first)[:160]}); set [model] "
                            "norm = \"instance\"") from None

    def steps_of(self, config: RoundConfig) -> int:
        """DP-SGD steps of a round: its steps, or its epochs of ``ceil(1 / q)`` steps (else the training config's)."""
        steps, epochs = config.local_steps, config.local_epochs
        if steps is None and epochs is None:
            steps, epochs = self.training.local_steps, self.training.local_epochs
        for name, value in (("local_steps", steps), ("local_epochs", epochs)):
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_STEPS):
                raise ValueError(f"site {self.site}: the round's {name} must be a whole number in [0, {MAX_STEPS}], "
                                 f"got {value!r:.40}")
        return steps if steps is not None else epochs * self.steps_per_epoch

    def epsilon(self) -> float:
        """The epsilon this site has spent (at the configured delta)."""
        steps = self.ledger.steps
        return 0.0 if steps == 0 else epsilon_spent(self.noise_multiplier, self.sample_rate, steps,
                                                    self.privacy.delta, self.privacy.accountant)

    def train(self, what: str, config: RoundConfig, optimizer: torch.optim.Optimizer,
              batch_loss: Callable[[dict], torch.Tensor], mu: float, anchor: list[torch.Tensor] | None) -> dict:
        """One round (``what``: ``round`` or ``fine_tune``) of DP-SGD from the network's current weights;
        the metrics ``steps`` and ``epsilon`` (spent so far, this round included)."""
        steps = self.steps_of(config)
        lr = RoundLR(self.training, config, steps, self.site)  # [training] lr_schedule: a fixed number of steps
        digest = self._digest(what, config, steps, mu, lr)
        key = f"{what} {config.round} {digest[:16]}"
        before = self.ledger.steps_besides(key)
        if before + steps > self.budget:
            raise BudgetExhausted(
                f"site {self.site}: {what} {config.round} needs {steps} DP-SGD steps but {self.budget - before} of the "
                f"{self.budget} steps that privacy.epsilon = {self.privacy.epsilon:g} allows remain: the site does not "
                "train past its privacy budget (train no more rounds, local epochs or steps than the experiment "
                "declared, or start a new run with a new budget)")
        seeds = {name: self._seed(digest, name) for name in ("sampling", "augment", "dropout", "noise")}
        device = next(self.network.parameters()).device
        sampler = torch.Generator().manual_seed(seeds["sampling"])
        noise = torch.Generator(device=device).manual_seed(seeds["noise"])
        torch.manual_seed(seeds["dropout"])
        cases = self.data.train_loader(1, seeds["augment"]).dataset  # the augmentation, seeded from the secret
        private = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                              max_grad_norm=self.privacy.max_grad_norm, expected_batch_size=self.expected_batch,
                              loss_reduction="mean", generator=noise, secure_mode=True)
        # a request answered again must give the same update, or the two answers (same noise,
        # rounding-different sums) would differ by data alone: cuDNN's deterministic kernels on CUDA
        with reproducible(device):
            for step in range(steps):
                lr.set(optimizer, step)
                chosen = torch.nonzero(torch.rand(self.data.n_train, generator=sampler) < self.sample_rate)[:, 0]
                batch = list_data_collate([cases[int(i)] for i in chosen]) if len(chosen) else None
                private_step(self.network, private, batch_loss, batch, len(chosen), mu, anchor)
        self.ledger.record(key, steps)
        return {"steps": float(steps), "epsilon": self.epsilon(), **lr.metrics()}

    def _digest(self, what: str, config: RoundConfig, steps: int, mu: float, lr: RoundLR) -> str:
        """The request: another lr schedule (another run length) is another release, with its own noise."""
        schedule = [lr.rounds] if varies(self.training) else []
        h = hashlib.sha256(json.dumps([what, config.round, config.seed, steps, mu, *schedule]).encode())
        for name, value in self.network.state_dict().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(value.detach().cpu().numpy()).tobytes())
        return h.hexdigest()

    def _seed(self, digest: str, purpose: str) -> int:
        mac = hmac.new(self.secret, f"{digest} {purpose}".encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:8], "big") >> 1  # 63 bits: every torch generator accepts it

def private_step(network: torch.nn.Module, optimizer: DPOptimizer, batch_loss: Callable[[dict], torch.Tensor],
                 batch: dict | None, cases: int, mu: float = 0.0, anchor: list[torch.Tensor] | None = None) -> None:
    """One DP-SGD step on ``cases`` cases (``batch`` holds their patches case by case; None when no
    case was sampled): per-case gradients, clipped, summed, noised, then the optimizer's step."""
    params = [p for p in network.parameters() if p.requires_grad]
    if batch is None:
        for p in params:
            p.grad_sample = p.new_zeros((0, *p.shape))
    else:
        with warnings.catch_warnings():  # "full backward hook is firing ... no inputs require gradients": the image
            warnings.filterwarnings("ignore", "Full backward hook is firing")
            batch_loss(batch).backward()
        for p in params:
            samples = p.grad_sample
            if samples.shape[0] % cases:
                raise ValueError(f"{samples.shape[0]} patches do not split evenly into {cases} cases")
            p.grad_sample = samples.reshape(cases, samples.shape[0] // cases, *p.shape).sum(dim=1)
    if optimizer.pre_step():  # clip each case, add the noise, divide by the expected batch size
        if anchor is not None:  # FedProx's term reads no data: added to the noisy gradient
            for p, a in zip(network.parameters(), anchor):
                p.grad = p.grad + mu * (p.detach() - a)
        optimizer.original_optimizer.step()
    optimizer.zero_grad(set_to_none=True)
