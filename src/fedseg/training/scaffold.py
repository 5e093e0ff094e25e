"""SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II): a site's control variate ``c_i``.

The site app splits the coordinator's control variate ``c`` off the model it receives, checks it
and hands it to the trainer (never as an instruction on the wire). Every optimizer step of the
round is then followed by ``w -= lr * (c - c_i)`` on each trainable parameter, ``lr`` being that
step's own learning rate (``[training] lr_schedule`` included). With plain SGD that is the paper's
``grad += c - c_i``; with Adam, fedseg's optimizer, correcting after the step keeps the correction in
the units of the control update below (NVFlare's ``PTScaffoldHelper`` and Flower's SCAFFOLD
baseline correct the same way). After the round::

    c_i+ = c_i - c + (x - y_i) / L        L: the sum of the step sizes used (K * lr for a constant lr)

where ``x`` is the model the round started from and ``y_i`` the trained one; the site returns
``c + (c_i+ - c_i)`` beside its model under ``types.CONTROL_PREFIX``. Keys that are not trainable
parameters (running statistics) keep ``c_i = 0``: their reply is ``c`` itself. A round with no step
size (``L = 0``) or a non-finite result keeps ``c_i``.

``c_i`` (float64) is the site's own: in memory and in its ``state_dir`` by round (the last two
rounds, as the optimizer state), so a restarted site takes the one of the last round before the one
it is asked to train, and a resumed run retraces an uninterrupted one bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedseg.errors import UserError, printable
from fedseg.training.round_state import KeptByRound, RoundFiles
from fedseg.types import CONTROL_PREFIX, Update, Weights

if TYPE_CHECKING:
    import torch
    from torch import nn


class SiteControls:
    """One site's ``c_i`` across rounds; ``SiteTrainer.train`` runs each SCAFFOLD round through ``corrected``."""

    def __init__(self, site: str, network: nn.Module, state_dir: Path | None, private: bool = False):
        self.site, self.network, self.state_dir, self.private = site, network, state_dir, private
        self.keys = tuple(name for name, p in network.named_parameters() if p.requires_grad)
        self.kept = KeptByRound(RoundFiles(state_dir, "scaffold", "SCAFFOLD control variate", "start again from zero"),
                                {k: (tuple(p.shape), "float64") for k, p in network.named_parameters() if k in self.keys})
        """c_i by round (float64), in memory and in ``state_dir``."""

    def corrected(self, control: Weights | None, round: int, optimizer: torch.optim.Optimizer,
                  train: Callable[[], Update]) -> Update:
        """``train()``'s update, for a SCAFFOLD round (``control`` = the checked ``c``) with the
        corrected steps and the control reply beside the model; without ``control``, ``train()``."""
        if control is None:
            return train()
        import torch

        if self.private:
            raise UserError(f"site {printable(self.site)}: the coordinator sent SCAFFOLD control variates, which "
                            "this site does not use with privacy.dp = \"sample\"; use another plan with DP-SGD")
        if missing := [k for k in self.keys if k not in control]:
            raise UserError(f"site {printable(self.site)}: SCAFFOLD's control variate misses {missing[:3]}")
        c_i = self.before(round)
        c = {k: np.asarray(v, dtype=np.float64) for k, v in control.items()}
        params = dict(self.network.named_parameters())
        start = {k: params[k].detach().cpu().numpy().astype(np.float64) for k in self.keys}
        shift = {id(params[k]): (k, torch.from_numpy(c[k] - c_i[k]).to(params[k])) for k in self.keys}
        step_sizes = dict.fromkeys(self.keys, 0.0)

        def after_step(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
            with torch.no_grad():
                for group in opt.param_groups:
                    for p in group["params"]:
                        if (found := shift.get(id(p))) is not None:
                            p.sub_(found[1], alpha=group["lr"])
                            step_sizes[found[0]] += float(group["lr"])

        hook = optimizer.register_step_post_hook(after_step)
        try:
            update = train()
        finally:
            hook.remove()
        new = {k: c_i[k] - c[k] + (start[k] - np.asarray(update.weights[k], np.float64)) / step_sizes[k]
               if step_sizes[k] > 0 else c_i[k] for k in self.keys}
        if all(np.isfinite(v).all() for v in new.values()):
            self.kept.keep(round, new)
        else:
            new = c_i
        reply = {CONTROL_PREFIX + k: np.asarray(c[k] + (new[k] - c_i[k]) if k in new else c[k]).astype(v.dtype)
                 for k, v in control.items()}
        return Update({**update.weights, **reply}, update.n_samples, update.metrics)

    def before(self, round: int) -> Weights:
        """``c_i`` as it was before ``round``: from the last round before it this site trained in (zero if none)."""
        kept = self.kept.before(round)
        if kept is not None:
            return kept
        return {k: np.zeros(tuple(p.shape)) for k, p in self.network.named_parameters() if k in self.keys}
