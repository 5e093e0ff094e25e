"""``python -m fedseg.runtime.flare.server_process``: FLARE's server, with a restarted site rejoining its running job.

FLARE 2.9 starts a job at its sites once. A site whose whole process died (SIGKILL, a reboot) and
was started again logs in under a new token (``ClientManager.authenticated_client``); the
coordinator still lists the job's participants under their tokens at the start
(``engine.run_processes[job][PARTICIPANTS]``), ignores the new token in its job bookkeeping
(``FederatedServer._sync_client_jobs``), and the job never runs at that site again until it is
submitted anew.

Here, when a site's heartbeat shows that it came back under a new token without a running job in
which it took part, the coordinator deploys that job to it again and starts it there, with FLARE's
own steps for a job start (resource check, the signed app, which the site checks against its own
allow-list and authorization exactly as at the job's start; then start-job), and lists the site's
new token among the job's participants; fedseg's controller, in the job's process, picks the new
token up (``FlareController.available``) and the round engine lets the site join at the next round.
The site's state folder survived the restart, so its per-round state resumes.

What the coordinator will not do: add a site that was not a participant when the job started
(mutual TLS proves the name, the list of participants decides), redeploy a job that is finished,
aborted or failed, or try more than once per login (a site whose start failed comes back by
restarting again, or at the next job).

Everything else is FLARE's own server.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading

from nvflare.apis.fl_constant import FLContextKey, RunProcessKey, SystemComponents
from nvflare.apis.job_def import ALL_SITES, JobMetaKey, RunStatus
from nvflare.apis.job_scheduler_spec import DispatchInfo
from nvflare.private.defs import CellMessageHeaderKeys
from nvflare.private.fed.app.server import server_train
from nvflare.private.fed.server.admin import check_client_replies
from nvflare.private.fed.server.fed_server import FederatedServer
from nvflare.private.fed.utils.fed_utils import extract_participants
from nvflare.utils.job_launcher_utils import get_resource_manager_spec

_flare_sync_client_jobs = FederatedServer._sync_client_jobs
logger = logging.getLogger(__name__)
MAX_REPORTED_JOBS = 1000
"""A heartbeat listing more jobs than this is not a site's: nothing is redeployed for it."""


class Rejoins:
    """The logins (job, token) already given their job again: one try each."""

    def __init__(self) -> None:
        self._tried: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def first(self, job_id: str, token: str) -> bool:
        with self._lock:
            if (job_id, token) in self._tried:
                return False
            self._tried.add((job_id, token))
            return True


REJOINS = Rejoins()


def jobs_to_rejoin(server: FederatedServer, site: object, token: object, reported: object) -> list[str]:
    """The running jobs that ``site``, logged in under ``token`` and running ``reported`` (the job
    ids its heartbeat lists), took part in under another token and no longer runs."""
    if not isinstance(site, str) or not isinstance(token, str) or not site or not token:
        return []
    client = server.client_manager.clients.get(token)
    if client is None or client.name != site:  # a stale or unknown token names no one
        return []
    if not isinstance(reported, (list, tuple, set)) or len(reported) > MAX_REPORTED_JOBS:
        return []  # FLARE reads a malformed list as "no jobs"; nothing is redeployed on it
    running_here = {job for job in reported if isinstance(job, str)}
    found = []
    for job_id, process in list(server.engine.run_processes.items()):
        participants = process.get(RunProcessKey.PARTICIPANTS) or {}
        if job_id in running_here or token in participants:
            continue
        if any(getattr(c, "name", None) == site for c in participants.values()):
            found.append(job_id)
    return found


def sync_and_rejoin(server: FederatedServer, request, client_token):
    """FLARE's job check of a heartbeat; then a restarted participant is given its job again (in
    the background: the heartbeat is answered at once)."""
    jobs_need_abort = _flare_sync_client_jobs(server, request, client_token)
    try:
        site = request.get_header(CellMessageHeaderKeys.CLIENT_NAME)
        reported = request.get_header(CellMessageHeaderKeys.JOB_IDS)
        for job_id in jobs_to_rejoin(server, site, client_token, reported):
            if REJOINS.first(job_id, client_token):
                threading.Thread(target=rejoin, args=(server, job_id, site, client_token), daemon=True,
                                 name=f"rejoin-{site}").start()
    except Exception as exc:  # never let this policy break FLARE's heartbeat
        logger.error(f"rejoin check failed: {exc!r}")
    return jobs_need_abort


def rejoin(server: FederatedServer, job_id: str, site: str, token: str) -> None:
    try:
        outcome = _rejoin(server, job_id, site, token)
    except Exception as exc:
        outcome = f"failed: {exc}"
    logger.warning(f"site {site} came back during job {job_id}: {outcome}")


def _rejoin(server: FederatedServer, job_id: str, site: str, token: str) -> str:
    engine = server.engine
    runner = engine.job_runner
    with engine.new_context() as fl_ctx:
        running = runner.running_jobs.get(job_id)
        stored = engine.get_component(SystemComponents.JOB_MANAGER).get_job(job_id, fl_ctx)
        if (running is None or running.run_aborted or stored is None or job_id in engine.exception_run_processes
                or stored.meta.get(JobMetaKey.STATUS) != RunStatus.RUNNING):
            return "the job is no longer running; not redeployed"
        app = next((name for name, sites in running.deploy_map.items()
                    if site in (participants := extract_participants(sites)) or ALL_SITES in
                    [p.upper() for p in participants]), None)
        if app is None:
            return "the job names no app for this site; not redeployed"
        job = copy.copy(running)  # this site alone: FLARE's deployment would also redeploy the server's app
        job.deploy_map, job.min_sites, job.required_sites = {app: [site]}, 1, []
        requirement = get_resource_manager_spec({**job.meta, JobMetaKey.RESOURCE_SPEC.value: job.resource_spec}, site)
        enough, reservation = engine.check_client_resources(job, {site: requirement}, fl_ctx).get(site, (False, ""))
        if not enough:
            return f"the site has not the resources the job needs ({reservation}); not redeployed"
        fl_ctx.set_prop(FLContextKey.CURRENT_JOB_ID, job_id)  # as FLARE's job runner sets it for a deployment
        _, failed = runner._deploy_job(job, {site: None}, fl_ctx)  # the site checks the signed app and its policy
        if failed:
            return "the site refused the job's app (see the site's log); not redeployed"
        if not _list_participant(server, job_id, site, token):
            return "the job ended meanwhile; not started"
        replies = engine.start_client_job(job, {site: DispatchInfo(app, requirement, reservation)}, fl_ctx)
        if check_client_replies(replies, [site], f"restart job ({job_id})", strict=True):
            return "the site did not answer the start of the job"
    return "its job was started there again; it joins at the next round"


def _list_participant(server: FederatedServer, job_id: str, site: str, token: str) -> bool:
    """List ``site`` under its new ``token`` among the job's participants (a new dict: other
    threads iterate over the old one)."""
    engine = server.engine
    with engine.lock:
        process = engine.run_processes.get(job_id)
        client = server.client_manager.clients.get(token)
        if process is None or client is None or client.name != site:
            return False
        participants = process.get(RunProcessKey.PARTICIPANTS) or {}
        process[RunProcessKey.PARTICIPANTS] = {**{t: c for t, c in participants.items() if c.name != site},
                                               token: client}
        return True


def main() -> int:
    FederatedServer._sync_client_jobs = sync_and_rejoin
    server_train.version_check()
    args = server_train.parse_arguments()
    return server_train.mpm.run(main_func=server_train.main, run_dir=args.workspace, args=args)


if __name__ == "__main__":
    sys.exit(main())
