"""What does a deployed round cost on top of a simulated one, and how much memory does the
coordinator need as sites are added?

A real consortium runs on 127.0.0.1 (a coordinator and N site processes, mutual TLS, kits from
``fedseg provision``). To time the runtime and not the training, every site runs an "echo"
trainer: it returns the weights it received (near-zero training) and scores two fake test cases.
The same FedAvg rounds over the same echo trainers go through the round engine in-process
(``simulation_engine``), and the difference of the engine's own ``round_seconds`` (median of
rounds 2..N, both sides) is the deployment's overhead per round: serialisation, TLS, FLARE's task
polling and message handling. The coordinator's peak memory is the peak resident size (VmHWM)
of its job process at the end of the last round, read by the process itself.

Jobs name classes only, and each kit admits only the classes its allow-list names, so the echo
sites and the timing coordinator are subclasses of ``fedseg.deployment``'s ``Site`` and
``Coordinator`` defined here, and the processes are started the way ``fedseg server`` and
``fedseg site`` start them (``runtime.flare.processes``: fedseg's kit settings and FLARE's own
server and site processes) except that the kits admit this module's classes instead of fedseg's;
``PYTHONPATH`` carries the repository root so FLARE's job processes can import this module.

The script prints ratios and figures; it never asserts on time. A second 8M run has the sites answer
1.5 s apart, to tell memory held for concurrent arrivals from memory that accumulates per site.

2026-11-26, 2 shared cores, round engine with its checks and norm guard: overhead per round
0.14-0.17 s (tiny, 2 sites) and 1.20 s (8.2M, 2 sites; 2.05 s at load 16-22); 4 sites 0.24 and
2.05 s, 8 sites 0.45 and 5.2 s (mostly the sites' own serialisation). Coordinator peak over the
tiny run: about 24, 30 and 40 model sizes with 2, 4 and 8 sites, staggered alike; before the
round engine 20 and 40-46 with 2 and 8 (peak polled from outside over the whole job).

2026-11-27, same 2 shared cores (load average 10-21 from other work), ``--rounds 3 --sites 8``,
before and after back to back: before, 26.0 model sizes (28.3 and 31.4 earlier that day; 26.6
staggered), 7.5 s per deployed round (4.8-5.5 earlier): FLARE serialised each task once per site
and took every update into memory while decoding it, all at once, and the freed buffers stayed in
glibc's thread arenas. After (``runtime.flare.transfer``: the model offered once per task through
FLARE's download service, 2 MB pieces made once; updates fetched 4 at a time into unlinked files
the engine reads back on use; FLARE's ``cleanup_memory`` after each task; a fixed glibc mmap
threshold): 8.5 model sizes (7.0 staggered; 9.1/8.8 in another run, 12.7/13.4 without the
threshold), of which the engine's own is about 4; 9.0-13.0 s per round (simulated 1.7-4.7 s in
those runs, 1.0 s in the baseline's): updates come in 4 at a time and are re-read at each check.

Run:  .venv/bin/python benchmarks/deployment_overhead.py [--quick] [--rounds N] [--sites 2 4 8] [--no-staggered] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's local-consortium helper
# FLARE's job processes import this module by name (the job names its classes): they need the repo root.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from consortium_harness import Consortium  # noqa: E402

from fedseg.deployment import Coordinator, Site, parse_text  # noqa: E402
from fedseg.experiment import parse_experiment  # noqa: E402
from fedseg.runtime.flare import admin, processes  # noqa: E402
from fedseg.runtime.flare.job import Components, write_job  # noqa: E402
from fedseg.runtime.flare.provision import read_kit  # noqa: E402
from fedseg.runtime.run_directory import RunDirectory  # noqa: E402
from fedseg.runtime.simulation import simulation_engine  # noqa: E402
from fedseg.runtime.site_app import SiteApp  # noqa: E402
from fedseg.study import initial_weights  # noqa: E402
from fedseg.types import CaseMetrics, RoundConfig, Update, Weights  # noqa: E402

MODULE = "benchmarks.deployment_overhead"
"""This module's name in FLARE's job processes (run as a script it is ``__main__``)."""
MODELS = {"tiny": {"channels": [4, 8, 16], "num_res_units": 1},
          "8M": {"channels": [36, 72, 144, 288, 576], "num_res_units": 2}}
PEAK_FILE = "peak_rss.jsonl"  # in the run directory: the job process's peak and current RSS at each step


class EchoTrainer:
    """A site trainer (``runtime.site_app.Trainer``) whose training takes no time: it returns the
    weights it gets, from one declared training case, and scores two test cases perfectly."""

    def __init__(self, template: Weights, delay: float = 0.0):
        self.template, self.delay = template, delay

    def case_counts(self) -> dict[str, int]:
        return {"train": 1, "val": 0, "test": 2}

    def weights(self) -> Weights:
        return self.template

    def train(self, weights: Weights, config: RoundConfig) -> Update:
        time.sleep(self.delay)
        return Update(weights=weights, n_samples=1, metrics={"train_loss": 0.0})

    def evaluate(self, weights: Weights, split: str = "test") -> list[CaseMetrics]:
        if split != "test":
            return []
        return [CaseMetrics(f"echo-{i}", {"lesion": 1.0}, {"lesion": 0.0}, {"lesion": 1.0}) for i in range(2)]


class EchoSite(Site):
    """fedseg's site executor with an echo trainer in place of training on data."""

    delay_per_site = 0.0

    def make_site_app(self, site: str, data: Path, state_dir: Path, fault: str | None) -> SiteApp:
        delay = self.delay_per_site * int(site.removeprefix("site"))
        return SiteApp(site, EchoTrainer(initial_weights(parse_text(self.experiment)), delay), pseudonyms=True)


