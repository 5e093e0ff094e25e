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

Everything else is FLARE's own client.
"""

from __future__ import annotations

import logging
import sys
import time

from nvflare.apis.job_launcher_spec import JobReturnCode
from nvflare.private.fed.app.client import client_train
from nvflare.private.fed.client import client_executor
from nvflare.private.fed.client.client_engine import ClientEngine

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


def main() -> int:
    client_executor.get_return_code = site_left_not_failed
    ClientEngine.start_app = start_replacing_stale_copy
    client_train.version_check()
    args = client_train.parse_arguments()
    return client_train.mpm.run(main_func=client_train.main, run_dir=args.workspace, args=args)


if __name__ == "__main__":
    sys.exit(main())
