"""The benchmark scripts still run: a --quick smoke run of each, checked for output, not for speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_simulation_overhead_quick_runs():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "simulation_overhead.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert any("ratio" in line for line in result.stdout.splitlines()), result.stdout
