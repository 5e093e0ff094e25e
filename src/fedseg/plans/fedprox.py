"""FedProx (Li et al. 2020, "Federated optimization in heterogeneous networks").

Aggregation is FedAvg's; the difference lies in local training, where the site trainer adds
``proximal_mu / 2 * ||w - w_global||^2`` to the loss, limiting how far heterogeneous sites drift
from the global model. The plan only passes ``proximal_mu`` on in ``RoundConfig.extra``.
"""

from __future__ import annotations

from typing import Any

from fedseg.plans.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, seed: int, local_epochs: int = 1, local_steps: int | None = None,
                 proximal_mu: float = 0.0, **averaging: Any):
        if not proximal_mu >= 0:
            raise ValueError(f"plan.proximal_mu must be >= 0, got {proximal_mu}")
        super().__init__(seed, local_epochs, local_steps, **averaging)
        self.proximal_mu = float(proximal_mu)

    def train_extra(self) -> dict[str, Any]:
        return {**super().train_extra(), **({"proximal_mu": self.proximal_mu} if self.proximal_mu > 0 else {})}
