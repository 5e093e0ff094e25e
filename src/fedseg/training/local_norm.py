"""FedBN / SiloBN-style local normalisation (Li et al. 2021; Andreux et al. 2020), the site's side.

With ``[plan] local_norm = true`` the plan sends ``RoundConfig.extra["local_norm"] = True``. A site
then keeps every key of its network's normalisation modules (their parameters and their running
statistics: ``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) from
the last round it trained in, and puts them into the global model it receives before it trains.
The aggregation still averages every key, so ``FL_global`` carries the average of the sites'
normalisation (usable at a new site) and ``FL_local_<site>`` is ``FL_global`` with that site's own.

The kept values are the site's: in memory and in its ``state_dir`` by round (the last two rounds,
as the optimizer state), so a restarted site takes the values of the last round before the one it
is asked to train, and a resumed run retraces an uninterrupted one bit for bit.

Torch is imported only where a network or a file is used: reading an experiment uses
``local_norm_problem`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedseg.errors import UserError, printable
from fedseg.training.round_state import KeptByRound, RoundFiles
from fedseg.types import RoundConfig, Weights

if TYPE_CHECKING:
    from torch import nn

NORMS_WITH_STATE = ("batch",)
"""``[model] norm`` values whose layers have parameters or statistics (MONAI's instance norm has
``affine=False`` and no running statistics: nothing to keep); tests check it against the networks."""


def local_norm_problem(model_norm: str, dp: str = "off") -> str | None:
    """Why ``local_norm = true`` cannot work with ``[model] norm`` and ``[privacy] dp``, and what to
    set; None when it can."""
    if dp == "sample":
        return ("[plan] local_norm = true needs a network with normalisation parameters and statistics ([model] "
                "norm = \"batch\"), which privacy.dp = \"sample\" cannot train: remove local_norm or the DP")
    if model_norm in NORMS_WITH_STATE:
        return None
    return (f"[plan] local_norm = true keeps each site's normalisation parameters and statistics, but [model] "
            f"norm = {model_norm!r:.40} has neither (MONAI's instance norm learns no scale or shift and keeps no "
            "running statistics): set [model] norm = \"batch\", or remove local_norm")


def scoring_note(fine_tune_epochs: int) -> str:
    """How a ``local_norm`` run's models are scored, in one sentence (results.json and the report)."""
    then = (f", then fine-tuned for {fine_tune_epochs} epoch{'s' * (fine_tune_epochs != 1)} on that site's data"
            if fine_tune_epochs else "")
    return ("With local normalisation (FedBN), FL_global is the shared weights with the average of the sites' "
            "normalisation parameters and statistics (what the aggregation gives, usable at a new site), and "
            "FL_local_<site> is FL_global with that site's own normalisation from its last training round"
            f"{then} (simulation only: a deployed site keeps its own in its state folder).")


def norm_keys(network: nn.Module) -> tuple[str, ...]:
    """The state keys (parameters and buffers) of every normalisation module of ``network``."""
    from torch import nn
    from torch.nn.modules.batchnorm import _NormBase  # batch and instance norms

    kinds = (_NormBase, nn.GroupNorm, nn.LayerNorm)
    return tuple(key for name, module in network.named_modules() if isinstance(module, kinds)
                 for key in module.state_dict(prefix=f"{name}." if name else ""))


class LocalNorm:
    """One site's own normalisation across rounds (``SiteTrainer`` calls ``received`` before and
    ``trained`` after each training; ``own`` gives FL_local's starting point)."""

    def __init__(self, site: str, network: nn.Module, state_dir: Path | None):
        self.site, self.state_dir = site, state_dir
        self.keys = norm_keys(network)
        state = network.state_dict()
        self.template = {key: (tuple(state[key].shape), str(state[key].dtype).removeprefix("torch."))
                         for key in self.keys}
        self.kept = KeptByRound(RoundFiles(state_dir, "local_norm", "normalisation", "go on from the global model's"),
                                self.template)
        """The site's normalisation by round, in memory and in ``state_dir``."""

    def received(self, weights: Weights, config: RoundConfig) -> Weights:
        """``weights`` to train from in ``config.round``: with ``local_norm``, this site's own
        normalisation from the last round before it (the received values until it has trained)."""
        return self._with_own(weights, config.round) if self._on(config) else weights

    def trained(self, config: RoundConfig, weights: Weights) -> None:
        """Keep the normalisation of ``weights``, this site's model after training in ``config.round``."""
        if not self._on(config):
            return
        self.kept.keep(config.round, {key: np.array(weights[key], copy=True) for key in self.keys})

    def own(self, weights: Weights) -> Weights:
        """``weights`` with this site's normalisation from its last training (unchanged if none):
        what it would train from next, i.e. its FL_local."""
        return self._with_own(weights, None)

    def _with_own(self, weights: Weights, before: int | None) -> Weights:
        own = self.kept.before(before) if self.keys else None
        return {**weights, **own} if own is not None else weights

    def _on(self, config: RoundConfig) -> bool:
        value = config.extra.get("local_norm", False)
        if not isinstance(value, bool):
            raise UserError(f"site {printable(self.site)}: the round's local_norm must be true or false, got "
                            f"{printable(repr(value))[:40]}")
        return value
