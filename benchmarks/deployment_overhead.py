"""What does a deployed round cost on top of a simulated one, and how much memory does the
coordinator need as sites are added?

A real consortium runs on 127.0.0.1 (``fedseg server`` and ``fedseg site`` processes, mutual TLS,
kits from ``fedseg provision``). To time the runtime and not the training, every site runs an
"echo" trainer: it returns the weights it received (near-zero training). The same FedAvg rounds
over the same echo sites are run in the in-process simulation, and the difference per round is
the deployment's overhead: serialisation, TLS, FLARE's task polling, streaming aggregation,
checkpoints. The coordinator's peak memory is the peak resident size of its job process.

The script prints ratios and figures; it never asserts on time. A second 8M run per site count
has the sites answer 1.5 s apart, to tell memory held for concurrent arrivals from memory that
accumulates per site.

On 2 shared CPU cores (2026-11-26, every process on the same 2 cores): overhead per round 0.21 s
(tiny model, 2 sites) and 1.15-1.33 s (8.2M parameters, 2 sites); with 8 sites 0.6-1.0 s and
6.4-7.2 s, mostly the sites' own serialisation competing for the 2 cores. Coordinator peak memory
over the tiny run: about 20 model sizes with 2 sites and 40-46 with 8, staggered answers alike
(FLARE's per-site transport buffers; see README, Benchmarks).

Run:  .venv/bin/python benchmarks/deployment_overhead.py [--quick] [--rounds N] [--sites 2 4 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's local-consortium helper
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from fedseg.deployment import Coordinator, parse_text  # noqa: E402
from fedseg.experiment import parse_experiment  # noqa: E402
from fedseg.runtime.flare import admin  # noqa: E402
from fedseg.runtime.flare.job import write_job  # noqa: E402
from fedseg.runtime.flare.provision import read_kit  # noqa: E402
from fedseg.runtime.run_directory import RunDirectory  # noqa: E402
from fedseg.runtime.simulation import SimulationRuntime  # noqa: E402
from fedseg.simulate import initial_weights  # noqa: E402
from fedseg.types import RoundConfig, Update, Weights  # noqa: E402

MODELS = {"tiny": {"channels": [4, 8, 16], "num_res_units": 1},
          "8M": {"channels": [36, 72, 144, 288, 576], "num_res_units": 2}}


class EchoSite:
    """Returns the weights it gets: a site whose training takes no time."""

    def train(self, weights: Weights, config: RoundConfig) -> Update:
        return Update(weights=weights, n_samples=1, metrics={"train_loss": 0.0})

    def evaluate(self, weights: Weights, split: str = "test") -> list:
        return []


class StaggeredEchoSite(EchoSite):
    """An echo site that answers ``delay`` seconds late, so updates reach the coordinator one
    after another (as when sites train at different speeds) rather than all at once."""

    def __init__(self, delay: float):
        self.delay = delay

    def train(self, weights: Weights, config: RoundConfig) -> Update:
        time.sleep(self.delay)
        return super().train(weights, config)


def echo_site(experiment: str, site: str, data: Path, state_dir: Path) -> EchoSite:
    return EchoSite()


def staggered_echo_site(experiment: str, site: str, data: Path, state_dir: Path) -> EchoSite:
    return StaggeredEchoSite(delay=1.5 * int(site.removeprefix("site")))


class TimingCoordinator(Coordinator):
    def finish(self, run_dir, test_cases, resumed) -> None:  # nothing to evaluate: echo sites
        return None


def timing_coordinator(experiment: str) -> TimingCoordinator:
    return TimingCoordinator(parse_text(experiment))


def experiment(model: str, sites: list[str], rounds: int, suffix: str = ""):
    return parse_experiment({
        "name": f"overhead-{model}-{len(sites)}{suffix}", "seed": 0,
        "task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2},
        "sites": [{"name": s, "path": "/nonexistent"} for s in sites],
        "model": {"name": "UNet", **MODELS[model]},
        "federation": {"rounds": rounds, "validate_global": False},
        "deployment": {"round_timeout": 600},
    })


def simulated_round_seconds(exp, workdir: Path) -> float:
    runtime = SimulationRuntime(exp.compute_plan(), {s.name: EchoSite() for s in exp.sites},
                                RunDirectory(workdir / f"sim-{exp.name}"), validate_global=False)
    runtime.run_dir.create()
    started = time.perf_counter()
    runtime.run(initial_weights(exp), exp.runtime_rounds)
    return (time.perf_counter() - started) / exp.runtime_rounds


def peak_rss_mb(pattern: str, stop: threading.Event, found: list[float]) -> None:
    """Poll the peak resident size (VmHWM) of the process whose command line matches."""
    peak = 0.0
    while not stop.is_set():
        pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
            except OSError:
                pass
        time.sleep(0.2)
    found.append(peak)


def deployed(consortium, exp, workdir: Path, site_factory: str = "echo_site") -> tuple[float, float, int]:
    """Median seconds per round (after the first), the coordinator job's peak RSS, params."""
    kit = read_kit(consortium.kits["admin"], "admin")
    session = admin.connect(kit, timeout=30)
    job = write_job(workdir / f"job-{exp.name}", exp.name, exp.to_toml(), resume=False, min_sites=len(exp.sites),
                    network=kit.network,
                    coordinator_factory="benchmarks.deployment_overhead:timing_coordinator",
                    site_factory=f"benchmarks.deployment_overhead:{site_factory}")
    stop, peak = threading.Event(), []
    watcher = threading.Thread(target=peak_rss_mb, args=(f"runner_process.*{consortium.kits['coordinator']}", stop,
                                                         peak))
    watcher.start()
    try:
        job_id = admin.submit(session, job)
        state, session = admin.wait(session, job_id, poll_s=1.0)
    finally:
        stop.set()
        watcher.join()
        session.close()
    run_dir = RunDirectory(consortium.run_dir(exp.name))
    if state.status != "FINISHED:COMPLETED":
        raise RuntimeError(f"job ended as {state.status}; logs in {consortium.logs}")
    seconds = [m["round_seconds"] for m in run_dir.read_metrics() if "round_seconds" in m]
    params = sum(int(np.prod(w.shape)) for w in run_dir.last_round()[1].values())
    return statistics.median(seconds[1:] or seconds), peak[0], params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 sites, 2 rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    from consortium_harness import Consortium

    models = ["tiny"] if args.quick else ["tiny", "8M"]
    site_counts = [2] if args.quick else args.sites
    rounds = 2 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for n_sites in site_counts:
            names = [f"site{i}" for i in range(n_sites)]
            (workdir / f"net{n_sites}").mkdir()
            consortium = Consortium(workdir / f"net{n_sites}", {name: workdir for name in names},
                                    name=f"bench{n_sites}")
            consortium.start_all(timeout=300)
            try:
                baseline = None
                for model in models:
                    exp = experiment(model, names, rounds)
                    simulated = simulated_round_seconds(exp, workdir)
                    per_round, peak, params = deployed(consortium, exp, workdir)
                    baseline = baseline or peak  # the tiny model: the job process's own footprint
                    size_mb = params * 4 / 2**20
                    print(f"{model:>5} ({params / 1e6:.2f}M params), {n_sites} sites: deployed {per_round:.3f} s/round, "
                          f"simulated {simulated:.3f} s/round, overhead {per_round - simulated:.3f} s/round "
                          f"(ratio {per_round / simulated:.1f}); coordinator peak RSS {peak:.0f} MB, "
                          f"{peak - baseline:.0f} MB over the tiny run = {(peak - baseline) / size_mb:.1f} x model size",
                          flush=True)
                    if model != "tiny":
                        exp = experiment(model, names, rounds, suffix="-staggered")
                        _, peak, _ = deployed(consortium, exp, workdir, "staggered_echo_site")
                        print(f"{model:>5}, {n_sites} sites answering 1.5 s apart: coordinator peak RSS {peak:.0f} MB, "
                              f"{peak - baseline:.0f} MB over the tiny run = {(peak - baseline) / size_mb:.1f} x model size",
                              flush=True)
            finally:
                consortium.stop()


if __name__ == "__main__":
    main()
