"""``python -m fedseg.runtime.flare.site_process``: FLARE's client daemon with one policy changed.

FLARE 2.9's daemon reports a site job process that died (killed, out of memory) as a failure
of the whole job, and the coordinator then stops the run for every site. Here such a death is
reported with a neutral code instead: the coordinator's periodic job check then finds the job
missing at this site, FLARE gives up that site's open task after ``dead_site_grace_s``, and
fedseg's controller finishes the round with the sites that answered (``RoundPolicy``). Only the
code reported for an abnormal exit changes; everything else is FLARE's own client.
"""

from __future__ import annotations

import sys

from nvflare.apis.job_launcher_spec import JobReturnCode
from nvflare.private.fed.app.client import client_train
from nvflare.private.fed.client import client_executor

_flare_return_code = client_executor.get_return_code


def site_left_not_failed(job_handle, job_id, workspace, logger) -> int:
    code = _flare_return_code(job_handle, job_id, workspace, logger)
    if code in (JobReturnCode.SUCCESS, JobReturnCode.ABORTED):
        return code
    logger.warning(f"job {job_id} ended abnormally here (code {code}); reporting that this site left the "
                   "run, so the other sites go on")
    return JobReturnCode.UNKNOWN


def main() -> int:
    client_executor.get_return_code = site_left_not_failed
    client_train.version_check()
    args = client_train.parse_arguments()
    return client_train.mpm.run(main_func=client_train.main, run_dir=args.workspace, args=args)


if __name__ == "__main__":
    sys.exit(main())
