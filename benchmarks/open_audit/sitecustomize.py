"""Counts NIfTI files opened, for ``benchmarks/big_site.py``: with this folder on ``PYTHONPATH`` and
``FEDSEG_BENCH_OPEN_LOG`` set, every Python process (the run and any worker it starts) installs an
audit hook (``sys.addaudithook``) that appends ``PID PATH`` to that file for each ``open`` event of
a path ending in ``.nii`` or ``.nii.gz``. The line is written with ``os.write`` on a descriptor
opened once (no audit event, no recursion)."""

import os
import sys

_LOG = os.environ.get("FEDSEG_BENCH_OPEN_LOG")
if _LOG:
    _FD = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _nifti_opened(event, args):
        if event != "open" or not args or isinstance(args[0], int):
            return
        try:
            path = os.fsdecode(os.fspath(args[0]))
        except TypeError:
            return
        if path.endswith((".nii", ".nii.gz")):
            os.write(_FD, f"{os.getpid()} {path}\n".encode("utf-8", "replace"))

    sys.addaudithook(_nifti_opened)
