"""The benchmark scripts still run: a --quick smoke run of each, checked for output, not for speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_simulation_overhead_quick_runs():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "simulation_overhead.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert any("ratio" in line for line in result.stdout.splitlines()), result.stdout
    assert "runtime's own time outside site training" in result.stdout, result.stdout


@pytest.mark.slow
def test_deployment_overhead_quick_runs():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "deployment_overhead.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "s/round" in line and "ratio" in line]
    assert lines and "coordinator peak RSS" in lines[0], result.stdout


@pytest.mark.slow
def test_fault_injection_quick_runs():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fault_injection.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| scale:100 |" in result.stdout and "clean FedAvg" in result.stdout, result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script, expected", [
    ("privacy_dp.py", "attack AUC"), ("privacy_overhead.py", "secure aggregation"), ("homomorphic.py", "FLARE")])
def test_privacy_benchmarks_quick_run(script, expected):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert expected in result.stdout, result.stdout


@pytest.mark.slow
def test_gpu_round_quick_runs_without_a_gpu():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_round.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| cpu ")]
    assert rows and rows[0].rstrip().endswith("yes |"), result.stdout  # the CPU round retraced bit for bit
    assert "no CUDA GPU visible" in result.stdout or "GPU/CPU time ratio" in result.stdout, result.stdout
