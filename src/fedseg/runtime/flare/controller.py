"""The coordinator's side of a deployed run: FLARE's ModelController driving a fedseg compute plan.

Each round: the plan picks sites and their instructions (the same choice as in simulation,
since it depends only on the seed and the experiment's site list); the sites online among them
get the global weights; each update is folded into the plan's aggregation the moment it
arrives and then dropped, so the coordinator holds about two models whatever the number of sites.
A round ends when every targeted site answered or ``round_timeout`` passed; with fewer than
``min_responses`` updates it is run again (up to ``round_retries`` times), else it counts with
the sites that answered. After every round the global model and the plan's state go to the run
directory, so a coordinator killed at any point resumes from the last finished round when its
job runs again (``fedseg server`` requeues it at start). At the end every site scores the final
model on its test cases and the run directory gets the same results and report as a simulation.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from fedseg.files import write_text_atomic
from fedseg.plans.base import Aggregation, ComputePlan
from fedseg.runtime.flare import wire
from fedseg.runtime.flare.apps import CoordinatorApp, load_factory
from fedseg.runtime.flare.job import AUDIT_FILE, DEPLOYMENT_FILE, PROGRESS_FILE
from fedseg.runtime.flare.processes import RUNS_ENV
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import CaseMetrics, Update, Weights


class RoundFailed(RuntimeError):
    pass


class PlanController(ModelController):
    def __init__(self, experiment: str, app_factory: str = "fedseg.deployment:coordinator_app",
                 resume: bool = False, task_check_period: float = 0.05):
        super().__init__(persistor_id="", ignore_result_error=True, task_check_period=task_check_period)
        self.experiment = experiment
        self.app_factory = app_factory
        self.resume = resume

    def run(self) -> None:
        job_id, run_dir = self.fl_ctx.get_job_id(), None
        try:
            app: CoordinatorApp = load_factory(self.app_factory)(self.experiment)
            candidate = self._run_dir = RunDirectory(self._runs_root() / app.name)
            resume = self._resuming(candidate, job_id)
            app.prepare(candidate, resume)  # refuses a directory that holds another run
            run_dir = candidate  # from here on this job owns the run directory
            self._set_state(run_dir, job_id, "running", rounds=app.rounds)
            plan, weights, start = app.compute_plan(), app.initial_weights(), 0
            if resume and (last := run_dir.last_round()) is not None:
                done, weights, plan_state = last
                plan.load_state_dict(plan_state)
                start = done + 1
                self.info(f"resuming run '{app.name}' after round {done}")
            run_dir.drop_metrics_after(start - 1)
            for round in range(start, app.rounds):
                if self.abort_signal.triggered:
                    return
                weights = self._round(app, plan, run_dir, round, weights)
            app.finish(run_dir, self._evaluate(app, weights), resumed=resume)
            self._set_state(run_dir, job_id, "finished")
        except Exception as exc:
            self._set_state(run_dir, job_id, "failed", error=str(exc))
            self.panic(f"run stopped: {exc}")
        finally:
            self._copy_to_job_workspace(run_dir)

    # -- one round -------------------------------------------------------------------------

    def _round(self, app: CoordinatorApp, plan: ComputePlan, run_dir: RunDirectory, round: int,
               weights: Weights) -> Weights:
        started = time.perf_counter()
        chosen = plan.configure_train(round, list(app.sites))
        for attempt in range(app.policy.round_retries + 1):
            configs = {site: config for site, config in chosen.items() if site in self._online()}
            aggregation = plan.aggregation(round, weights)
            received = self._train(round, weights, configs, aggregation, app.policy.round_timeout)
            if app.policy.accepts(len(chosen), len(received)):
                break
            self.warning(f"round {round}: {len(received)} of {len(chosen)} site(s) answered, "
                         f"{app.policy.needed(len(chosen))} needed; running the round again "
                         f"({attempt + 1} of {app.policy.round_retries})")
            self._wait_for(set(chosen), app.policy.round_timeout)
        else:
            raise RoundFailed(f"round {round}: fewer than {app.policy.needed(len(chosen))} of the sites "
                              f"{sorted(chosen)} answered within {app.policy.round_timeout} s, "
                              f"{app.policy.round_retries + 1} times; check that the sites are running "
                              "('fedseg status'), then submit again with --resume")
        weights = aggregation.result()
        records = self._records(round, received, plan.round_summary(), sorted(set(chosen) - set(received)))
        if app.validate_global:
            self._validate(weights, records, app.policy.round_timeout)
        if records:
            records[0]["round_seconds"] = time.perf_counter() - started
        run_dir.append_metrics(records)  # metrics first: a resume drops lines past the last checkpoint
        run_dir.save_round(round, weights, plan.state_dict())
        self._set_state(run_dir, self.fl_ctx.get_job_id(), "running", rounds=app.rounds, round=round, last=records)
        self.info(f"round {round} done with {sorted(received)}")
        return weights

    def _train(self, round: int, weights: Weights, configs: dict, aggregation: Aggregation,
               timeout: int) -> dict[str, dict[str, Any]]:
        """Send the round's task; fold each update into ``aggregation`` as it arrives. Returns
        each answering site's metrics (weights are not kept)."""
        received: dict[str, dict[str, Any]] = {}
        if not configs:
            return received

        def on_update(update: Update, site: str) -> None:
            aggregation.add(site, update)
            received[site] = {"n_samples": update.n_samples, **update.metrics}

        meta = {"configs": {site: wire.round_config_to_wire(c) for site, c in configs.items()}}
        self._broadcast("train", wire.weights_model(weights, round, meta), list(configs), timeout,
                        lambda model, site: on_update(wire.update_from_wire(model), site))
        return received

    def _validate(self, weights: Weights, records: list[dict[str, Any]], timeout: int) -> None:
        """The new global model on each trained site's validation cases, as in simulation."""
        by_site = {record["site"]: record for record in records}

        def on_result(model: FLModel, site: str) -> None:
            by_site[site].update(model.metrics or {})

        self._broadcast("validate", wire.weights_model(weights), list(by_site), timeout, on_result)

    def _evaluate(self, app: CoordinatorApp, weights: Weights) -> dict[str, list[CaseMetrics]]:
        scores: dict[str, list[CaseMetrics]] = {}

        def on_result(model: FLModel, site: str) -> None:
            scores[site] = wire.cases_from_wire(model.meta["cases"])

        online = [site for site in app.sites if site in self._online()]
        self._broadcast("evaluate", wire.weights_model(weights), online, app.policy.round_timeout, on_result)
        missing = sorted(set(app.sites) - set(scores))
        if missing:
            self.warning(f"no test scores from {missing}: they were offline or failed; the report leaves them out")
        return scores

    def _broadcast(self, task: str, data: FLModel, targets: list[str], timeout: int, handle) -> None:
        """Send ``task`` to ``targets`` and return once all answered or ``timeout`` passed. Each
        result goes to ``handle(model, site)`` under a lock; FLARE drops the message afterwards."""
        if not targets:
            return
        lock, answered, all_in = threading.Lock(), set(), threading.Event()

        def callback(model: FLModel) -> bool:
            site = model.meta.get("client_name")
            with lock:
                if site not in targets or site in answered:
                    return False
                self._audit(task, site, model)
                try:
                    handle(model, site)
                except Exception as exc:  # a malformed update must not stop the run
                    self.warning(f"{task} result from {site} rejected: {exc}")
                    return False
                answered.add(site)
                if len(answered) == len(targets):
                    all_in.set()
            return True

        self.send_model(task_name=task, data=data, targets=targets, timeout=timeout, callback=callback)
        while not all_in.is_set() and self.get_num_standing_tasks():
            if self.abort_signal.triggered:
                raise RoundFailed("the job was aborted")
            all_in.wait(self._task_check_period)

    # -- helpers ---------------------------------------------------------------------------

    def _audit(self, task: str, site: str, model: FLModel) -> None:
        """Append what a site sent to ``received.jsonl``: parameter names, dtypes and shapes
        (not their values), metrics and metadata in full, so anyone can check that nothing but
        weights and scores reached the coordinator. (``props`` is the task's own metadata,
        which FLARE copies onto every result; ``client_name`` is added by FLARE.)"""
        params = {name: [str(value.dtype), list(value.shape)] for name, value in (model.params or {}).items()}
        meta = {key: value for key, value in model.meta.items() if key != "props"}
        line = json.dumps({"task": task, "site": site, "round": model.current_round, "params": params,
                           "metrics": model.metrics, "meta": meta}, default=repr)
        with open(self._run_dir.root / AUDIT_FILE, "a") as audit:
            audit.write(line + "\n")

    def _records(self, round: int, received: dict[str, dict[str, Any]], summary: dict[str, Any],
                 missing: list[str]) -> list[dict[str, Any]]:
        weights = summary.get("aggregation_weights", {})
        records = [{"round": round, "site": site, **metrics,
                    **({"aggregation_weight": weights[site]} if site in weights else {})}
                   for site, metrics in sorted(received.items())]
        if records and summary:
            records[0]["plan"] = summary
        if records and missing:
            records[0]["missing_sites"] = missing
        return records

    def _online(self) -> set[str]:
        """Sites connected and not found dead by FLARE (a site whose job process died stays
        connected, but it cannot train in this job any more)."""
        return {client.name for client in self.engine.get_clients()
                if self.get_client_disconnect_time(client.name) is None}

    def _wait_for(self, sites: set[str], timeout: int) -> None:
        """Give sites that dropped out up to ``timeout`` seconds to come back."""
        deadline = time.monotonic() + (timeout or 60)
        while not sites <= self._online() and time.monotonic() < deadline and not self.abort_signal.triggered:
            time.sleep(1.0)

    def _runs_root(self) -> Path:
        return Path(os.environ.get(RUNS_ENV) or Path(self.engine.get_workspace().get_root_dir()) / "runs")

    def _resuming(self, run_dir: RunDirectory, job_id: str) -> bool:
        """Resume when asked to, or when this very job was interrupted (coordinator restart)."""
        state_file = run_dir.root / DEPLOYMENT_FILE
        if state_file.exists():
            state = json.loads(state_file.read_text())
            return self.resume or state.get("job_id") == job_id
        return False

    def _set_state(self, run_dir: RunDirectory | None, job_id: str, state: str, **details: Any) -> None:
        """Record the run's state in the run directory this job owns (for resume; None when the
        job failed before owning one) and in the job's folder (read by 'fedseg status')."""
        record = json.dumps({"job_id": job_id, "state": state, **details}, indent=2, default=str) + "\n"
        job_folder = Path(self.get_run_dir())
        targets = [job_folder / PROGRESS_FILE]
        targets.append(run_dir.root / DEPLOYMENT_FILE if run_dir else job_folder / "fedseg_run" / DEPLOYMENT_FILE)
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, record)

    def _copy_to_job_workspace(self, run_dir: RunDirectory | None) -> None:
        """The run directory also goes into the job's workspace, which 'download_job' returns."""
        if run_dir is not None and run_dir.root.exists():
            target = Path(self.get_run_dir()) / "fedseg_run"
            shutil.copytree(run_dir.root, target, dirs_exist_ok=True)
