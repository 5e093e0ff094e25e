"""The coordinator's side of a deployed run: FLARE's ModelController as the round engine's dispatcher.

The round engine (``runtime.engine``) runs the rounds exactly as in simulation; this class only
moves work to the FLARE sites and replies back. Each task goes to the targeted sites that are
online, its model offered once for all of them (``transfer``); each reply is decoded from the wire
as it arrives (an update fetched from its site into an unlinked file of the job's workspace) and
handed to the engine, which checks it and folds it in; a task ends when every targeted site
answered or its timeout passed. What the coordinator builds from the experiment
(plan, engine, run directory, results) is the job of a subclass in the layer above
(``fedseg.deployment``): the job names that subclass, FLARE admits it through the kit's class
allow-list, and the job carries no other name of anything to import or call.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nvflare.apis.client import Client
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController
from nvflare.fuel.utils.memory_utils import cleanup_memory

from fedseg.files import write_text_atomic
from fedseg.runtime.engine import Failed, ReplyHandler, RunStopped
from fedseg.runtime.flare import transfer, wire
from fedseg.runtime.flare.job import DEPLOYMENT_FILE, PROGRESS_FILE
from fedseg.runtime.flare.processes import RUNS_ENV
from fedseg.runtime.run_directory import RunDirectory
from fedseg.types import Weights

INCOMING = "incoming"
"""The folder of the job's workspace where updates are fetched to (into unlinked files)."""
FETCHERS = 4
"""Updates fetched at the same time: each holds a reply (``transfer.CHUNK_BYTES``) while it comes in."""
SITE_SYNC_INTERVAL_S = 1.0
"""How often the job process asks the coordinator's main process for its sites' tokens (``sync_sites``)."""


