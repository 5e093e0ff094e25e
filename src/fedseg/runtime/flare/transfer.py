"""Models in bulk between the coordinator and the sites, through FLARE's download service
(``nvflare.fuel.f3.streaming``: ``ObjectDownloader``, ``download_object``), not inside task messages.

FLARE 2.9 serialises a task's message once per site: each site's copy of the global model became
its own download transaction with its own cache of serialised arrays, and each site's update was
taken into memory whole while its message was decoded, all sites at once. Here instead:

- the coordinator offers a task's model once (``offer``): one transaction for all the task's
  sites, each array cut into pieces of at most ``PIECE_BYTES`` (a short JSON header: name, dtype,
  shape, place; then raw bytes), each piece made once and kept only until every target has
  fetched it, so a reply in flight holds a piece, never a whole large array; the task carries the
  reference (``REF``) alone;
- a site fetches it (``fetch``) from the coordinator's job cell, a name the site derives itself;
- a site offers its update the same way, and the coordinator fetches it (a few sites at a time)
  into an unlinked file in the job's workspace (``UpdateFile``), refusing more bytes or arrays
  than a bound, pieces out of order and any dtype but plain numbers: nothing is unpickled or
  imported. The round engine then reads each array back from that file when it checks or folds
  it (``FileWeights``), so an update held for the round's norm guard costs disk, not memory.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.fuel.f3.cellnet.fqcn import FQCN
from nvflare.fuel.f3.streaming.cacheable import CacheableObject, ItemConsumer
from nvflare.fuel.f3.streaming.download_service import download_object
from nvflare.fuel.f3.streaming.obj_downloader import ObjectDownloader

REF = "bulk"
"""The meta key of a task or a reply whose model is offered for download rather than carried."""
PIECE_BYTES = 2 * 1024 * 1024
"""Arrays travel in pieces of at most this many bytes."""
CHUNK_BYTES = 4 * 1024 * 1024
"""Pieces are grouped into replies of about this size (fewer round trips: each costs a wait)."""
MAX_HEADER = 4096
SITE_MAX_BYTES, SITE_MAX_ARRAYS = 2**36, 10**6
"""What a site takes from the coordinator (which is trusted more than a site, and bounded less)."""
REQUEST_TIMEOUT_S = 120.0
"""How long one request of a download may take."""
UPLOAD_IDLE_S = 900.0
"""How long a site keeps its offered update when the coordinator does not fetch it (it fetches
the round's updates one after another, so the last one waits for the others)."""
MAX_NAME = 300


def update_bound(sent: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """The most bytes and arrays a site's update to the model ``sent`` may take: an encrypted
    update is the largest a site legitimately sends (a CKKS chunk of at most 66.5 kB per 2,048
    values, ``privacy.homomorphic``: 8.2 times float32), so 9 times the model, plus 64 MiB."""
    size = sum(int(np.asarray(v).nbytes) for v in sent.values())
    return 9 * size + 64 * 2**20, len(sent) + size // 4096 + 1024


def check_ref(ref: Any) -> str:
    """A download reference from a message: short printable text, else ValueError."""
    if not isinstance(ref, str) or not 0 < len(ref) <= 80 or not ref.isprintable():
        raise ValueError(f"the download reference must be short text, got {ref!r:.40}")
    return ref


def coordinator_cell(job_id: str) -> str:
    """The coordinator's job cell (FLARE's FQCN), where a site fetches the task's model."""
    return FQCN.join([FQCN.ROOT_SERVER, job_id])


def site_cell(site: str, job_id: str) -> str:
    """A site's job cell, where the coordinator fetches that site's update."""
    return FQCN.join([site, job_id])


class SharedArrays(CacheableObject):
    """One model offered to ``receivers`` sites in pieces: each piece is made once and kept until
    that many fetches took it (the transaction counts no receivers, so a site restarted whole
    that fetches again is served: a dropped piece is made again)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], receivers: int):
        arrays = {name: np.asarray(value, order="C") for name, value in arrays.items()}  # keeps 0-d
        self.pieces = [(name, start, min(start + PIECE_BYTES, value.nbytes)) for name, value in arrays.items()
                       for start in range(0, max(value.nbytes, 1), PIECE_BYTES)]
        super().__init__(arrays, CHUNK_BYTES)
        self.receivers = receivers

    def get_item_count(self) -> int:
        return len(self.pieces)

    def produce_item(self, index: int) -> bytes:
        name, start, stop = self.pieces[index]
        value = self.base_obj[name]
        header = json.dumps({"name": name, "dtype": value.dtype.str, "shape": value.shape, "at": start}).encode()
        return len(header).to_bytes(4, "big") + header + value.reshape(-1).view(np.uint8)[start:stop].tobytes()

    def set_transaction(self, tx_id: str, ref_id: str) -> None:
        super().set_transaction(tx_id, ref_id)
        self.num_receivers = self.receivers


def offer(cell: Any, arrays: Mapping[str, np.ndarray], receivers: int, idle_s: float,
          finish_after: int = 0) -> tuple[ObjectDownloader, str]:
    """Offer ``arrays`` to ``receivers`` fetches; the transaction and its reference. With
    ``finish_after`` = 0 it lasts until ``delete_transaction`` or ``idle_s`` without a request;
    otherwise it ends once that many receivers fetched everything."""
    downloader = ObjectDownloader(cell=cell, timeout=idle_s, num_receivers=finish_after)
    return downloader, downloader.add_object(SharedArrays(arrays, receivers))


def fetch(cell: Any, source: str, ref: Any, folder: Path, abort_signal: Any = None) -> dict[str, np.ndarray]:
    """A site: the arrays the coordinator offered under ``ref`` (through a file in ``folder``)."""
    return dict(receive(cell, source, ref, folder, (SITE_MAX_BYTES, SITE_MAX_ARRAYS), abort_signal))


def receive(cell: Any, source: str, ref: Any, folder: Path, bound: tuple[int, int],
            abort_signal: Any = None) -> FileWeights:
    """The coordinator: fetch the arrays a site offered under ``ref`` into an unlinked file in
    ``folder``; ValueError (with the reason) when the download fails or the site sent more than
    ``bound`` (bytes, arrays: ``update_bound``)."""
    sink = UpdateFile(folder, *bound)
    try:
        download_object(from_fqcn=source, ref_id=check_ref(ref), per_request_timeout=REQUEST_TIMEOUT_S, cell=cell,
                        consumer=sink, abort_signal=abort_signal)
    except BaseException:
        sink.file.close()
        raise
    if sink.error is not None:
        sink.file.close()
        raise ValueError(f"the update could not be received: {sink.error}")
    return FileWeights(sink.file, sink.index)


class UpdateFile(ItemConsumer):
    """Writes the pieces of a download (``SharedArrays``) into an unlinked file, keeping only
    their places: at most ``max_bytes`` of array data and ``max_arrays`` arrays of plain numbers,
    each array's pieces in order and complete (nothing is unpickled, nothing imported)."""

    def __init__(self, folder: Path, max_bytes: int, max_arrays: int):
        super().__init__()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.file = tempfile.TemporaryFile(dir=folder)  # no name: nothing else can open or change it
        self.max_bytes, self.max_arrays = max_bytes, max_arrays
        self.index: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}
        self.filled: dict[str, int] = {}
        self.written = 0
        self._lock = threading.Lock()

    def consume_items(self, items: list[Any], result: Any) -> Any:
        with self._lock:
            for item in items:
                if not isinstance(item, bytes) or len(item) < 4 or int.from_bytes(item[:4], "big") > MAX_HEADER:
                    raise ValueError("a received piece does not start with a short header")
                size = int.from_bytes(item[:4], "big")
                self._piece(json.loads(item[4:4 + size]), memoryview(item)[4 + size:])
        return result

    def _piece(self, header: Any, data: memoryview) -> None:
        if not isinstance(header, dict) or set(header) != {"name", "dtype", "shape", "at"}:
            raise ValueError("a piece's header must name its array, dtype, shape and place")
        name, shape, at = header["name"], header["shape"], header["at"]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not isinstance(header["dtype"], str) \
                or not isinstance(shape, list) or len(shape) > 32 or not all(_count(n) for n in shape + [at]):
            raise ValueError(f"a piece's header does not fit: {header!r:.200}")
        dtype = np.dtype(header["dtype"][:8])
        if dtype.kind not in "biufc" or dtype.str != header["dtype"]:
            raise ValueError(f"array {name!r}: dtype {header['dtype']!r:.20} is not plain numbers")
        if name not in self.index:
            size = math.prod(shape) * dtype.itemsize
            if len(self.index) >= self.max_arrays or self.written + size > self.max_bytes:
                raise ValueError(f"more than {self.max_arrays} arrays or {self.max_bytes} bytes")
            self.index[name], self.filled[name] = (self.written, dtype, tuple(shape)), 0
            self.written += size
        offset, known, known_shape = self.index[name]
        size = math.prod(known_shape) * known.itemsize
        if (known, known_shape) != (dtype, tuple(shape)) or at != self.filled[name] or at + len(data) > size:
            raise ValueError(f"array {name!r}: a piece does not follow the previous one")
        os.pwrite(self.file.fileno(), data, offset + at)
        self.filled[name] += len(data)

    def download_completed(self, ref_id: str) -> None:
        short = [name for name, (_, dtype, shape) in self.index.items()
                 if self.filled[name] != math.prod(shape) * dtype.itemsize]
        if short:
            self.download_failed(ref_id, f"array {short[0]!r} came in part")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


class FileWeights(Mapping):
    """A model's parameters in a file: each array is read back (a new array) when asked for."""

    def __init__(self, file: Any, index: dict[str, tuple[int, np.dtype, tuple[int, ...]]]):
        self._file, self._index = file, dict(index)

    def __getitem__(self, name: str) -> np.ndarray:
        offset, dtype, shape = self._index[name]
        array = np.empty(shape, dtype)
        if array.nbytes:
            if os.preadv(self._file.fileno(), [array.reshape(-1).view(np.uint8)], offset) != array.nbytes:
                raise OSError(f"parameter {name!r} could not be read back from its file")
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def nbytes(self) -> int:
        return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in self._index.values())

    def __repr__(self) -> str:
        return f"FileWeights({len(self)} arrays, {self.nbytes()} bytes)"
