"""``fedseg sweep``: one base experiment, a grid of plans and options, one comparison.

The grid file has ``[[grid]]`` tables; each maps dotted keys (``"plan.name"``, ``"training.lr"``)
to lists of values and is expanded as a product; the cells are the union of all tables (options
that one plan takes go in that plan's table). A cell is the base experiment with its values set
and ``arms = ["federated"]``; every cell is parsed as an experiment before anything trains, so a
bad one is an error naming the cell and the key. The base experiment's comparison arms
(standalone, centralized) run once, in ``DIR/baseline``. Cells are compared case by case on the
same test cases, so a grid cannot vary the data, its splits, the seed or the arms.

A grid comes from the user and may hold anything: its keys must have the ``section.key`` form,
and a cell's folder name is derived from its values but kept to letters, digits and ``_.=+-``
(never ``..``), with a digest of the values where they had to be changed or collide.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from fedseg.errors import UserError, printable
from fedseg.experiment import Experiment, parse_experiment
from fedseg.files import write_text_atomic
from fedseg.simulate import run_simulation
from fedseg.study import run_identity
from fedseg.sweep_report import BASELINE, settings_text, write_sweep
from fedseg.tables import ConfigError, check_numbers, key_path, read_toml

GRID_SECTIONS = ("plan", "training", "federation", "model", "preprocessing", "guard", "deployment", "privacy")
"""Sections a grid may vary (not ``task``, ``splits``, ``sites``, ``seed``, ``arms``: see the module doc)."""
GRID_KEY = re.compile(r"([a-z_]+)\.([A-Za-z_][A-Za-z0-9_]{0,63})")
MAX_CELLS = 256
"""A sweep trains every cell: more than this is a mistake in the grid, not a plan."""
CELL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,95}")
"""A cell's folder name (and no ``..`` in it): it stays inside the sweep's folder on any system."""
EXAMPLE = '[[grid]]\n"plan.name" = ["fedavg"]\n"training.lr" = [1e-3, 2e-3]'

Overrides = dict[str, Any]


def read_grid(path: Path) -> list[Overrides]:
    """The cells of the grid file at ``path``: each cell's dotted keys and values, in grid order,
    duplicates (the same values from two tables) once."""
    where = str(path)
    data = read_toml(path, "sweep grid")
    check_numbers(data, where)
    tables = data.get("grid")
    if set(data) != {"grid"} or not isinstance(tables, list) or not tables \
            or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: a sweep grid holds [[grid]] tables only, each mapping dotted keys to lists "
                          f"of values, e.g.\n{EXAMPLE}")
    return expand_grid(tables, where)


def expand_grid(tables: list[dict[str, Any]], where: str = "grid") -> list[Overrides]:
    """The union of each table's product of values."""
    cells: list[Overrides] = []
    seen: set[str] = set()
    for number, table in enumerate(tables, 1):
        if not table:
            raise ConfigError(f"{where}: [[grid]] #{number} is empty; give it keys, e.g.\n{EXAMPLE}")
        for key, values in table.items():
            _check_key(key, f"{where}: [[grid]] #{number}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: [[grid]] #{number} {key_path((key,))} must be a non-empty list of "
                                  f"values, got {printable(repr(values))[:60]}; e.g. [1e-3, 2e-3]")
        if len(cells) + math.prod(len(v) for v in table.values()) > MAX_CELLS:
            raise ConfigError(f"{where}: the grid has more than {MAX_CELLS} cells (at [[grid]] #{number}); "
                              "a sweep trains every cell: split it into smaller sweeps")
        for values in itertools.product(*table.values()):
            cell = dict(zip(table, values))
            if (canonical := _canonical(cell)) not in seen:
                seen.add(canonical)
                cells.append(cell)
    return cells


def _check_key(key: str, where: str) -> None:
    match = GRID_KEY.fullmatch(key)
    if not match or match[1] not in GRID_SECTIONS:
        raise ConfigError(f"{where}: key {key_path((key,))} must be 'section.key' with a section of "
                          f"{', '.join(GRID_SECTIONS)} (e.g. \"plan.server_lr\"); the data, splits, seed and "
                          "arms are the base experiment's, so every cell is scored on the same test cases")


def cell_names(cells: list[Overrides]) -> list[str]:
    """A short, unique folder name per cell, e.g. ``fedprox-proximal_mu=0.01``: the plan name, then
    ``key=value`` per other key. A name that is not a ``CELL_NAME``, collides (also ignoring
    case) or is ``baseline`` gets a digest of the cell's values."""
    names = [_readable(cell) for cell in cells]
    names = [name if _safe(name) else f"{_sanitised(name)}-{_digest(cell)}" for name, cell in zip(names, cells)]
    folded = Counter(name.lower() for name in names)
    names = [f"{name}-{_digest(cell)}" if folded[name.lower()] > 1 or name.lower() == BASELINE else name
             for name, cell in zip(names, cells)]
    if len({name.lower() for name in names}) != len(names):  # digests of distinct cells differ: never expected
        raise ConfigError(f"the grid's cells cannot be given distinct folder names: {names}")
    return names


