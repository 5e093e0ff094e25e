"""The on-disk cache of preprocessed cases, at the site, and an optional in-memory cache in front of it.

A case is read, checked and preprocessed once; what comes out (the image, the label, sampled
foreground/background voxel locations for patch sampling) is written to a folder named by a key:
the SHA-256 of the case's file identity (absolute path, size and modification time of every file,
every file of a DICOM folder included) and of everything that shapes the result (the deterministic
preprocessing settings, the task as the site's files encode it, the site's class mapping and
re-contrast, the cache format and the MONAI/torch/numpy versions). A changed file or setting gives
new keys for exactly the cases it touches; a second run, ``--resume``, another arm or a k-fold
member finds the others and opens no image file.

Where: ``$FEDSEG_CACHE`` if set, else ``$XDG_CACHE_HOME/fedseg``, else ``~/.cache/fedseg``, on the
machine that holds the data: a deployed site's cache stays at the site (the coordinator never
sees it). ``FEDSEG_CACHE=off`` keeps the cache in a temporary folder removed when the process ends.
Clear it with ``fedseg cache clear`` (or delete the folder). Entries are written to ``tmp/`` and
renamed into place, so an interrupted run leaves no half entry; a damaged entry is made again.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import numpy as np

from fedseg.errors import UserError

CACHE_ENV = "FEDSEG_CACHE"
MEMORY_ENV = "FEDSEG_MEMORY_CACHE_MB"
PREP_WORKERS_ENV = "FEDSEG_PREP_WORKERS"
LOADER_WORKERS_ENV = "FEDSEG_LOADER_WORKERS"
FORMAT = 2
"""Raised when what an entry holds changes meaning, or fedseg's preprocessing changes (the version
of a development install does not move): every older entry becomes a miss."""
ARRAYS = ("image", "label", "fg", "bg")
MAX_WORKERS = 64


@dataclass(frozen=True)
class DataSettings:
    """How this machine prepares and serves its cases; none of it changes a result."""

    cache: Path
    memory_bytes: int = 0
    """In-memory cache of whole cases, least recently used first out (0: none)."""
    prep_workers: int | None = None
    """Processes that read, check and preprocess cases (None: decided by the amount of work)."""
    loader_workers: int = 0
    """Processes that prepare training batches (crops, flips, rotations) in the background."""


def data_settings() -> DataSettings:
    """The settings from the environment (``FEDSEG_CACHE``, ``FEDSEG_MEMORY_CACHE_MB``,
    ``FEDSEG_PREP_WORKERS``, ``FEDSEG_LOADER_WORKERS``); a wrong value is a UserError naming it."""
    prep = os.environ.get(PREP_WORKERS_ENV, "auto").strip()
    return DataSettings(cache_root(), _env_int(MEMORY_ENV, 0, 1 << 24) << 20,
                        None if prep == "auto" else _env_int(PREP_WORKERS_ENV, 0, MAX_WORKERS),
                        _env_int(LOADER_WORKERS_ENV, 0, MAX_WORKERS))


def cache_root() -> Path:
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return _temporary_root()
    if value:
        return Path(value).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "fedseg"


_TEMPORARY: list[Path] = []


def _temporary_root() -> Path:
    if not _TEMPORARY:
        _TEMPORARY.append(Path(tempfile.mkdtemp(prefix="fedseg-cache-")))
        atexit.register(shutil.rmtree, _TEMPORARY[0], True)
    return _TEMPORARY[0]


def _env_int(name: str, default: int, most: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or int(raw) > most:
        raise UserError(f"environment variable {name}={raw[:20]!r} must be a whole number from 0 to {most}")
    return int(raw)


def file_identity(path: Path) -> list:
    """What identifies a file's content without reading it: absolute path, size, modification time
    (every file below a folder, for a DICOM series folder)."""
    path = Path(path).absolute()
    if path.is_dir():
        return [_stat(p) for p in sorted(path.rglob("*")) if p.is_file()]
    return [_stat(path)]


def _stat(path: Path) -> list:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def case_key(files: list[Path], recipe: dict) -> str:
    """The cache key of a case: its files' identities and the recipe that preprocesses it."""
    text = json.dumps([FORMAT, _versions(), [file_identity(f) for f in files], recipe], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """What else shapes a preprocessed case: fedseg's own code and the libraries that resample."""
    return {name: version(name) for name in ("fedseg", "monai", "torch", "numpy", "nibabel", "pillow", "pydicom")}


@dataclass(frozen=True)
class Entry:
    """One cached case: where it lies and what its metadata says."""

    key: str
    folder: Path
    case: str
    shape: tuple[int, ...]
    """Image shape, channels first."""
    spacing: tuple[float, ...] | None
    locations: bool
    """Whether sampled foreground/background locations are stored (patch training)."""


class CaseStore:
    """Cached cases under ``root``, with an optional least-recently-used memory cache of ``memory_bytes``."""

    def __init__(self, root: Path, memory_bytes: int = 0):
        self.root = Path(root)
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._held = 0
        self.reads = 0
        """Arrays read from disk (not served from memory), for tests and benchmarks."""

    @classmethod
    def shared(cls, root: Path, memory_bytes: int = 0) -> CaseStore:
        """The process's store of ``root``: every site of a simulation shares one memory budget."""
        key = (Path(root), memory_bytes)
        if key not in _STORES:
            _STORES[key] = cls(root, memory_bytes)
        return _STORES[key]

    def folder(self, key: str) -> Path:
        return self.root / "cases" / key[:2] / key

    def get(self, key: str) -> Entry | None:
        """The entry of ``key`` if it is whole (its arrays' headers match its metadata), else None."""
        folder = self.folder(key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            entry = Entry(key, folder, str(meta["case"]), tuple(int(n) for n in meta["shape"]),
                          None if meta["spacing"] is None else tuple(float(s) for s in meta["spacing"]),
                          bool(meta["locations"]))
            image = np.load(folder / "image.npy", mmap_mode="r")
            label = np.load(folder / "label.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        whole = image.shape == entry.shape and label.shape == (1, *entry.shape[1:])
        return entry if whole and (not entry.locations or (folder / "bg.npy").is_file()) else None

    def put(self, key: str, case: str, arrays: dict[str, np.ndarray], spacing: tuple[float, ...] | None) -> Entry:
        """Write a case's arrays under ``key`` (a complete folder appears at once, or nothing)."""
        tmp = self.root / "tmp" / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        try:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            meta = {"case": case, "shape": list(arrays["image"].shape), "spacing": spacing,
                    "locations": "fg" in arrays}
            (tmp / "meta.json").write_text(json.dumps(meta))
            final = self.folder(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:  # made meanwhile by another process (same key: same content), or damaged
                if self.get(key) is None:
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        entry = self.get(key)
        if entry is None:
            raise OSError(f"the preprocessed case {case} could not be written to {self.folder(key)}")
        return entry

    def array(self, entry: Entry, name: str, mmap: bool = False) -> np.ndarray:
        """One stored array of ``entry``: from memory if held, else read (memory-mapped with ``mmap``:
        only the parts used are read, as for a patch)."""
        slot = (entry.key, name)
        if (held := self._memory.get(slot)) is not None:
            self._memory.move_to_end(slot)
            return held
        self.reads += 1
        path = entry.folder / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OSError(f"the preprocessed case {entry.case} at {entry.folder} is damaged ({exc}); delete that "
                          "folder (or run `fedseg cache clear`) and run again") from None
        if not mmap and 0 < array.nbytes <= self.memory_bytes:
            self._memory[slot] = array
            self._held += array.nbytes
            while self._held > self.memory_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._held -= dropped.nbytes
        return array

    @property
    def held_bytes(self) -> int:
        return self._held

    def __getstate__(self) -> dict:  # loader workers get the store without the main process's memory cache
        return {**self.__dict__, "_memory": OrderedDict(), "_held": 0}


_STORES: dict[tuple[Path, int], CaseStore] = {}


def cache_size(root: Path) -> tuple[int, int]:
    """(cases, bytes) held under ``root``."""
    cases = [p for p in (root / "cases").glob("*/*") if p.is_dir()]
    return len(cases), sum(f.stat().st_size for p in cases for f in p.iterdir() if f.is_file())


def clear_cache(root: Path) -> int:
    """Delete every cached case under ``root`` (only fedseg's own folders); the number deleted."""
    count, _ = cache_size(root)
    for name in ("cases", "tmp"):
        shutil.rmtree(root / name, ignore_errors=True)
    return count