class StaggeredEchoSite(EchoSite):
    """An echo site that answers 1.5 s x its number late, so updates reach the coordinator one
    after another (as when sites train at different speeds) rather than all at once."""

    delay_per_site = 1.5


class TimingCoordinator(Coordinator):
    """fedseg's coordinator noting its job process's peak and current RSS at each step of the rounds."""

    def set_state(self, state: str, **details) -> None:
        super().set_state(state, **details)
        if self.run_dir is not None and ("round" in details or state == "running"):  # round: the last finished
            status = Path("/proc/self/status").read_text().splitlines()
            peak, now = (next(int(line.split()[1]) / 1024 for line in status if line.startswith(key))
                         for key in ("VmHWM:", "VmRSS:"))
            with open(self.run_dir.root / PEAK_FILE, "a") as out:
                out.write(json.dumps({"round": details.get("round"), "peak_rss_mb": peak, "rss_mb": now}) + "\n")


def components(site: type[Site]) -> Components:
    return Components(controller=f"{MODULE}.{TimingCoordinator.__name__}", executor=f"{MODULE}.{site.__name__}")


class BenchmarkConsortium(Consortium):
    """The test suite's local consortium, but started from FLARE's own processes with kits that
    admit this module's classes: ``fedseg server``/``site`` admit fedseg's own classes only."""

    def _spawn(self, key: str, command: list[str], environment: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{key}.log", "ab")
        self.processes[key] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                               env={**environment, "PYTHONUNBUFFERED": "1"})
        return self.processes[key]

    def start_server(self) -> subprocess.Popen:
        kit = read_kit(self.kits["coordinator"], "server")
        processes.configure_server(kit, components(EchoSite).controller)
        return self._spawn("server", processes.server_command(kit), processes.server_environment(kit, None))

    def start_site(self, site: str, kit: Path | None = None, data: Path | None = None,
                   fault: str | None = None) -> subprocess.Popen:
        kit = read_kit(kit or self.kits[site], "site")
        processes.configure_site(kit, MODULE)  # a prefix: the echo site classes of this module
        return self._spawn(site, processes.site_command(kit), processes.site_environment(data or self.sites[site]))


def experiment(model: str, sites: list[str], rounds: int, suffix: str = ""):
    return parse_experiment({
        "name": f"overhead-{model}-{len(sites)}{suffix}", "seed": 0,
        "task": {"labels": {"background": 0, "lesion": 1}, "spatial_dims": 2},
        "sites": [{"name": s, "path": "/nonexistent"} for s in sites],
        "model": {"name": "UNet", **MODELS[model]},
        "federation": {"rounds": rounds, "validate_global": False},
        "deployment": {"round_timeout": 600},
    })


