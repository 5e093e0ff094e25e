"""The audit log of a run: one line in ``received.jsonl`` per reply a site sent, with the verdict.

Weight values are left out (parameter names, dtypes and shapes are kept); metrics, case counts and
the transport's metadata are kept in full, so anyone can check what reached the coordinator.
A reply is written even when it is malformed: the line then holds its ``repr``, cut short.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedseg.types import Update

AUDIT_FILE = "received.jsonl"
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 200, 200


def append_audit(path: Path, task: str, site: str, round: int | None, reply: Any, meta: dict,
                 verdict: str | None) -> None:
    line: dict[str, Any] = {"task": task, "site": site, "round": round, "params": {}, "metrics": {},
                            "meta": meta, "verdict": "accepted" if verdict is None else f"rejected: {verdict}"}
    if isinstance(reply, Update):
        members = reply.weights if isinstance(reply.weights, list) else [reply.weights]  # an ensemble: each member
        named = [(f"ensemble/{i}/" if len(members) > 1 else "", member) for i, member in enumerate(members)]
        line["params"] = {f"{prefix}{k}": [str(v.dtype), list(v.shape)] if isinstance(v, np.ndarray) else
                          type(v).__name__ for prefix, member in named if isinstance(member, Mapping)
                          for k, v in member.items()}
        line["metrics"] = reply.metrics
    elif isinstance(reply, dict):
        line["metrics"] = reply
    elif isinstance(reply, list):
        line["cases"] = len(reply)
    try:
        text = json.dumps(line, default=repr)
    except Exception:  # keys that are not text, nesting deeper than json goes: sent by a broken or hostile site
        text = json.dumps({**line, "params": _SHORT.repr(line["params"]), "metrics": _SHORT.repr(line["metrics"]),
                           "meta": _SHORT.repr(meta)})
    with open(path, "a") as audit:
        audit.write(text + "\n")