def _readable(cell: Overrides) -> str:
    options = Counter(key.split(".", 1)[1] for key in cell)
    parts = [_text(cell["plan.name"])] if "plan.name" in cell else []
    parts += [f"{key.split('.', 1)[1] if options[key.split('.', 1)[1]] == 1 else key}={_text(value)}"
              for key, value in cell.items() if key != "plan.name"]
    return "-".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "_".join(map(_text, value))
    return repr(value) if isinstance(value, float) else str(value)


def _safe(name: str) -> bool:
    return bool(CELL_NAME.fullmatch(name)) and ".." not in name


def _sanitised(name: str) -> str:
    kept = re.sub(r"\.{2,}", "_", re.sub(r"[^A-Za-z0-9_.=+-]", "_", name, flags=re.ASCII))
    return re.sub(r"^[^A-Za-z0-9]+", "", kept)[:80] or "cell"


def _canonical(cell: Overrides) -> str:
    return json.dumps(sorted(cell.items()), default=str)


def _digest(cell: Overrides) -> str:
    return hashlib.sha256(_canonical(cell).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def check_cells(experiment_path: Path, cells: list[Overrides], names: list[str],
                where: str = "grid") -> tuple[dict[str, Experiment], Experiment | None]:
    """Every cell parsed as an experiment (``arms = ["federated"]``), and the baseline: the base
    experiment's comparison arms, None if it has none. ConfigError naming the cell and the key."""
    base = read_toml(experiment_path, "experiment file")
    arms = [arm for arm in parse_experiment(base, source=experiment_path).arms if arm != "federated"]
    experiments = {}
    for name, cell in zip(names, cells):
        data = copy.deepcopy(base)
        for key, value in cell.items():
            section, option = key.split(".", 1)
            data[section] = {**data.get(section, {}), option: value}  # the base parsed: a table
        data["arms"] = ["federated"]
        try:
            experiments[name] = parse_experiment(data, source=experiment_path)
        except ConfigError as exc:
            raise ConfigError(f"{where}: cell '{name}' ({printable(settings_text(cell))}): {exc}") from None
    baseline = parse_experiment({**base, "arms": arms}, source=experiment_path) if arms else None
    return experiments, baseline


def run_sweep(experiment_path: Path, grid_path: Path, out: Path, resume: bool = False,
              progress=None) -> dict[str, Any]:
    """Check every cell, train the baseline and every cell not finished yet, and write
    ``sweep.md``, ``sweep.json`` and ``sweep.png`` into ``out``; returns sweep.json's content.
    ``progress``: a ``sweep_report.SweepProgress`` (or None)."""
    cells = read_grid(grid_path)
    names = cell_names(cells)
    experiments, baseline = check_cells(Path(experiment_path), cells, names, str(grid_path))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: --out names the folder for the sweep's runs")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UserError(f"{out} is not empty: pass --resume to continue the sweep there (finished cells are "
                        "kept), or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(zip(names, cells))
    write_text_atomic(out / "sweep.json", json.dumps(
        {"experiment": str(experiment_path), "grid": str(grid_path), "finished": False,
         "cells": [{"cell": name, "overrides": cell} for name, cell in overrides.items()]},
        indent=2, default=str) + "\n")
    runs = ({BASELINE: baseline} if baseline else {}) | experiments
    finished = {name: _finished(out / name, experiment, name) for name, experiment in runs.items()}
    with progress or nullcontext():
        for done, (name, experiment) in enumerate(runs.items()):
            if progress:
                progress.step(done, len(runs), name, finished[name])
            if not finished[name]:
                run_simulation(experiment, out / name, resume=resume and (out / name / "experiment.toml").exists(),
                               progress=progress.arm if progress else None)
        if progress:
            progress.step(len(runs), len(runs))
    return write_sweep(out, experiments, overrides, baseline, experiment_path, grid_path)


def _finished(run_dir: Path, experiment: Experiment, name: str) -> bool:
    """The cell's run finished earlier (results.json) with the same settings; UserError if they differ."""
    if not (run_dir / "results.json").is_file():
        return False
    saved = run_dir / "experiment.toml"
    try:
        same = run_identity(parse_experiment(read_toml(saved, "saved experiment"), source=saved)) == run_identity(
            experiment)
    except UserError:
        same = False
    if not same:
        raise UserError(f"{run_dir} holds a finished run with other settings than {name}'s (did the base experiment "
                        "or the grid change?): choose another --out, or remove that folder to run it again")
    return True
