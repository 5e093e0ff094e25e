"""FedOpt (Reddi et al. 2021, "Adaptive federated optimization"): FedAdam, FedYogi, FedAdagrad;
and FedAvgM (Hsu et al. 2019, "Measuring the effects of non-identical data distribution").

The server treats ``g = global - weighted average of the updates`` as a gradient and takes one
adaptive optimizer step per round (Algorithm 2 of the paper, no bias correction)::

    m = beta1 * m + (1 - beta1) * g
    v = v + g^2                                   adagrad
    v = v - (1 - beta2) * g^2 * sign(v - g^2)     yogi
    v = beta2 * v + (1 - beta2) * g^2             adam
    global = global - server_lr * m / (sqrt(v) + tau)

    m = momentum * m + g;  global = global - server_lr * m     FedAvgM (``optimizer = "momentum"``)

(the paper writes it with ``Delta = -g`` and a plus sign: the same step). ``m`` starts at 0 and
``v`` at ``tau**2`` (the paper asks for ``v >= tau**2``). ``tau`` bounds the step where ``v`` is
small. FedAvgM's momentum is ``beta1`` (``server_momentum``); with momentum 0 its step is
``global + server_lr * (average - global)``, SCAFFOLD's (``scaffold``), and no ``m`` is kept. Float
parameters take the step; integer buffers (``num_batches_tracked``) take the combination itself,
rounded. ``m`` and ``v`` (float64, per parameter) are the plan's state. With a robust
``aggregator`` its combination takes the place of the weighted average in ``g``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedseg.plans.averaging import cast_like
from fedseg.plans.fedavg import FedAvg
from fedseg.types import Weights

OPTIMIZERS = ("adam", "yogi", "adagrad", "momentum")


def second_moment(optimizer: str, v: np.ndarray, g2: np.ndarray, beta2: float) -> np.ndarray:
    if optimizer == "adagrad":
        return v + g2
    if optimizer == "yogi":
        return v - (1 - beta2) * g2 * np.sign(v - g2)
    return beta2 * v + (1 - beta2) * g2


class FedOpt(FedAvg):
    """A server-side optimizer over the averaged updates; ``name`` is fedadam/fedyogi/fedadagrad/fedavgm."""

    def __init__(self, seed: int, local_epochs: int = 1, local_steps: int | None = None, optimizer: str = "adam",
                 server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 **averaging: Any):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"plan optimizer must be one of {OPTIMIZERS}, got '{optimizer}'")
        for key, value, ok in (("server_lr", server_lr, server_lr > 0), ("tau", tau, tau > 0),
                               ("beta1", beta1, 0 <= beta1 < 1), ("beta2", beta2, 0 <= beta2 < 1)):
            if not ok:
                raise ValueError(f"plan.{key} is out of range: {value}")
        super().__init__(seed, local_epochs, local_steps, **averaging)
        self.name = "fedavgm" if optimizer == "momentum" else f"fed{optimizer}"
        self.optimizer, self.server_lr, self.beta1, self.beta2, self.tau = optimizer, server_lr, beta1, beta2, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def finish(self, combined: dict[str, np.ndarray], global_weights: Weights) -> Weights:
        """One server step from the round's combination; the moments change only if every new
        value is finite (a non-finite step is an error and leaves the plan as it was)."""
        result = cast_like(combined, global_weights)
        m, v = {}, {}
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            for key, target in combined.items():
                if np.issubdtype(global_weights[key].dtype, np.floating):
                    x = np.asarray(global_weights[key], dtype=np.float64)
                    step, m[key], second = self._step(key, x - target)
                    v.update({key: second} if second is not None else {})
                    result[key] = np.asarray(x + step).astype(global_weights[key].dtype)
        for name, values in (("first moment", m), ("second moment", v), ("model", result)):
            bad = sorted(key for key, value in values.items() if not np.isfinite(value).all())
            if bad:
                raise ValueError(f"the server step of {self.name} gives a non-finite {name} in {bad[:5]}; "
                                 "the round's updates are too large for this server_lr/tau: lower server_lr")
        if self.optimizer != "momentum" or self.beta1 > 0:  # momentum 0 (SCAFFOLD's step) keeps nothing
            self.m.update(m)
        self.v.update(v)
        return result

    def _step(self, key: str, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The change to apply for gradient ``g`` of parameter ``key``, and its new ``m`` and ``v``
        (None: momentum has no ``v``)."""
        m = self.m.get(key, np.zeros_like(g))
        if self.optimizer == "momentum":
            m = np.asarray(self.beta1 * m + g)
            return -self.server_lr * m, m, None
        v = self.v.get(key, np.full_like(g, self.tau ** 2))
        m = np.asarray(self.beta1 * m + (1 - self.beta1) * g)  # asarray: 0-d maths gives scalars
        v = np.asarray(second_moment(self.optimizer, v, g * g, self.beta2))
        return -self.server_lr * m / (np.sqrt(v) + self.tau), m, v

    def state_dict(self) -> dict[str, Any]:
        return {"m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = {k: np.array(a, dtype=np.float64) for k, a in state["m"].items()}
        self.v = {k: np.array(a, dtype=np.float64) for k, a in state["v"].items()}


class FedAvgM(FedOpt):
    """FedAvgM (Hsu et al. 2019): server momentum over the average's pseudo-gradient ``g``:
    ``m = server_momentum * m + g``, ``global = global - server_lr * m``."""

    def __init__(self, seed: int, local_epochs: int = 1, local_steps: int | None = None, server_lr: float = 1.0,
                 server_momentum: float = 0.9, **averaging: Any):
        if not 0 <= server_momentum < 1:
            raise ValueError(f"plan.server_momentum must be in [0, 1), got {server_momentum}")
        super().__init__(seed, local_epochs, local_steps, "momentum", server_lr, beta1=server_momentum, **averaging)
