"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, write) -> None:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
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
    write_atomic(path, lambda handle: torch.save(obj, handle))
