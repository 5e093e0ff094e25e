"""The researcher's side: submit a job, follow it, fetch its run directory, show the consortium.

All through FLARE's admin API over mutual TLS with the admin's kit; the coordinator checks the
certificate and the admin's role before it accepts a job.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvflare.fuel.flare_api.flare_api import Session, new_secure_session

from fedseg.errors import UserError
from fedseg.runtime.flare.job import PROGRESS_FILE
from fedseg.runtime.flare.provision import Kit

FINISHED = "FINISHED"


@dataclass
class JobState:
    job_id: str
    name: str
    status: str
    progress: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status.startswith(FINISHED) or self.status in {"ABANDONED", "FAILED"}


def connect(kit: Kit, timeout: float = 20.0) -> Session:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # FLARE prints "Connecting to FLARE ..."
            return new_secure_session(kit.name, str(kit.root), timeout=timeout)
    except Exception as exc:
        raise UserError(f"cannot log in to the coordinator of project '{kit.project}' with the kit {kit.root}: "
                        f"{exc}. Is 'fedseg server' running and reachable?") from None


def submit(session: Session, job_folder: Path) -> str:
    return session.submit_job(str(job_folder))


def job_state(session: Session, job_id: str) -> JobState:
    meta = session.get_job_meta(job_id)
    return JobState(job_id, meta.get("name", ""), str(meta.get("status", "?")), read_progress(session, job_id))


def read_progress(session: Session, job_id: str) -> dict[str, Any]:
    try:
        text = session.cat_target("server", file=f"{job_id}/{PROGRESS_FILE}")
        return json.loads(text)
    except Exception:  # not written yet, or the job has finished and its folder was archived
        return {}


def wait(session: Session, job_id: str, on_progress: Callable[[JobState], None] | None = None,
         poll_s: float = 0.5, reconnect: Callable[[], Session] | None = None,
         patience_s: float = 900.0) -> tuple[JobState, Session]:
    """Poll until the job ends (the admin API has no push); report each new round. With
    ``reconnect``, a coordinator that goes away (a restart) is waited for up to ``patience_s``
    seconds with fresh sessions. Returns the final state and the session that saw it."""
    last_round, lost_since = None, None
    while True:
        try:
            state = job_state(session, job_id)
        except Exception as exc:
            if reconnect is None:
                raise
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > patience_s:
                raise UserError(f"lost the coordinator for {patience_s:.0f} s while following job {job_id} "
                                f"({exc}); 'fedseg status' shows the job once the coordinator is back") from None
            time.sleep(poll_s)
            try:
                session.close()
                session = reconnect()
            except Exception:  # still down: try again after the next poll interval
                pass
            continue
        lost_since = None
        if on_progress and state.progress.get("round") != last_round:
            last_round = state.progress.get("round")
            on_progress(state)
        if state.finished:
            return state, session
        time.sleep(poll_s)


def download_run(session: Session, job_id: str, out: Path) -> Path:
    """The run directory the coordinator wrote, copied to ``out`` (same layout as a simulation)."""
    with tempfile.TemporaryDirectory() as scratch:
        location = Path(session.download_job_result(job_id, scratch))
        found = next(location.rglob("fedseg_run"), None)
        if found is None:
            raise UserError(f"job {job_id} has no run directory in its results; see the coordinator's log")
        shutil.copytree(found, out, dirs_exist_ok=True)
    return Path(out)


def consortium(session: Session) -> dict[str, Any]:
    """Sites online and the jobs the coordinator knows, newest first, with their progress."""
    info = session.get_system_info()
    jobs = sorted(session.list_jobs(), key=lambda j: j.get("submit_time", ""), reverse=True)
    return {"server": str(info.server_info.status), "sites": sorted(c.name for c in info.client_info),
            "jobs": [{"job_id": j["job_id"], "name": j.get("job_name") or j.get("name"), "status": j.get("status"),
                      "progress": read_progress(session, j["job_id"]) if j.get("status") == "RUNNING" else {}}
                     for j in jobs]}
