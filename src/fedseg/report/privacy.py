"""The report's privacy section: which mechanisms protected the run, the epsilon each site spent, and how
well a membership-inference attack on the final model did; from ``results.json["privacy"]`` and the
per-round epsilon in ``metrics.jsonl``.

The numbers per site were reported by the sites (another party): a value that is not a finite number
in range is shown as ``invalid``, never used; site names reach report.md only through the escaping
table and ``figure_text``. The shape of ``results.json["privacy"]`` itself is fedseg's own: a wrong
shape is an error naming the key.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fedseg.errors import printable
from fedseg.evaluation.tables import markdown_table
from fedseg.evaluation.text import Markdown, figure_text, markdown_text
from fedseg.report.figures import palette, save

LEAKS = 0.6
"""An attack AUC above this: the final model tells a site's training cases from its test cases."""
MODES = {"sample": "sample-level DP (DP-SGD at each site)", "client": "client-level DP (DP-FedAvg)"}
FEDERATION = "federation"
"""The key of ``privacy.epsilon`` under client-level DP (one accountant for all sites)."""


def privacy_section(results: dict, records: list[dict], figure: list[str] = ()) -> list[str]:
    """``## Privacy`` as Markdown lines; none for a run written before fedseg reported privacy.

    ``figure``: the Markdown lines of ``epsilon_figure``'s picture, shown after the table when ``records``
    (the federated run's ``metrics.jsonl``) hold epsilon per round."""
    if results.get("privacy") is None:
        return []
    privacy = _mapping(results["privacy"], "privacy")
    mechanisms = privacy.get("mechanisms") or []
    if not isinstance(mechanisms, list):
        raise ValueError(f"results.json: privacy.mechanisms must be a list, got {type(mechanisms).__name__}")
    dp = None if privacy.get("dp") is None else _mapping(privacy["dp"], "privacy.dp")
    if dp is not None and not (isinstance(dp.get("mode"), str) and dp["mode"] in MODES):
        raise ValueError(f"results.json: privacy.dp.mode must be one of {sorted(MODES)}, got "
                         f"{printable(repr(dp.get('mode')))}")
    lines = ["## Privacy", "", *_mechanisms(mechanisms, dp), ""]
    table = _site_table(privacy, dp)
    if table:
        lines += [table, ""]
    if figure and any(epsilon_per_round(records)):
        lines += ["ε spent after each round (from metrics.jsonl), the target dashed:", "", *figure]
    return [*lines, _reading(dp), "", _caveat(), ""]


def _mechanisms(mechanisms: list, dp: dict | None) -> list[str]:
    if not mechanisms and dp is None:
        return ["No privacy mechanism beyond federated learning itself protected this run: weights travel, "
                "data stays at each site. The weights that travel (each site's update, every global model) can "
                "still leak the cases they were trained on."]
    lines = ["Mechanisms that protected this run:", "", *(f"- {markdown_text(m)}" for m in mechanisms)]
    if dp is not None:
        lines += ["", _dp_settings(dp)]
    return lines


def _dp_settings(dp: dict) -> str:
    target = f"(ε = {_value(dp.get('target_epsilon'), 'g')}, δ = {_value(dp.get('delta'), 'g')})"
    sigma = None if dp.get("noise_multiplier") is None else f"noise multiplier {_value(dp['noise_multiplier'], '.4g')}"
    accountant = f"the {markdown_text(str(dp.get('accountant', '?')).upper())} accountant"
    if dp["mode"] == "sample":
        return (f"Sample-level DP: each site trains with DP-SGD (each case's gradient clipped to L2 norm "
                f"{_value(dp.get('max_grad_norm'), 'g')}, Gaussian noise{f', {sigma}' if sigma else ''}); the privacy "
                f"unit is one case (a patient), and each site may spend at most {target} over the whole run, counted "
                f"by {accountant}.")
    return (f"Client-level DP: each site's change to the global model is clipped to L2 norm "
            f"{_value(dp.get('clip'), 'g')} and the coordinator adds Gaussian noise to their mean"
            f"{f' ({sigma})' if sigma else ''}; the privacy unit is a whole site, and the federation may spend at "
            f"most {target}, counted by {accountant}.")


def _site_table(privacy: dict, dp: dict | None) -> str | None:
    """A row per site: epsilon spent / target and delta (with DP), attack AUC, and the attacked cases."""
    epsilon = _mapping(privacy.get("epsilon") or {}, "privacy.epsilon")
    auc = _mapping(privacy.get("membership_auc") or {}, "privacy.membership_auc")
    cases = _mapping(privacy.get("membership_cases") or {}, "privacy.membership_cases")
    client = dp is not None and dp["mode"] == "client"
    sites = sorted(set(auc) | set(cases) | (set() if client else set(epsilon)))
    if not sites:
        return None
    header = ["site", "attack AUC", "cases attacked (train / test)"]
    if dp is not None:
        header[1:1] = ["ε spent / target" + (" (federation)" if client else ""), "δ"]
    rows = []
    for site in sites:
        row = [site, _auc(auc.get(site)), _cases(cases.get(site))]
        if dp is not None:
            spent = epsilon.get(FEDERATION) if client else epsilon.get(site)
            row[1:1] = [f"{_value(spent, '.2f')} / {_value(dp.get('target_epsilon'), 'g')}",
                        _value(dp.get("delta"), "g")]
        rows.append(row)
    return markdown_table(header, rows)


