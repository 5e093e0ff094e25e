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
from fedseg.types import CONTROL_PREFIX, Update, Weights

if TYPE_CHECKING:
    import torch
    from torch import nn

KEEP = 2
"""Rounds of ``c_i`` kept in ``state_dir``: a resume needs at most the one before the last."""


class SiteControls:
    """One site's ``c_i`` across rounds; ``SiteTrainer.train`` runs each SCAFFOLD round through ``corrected``."""

    def __init__(self, site: str, network: nn.Module, state_dir: Path | None, private: bool = False):
        self.site, self.network, self.state_dir, self.private = site, network, state_dir, private
        self.keys = tuple(name for name, p in network.named_parameters() if p.requires_grad)
        self._kept: dict[int, Weights] | None = None  # round -> c_i; read from state_dir at first use

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
            self._keep(round, new)
        else:
            new = c_i
        reply = {CONTROL_PREFIX + k: np.asarray(c[k] + (new[k] - c_i[k]) if k in new else c[k]).astype(v.dtype)
                 for k, v in control.items()}
        return Update({**update.weights, **reply}, update.n_samples, update.metrics)

    def before(self, round: int) -> Weights:
        """``c_i`` as it was before ``round``: from the last round before it this site trained in (zero if none)."""
        kept = self._rounds()
        rounds = [r for r in kept if r < round]
        if rounds:
            return kept[max(rounds)]
        return {k: np.zeros(tuple(p.shape)) for k, p in self.network.named_parameters() if k in self.keys}

    def _keep(self, round: int, c_i: Weights) -> None:
        kept = self._rounds()
        kept[round] = c_i
        for old in sorted(kept)[:-KEEP]:
            del kept[old]
        if self.state_dir is not None:
            from fedseg.files import torch_save_atomic
            from fedseg.training.weights import to_tensors

            torch_save_atomic(to_tensors(c_i), self.state_dir / f"scaffold_round_{round:04d}.pt")
            for path in self._files():
                if _round_of(path) not in kept:
                    path.unlink()

    def _rounds(self) -> dict[int, Weights]:
        if self._kept is None:
            self._kept = {_round_of(path): self._load(path) for path in self._files()[-KEEP:]}
        return self._kept

    def _load(self, path: Path) -> Weights:
        import torch

        expected = {k: (tuple(p.shape), "float64") for k, p in self.network.named_parameters() if k in self.keys}
        try:
            values = {k: t.numpy() for k, t in torch.load(path, weights_only=True).items()}
            found = {k: (tuple(v.shape), str(v.dtype)) for k, v in values.items()}
        except Exception as exc:  # torch raises many kinds for a truncated or foreign file
            found, values = {"?": (str(exc)[:80],)}, {}
        if found != expected:
            raise UserError(f"{path}: this site's saved SCAFFOLD control variate does not fit its network (damaged or "
                            "from another model); delete it to start again from zero (the run then differs from an "
                            "uninterrupted one), or restore it")
        return values

    def _files(self) -> list[Path]:
        if self.state_dir is None or not self.state_dir.is_dir():
            return []
        return sorted(self.state_dir.glob("scaffold_round_*.pt"), key=_round_of)


def _round_of(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])
