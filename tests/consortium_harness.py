"""A real consortium on 127.0.0.1 for tests: provisioned kits, a coordinator process, site
processes and an admin session, all started as a user would (``fedseg server`` / ``fedseg site``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

from net import free_ports

from fedseg.runtime.flare import admin
from fedseg.runtime.flare.provision import load_project, provision, read_kit

FEDSEG = [sys.executable, "-m", "fedseg.cli"]


def write_project(path: Path, name: str, sites: list[str], ports: list[int], homomorphic: bool = False,
                  **network) -> Path:
    project = {"name": name, "coordinator": {"host": "localhost", "fl_port": ports[0], "admin_port": ports[1]},
               "sites": [{"name": s} for s in sites], "admins": [{"name": "researcher@lab.org"}],
               "network": {"heartbeat_timeout_s": 10.0, "heartbeat_interval_s": 1.0, "dead_site_grace_s": 3.0,
                           **network}, "privacy": {"homomorphic": homomorphic}}
    path.write_text(tomli_w.dumps(project))
    return path


class Consortium:
    def __init__(self, root: Path, sites: dict[str, Path], name: str = "testnet", homomorphic: bool = False,
                 **network):
        self.root, self.sites = root, sites
        self.project_file = write_project(root / f"{name}.toml", name, sorted(sites), free_ports(2), homomorphic,
                                          **network)
        self.kits = provision(load_project(self.project_file), root / f"{name}-kits")
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)

    def _start(self, key: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{key}.log", "ab")
        process = subprocess.Popen([*FEDSEG, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.processes[key] = process
        return process

    def start_server(self) -> subprocess.Popen:
        return self._start("server", ["server", str(self.kits["coordinator"])])

    def start_site(self, site: str, kit: Path | None = None, data: Path | None = None,
                   fault: str | None = None, share_models: str | None = None) -> subprocess.Popen:
        return self._start(site, ["site", str(kit or self.kits[site]), "--data", str(data or self.sites[site]),
                                  *(["--fault", fault] if fault else []),
                                  *(["--share-models", share_models] if share_models else [])])

    def start_all(self, timeout: float = 90) -> None:
        self.start_server()
        for site in self.sites:
            self.start_site(site)
        self.wait_online(set(self.sites), timeout)

    def restore(self) -> None:
        """Start again every site an earlier test killed, and wait until all are online."""
        for site in self.sites:
            if site not in self.processes:
                self.start_site(site)
        self.wait_online(set(self.sites))

    def session(self):
        return admin.connect(read_kit(self.kits["admin"], "admin"), timeout=30)

    def wait_online(self, sites: set[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key, process in self.processes.items():
                if process.poll() is not None:
                    tail = (self.logs / f"{key}.log").read_text()[-3000:]
                    raise RuntimeError(f"{key} exited with code {process.returncode}:\n{tail}")
            try:
                session = self.session()
                try:
                    online = set(admin.consortium(session)["sites"])
                finally:
                    session.close()
                if sites <= online:
                    return
            except Exception:
                pass
            time.sleep(0.2)  # one small admin query per poll; a whole second was pure waiting
        raise TimeoutError(f"sites {sites} not online after {timeout} s; logs in {self.logs}")

    def wait_offline(self, site: str, timeout: float = 90) -> None:
        """Until the coordinator has dropped ``site`` (a killed site stays listed until its heartbeat
        times out; a new process of the same site cannot register before that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            session = self.session()
            try:
                if site not in admin.consortium(session)["sites"]:
                    return
            finally:
                session.close()
            time.sleep(0.2)  # one small admin query per poll; a whole second was pure waiting
        raise TimeoutError(f"{site} still listed after {timeout} s; logs in {self.logs}")

    def restart_site(self, site: str, **options) -> None:
        """Kill ``site``, have the coordinator drop it at once (FLARE's ``remove_client``, instead of
        waiting out the heartbeat timeout and the dead-client sweep: 10-15 s), start it again with
        ``options``. ``test_a_site_killed_and_restarted_rejoins_the_running_job`` still waits for the
        heartbeat timeout itself."""
        self.kill(site)
        session = self.session()
        try:
            session.remove_client(site)
        finally:
            session.close()
        self.wait_offline(site)
        self.start_site(site, **options)
        self.wait_online(set(self.sites))

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        """Kill a participant and every process it started (its job processes too)."""
        process = self.processes.pop(key)
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def job_processes(self, site: str) -> list[int]:
        """Pids of the FLARE job processes the site's daemon started."""
        out = subprocess.run(["pgrep", "-f", f"worker_process -m {self.kits[site]}"], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self) -> None:
        for key in list(self.processes):
            self.kill(key)

    def run_dir(self, experiment: str) -> Path:
        return self.kits["coordinator"] / "runs" / experiment

    def deployment_state(self, experiment: str) -> dict:
        path = self.run_dir(experiment) / "deployment.json"
        return json.loads(path.read_text()) if path.exists() else {}