def _reading(dp: dict | None) -> str:
    epsilon = ("Epsilon (ε) bounds how much one privacy unit (a case for sample-level, a site for client-level "
               "DP) can change anything computed from the shared models: smaller is stronger (about 1 is strong, "
               "8 a common practical choice); δ is the small probability with which that bound may fail, and must "
               "be well below one over the number of units. ") if dp is not None else ""
    return (f"{epsilon}The attack AUC is the probability that the loss-threshold membership-inference attack "
            "(Yeom et al. 2018) on the final model scores a random training case of the site as more likely a "
            "member than a random test case: 0.5 means it cannot tell members from non-members, above about "
            f"{LEAKS} the model leaks membership (**bold**); with few cases it is noisy.")


def _caveat() -> str:
    return ("What this does not show: differential privacy protects the sites' cases against anyone who sees the "
            "shared models (the coordinator, the other sites, whoever receives the final model); secure aggregation "
            "and homomorphic encryption hide each site's update from the coordinator, but not the aggregate or the "
            "final model; and the attack is one simple attack, so a low AUC is not a proof of privacy.")


def _mapping(value: object, key: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"results.json: {key} must be an object, got {type(value).__name__}")
    return value


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _value(value: object, spec: str) -> str:
    """A number for the report: ``n/a`` for none, ``∞``, or ``invalid`` for anything else."""
    if value is None:
        return "n/a"
    if not _number(value) or value < 0:
        return "invalid"
    return "∞" if math.isinf(value) else format(value, spec)


def _auc(value: object) -> str | Markdown:
    if value is None:
        return "n/a"
    if not _number(value) or not 0 <= value <= 1:
        return "invalid"
    return Markdown(f"**{value:.3f}**") if value > LEAKS else f"{value:.3f}"


def _cases(value: object) -> str:
    if value is None:
        return "n/a"
    counts = value if isinstance(value, (list, tuple)) and len(value) == 2 else None
    if counts is None or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return "invalid"
    return f"{counts[0]} / {counts[1]}"


def epsilon_per_round(records: list[dict]) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, float]]]:
    """``({site: [(round, epsilon spent so far)]}, [(round, the federation's epsilon)])`` from metrics.jsonl:
    a site's ``epsilon`` (sample-level DP) and the round's ``plan.client_dp.epsilon`` (client-level DP).
    Rounds count from 1; a record without a usable round or a finite epsilon >= 0 is left out."""
    sites: dict[str, dict[int, float]] = {}
    federation: dict[int, float] = {}
    for record in records:
        round = record.get("round") if isinstance(record, dict) else None
        if not isinstance(round, int) or isinstance(round, bool) or round < 0:
            continue
        site, spent = record.get("site"), record.get("epsilon")
        if isinstance(site, str) and _finite(spent):
            sites.setdefault(site, {})[round + 1] = float(spent)
        plan = record.get("plan")
        client = plan.get("client_dp") if isinstance(plan, dict) else None
        if isinstance(client, dict) and _finite(client.get("epsilon")):
            federation[round + 1] = float(client["epsilon"])
    return ({site: sorted(points.items()) for site, points in sites.items()}, sorted(federation.items()))


def _finite(value: object) -> bool:
    return _number(value) and math.isfinite(value) and value >= 0


def epsilon_figure(results: dict, records: list[dict], path: Path) -> Path | None:
    """Epsilon spent after each round, a line per site (and one for the federation under client-level
    DP), the target dashed; None without per-round epsilon or without ``results.json["privacy"]``."""
    if results.get("privacy") is None:
        return None
    sites, federation = epsilon_per_round(records)
    if not sites and not federation:
        return None
    colours = palette(sorted(sites))
    figure, axis = plt.subplots(figsize=(7, 3.6))
    for site, colour in colours.items():
        rounds, spent = zip(*sites[site])
        axis.plot(rounds, spent, "-", color=colour, marker="o", markersize=3, linewidth=1.4, label=figure_text(site))
    if federation:
        rounds, spent = zip(*federation)
        axis.plot(rounds, spent, "-", color="black", marker="s", markersize=3, linewidth=1.6,
                  label="federation (client-level DP)")
    dp = results["privacy"].get("dp") if isinstance(results["privacy"], dict) else None
    target = dp.get("target_epsilon") if isinstance(dp, dict) else None
    if _finite(target):
        axis.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target ε = {target:g}")
    axis.set_title("privacy spent: ε after each round", loc="left", fontsize=10, fontweight="bold")
    axis.set_xlabel("round")
    axis.set_ylabel("ε spent")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    figure.tight_layout()
    return save(figure, path)
