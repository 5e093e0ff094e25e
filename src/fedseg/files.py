"""Atomic file writes (a reader or a resumed run sees the old file or the new one, never half), and
the rule for names that become file or folder names.

Torch is imported only by ``torch_save_atomic``: parsing an experiment file uses ``safe_name``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""Experiment and site names: 1 to 64 letters, digits, ``_`` and ``-``, starting with a letter or digit.
No dots, slashes or spaces, so a name joined to a folder stays inside it; a subset of what NVIDIA
FLARE accepts for site (client) names and job names, so any valid experiment can be deployed."""

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, write, folder: Path | None = None) -> None:
    """Call ``write(handle)`` on a temporary binary file beside ``path`` (or in ``folder``, on the same
    file system, where a caller collects what an interruption leaves), then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder or path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))


def torch_save_atomic(obj: Any, path: Path) -> None:
    import torch

    write_atomic(path, lambda handle: torch.save(obj, handle))


def safe_name(value: object, what: str, example: str = "hospital_a") -> str:
    """``value`` if it may name a file or folder (``SAFE_NAME``), else ValueError naming ``what``."""
    if isinstance(value, str) and SAFE_NAME.fullmatch(value):
        return value
    shown = repr(value) if isinstance(value, str) else f"{value!r} (not text)"
    raise ValueError(f"{what} {shown[:80]} is not a valid name: use 1 to 64 letters, digits, '_' or '-', "
                     f"starting with a letter or digit (no dots, slashes or spaces), e.g. '{example}'")
