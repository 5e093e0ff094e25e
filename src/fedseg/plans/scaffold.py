"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic controlled averaging for federated
learning"), Algorithm 1 with option II: the coordinator's side.

The coordinator keeps a control variate ``c`` (float64, one array per float key of the model, zero
at the start; plan state) and sends it beside the model: ``outgoing`` adds ``c`` under the reserved
key prefix ``types.CONTROL_PREFIX``. A site keeps its own ``c_i`` (``training.scaffold``), corrects
its local steps by ``c - c_i`` and returns its model ``y_i`` and ``c + (c_i+ - c_i)`` under the same
prefix, so a reply has exactly the shape of what was sent: the coordinator's intake checks the
controls as it checks the model (names, shapes, dtypes, finite values, the norm guard) and the
streaming mean averages both. From the round's means over the sites ``S`` that answered::

    x = x + server_lr * (mean y_i - x)            the server step (``fedopt``'s loop, momentum 0)
    c = c + |S| / N * (mean (c + dc_i) - c)       N: the federation's sites

so ``c`` moves by ``1/N sum dc_i`` as in the paper. Both means use the plan's ``weighted_by``.
Fedseg's default stays ``"n_samples"``, as for every averaging plan: the objective is the pooled
cases' loss (the comparison with the centralized arm), and with every site training each round
``c`` stays the weighted mean of the ``c_i``, the gradient of that same objective. The paper weighs
sites uniformly (``weighted_by = "uniform"`` gives its algorithm exactly); with ``fraction < 1`` and
unequal weights the ``|S| / N`` update is an approximation.

Not with robust aggregators (``registry``), client-level DP, secure sums or sample-level DP
(``privacy.config``): each needs to bound, hide or change the mean the controls are built on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedseg.plans.fedopt import FedOpt
from fedseg.types import CONTROL_PREFIX, Weights


def split_controls(weights: Weights) -> tuple[Weights, Weights]:
    """``weights`` as (the model's keys, the controls' keys without the prefix)."""
    model = {k: v for k, v in weights.items() if not str(k).startswith(CONTROL_PREFIX)}
    controls = {k[len(CONTROL_PREFIX):]: v for k, v in weights.items() if str(k).startswith(CONTROL_PREFIX)}
    return model, controls


def float_keys(weights: Weights) -> Weights:
    """The keys of ``weights`` that carry a control variate: its floating-point arrays."""
    return {k: v for k, v in weights.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}


class Scaffold(FedOpt):
    """SCAFFOLD's coordinator for a federation of ``sites`` sites; ``server_lr`` is the paper's
    global step size ``eta_g``."""

    def __init__(self, seed: int, local_epochs: int = 1, local_steps: int | None = None, server_lr: float = 1.0,
                 sites: int = 1, **averaging: Any):
        if isinstance(sites, bool) or not isinstance(sites, int) or sites < 1:
            raise ValueError(f"SCAFFOLD needs the federation's number of sites (>= 1), got {sites!r}")
        super().__init__(seed, local_epochs, local_steps, "momentum", server_lr, beta1=0.0, **averaging)
        self.name = "scaffold"
        self.sites = sites
        self.c: dict[str, np.ndarray] = {}
        """The server control variate (float64) by model key; absent keys are still zero."""
        self._answered = 0

    def outgoing(self, round: int, weights: Weights) -> Weights:
        taken = sorted(str(k) for k in weights if str(k).startswith(CONTROL_PREFIX))
        if taken:
            raise ValueError(f"the model has parameters named with SCAFFOLD's reserved prefix: {taken[:3]}")
        floats = float_keys(weights)
        wrong = sorted(k for k in self.c if k not in floats or self.c[k].shape != np.shape(floats[k]))
        if wrong:
            raise ValueError(f"SCAFFOLD's control variate does not fit the model ({wrong[:3]}): is the checkpoint "
                             "from another model?")
        controls = {CONTROL_PREFIX + k: np.asarray(self.c.get(k, np.zeros(np.shape(v)))).astype(v.dtype)
                    for k, v in floats.items()}
        return {**weights, **controls}

    def conclude(self, combined: dict[str, np.ndarray], global_weights: Weights, round: int, count: int,
                 summary: dict[str, Any]) -> Weights:
        self._answered = count
        return super().conclude(combined, global_weights, round, count, summary)

    def finish(self, combined: dict[str, np.ndarray], global_weights: Weights) -> Weights:
        """The next model from the round's means (``global_weights``: what ``outgoing`` sent); ``c``
        changes only when the whole step is finite."""
        model, sent = split_controls(global_weights)
        if set(sent) != set(float_keys(model)):
            raise ValueError("SCAFFOLD aggregates against what it sent: the model with its controls (outgoing)")
        if not 1 <= self._answered <= self.sites:
            raise ValueError(f"{self._answered} updates in a round of a federation of {self.sites} sites")
        share = self._answered / self.sites
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            c = {k: self.c.get(k, 0.0) + share * (combined[CONTROL_PREFIX + k] - np.asarray(v, dtype=np.float64))
                 for k, v in sent.items()}
        bad = sorted(k for k, value in c.items() if not np.isfinite(value).all())
        if bad:
            raise ValueError(f"the control update of scaffold is not finite in {bad[:5]}")
        result = super().finish({k: combined[k] for k in model}, model)
        self.c = {k: np.asarray(value, dtype=np.float64) for k, value in c.items()}
        return result

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "c": dict(self.c)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.c = {k: np.array(a, dtype=np.float64) for k, a in state["c"].items()}
