"""A hostile review of the DICOM/PACS code: what a careless user or a hostile network puts in front of it
is named as a problem (never skipped silently, never accepted from the wrong party)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_dicom_series import write  # noqa: E402

from fedseg.data.dicom.scan import scan_folder  # noqa: E402
from fedseg.data.pacs.dimse import addresses, from_pacs  # noqa: E402


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX links and pipes")
def test_links_pipes_and_devices_in_a_case_folder_are_named_not_skipped(tmp_path):
    case = tmp_path / "case"
    files = write(case, 3)
    (case / "loop").symlink_to(case / "loop")
    (case / "broken").symlink_to(tmp_path / "nowhere")
    (case / "zero").symlink_to("/dev/zero")
    os.mkfifo(case / "fifo")
    (case / "sub").symlink_to(case)  # a folder link (a loop if followed)
    problems = []
    scan = scan_folder(case, problems)
    assert [sorted(v) for v in scan.series.values()] == [sorted(files)]  # the series is still read
    named = {p.path.name: p.message for p in problems}
    assert set(named) == {"loop", "broken", "zero", "fifo", "sub"}
    assert all("remove" in m for m in named.values())
    assert "not followed" in named["sub"] and "not a regular file" in named["fifo"]


def test_a_c_move_store_is_accepted_only_from_the_pacs_address():
    pacs = addresses("127.0.0.1")
    assert from_pacs("127.0.0.1", pacs) and from_pacs("::ffff:127.0.0.1", pacs)
    assert not from_pacs("10.9.8.7", pacs) and not from_pacs("127.0.0.2", pacs)
    assert not from_pacs("127.0.0.1", addresses("no-such-host.invalid"))  # unresolvable: nobody


def fake_dicomweb(study: str, honour_offset: bool):
    """A DICOMweb 'PACS' on a local port: QIDO-RS lists one instance (on every page unless it honours
    offset), WADO-RS trickles one byte every 20 ms for ever. Returns (port, stop)."""
    import json
    import socket
    import threading
    import time

    from pydicom.uid import generate_uid

    qido = json.dumps([{"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [generate_uid()]},
                        "00080018": {"vr": "UI", "Value": [generate_uid()]},
                        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}}]).encode()
    server, stop = socket.socket(), threading.Event()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                continue
            with client:
                line = client.recv(65536).split(b"\r\n")[0]
                if b"/instances" in line:  # QIDO-RS
                    body = b"[]" if honour_offset and b"offset=0" not in line else qido
                    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: "
                                   + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                    continue
                client.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: multipart/related; type="application/dicom"; '
                               b"boundary=b\r\nContent-Length: 1000000000\r\n\r\n--b\r\n")
                while not stop.is_set():  # never a timeout, never an end
                    try:
                        client.sendall(b"x")
                    except OSError:
                        break
                    time.sleep(0.02)

    threading.Thread(target=serve, daemon=True).start()

    def close() -> None:
        stop.set()
        server.close()

    return server.getsockname()[1], close


@pytest.mark.parametrize("honour_offset", [True, False], ids=["trickling-wado", "endless-qido-pages"])
def test_a_dicomweb_pacs_that_never_finishes_is_cut_and_named(tmp_path, monkeypatch, honour_offset):
    import threading
    import time

    from pydicom.uid import generate_uid

    from fedseg.data.pacs import PacsError, load_config, pull
    from fedseg.data.pacs import dicomweb

    study = generate_uid()
    port, close = fake_dicomweb(study, honour_offset)
    monkeypatch.setattr(dicomweb, "MAX_RESPONSE_S", 1.0)
    config = tmp_path / "pacs.toml"
    config.write_text(f'[pacs]\ndicomweb = "http://127.0.0.1:{port}/dicom-web"\ntimeout_s = 0.5\n\n'
                      f'[[cases]]\nname = "c1"\nstudy = "{study}"\n')
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_pulled(pull, load_config(config), tmp_path)),
                              daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(20)
    close()
    assert not worker.is_alive(), "the pull never ended"
    assert time.monotonic() - start < 15
    assert isinstance(outcome[0], PacsError) or "c1" in outcome[0].failed, outcome
    assert not list((tmp_path / "site").rglob("*.dcm"))


def _pulled(pull, config, tmp_path):
    try:
        return pull(config, tmp_path / "site")
    except Exception as exc:  # noqa: BLE001 - the test looks at what it was
        return exc


def test_a_pacs_sending_the_same_instance_without_end_is_stopped_and_named(tmp_path, monkeypatch):
    from pydicom.uid import generate_uid
    from test_pacs import ct_instance, encoded

    import importlib

    pull_module = importlib.import_module("fedseg.data.pacs.pull")
    from fedseg.data.pacs.cache import Instance
    from fedseg.data.pacs.config import parse_config

    study, series = generate_uid(), generate_uid()
    one = ct_instance(study, series, 1)
    sent = [0]

    class Endless:
        def __init__(self, config):
            self.config = config

        def find(self, case):
            return [Instance(study, series, one.SOPInstanceUID, one.SOPClassUID)]

        def retrieve(self, case, wanted, whole, sink):
            while sent[0] < 10_000:
                sent[0] += 1
                sink(encoded(one))

    monkeypatch.setattr(pull_module, "connect", lambda config, session=None: Endless(config))
    config = parse_config({"pacs": {"dicomweb": "http://pacs.example.org/dicom-web"},
                           "cases": [{"name": "c1", "study": study}]}, Path("pacs.toml"))
    summary = pull_module.pull(config, tmp_path / "site")
    assert sent[0] < 100 and "sent 13 files for the 1 asked for" in summary.failed["c1"]


def test_predict_on_a_pulled_sites_dicom_folder_names_each_case_even_one(tmp_path):
    from fedseg.predict import _dicom_series

    dicom = tmp_path / "site" / "dicom"
    write(dicom / "case_001" / "1.2.3", 2)
    (dicom / ".pacs").mkdir()
    assert _dicom_series(dicom) == {"case_001": dicom / "case_001"}  # not one input named 'dicom'
    write(dicom / "case_002" / "1.2.4", 2, series="1.2.4")
    assert list(_dicom_series(dicom)) == ["case_001", "case_002"]
    assert list(_dicom_series(dicom / "case_001")) == ["case_001"]
    exported = tmp_path / "exported" / "dicom"  # an exported site's dicom/ with one case, no pull records
    write(exported / "case_009" / "image", 2)
    assert _dicom_series(exported) == {"case_009": exported / "case_009"}
