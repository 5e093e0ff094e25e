"""``python -m fedseg.runtime.flare.site_process``: FLARE's client daemon with two policies changed.

1. FLARE 2.9's daemon reports a site job process that died (killed, out of memory) as a failure
of the whole job, and the coordinator then stops the run for every site. Here such a death is
reported with a neutral code instead: the coordinator's periodic job check then finds the job
missing at this site, FLARE gives up that site's open task after ``dead_site_grace_s``, and
fedseg's controller finishes the round with the sites that answered (``RoundPolicy``).

2. When the coordinator restarts, ``fedseg server`` runs its interrupted job again under the same
job id, but the site may still run the stale copy of that job (FLARE stops it only after a few
heartbeats) and would refuse the start as "already started". Here the stale copy is stopped
first, so the resumed job starts everywhere.

3. Unless the site's operator allowed it (``fedseg site --share-logs``, which sets FLARE's
``allow_log_streaming`` in the site's ``local/resources.json``), the admin commands that read the
site's files (``cat``, ``grep``, ``head``, ``tail``, ``ls``, ``pwd``) or the error messages its jobs
logged (``show_errors``) are refused here, at the site: the coordinator and its admins never see
the site's log lines, which may name patients' files.

Everything else is FLARE's own client.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from nvflare.apis.job_launcher_spec import JobReturnCode
from nvflare.private.admin_defs import Message, error_reply
from nvflare.private.defs import InfoCollectorTopic, SysCommandTopic
from nvflare.private.fed.app.client import client_train
from nvflare.private.fed.client import client_executor
from nvflare.private.fed.client.admin import RequestProcessor
from nvflare.private.fed.client.client_engine import ClientEngine
from nvflare.private.fed.client.client_req_processors import ClientRequestProcessors
from nvflare.private.fed.client.info_coll_cmd import ClientInfoProcessor
from nvflare.private.fed.client.shell_cmd import ShellCommandProcessor

from fedseg.runtime.flare.processes import SHARE_LOGS

_flare_return_code = client_executor.get_return_code
_flare_start_app = ClientEngine.start_app
STALE_JOB_STOP_TIMEOUT_S = 60.0


def site_left_not_failed(job_handle, job_id, workspace, logger) -> int:
    code = _flare_return_code(job_handle, job_id, workspace, logger)
    if code in (JobReturnCode.SUCCESS, JobReturnCode.ABORTED):
        return code
    logger.warning(f"job {job_id} ended abnormally here (code {code}); reporting that this site left the "
                   "run, so the other sites go on")
    return JobReturnCode.UNKNOWN


def start_replacing_stale_copy(engine: ClientEngine, job_id: str, *args, **kwargs) -> str:
    if job_id in engine.client_executor.get_run_processes_keys():
        logging.getLogger(__name__).warning(f"job {job_id} still runs here from before the coordinator "
                                            "restarted; stopping it so the resumed job can start")
        engine.abort_app(job_id)
        deadline = time.monotonic() + STALE_JOB_STOP_TIMEOUT_S
        while job_id in engine.client_executor.get_run_processes_keys() and time.monotonic() < deadline:
            time.sleep(0.2)
    return _flare_start_app(engine, job_id, *args, **kwargs)


class LogsStayHere(RequestProcessor):
    """FLARE's answer to ``show_stats`` (job status, no log text); a refusal to the commands
    that would read the site's files or its jobs' error messages."""

    REFUSAL = ("refused: this site keeps its logs and files to itself (its operator can allow admins to read "
               "them by starting it with 'fedseg site --share-logs')")

    def __init__(self, flare_info: ClientInfoProcessor):
        self.flare_info = flare_info

    def get_topics(self) -> list[str]:
        return [SysCommandTopic.SHELL, *self.flare_info.get_topics()]

    def process(self, req: Message, app_ctx) -> Message:
        if req.topic == InfoCollectorTopic.SHOW_STATS:
            return self.flare_info.process(req, app_ctx)
        if req.topic == SysCommandTopic.SHELL:
            return error_reply(self.REFUSAL)
        return Message(topic=f"reply_{req.topic}", body=json.dumps({"refused": self.REFUSAL}))  # FLARE wants JSON


def shares_logs(workspace: Path) -> bool:
    """The site's own choice, as ``configure_site`` wrote it into its local settings."""
    try:
        return json.loads((Path(workspace) / "local" / "resources.json").read_text()).get(SHARE_LOGS) is True
    except (OSError, ValueError):
        return False


def keep_logs_here(processors: list[RequestProcessor]) -> None:
    """Replace FLARE's processors of those commands, in the list FLARE's client registers."""
    flare_info = next(p for p in processors if isinstance(p, ClientInfoProcessor))
    processors[:] = [p for p in processors if not isinstance(p, (ShellCommandProcessor, ClientInfoProcessor))]
    processors.append(LogsStayHere(flare_info))


def main() -> int:
    client_executor.get_return_code = site_left_not_failed
    ClientEngine.start_app = start_replacing_stale_copy
    client_train.version_check()
    args = client_train.parse_arguments()
    if not shares_logs(args.workspace):
        keep_logs_here(ClientRequestProcessors.request_processors)
    return client_train.mpm.run(main_func=client_train.main, run_dir=args.workspace, args=args)


if __name__ == "__main__":
    sys.exit(main())
