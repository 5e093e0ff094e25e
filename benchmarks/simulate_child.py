"""Run ``fedseg simulate`` in a child process (``childproc.run_child``), from an experiment dict.

``write_toml`` writes the experiment file (the few TOML forms an experiment needs); ``SIMULATE_CHILD``
runs fedseg's CLI ``main`` in-process in the child and reports the training time (sum of the
rounds' ``round_seconds`` in ``metrics.jsonl``: site training plus the engine, without reading the
data or the final evaluation), the optimizer steps and the wall time of the whole run.
"""

from __future__ import annotations

import json
from pathlib import Path

SIMULATE_CHILD = """
import torch, monai
from pathlib import Path
from fedseg.cli import main
experiment, out = sys.argv[1], Path(sys.argv[2])
started = time.perf_counter()
code = main(["simulate", experiment, "--out", str(out)])
wall = time.perf_counter() - started
if code != 0:
    sys.exit(f"fedseg simulate exited with {code}")
lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
train = sum(l.get("round_seconds", 0.0) for l in lines)
steps = sum(int(l.get("steps", 0)) for l in lines)
report(seconds=train, steps=steps, run_wall_s=wall)
"""


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def write_toml(experiment: dict, path: Path) -> Path:
    """``experiment`` as a TOML file: scalars first, ``[[sites]]``, then one table per section."""
    lines = [f"{k} = {_value(v)}" for k, v in experiment.items() if not isinstance(v, (dict, list)) or
             (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for key, value in experiment.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += ["", f"[[{key}]]", *(f"{k} = {_value(v)}" for k, v in item.items())]
    for key, value in experiment.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]", *(f"{k} = {_value(v)}" for k, v in value.items())]
    path.write_text("\n".join(lines) + "\n")
    return path
