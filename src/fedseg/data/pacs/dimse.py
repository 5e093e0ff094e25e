"""DIMSE with pynetdicom: C-FIND (study root, SERIES then IMAGE level) to list a case's instances,
C-GET or C-MOVE (to a storage SCP this process runs for the pull) to fetch them, C-STORE to store.
The received files are handed on as the bytes the PACS sent (``encoded_dataset``)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind as FIND,
                                  StudyRootQueryRetrieveInformationModelGet as GET,
                                  StudyRootQueryRetrieveInformationModelMove as MOVE)

from fedseg.data.pacs.cache import Instance, instance
from fedseg.data.pacs.config import Case, PacsConfig, PacsError, PacsUnavailable, check_uid

MAX_CONTEXTS = 127
MAX_ANSWERS = 1_000_000
SUCCESS, PENDING = 0x0000, (0xFF00, 0xFF01)


class Dimse:
    def __init__(self, config: PacsConfig):
        self.config = config
        self.where = f"DICOM {config.called_aet}@{config.host}:{config.port}"

    def _ae(self, ae_title: str | None = None) -> AE:
        ae = AE(ae_title or self.config.calling_aet)
        t = self.config.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = t
        return ae

    @contextlib.contextmanager
    def associate(self, ae: AE, **kwargs) -> Iterator:
        config = self.config
        assoc = ae.associate(config.host, config.port, ae_title=config.called_aet, **kwargs)
        if not assoc.is_established:
            if assoc.is_rejected:
                raise PacsUnavailable(f"{self.where} rejected this machine (AE title {config.calling_aet}): check "
                                f"called_aet in {config.path} and ask the PACS administrator to register "
                                f"{config.calling_aet}")
            raise PacsUnavailable(f"cannot reach the PACS at {self.where}: check host, port and called_aet in "
                            f"{config.path}, the network and that the PACS is running (timeout "
                            f"{config.timeout_s:g} s)")
        try:
            yield assoc
        finally:
            assoc.release()

    def _find(self, assoc, level: str, case: Case, series: str | None, want: tuple[str, ...]) -> list[Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        query.StudyInstanceUID = case.study
        query.SeriesInstanceUID = series or ""
        for keyword in want:
            setattr(query, keyword, "")
        answers = []
        for status, identifier in assoc.send_c_find(query, FIND):
            code = getattr(status, "Status", None)
            if code in PENDING and identifier is not None:
                answers.append(identifier)
                if len(answers) > MAX_ANSWERS:
                    raise PacsError(f"{self.where}: case '{case.name}': more than {MAX_ANSWERS} answers")
            elif code != SUCCESS:
                raise PacsError(_failed(self.where, "C-FIND", case, code, self.config))
        return answers

    def find(self, case: Case) -> list[Instance]:
        where = f"{self.where} C-FIND"
        with self.associate(self._ae_with(FIND)) as assoc:
            series = list(case.series)
            if not series:
                answers = self._find(assoc, "SERIES", case, None, ())
                series = sorted({check_uid(a.get("SeriesInstanceUID"), f"{where}: SeriesInstanceUID")
                                 for a in answers})
            found = []
            for uid in series:
                for answer in self._find(assoc, "IMAGE", case, uid, ("SOPInstanceUID", "SOPClassUID")):
                    found.append(instance(case.study, answer.get("SeriesInstanceUID") or uid,
                                          answer.get("SOPInstanceUID"), answer.get("SOPClassUID"), where))
        return [f for f in found if f.series in series]

    def _ae_with(self, *contexts: str) -> AE:
        ae = self._ae()
        for context in contexts:
            ae.add_requested_context(context)
        return ae

    def retrieve(self, case: Case, wanted: list[Instance], whole_series: set[str],
                 sink: Callable[[bytes], None]) -> None:
        """C-GET or C-MOVE: each series in ``whole_series`` at SERIES level, other wanted instances at IMAGE level."""
        classes = sorted({w.sop_class for w in wanted if w.sop_class})
        if not classes or len(classes) > MAX_CONTEXTS - 1:
            raise PacsError(f"{self.where}: case '{case.name}': the PACS listed {len(classes)} SOP classes for "
                            f"the instances (1 to {MAX_CONTEXTS - 1} can be fetched over one association)")
        requests = [(s, None) for s in sorted(whole_series)]
        requests += [(w.series, w.sop) for w in wanted if w.series not in whole_series]
        failure: list[BaseException] = []

        def on_store(event) -> int:
            if failure:  # the pull is stopping: refuse the rest of this request's sub-operations
                return 0xA700
            try:
                sink(event.encoded_dataset())
                return SUCCESS
            except BaseException as exc:  # handed to the caller's thread by _check (KeyboardInterrupt too)
                failure.append(exc)
                return 0xC211

        if self.config.method == "c-get":
            ae = self._ae_with(GET)
            for sop_class in classes:
                ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
            roles = [build_role(c, scp_role=True) for c in classes]
            with self.associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
                for series, sop in requests:
                    self._check(assoc.send_c_get(_identifier(case, series, sop), GET), case, "C-GET", failure)
            return
        scp = self._ae(self.config.move_aet)
        scp.require_calling_aet = [self.config.called_aet]
        for sop_class in classes:
            scp.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        lock = threading.Lock()
        pacs_addresses = addresses(self.config.host)

        def on_move_store(event) -> int:
            if not from_pacs(event.assoc.requestor.address, pacs_addresses):
                return 0xA801  # refused: only the PACS asked for may store into this pull (any AE title can lie)
            with lock:
                return on_store(event)

        try:
            server = scp.start_server(("", self.config.move_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_move_store)])
        except OSError as exc:
            raise PacsUnavailable(f"cannot listen on move_port {self.config.move_port} for C-MOVE ({exc.strerror}): "
                            f"choose a free port in {self.config.path} (and register it at the PACS)") from None
        try:
            with self.associate(self._ae_with(MOVE)) as assoc:
                for series, sop in requests:
                    replies = assoc.send_c_move(_identifier(case, series, sop), self.config.move_aet, MOVE)
                    self._check(replies, case, "C-MOVE", failure)
        finally:
            server.shutdown()

    def _check(self, replies, case: Case, what: str, failure: list[BaseException]) -> None:
        code = None
        for status, _ in replies:
            code = getattr(status, "Status", None)
        if failure:
            raise failure[0]
        if code != SUCCESS:
            raise PacsError(_failed(self.where, what, case, code, self.config))

    def store(self, paths: list[Path], classes: list[tuple[str, str]]) -> list[int]:
        """C-STORE each file (its (SOP class, transfer syntax) in ``classes``); the statuses."""
        ae = self._ae()
        for sop_class, syntax in sorted(set(classes)):
            ae.add_requested_context(sop_class, [syntax])
        statuses = []
        with self.associate(ae) as assoc:
            for path in paths:
                status = assoc.send_c_store(path)
                statuses.append(getattr(status, "Status", None))
        return statuses


def addresses(host: str) -> set[str]:
    """The IP addresses ``host`` resolves to (empty when it does not resolve)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


def from_pacs(peer: object, pacs: set[str]) -> bool:
    """Whether a C-STORE for a C-MOVE comes from an address of the PACS (IPv4-mapped IPv6 compared as IPv4)."""
    peer = str(peer)
    return peer in pacs or (peer.startswith("::ffff:") and peer[7:] in pacs)


def _identifier(case: Case, series: str, sop: str | None) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE" if sop else "SERIES"
    query.StudyInstanceUID = case.study
    query.SeriesInstanceUID = series
    if sop:
        query.SOPInstanceUID = sop
    return query


def _failed(where: str, what: str, case: Case, code: object, config: PacsConfig) -> str:
    if code is None:
        return (f"{where}: {what} for case '{case.name}' got no answer (connection lost or timeout_s = "
                f"{config.timeout_s:g} s passed); rerun, or raise timeout_s in {config.path}")
    hint = (f"; the PACS must know {config.move_aet} at this machine's address and port {config.move_port}"
            if what == "C-MOVE" else "")
    return (f"{where}: {what} for case '{case.name}' (study {case.study}) failed with status 0x{int(code):04X}; "
            f"check the UIDs and that the PACS allows {config.calling_aet} to {what}{hint}")
