"""DICOMweb with dicomweb-client: QIDO-RS to list a case's instances, WADO-RS to fetch them (a whole
series in one request when none of it is here yet), STOW-RS to store. HTTP problems become PacsErrors
that say what to do (address, credentials and which environment variables, timeouts)."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
from collections.abc import Callable, Iterator

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.errors import InvalidDicomError

from fedseg.data.pacs.cache import Instance, instance
from fedseg.data.pacs.config import Case, PacsConfig, PacsError, PacsUnavailable

ANY_SYNTAX = (("application/dicom", "*"),)
"""WADO-RS media type: the instance in the transfer syntax the PACS stores it in (no transcoding)."""
MAX_INSTANCES = 1_000_000
RETRIES = 3
MAX_RESPONSE_S = 6 * 3600.0
"""One answer (a whole series included) may take this long: timeout_s bounds each wait, this the whole,
so a PACS that trickles bytes forever cannot hold a pull for ever."""
STUDY, SERIES, SOP, SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"


def credentials(config: PacsConfig) -> tuple[str, str] | None:
    """(user, password) from the environment variables the PACS file names; PacsError when one is unset."""
    if not config.username_env:
        return None
    values = []
    for key in ("username_env", "password_env"):
        name = getattr(config, key)
        value = os.environ.get(name)
        if not value:
            raise PacsError(f"environment variable {name} is not set ({key} in {config.path}): set it to the PACS "
                            f"{key.split('_')[0]} before pulling or pushing")
        values.append(value)
    return values[0], values[1]


class DicomWeb:
    """One DICOMweb service. ``session`` lets a caller (a test) watch the requests."""

    def __init__(self, config: PacsConfig, session: requests.Session | None = None):
        self.config = config
        session = session or requests.Session()
        session.auth = credentials(config)
        session.hooks["response"].append(_bounded)
        if config.ca_bundle:
            session.verify = str(config.ca_bundle)
        self.client = DICOMwebClient(config.dicomweb, session=session, timeout=config.timeout_s)
        # dicomweb-client retries any failure 5 times over ~30 s; 3 tries over ~1.5 s still ride out a busy
        # PACS (429/503) and report an unreachable one quickly
        self.client.set_http_retry_params(max_attempts=RETRIES, wait_exponential_multiplier=250)

    def find(self, case: Case) -> list[Instance]:
        """The case's instances on the PACS (every series of its study, or the listed ones)."""
        where = f"QIDO-RS {self.config.dicomweb}"
        found: dict[str, Instance] = {}
        for series in case.series or (None,):
            offset = 0
            while True:  # pages until an empty one; a page with nothing new ends it (a PACS ignoring offset)
                with self.errors(case):
                    answer = self.client.search_for_instances(case.study, series, fields=[SOP_CLASS], offset=offset)
                if not isinstance(answer, list) or len(found) + len(answer) > MAX_INSTANCES:
                    raise PacsError(f"{where}: case '{case.name}': the PACS answered the search with something that "
                                    f"is not a list of at most {MAX_INSTANCES:,} instances")
                before = len(found)
                for item in answer:
                    if not isinstance(item, dict):
                        raise PacsError(f"{where}: case '{case.name}': an instance in the answer is not a JSON object")
                    got = instance(_value(item, STUDY) or case.study, _value(item, SERIES),
                                   _value(item, SOP), _value(item, SOP_CLASS), where)
                    found.setdefault(got.sop, got)
                if len(found) == before:
                    break
                offset += len(answer)
        return list(found.values())

    def retrieve(self, case: Case, wanted: list[Instance], whole_series: set[str],
                 sink: Callable[[bytes], None]) -> None:
        """WADO-RS: each series in ``whole_series`` in one request, the other wanted instances one by one;
        every file goes to ``sink`` as it arrives."""
        for series in sorted(whole_series):
            with self.errors(case):
                for dataset in self.client.iter_series(case.study, series, media_types=ANY_SYNTAX):
                    sink(_encode(dataset))
        for item in wanted:
            if item.series not in whole_series:
                with self.errors(case):
                    sink(_encode(self.client.retrieve_instance(item.study, item.series, item.sop,
                                                               media_types=ANY_SYNTAX)))

    def store(self, datasets: list[pydicom.Dataset]) -> pydicom.Dataset:
        with self.errors(None):
            return self.client.store_instances(datasets)

    @contextlib.contextmanager
    def errors(self, case: Case | None) -> Iterator[None]:
        address, config = self.config.dicomweb, self.config
        of = f"case '{case.name}' (study {case.study})" if case else "store"
        try:
            yield
        except requests.exceptions.SSLError as exc:
            raise PacsUnavailable(f"{address}: TLS failed ({type(exc).__name__}): give the CA that signed the PACS "
                            f"certificate as ca_bundle in {config.path}") from None
        except requests.Timeout:
            raise PacsUnavailable(f"{address}: no answer within timeout_s = {config.timeout_s:g} s for {of}; raise "
                            f"timeout_s in {config.path} or check the PACS") from None
        except requests.ConnectionError:
            raise PacsUnavailable(f"cannot reach the PACS at {address}: check dicomweb in {config.path}, the network "
                            "and that the PACS is running") from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            raise PacsError(f"{address}: {of}: the answer broke off (connection lost, or not whole within "
                            f"{MAX_RESPONSE_S:g} s); rerun the pull: what arrived is kept") from None
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            error = PacsUnavailable if code in (401, 403) else PacsError
            raise error(_http_message(exc.response, config, of)) from None
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise PacsError(f"{address}: {of}: the PACS answer could not be read ({type(exc).__name__}); is "
                            f"{address} a DICOMweb service root?") from None