class FlareController(ModelController):
    retries_help = True

    def __init__(self, experiment: str, resume: bool = False):
        # the job's arguments are the submitter's: exactly these two, of these types
        if not isinstance(experiment, str) or not isinstance(resume, bool):
            raise TypeError("the job's arguments must be the experiment text and resume = true/false")
        super().__init__(persistor_id="", ignore_result_error=True, task_check_period=0.05)
        self.experiment = experiment
        self.resume = resume
        self.run_dir: RunDirectory | None = None
        """The run directory this job owns, once ``run_study`` has claimed it."""
        self.fold: int | None = None
        """The federation (fold of ``folds = k``) the tasks being sent belong to; None: the only one."""

    def run_study(self) -> None:
        """Build the study from ``self.experiment`` and run it with ``self`` as the dispatcher."""
        raise NotImplementedError("the job must name fedseg.deployment's coordinator")

    def run(self) -> None:
        try:
            self.run_study()
            self.set_state("finished")
        except Exception as exc:
            self.set_state("failed", error=str(exc))
            self.panic(f"run stopped: {exc}")
        finally:
            if self.run_dir is not None and self.run_dir.root.exists():  # 'download_job' returns the workspace
                shutil.copytree(self.run_dir.root, Path(self.get_run_dir()) / "fedseg_run", dirs_exist_ok=True)

    # -- the dispatcher ----------------------------------------------------------------------------
    def available(self) -> set[str]:
        """Sites connected and not found dead by FLARE (a site whose job process died stays
        connected, but it cannot work in this job any more; one restarted whole is given the job
        again by the coordinator, ``server_process``, and is back once its job process asks for work)."""
        self.sync_sites()
        return {client.name for client in self.engine.get_clients()
                if self.get_client_disconnect_time(client.name) is None}

    _sites_synced = float("-inf")
    _job_sites: frozenset[str] | None = None

    def sync_sites(self) -> None:
        """Take the job's sites' current tokens from the coordinator's main process, at most once
        a second: a site restarted whole comes back under a new token, and FLARE's job process
        learnt the tokens once, at its start (it refuses a request under a token it does not
        know). Only the sites the job started with are taken."""
        now = time.monotonic()
        fetch = getattr(self.engine, "_retrieve_clients_data", None)  # FLARE's own request (ServerEngine)
        manager = getattr(self.engine, "client_manager", None)
        if now - self._sites_synced < SITE_SYNC_INTERVAL_S or fetch is None or manager is None:
            return
        self._sites_synced = now
        if self._job_sites is None:
            self._job_sites = frozenset(client.name for client in manager.clients.values())
        clients = fetch(self.fl_ctx.get_job_id())
        if (isinstance(clients, dict) and clients
                and all(isinstance(c, Client) and token == c.token and c.name in self._job_sites
                        for token, c in clients.items())):
            manager.set_clients(dict(clients))

    def dispatch(self, task: str, weights: Weights | None, payloads: dict[str, Any], on_reply: ReplyHandler,
                 timeout: int) -> None:
        """Send ``task`` to the targets online, the model offered once for all of them
        (``transfer.offer``); each reply is taken in (an update fetched into a file, ``FETCHERS`` at a
        time) and handed to the engine in this thread, in the order the replies arrived."""
        targets = [site for site in payloads if site in self.available()]
        if not targets:
            return
        meta = wire.payloads_to_wire(task, {site: payloads[site] for site in targets})
        if self.fold is not None:
            meta[wire.FOLD] = self.fold
        params, extra = wire.model_params(weights)
        offered, bound = None, transfer.update_bound(params)
        arrived: queue.Queue[tuple[str, Future]] = queue.Queue()
        lock, answered = threading.Lock(), set()
        with ThreadPoolExecutor(FETCHERS, thread_name_prefix="fedseg-fetch") as fetchers:

            def callback(model: FLModel) -> bool:  # FLARE's message thread: start taking the reply in, return
                site = model.meta.get("client_name")
                with lock:
                    if site not in targets or site in answered:
                        return False
                    answered.add(site)
                arrived.put((site, fetchers.submit(self._decode, task, site, model, bound)))
                return True

            try:
                if params:
                    offered, meta[transfer.REF] = transfer.offer(self.engine.get_cell(), params, len(targets),
                                                                idle_s=timeout or transfer.UPLOAD_IDLE_S)
                data = FLModel(params_type=ParamsType.FULL, params={} if offered else params, meta={**meta, **extra})
                self.send_model(task_name=task, data=data, targets=targets, timeout=timeout, callback=callback)
                for _ in targets:  # each reply in the order it arrived, once it is in
                    while not self.abort_signal.triggered:
                        standing = self.get_num_standing_tasks()  # first: a reply is queued before its task ends
                        try:
                            site, taken = arrived.get(timeout=self._task_check_period)
                            break
                        except queue.Empty:
                            if not standing and arrived.empty():
                                return
                            self.sync_sites()  # a target restarted whole answers under a new token
                    else:
                        raise RunStopped("the job was aborted")
                    reply, reply_meta = taken.result()
                    try:
                        on_reply(site, reply, reply_meta)
                    except Exception as exc:  # a bug must not end the round silently
                        self.error(f"{task} reply from {site} could not be handled: {exc!r}")
            finally:
                if offered is not None:
                    offered.delete_transaction()
                    cleanup_memory()  # FLARE's: gc, then glibc's malloc_trim gives the transfers' buffers back

    def _decode(self, task: str, site: str, model: FLModel, bound: tuple[int, int]) -> tuple[Any, dict]:
        """One reply and its meta, an offered update fetched into a file of the job's workspace first."""
        meta = model.meta if isinstance(model.meta, dict) else {}
        try:
            if task == "train" and transfer.REF in meta:
                source = transfer.site_cell(site, self.fl_ctx.get_job_id())
                model.params = transfer.receive(self.engine.get_cell(), source, meta[transfer.REF],
                                                Path(self.get_run_dir()) / INCOMING, bound, self.abort_signal)
            reply = wire.reply_from_wire(task, model)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            reply = Failed(f"the reply did not decode: {exc}")
        except Exception as exc:  # the transport's own failures
            reply = Failed(f"the reply could not be received: {exc!r}")
        return reply, {k: v for k, v in meta.items() if k not in ("props", transfer.REF)}

    def wait_for(self, sites: set[str], timeout: int) -> None:
        """Give sites that dropped out up to ``timeout`` seconds to come back (FLARE has no event for it)."""
        deadline = time.monotonic() + (timeout or 60)
        while not sites <= self.available() and time.monotonic() < deadline and not self.abort_signal.triggered:
            time.sleep(0.25)  # a local set check: a returning site is noticed within a quarter second

    # -- the run directory -------------------------------------------------------------------------
    def kit(self) -> Path:
        """The coordinator's kit (FLARE's workspace root): its keys and default runs folder."""
        return Path(self.engine.get_workspace().get_root_dir())

    def runs_root(self) -> Path:
        return Path(os.environ.get(RUNS_ENV) or self.kit() / "runs")

    def resuming(self, run_dir: RunDirectory) -> bool:
        """Resume when asked to, or when this very job was interrupted (coordinator restart)."""
        state_file = run_dir.root / DEPLOYMENT_FILE
        if state_file.exists():
            try:
                state = json.loads(state_file.read_text())
            except (ValueError, UnicodeDecodeError):
                state = {}
            return self.resume or state.get("job_id") == self.fl_ctx.get_job_id()
        return False

    def set_state(self, state: str, **details: Any) -> None:
        """Record the run's state in the run directory this job owns (for resume; in the job's own
        folder when it failed before owning one) and in the job's folder (read by 'fedseg status')."""
        record = json.dumps({"job_id": self.fl_ctx.get_job_id(), "state": state, **details}, indent=2,
                            default=str) + "\n"
        job_folder = Path(self.get_run_dir())
        own = self.run_dir.root / DEPLOYMENT_FILE if self.run_dir else job_folder / "fedseg_run" / DEPLOYMENT_FILE
        for target in (job_folder / PROGRESS_FILE, own):
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, record)