def round_seconds(run_dir: RunDirectory) -> float:
    """Median seconds per round after the first (the first also has the sites join)."""
    seconds = [m["round_seconds"] for m in run_dir.read_metrics() if "round_seconds" in m]
    return statistics.median(seconds[1:] or seconds)


def simulated_round_seconds(exp, workdir: Path) -> float:
    """The same rounds through the round engine with in-process echo sites."""
    template = initial_weights(exp)
    apps = {s.name: SiteApp(s.name, EchoTrainer(template)) for s in exp.sites}
    run_dir = RunDirectory(workdir / f"sim-{exp.name}")
    run_dir.create()
    plan = exp.compute_plan()
    simulation_engine(plan, apps, run_dir, validate_global=False, guard=exp.guard).run(template, plan.total_rounds)
    return round_seconds(run_dir)


def deployed(consortium, exp, workdir: Path, site: type[Site] = EchoSite) -> tuple[float, float, int]:
    """Median seconds per round (after the first), the coordinator job's peak RSS over the rounds, params."""
    kit = read_kit(consortium.kits["admin"], "admin")
    session = admin.connect(kit, timeout=30)
    job = write_job(workdir / f"job-{exp.name}", exp.name, exp.to_toml(), resume=False, min_sites=len(exp.sites),
                    network=kit.network, components=components(site))
    try:
        state, session = admin.wait(session, admin.submit(session, job), poll_s=1.0)
    finally:
        session.close()
    run_dir = RunDirectory(consortium.run_dir(exp.name))
    if state.status != "FINISHED:COMPLETED":
        errors = [line for kit in consortium.kits.values() for log in sorted(Path(kit).rglob("error_log.txt"))
                  for line in log.read_text(errors="replace").splitlines()[-5:]]
        raise RuntimeError(f"job ended as {state.status}; last errors:\n" + "\n".join(errors) +
                           f"\nlogs in {consortium.logs} (keep them with --keep DIR)")
    notes = [json.loads(line) for line in (run_dir.root / PEAK_FILE).read_text().splitlines()]
    peaks = [note["peak_rss_mb"] for note in notes if note["round"] is not None]
    params = sum(int(np.prod(w.shape)) for w in run_dir.last_round()[1].values())
    return round_seconds(run_dir), max(peaks), params


def memory(peak: float, baseline: float, size_mb: float) -> str:
    return (f"coordinator peak RSS {peak:.0f} MB, {peak - baseline:.0f} MB over the tiny run = "
            f"{(peak - baseline) / size_mb:.1f} x model size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 sites, 2 rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--no-staggered", action="store_true", help="skip the second 8M run (sites 1.5 s apart)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR (a new folder) and keep it: kits, logs, run directories")
    args = parser.parse_args()
    models = ["tiny"] if args.quick else ["tiny", "8M"]
    site_counts = [2] if args.quick else args.sites
    rounds = 2 if args.quick else args.rounds
    if args.keep:
        args.keep.mkdir(parents=True)  # refuses an existing folder: kits must not be provisioned over old ones
    with contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp).resolve()
        for n_sites in site_counts:
            names = [f"site{i}" for i in range(n_sites)]
            (workdir / f"net{n_sites}").mkdir()
            consortium = BenchmarkConsortium(workdir / f"net{n_sites}", {name: workdir for name in names},
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
                    print(f"{model:>5} ({params / 1e6:.2f}M params), {n_sites} sites: deployed {per_round:.3f} "
                          f"s/round, simulated {simulated:.3f} s/round, overhead {per_round - simulated:.3f} s/round "
                          f"(ratio {per_round / simulated:.1f}); {memory(peak, baseline, size_mb)}", flush=True)
                    if model != "tiny" and not args.no_staggered:
                        exp = experiment(model, names, rounds, suffix="-staggered")
                        _, peak, _ = deployed(consortium, exp, workdir, StaggeredEchoSite)
                        print(f"{model:>5}, {n_sites} sites answering 1.5 s apart: {memory(peak, baseline, size_mb)}",
                              flush=True)
            finally:
                consortium.stop()


if __name__ == "__main__":
    main()
