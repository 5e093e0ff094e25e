"""``[privacy]``: which mechanisms protect the sites beyond "only weights travel", checked without
importing torch.

- ``dp = "sample"``: DP-SGD at each site (per-case gradient clipping to ``max_grad_norm`` and
  Gaussian noise, Opacus); each site's privacy unit is one case (patient), and each site spends at
  most ``(epsilon, delta)`` over the whole run.
- ``dp = "client"``: DP-FedAvg (McMahan et al. 2018): each site's change to the global model is
  clipped to ``clip`` (L2) and the coordinator adds Gaussian noise to their mean; the unit is a
  whole site, the budget ``(epsilon, delta)`` the federation's.
- ``secure_aggregation``: pairwise masks (Bonawitz et al. 2017), the coordinator learns only the
  sum of the sites' updates.
- ``homomorphic``: CKKS encryption (TenSEAL) with keys from provisioning; the coordinator sums
  ciphertexts it cannot read.

What each mechanism needs of the rest of the experiment (plan, guard, model) is checked here too,
from plain values, so that a bad combination is an error before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedseg.tables import check_range

DP_MODES = ("off", "sample", "client")
ACCOUNTANTS = ("rdp", "prv")
DP_NETWORKS = ("UNet", "BasicUNet")
"""Networks whose per-case gradients Opacus computes (``training.private`` says why not SegResNet)."""


def dp_network_problem(name: str) -> str | None:
    """Why sample-level DP cannot train the network ``name``, and what to use; None when it can."""
    if name in DP_NETWORKS:
        return None
    return (f"privacy.dp = \"sample\" cannot train {name:.40}: its residual blocks add in place onto a layer's "
            "output, which per-case gradients (Opacus) cannot follow; set [model] name = \"UNet\" or \"BasicUNet\"")


def largest_delta(cases: int) -> float:
    """A round delta below 1 / ``cases`` (1e-3 for 300 cases): what to set when delta is too large."""
    return 10 ** math.floor(math.log10(1 / cases) - 1e-12)
AVERAGING_PLANS = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
"""Plans whose aggregation is a weighted mean followed by the plan's own step: the ones a secure
sum and client-level DP can serve."""


@dataclass(frozen=True)
class PrivacyConfig:
    dp: str = "off"
    epsilon: float | None = None
    """The target epsilon: per site for ``dp = "sample"``, for the federation for ``"client"``."""
    delta: float = 1e-5
    """The target delta; must be below 1 / (the number of privacy units: a site's training cases, or sites)."""
    max_grad_norm: float = 1.0
    """``sample``: each case's gradient is clipped to this L2 norm before the noise is added."""
    clip: float | None = None
    """``client``: each site's change to the global model is clipped to this L2 norm."""
    accountant: str = "rdp"
    """How spent privacy is counted: ``rdp`` (Renyi DP, Mironov 2017) or ``prv`` (Gopi et al. 2021)."""
    secure_aggregation: bool = False
    homomorphic: bool = False
    membership_attack: bool = True
    """Score a loss-threshold membership-inference attack on the final model at each site (report)."""

    def __post_init__(self) -> None:
        if self.dp not in DP_MODES:
            raise ValueError(f"privacy.dp must be one of {DP_MODES}, got {self.dp!r:.40}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy.accountant must be one of {ACCOUNTANTS}, got {self.accountant!r:.40}")
        if self.dp != "off":
            if self.epsilon is None:
                raise ValueError(f"privacy.dp = {self.dp!r} needs a target privacy.epsilon (e.g. epsilon = 8)")
            check_range("privacy.epsilon", self.epsilon, 0, above=True)
            check_range("privacy.delta", self.delta, 0, 1, above=True, below=True)
        elif self.epsilon is not None:
            raise ValueError("privacy.epsilon is set but privacy.dp is 'off': set dp = \"sample\" (each site) "
                             "or \"client\" (the federation), or remove epsilon")
        check_range("privacy.max_grad_norm", self.max_grad_norm, 0, above=True)
        if self.dp == "client":
            if self.clip is None:
                raise ValueError("privacy.dp = \"client\" needs privacy.clip, the L2 bound of each site's change "
                                 "to the global model (e.g. clip = 1.0; look at update_norm in metrics.jsonl "
                                 "of a run without DP for typical values)")
            check_range("privacy.clip", self.clip, 0, above=True)
        elif self.clip is not None:
            raise ValueError("privacy.clip applies to dp = \"client\" only; remove it")
        if self.secure_aggregation and self.homomorphic:
            raise ValueError("choose one of privacy.secure_aggregation and privacy.homomorphic: both hide each "
                             "site's update from the coordinator")

    @property
    def secure_sum(self) -> str | None:
        """``masks`` or ``ckks`` when the coordinator may only learn the sum of the updates."""
        return "masks" if self.secure_aggregation else "ckks" if self.homomorphic else None

    @property
    def mechanisms(self) -> list[str]:
        """The mechanisms on, as the report names them."""
        names = {"sample": "sample-level DP (DP-SGD)", "client": "client-level DP (DP-FedAvg)"}
        return ([names[self.dp]] if self.dp != "off" else []) + (
            ["secure aggregation (pairwise masks)"] if self.secure_aggregation else []) + (
            ["homomorphic encryption (CKKS)"] if self.homomorphic else [])

    def delta_fits(self, units: int) -> bool:
        """Whether delta is below 1 / ``units`` (a site's training cases, or the sites): above it, one
        unit could be released whole."""
        return self.delta < 1 / units

    def check_with(self, plan: str, options: dict, norm_action: str, model_norm: str,
                   n_sites: int, model_name: str = "UNet") -> None:
        """ValueError when the rest of the experiment cannot serve these mechanisms; the message says
        what to change."""
        if plan == "scaffold" and (self.dp != "off" or self.secure_sum):
            why = ("fedseg's DP-SGD (Opacus) does not apply SCAFFOLD's correction to its steps" if self.dp == "sample"
                   else "its control variates travel beside each update, and " + (
                       "client-level DP does not clip or noise them" if self.dp == "client" else
                       "the secure sum does not hide them"))
            raise ValueError(f"plan 'scaffold' cannot run with {self.mechanisms[0]}: {why}; use plan fedavg, fedprox "
                             "or fedavgm with it, or scaffold without it")
        if self.dp == "sample" and (problem := dp_network_problem(model_name)):
            raise ValueError(problem)
        if self.dp == "sample" and model_norm == "batch":
            raise ValueError("privacy.dp = \"sample\" cannot train batch norm (it mixes the cases of a batch, so "
                             "a case's gradient is not its own): set [model] norm = \"instance\" or \"group\"")
        if self.dp == "client" or self.secure_sum:
            what = "privacy.dp = \"client\"" if self.dp == "client" else (
                "privacy.secure_aggregation" if self.secure_aggregation else "privacy.homomorphic")
            if plan not in AVERAGING_PLANS:
                raise ValueError(f"{what} needs a plan that averages the sites' updates ({', '.join(AVERAGING_PLANS)}); "
                                 f"plan {plan!r} passes one model from site to site")
            if options.get("aggregator", "mean") != "mean":
                raise ValueError(f"{what} needs aggregator = \"mean\": a robust rule ({options['aggregator']!r}) "
                                 "must see each update, which the mechanism hides or bounds")
            if self.dp == "client" and options.get("weighted_by", "n_samples") != "uniform":
                raise ValueError("privacy.dp = \"client\" needs [plan] weighted_by = \"uniform\": each site's "
                                 "clipped change must count equally for its noise to cover it")
        if self.secure_sum and norm_action != "off":
            raise ValueError(f"{'privacy.secure_aggregation' if self.secure_aggregation else 'privacy.homomorphic'}"
                             " hides each update from the coordinator, so its norm guard cannot measure them: "
                             "set [guard] norm_action = \"off\" (each site still checks the global model it "
                             "receives; see the README's privacy section)")
        if self.secure_sum and n_sites < 2:
            raise ValueError("a secure sum needs at least 2 sites")
        if self.dp == "client" and not self.delta_fits(n_sites):
            raise ValueError(f"privacy.delta = {self.delta} must be below 1 / (number of sites) = {1 / n_sites:.3g} "
                             "for client-level DP: the unit is a site")