def _bounded(response: requests.Response, *args, **kwargs) -> requests.Response:
    """A response hook: the connection is shut after MAX_RESPONSE_S unless the body was read by then
    (the read then fails as a lost connection, reported by ``errors``)."""
    raw, connection = response.raw, getattr(response.raw, "_connection", None)
    sock, stream = getattr(connection, "sock", None), getattr(raw, "stream", None)
    if sock is None or stream is None:
        return response

    def cut() -> None:
        if getattr(raw, "_connection", None) is connection:  # still this answer's: not back in the pool
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(MAX_RESPONSE_S, cut)
    timer.daemon = True
    timer.start()

    def bounded(*a, **k):
        try:
            yield from stream(*a, **k)
        finally:
            timer.cancel()

    raw.stream = bounded
    return response


def _http_message(response: requests.Response | None, config: PacsConfig, of: str) -> str:
    code = response.status_code if response is not None else 0
    address = config.dicomweb
    if code in (401, 403):
        if config.username_env:
            return (f"{address} refused the credentials (HTTP {code}): check the environment variables "
                    f"{config.username_env} and {config.password_env} (named in {config.path})")
        return (f"{address} needs credentials (HTTP {code}): set username_env and password_env in "
                f"{config.path} to the names of environment variables holding them")
    if code == 404:
        return f"{address}: {of}: not found on the PACS (HTTP 404): check the UIDs in {config.path}"
    return f"{address}: {of}: the PACS answered HTTP {code}; check the address in {config.path} and the PACS log"


def _value(item: dict, tag: str) -> object:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    value = element.get("Value")
    return value[0] if isinstance(value, list) and len(value) == 1 else None


def _encode(dataset: object) -> bytes:
    """The file as the PACS sent it: dicomweb-client parses each part from a BytesIO that pydicom keeps as
    ``buffer`` (a re-encoding would drop group lengths and change bytes); re-encoded only without it."""
    if not isinstance(dataset, pydicom.Dataset):
        raise TypeError("not a dataset")
    buffer = getattr(dataset, "buffer", None)
    if isinstance(buffer, io.BytesIO) and not buffer.closed:
        return buffer.getvalue()
    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()
