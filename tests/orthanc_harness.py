"""A real Orthanc PACS on 127.0.0.1 for tests: Debian's ``/usr/sbin/Orthanc`` with its DICOMweb plugin,
a fresh storage folder, HTTP basic auth, and one registered modality (the tests' DIMSE peer, which
may query, C-GET, and be the destination of a C-MOVE).

``running_orthanc(folder)`` is a context manager; ``tests/conftest.py`` exposes it as the
session-scoped fixture ``orthanc`` (skipped with the reason when Orthanc or the plugin is missing).
No mock: every test talks to the real server, over REST, DICOMweb and DICOM."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests

from net import free_ports

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 20.0


def missing() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    for path, package in ((ORTHANC, "orthanc"), (DICOMWEB_PLUGIN, "orthanc-dicomweb")):
        if not path.exists():
            return (f"{path} not found: install Debian's {package} package "
                    "(apt-get install --no-install-recommends orthanc orthanc-dicomweb); .ci/run does this as root")
    return None


@dataclass
class Orthanc:
    """A running Orthanc: where to reach it and a few REST helpers for tests."""

    url: str                # http://127.0.0.1:<port>
    dicomweb: str           # <url>/dicom-web
    aet: str                # Orthanc's own AE title
    dicom_port: int
    username: str
    password: str
    peer_aet: str           # the registered modality (calling AET for C-FIND/C-GET, C-MOVE destination)
    peer_port: int          # where that modality's storage SCP must listen for a C-MOVE
    storage: Path
    log: Path
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self):
        self.session.auth = (self.username, self.password)

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.session.request(method, self.url + path, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, *files: Path | bytes | pydicom.Dataset) -> list[str]:
        """POST each DICOM file (a path, its bytes or a dataset) to /instances; returns Orthanc's ids."""
        ids = []
        for item in files:
            if isinstance(item, pydicom.Dataset):
                buffer = io.BytesIO()
                item.save_as(buffer, enforce_file_format=True)
                data = buffer.getvalue()
            else:
                data = item if isinstance(item, bytes) else Path(item).read_bytes()
            reply = self.rest("POST", "/instances", data=data,
                              headers={"Content-Type": "application/dicom"}).json()
            ids.append(reply["ID"])
        return ids

    def instances(self) -> list[dict]:
        """Every stored instance: its Orthanc id and its Study/Series/SOP Instance UIDs."""
        out = []
        for item in self.rest("GET", "/instances", params={"expand": "1"}).json():
            tags = self.rest("GET", f"/instances/{item['ID']}/simplified-tags").json()
            out.append({"id": item["ID"], "study": tags.get("StudyInstanceUID"),
                        "series": tags.get("SeriesInstanceUID"), "sop": tags.get("SOPInstanceUID")})
        return out

    def find(self, sop_instance_uid: str) -> str:
        """Orthanc's id of the instance with this SOPInstanceUID (KeyError when absent)."""
        hits = self.rest("POST", "/tools/lookup", data=sop_instance_uid).json()
        for hit in hits:
            if hit.get("Type") == "Instance":
                return hit["ID"]
        raise KeyError(sop_instance_uid)

    def fetch(self, sop_instance_uid: str) -> bytes:
        """The stored file of one instance, as Orthanc keeps it."""
        return self.rest("GET", f"/instances/{self.find(sop_instance_uid)}/file").content

    def dataset(self, sop_instance_uid: str) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(self.fetch(sop_instance_uid)))

    def statistics(self) -> dict:
        return self.rest("GET", "/statistics").json()

    def delete(self, sop_instance_uid: str) -> None:
        self.rest("DELETE", f"/instances/{self.find(sop_instance_uid)}")

    def clear(self) -> None:
        """Delete everything stored (tests share one server)."""
        for patient in self.rest("GET", "/patients").json():
            self.rest("DELETE", f"/patients/{patient}")


def configuration(folder: Path, http_port: int, dicom_port: int, peer_aet: str, peer_port: int,
                  username: str, password: str) -> dict:
    return {
        "Name": "fedseg-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "StorageCompression": False, "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {username: password},
        "HttpServerEnabled": True, "DicomServerEnabled": True, "SaveJobs": False, "ConcurrentJobs": 2,
        "StableAge": 1, "HttpDescribeErrors": True, "DicomScuTimeout": 10, "DicomScpTimeout": 10,
        "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": True,
        "DicomModalities": {"fedseg": {"AET": peer_aet, "Host": "127.0.0.1", "Port": peer_port}},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
    }


@contextlib.contextmanager
def running_orthanc(folder: Path, username: str = "fedseg", password: str = "pacs-secret-1",
                    peer_aet: str = "FEDSEG_TEST") -> Iterator[Orthanc]:
    """Start Orthanc with a fresh storage in ``folder``, wait until /system answers, stop it on exit."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port, peer_port = free_ports(3)
    config = folder / "orthanc.json"
    config.write_text(json.dumps(configuration(folder, http_port, dicom_port, peer_aet, peer_port,
                                               username, password), indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen([str(ORTHANC), "--no-jobs", str(config)], stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder)
    server = Orthanc(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{http_port}/dicom-web", "ORTHANC",
                     dicom_port, username, password, peer_aet, peer_port, folder / "storage", log)
    try:
        _wait_until_up(server, process)
        yield server
    finally:
        server.session.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_up(server: Orthanc, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode} at start:\n{_tail(server.log)}")
        try:
            if server.session.get(server.url + "/system", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)  # a start is a process coming up: there is nothing to wait on but its port
    raise RuntimeError(f"Orthanc did not answer /system within {START_TIMEOUT_S:.0f} s:\n{_tail(server.log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
