"""One measurement = one fresh child process: its wall time, its own peak RSS (``ru_maxrss`` of the
child and of the processes it waited for, e.g. preparation workers) and the peak of the summed RSS
of its whole process tree, sampled every 0.1 s with psutil.

The child runs ``PRELUDE + code``; it calls ``report(**numbers)``, which prints one ``RESULT`` line
(JSON) with the numbers and its ``ru_maxrss``. Every child gets ``GOMP_SPINCOUNT=10000`` (see
``simulation_overhead.py``) and the environment given (``FEDSEG_CACHE`` for fedseg children);
``src`` puts another fedseg source tree first on ``PYTHONPATH`` (to measure an older commit:
``git archive COMMIT src | tar -x -C /tmp/old`` then ``--fedseg-src /tmp/old/src``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELUDE = """
import json, os, resource, sys, time
def report(**numbers):
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    numbers.update(rss_mb=self_kb / 1024, children_rss_mb=children_kb / 1024, pid=os.getpid())
    print("RESULT " + json.dumps(numbers), flush=True)
"""


def _tree_rss(process) -> int:
    import psutil

    total = 0
    try:
        procs = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_child(code: str, args: list[str] = (), env: dict | None = None, src: str | None = None,
              timeout: float = 3600) -> dict:
    """Run ``code`` in a fresh Python; returns its RESULT numbers plus ``wall_s`` and ``tree_peak_mb``."""
    child_env = {**os.environ, "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "10000"), **(env or {})}
    if src:
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), child_env.get("PYTHONPATH", "")) if p)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", PRELUDE + code, *map(str, args)], env=child_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample():
        try:
            import psutil
            process = psutil.Process(proc.pid)
        except Exception:  # psutil missing or the child already gone: no tree figure
            return
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_rss(process))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    results = [line[7:] for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"child failed (exit {proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    numbers = json.loads(results[-1])
    numbers.update(wall_s=wall, tree_peak_mb=peak[0] / 2**20, stdout=out)
    return numbers


def peak_mb(numbers: dict) -> float:
    """The larger of a child's own peak RSS and that of the biggest process it waited for."""
    return max(numbers["rss_mb"], numbers["children_rss_mb"])
