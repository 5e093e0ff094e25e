"""A round's records (``metrics.jsonl``): what each site reported and what became of its update."""

from __future__ import annotations

from typing import Any

from fedseg.runtime.intake import RoundIntake


def round_records(round: int, intake: RoundIntake, summary: dict[str, Any], guarded: dict,
                  missing: list[str]) -> list[dict[str, Any]]:
    """The round's lines of metrics.jsonl: one per site that answered, the round's facts on the first."""
    weights = summary.get("aggregation_weights", {})
    records = []
    for site in sorted(set(intake.accepted) | set(intake.rejected)):
        record: dict[str, Any] = {"round": round, "site": site}
        if site in intake.accepted:
            record.update({**intake.accepted[site], "round": round, "site": site})
            if site in weights:
                record["aggregation_weight"] = weights[site]
        else:
            record["rejected"] = intake.rejected[site]
        if site in intake.norms:
            record["update_norm"] = intake.norms[site]
        if site in intake.control_norms:  # SCAFFOLD: its controls' distance (a guard of their own)
            record["control_norm"] = intake.control_norms[site]
        if site in guarded.get("clipped", {}):
            record["clipped"] = True
        records.append(record)
    if records:
        if summary:
            records[0]["plan"] = summary
        if missing:
            records[0]["missing_sites"] = missing
        records[0].update({key: guarded[key] for key in ("norm_bound", "control_norm_bound", "guard")
                           if key in guarded})
    return records
