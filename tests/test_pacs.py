"""PACS pull and push against a real Orthanc (tests/orthanc_harness.py): DICOMweb and DIMSE."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from fedseg.cli import main
from fedseg.data.pacs import PacsError, PacsUnavailable, load_config, pull, push
from fedseg.data.pacs.config import UID, parse_config
from net import free_ports

USER_ENV, PASSWORD_ENV = "FEDSEG_TEST_PACS_USER", "FEDSEG_TEST_PACS_PASSWORD"


def ct_instance(study: str, series: str, number: int, sop: str | None = None) -> FileDataset:
    """A tiny CT slice (4x4, uint16) as a DICOM file dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Pacs", "PACS-TEST", "CT"
    ds.InstanceNumber, ds.ImagePositionPatient = number, [0.0, 0.0, float(number)]
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(16, dtype=np.uint16) + number).tobytes()
    return ds


def encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study_on(orthanc, series_sizes=(3, 2), upload=True) -> tuple[str, list[str], dict[str, pydicom.Dataset]]:
    """A new study with series of the given sizes (uploaded unless told not to): its UID, series UIDs, instances."""
    study, series = generate_uid(), [generate_uid() for _ in series_sizes]
    instances = {}
    for uid, size in zip(series, series_sizes):
        for n in range(size):
            ds = ct_instance(study, uid, n + 1)
            instances[ds.SOPInstanceUID] = ds
    if upload:
        orthanc.upload(*instances.values())
    return study, series, instances


def web_config(tmp_path, orthanc, cases: str, url: str | None = None, name: str = "pacs.toml"):
    path = tmp_path / name
    path.write_text(f'[pacs]\ndicomweb = "{url or orthanc.dicomweb}"\nusername_env = "{USER_ENV}"\n'
                    f'password_env = "{PASSWORD_ENV}"\ntimeout_s = 10\n\n{cases}')
    return path


def dimse_config(tmp_path, orthanc, cases: str, method: str, port: int | None = None, name: str = "pacs.toml"):
    move = f"move_port = {orthanc.peer_port}\n" if method == "c-move" else ""
    path = tmp_path / name
    path.write_text(f'[pacs]\nhost = "127.0.0.1"\nport = {port or orthanc.dicom_port}\ncalled_aet = "{orthanc.aet}"\n'
                    f'calling_aet = "{orthanc.peer_aet}"\nmethod = "{method}"\n{move}timeout_s = 10\n\n{cases}')
    return path


def case_toml(name: str, study: str, series: list[str] | None = None) -> str:
    listed = f"series = [{', '.join(repr(s) for s in series)}]\n" if series else ""
    return f'[[cases]]\nname = "{name}"\nstudy = "{study}"\n{listed}\n'


@pytest.fixture
def credentials(orthanc, monkeypatch):
    monkeypatch.setenv(USER_ENV, orthanc.username)
    monkeypatch.setenv(PASSWORD_ENV, orthanc.password)


class CountingSession(requests.Session):
    """Records the URL of every request it sends (QIDO-RS searches end in /instances, WADO-RS fetches not)."""

    def __init__(self):
        super().__init__()
        self.urls = []
        self.hooks["response"].append(lambda response, *args, **kwargs: self.urls.append(response.request.url))

    @property
    def count(self) -> int:
        return len(self.urls)

    @property
    def fetches(self) -> int:
        return sum(1 for url in self.urls if "/instances?" not in url and not url.endswith("/instances"))


def pulled_files(site, case: str) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in (site / "dicom" / case).glob("*/*.dcm")}


def assert_pulled_equal(site, case: str, instances: dict[str, pydicom.Dataset]) -> None:
    files = pulled_files(site, case)
    assert set(files) == set(instances)
    for sop, data in files.items():
        got = pydicom.dcmread(io.BytesIO(data))
        assert got == instances[sop]
        assert (site / "dicom" / case / got.SeriesInstanceUID / f"{sop}.dcm").is_file()
    assert not list((site / "dicom" / ".pacs" / "tmp").iterdir())


def test_harness_orthanc_answers_with_auth_and_dicomweb(orthanc):
    assert requests.get(orthanc.url + "/system", timeout=5).status_code == 401
    assert orthanc.rest("GET", "/system").json()["DicomAet"] == orthanc.aet
    assert orthanc.rest("GET", "/plugins").json().count("dicom-web") == 1
    assert orthanc.rest("GET", "/modalities").json() == ["fedseg"]


def test_dicomweb_pull_equals_the_upload_and_a_second_pull_asks_nothing(orthanc, credentials, tmp_path):
    study, _, instances = study_on(orthanc)
    config = load_config(web_config(tmp_path, orthanc, case_toml("case_a", study)))
    seen = []
    session = CountingSession()
    summary = pull(config, tmp_path / "site", lambda done, total, case: seen.append((done, total)), session)
    assert (summary.complete, summary.downloaded, summary.failed) == (1, 5, {})
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert session.fetches == 2  # one WADO-RS request per series
    assert_pulled_equal(tmp_path / "site", "case_a", instances)
    for sop, data in pulled_files(tmp_path / "site", "case_a").items():
        assert data == encoded(instances[sop])  # the very bytes uploaded
    again = CountingSession()
    summary = pull(config, tmp_path / "site", session=again)
    assert (again.count, summary.skipped, summary.downloaded) == (0, 1, 0)


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_dimse_pull_gives_the_uploaded_datasets_and_resumes_without_the_pacs(orthanc, tmp_path, method):
    study, series, instances = study_on(orthanc)
    config = load_config(dimse_config(tmp_path, orthanc, case_toml("case_d", study), method))
    summary = pull(config, tmp_path / "site")
    assert (summary.complete, summary.downloaded, summary.failed) == (1, 5, {})
    assert_pulled_equal(tmp_path / "site", "case_d", instances)
    for sop, data in pulled_files(tmp_path / "site", "case_d").items():  # the dataset as the PACS sent it
        assert pydicom.dcmread(io.BytesIO(data)).PixelData == instances[sop].PixelData
    dead = load_config(dimse_config(tmp_path, orthanc, case_toml("case_d", study), method, port=free_ports(1)[0],
                                    name="dead.toml"))
    assert pull(dead, tmp_path / "site").skipped == 1  # a complete case does not contact the PACS at all


def test_a_missing_series_is_reported_and_the_next_run_fetches_only_it(orthanc, credentials, tmp_path):
    study, series, instances = study_on(orthanc, (2, 3), upload=False)
    first = [ds for ds in instances.values() if ds.SeriesInstanceUID == series[0]]
    orthanc.upload(*first)
    config = load_config(web_config(tmp_path, orthanc, case_toml("case_m", study, series)))
    summary = pull(config, tmp_path / "site")
    assert summary.downloaded == 2 and summary.complete == 0
    assert "case_m" in summary.failed and series[1] in summary.failed["case_m"]
    orthanc.upload(*[ds for ds in instances.values() if ds.SeriesInstanceUID == series[1]])
    session = CountingSession()
    summary = pull(config, tmp_path / "site", session=session)
    assert (summary.downloaded, summary.present, summary.complete, summary.failed) == (3, 2, 1, {})
    assert session.fetches == 1  # the missing series, in one request
    assert_pulled_equal(tmp_path / "site", "case_m", instances)


@pytest.mark.parametrize("method", ["dicomweb", "c-get", "c-move"])
def test_a_pull_killed_after_some_instances_completes_with_only_the_rest(orthanc, credentials, tmp_path, method):
    study, _, instances = study_on(orthanc, (4,))
    cases = case_toml("case_k", study)
    path = web_config(tmp_path, orthanc, cases) if method == "dicomweb" else dimse_config(tmp_path, orthanc, cases,
                                                                                         method)
    config = load_config(path)

    def stop_after_two(done, total, case):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull(config, tmp_path / "site", stop_after_two)
    assert len(pulled_files(tmp_path / "site", "case_k")) == 2
    summary = pull(config, tmp_path / "site")
    assert (summary.downloaded, summary.present, summary.complete) == (2, 2, 1)
    assert_pulled_equal(tmp_path / "site", "case_k", instances)


def test_wrong_credentials_name_the_environment_variables(orthanc, credentials, tmp_path, monkeypatch, capsys):
    study, _, _ = study_on(orthanc, (1,))
    path = web_config(tmp_path, orthanc, case_toml("case_c", study))
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(PacsUnavailable, match=f"{USER_ENV} and {PASSWORD_ENV}"):
        pull(load_config(path), tmp_path / "site")
    monkeypatch.delenv(PASSWORD_ENV)
    assert main(["pacs", "pull", str(path), "--site", str(tmp_path / "site")]) == 1
    out = capsys.readouterr().out
    assert f"{PASSWORD_ENV} is not set" in out and "Traceback" not in out


def test_unknown_study_names_the_case_and_the_uid_and_unreachable_names_the_address(orthanc, credentials,
                                                                                     tmp_path, capsys):
    study, _, instances = study_on(orthanc, (1,))
    unknown = generate_uid()
    path = web_config(tmp_path, orthanc, case_toml("case_ok", study) + case_toml("case_gone", unknown))
    assert main(["pacs", "pull", str(path), "--site", str(tmp_path / "site")]) == 1
    out = capsys.readouterr().out.replace("\n", "")
    assert "case 'case_gone': study " + unknown in out and "1 of 2 case(s) complete" in out
    assert_pulled_equal(tmp_path / "site", "case_ok", instances)
    dead = f"http://127.0.0.1:{free_ports(1)[0]}/dicom-web"
    with pytest.raises(PacsUnavailable, match=f"cannot reach the PACS at {dead}"):
        pull(load_config(web_config(tmp_path, orthanc, case_toml("x", unknown), dead, "dead.toml")), tmp_path / "s")
    dimse = load_config(dimse_config(tmp_path, orthanc, case_toml("case_gone", unknown), "c-get"))
    assert "case_gone" in pull(dimse, tmp_path / "site2").failed


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_pacs_sending_a_path_as_uid_writes_nothing_outside(orthanc, credentials, tmp_path):
    study, series = generate_uid(), generate_uid()
    orthanc.upload(ct_instance(study, series, 1, sop="1.2.3/../../../evil"))
    summary = pull(load_config(web_config(tmp_path, orthanc, case_toml("case_h", study))), tmp_path / "site")
    assert "SOPInstanceUID" in summary.failed["case_h"] and "is not a DICOM UID" in summary.failed["case_h"]
    assert not [p for p in tmp_path.rglob("*evil*")]


@pytest.mark.parametrize("method", ["dicomweb", "c-store"])
def test_push_then_reread_from_orthanc_equals_the_file(orthanc, credentials, tmp_path, method, capsys):
    files = []
    for n in range(2):
        ds = ct_instance(generate_uid(), generate_uid(), n + 1)
        files.append(tmp_path / f"seg_{n}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    cases = case_toml("unused", "1.2.3")
    path = web_config(tmp_path, orthanc, cases) if method == "dicomweb" else dimse_config(tmp_path, orthanc, cases,
                                                                                         "c-get")
    summary = push(load_config(path), files[:1])
    assert [s.path for s in summary.stored] == files[:1]
    assert main(["pacs", "push", str(path), str(files[1])]) == 0
    assert "1 file(s) stored" in capsys.readouterr().out
    for file in files:
        original = pydicom.dcmread(file)
        assert orthanc.dataset(original.SOPInstanceUID) == original
    with pytest.raises(PacsError, match="not a DICOM file"):
        push(load_config(path), [path])


# --- the site's PACS file: every hostile value is a PacsError naming the file, the key and the fix ---------
PATH = Path("site_pacs.toml")
GOOD_PACS = {"dicomweb": "http://127.0.0.1:8042/dicom-web"}
HOSTILE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300),
                    st.just("1.2/../../etc"), st.just(".."), st.just("1." * 40 + "1"), st.just("9" * 10_000),
                    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                                                max_size=2))


def parsed(pacs: dict | None = None, cases: object = None):
    raw = {"pacs": GOOD_PACS if pacs is None else pacs,
           "cases": [{"name": "case_1", "study": "1.2.3"}] if cases is None else cases}
    return parse_config(raw, PATH)


@settings(max_examples=150, deadline=None)
@given(name=HOSTILE, study=HOSTILE, series=st.one_of(HOSTILE, st.lists(HOSTILE, max_size=3)))
def test_hostile_case_values_are_refused_naming_the_file_or_accepted_as_safe(name, study, series):
    try:
        config = parsed(cases=[{"name": name, "study": study, "series": series}])
    except PacsError as exc:
        assert str(exc).startswith("site_pacs.toml: [[cases]] #1") and len(str(exc)) < 600
        return
    case = config.cases[0]
    assert "/" not in case.name and not case.name.startswith(".")
    for uid in (case.study, *case.series):
        assert UID.fullmatch(uid) and len(uid) <= 64


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(["dicomweb", "username_env", "password_env", "ca_bundle", "timeout_s", "host", "port",
                            "called_aet", "calling_aet", "method", "move_port", "move_aet"]), value=HOSTILE)
def test_hostile_pacs_values_are_refused_with_the_file_and_key(key, value):
    dimse = {"host": "pacs.example.org", "port": 104, "called_aet": "PACS", "calling_aet": "FEDSEG"}
    base = dict(GOOD_PACS) if key in ("dicomweb", "username_env", "password_env", "ca_bundle") else dimse
    try:
        config = parsed({**base, key: value})
    except PacsError as exc:
        assert str(exc).startswith("site_pacs.toml:") and len(str(exc)) < 600
        return
    assert config.timeout_s > 0 and (config.dicomweb or 1 <= config.port <= 65535)


@pytest.mark.parametrize("pacs, cases, message", [
    ({**GOOD_PACS, "password": "hunter2"}, None, "password is written in the file.*environment variable"),
    ({**GOOD_PACS, "username_env": "U"}, None, "give both username_env and password_env"),
    ({"dicomweb": "http://user:pw@pacs/dicom-web"}, None, "credentials in its address"),
    ({"dicomweb": "ftp://pacs/dicom-web"}, None, "not an http\\(s\\) address"),
    ({**GOOD_PACS, "colour": 1}, None, "unknown key 'colour' in \\[pacs\\]"),
    ({"host": "pacs", "port": 104}, None, "DIMSE needs called_aet, calling_aet"),
    ({"host": "pacs", "port": 104, "called_aet": "PACS", "calling_aet": "A" * 17}, None, "calling_aet.*AE title"),
    ({"host": "pacs", "port": 104, "called_aet": "P", "calling_aet": "F", "method": "c-move"}, None, "move_port"),
    (None, [], "no \\[\\[cases\\]\\]"),
    (None, [{"name": "a", "study": "1.2"}, {"name": "a", "study": "1.3"}], "'a' is used twice"),
    (None, [{"name": "a", "study": "1.2"}, {"name": "b", "study": "1.2", "series": ["1.2.1"]}],
     "also pulled by case 'a'"),
    (None, [{"name": "a", "study": "1.2", "series": ["1.2.1", "1.2.1"]}], "listed twice"),
    (None, [{"name": "../up", "study": "1.2"}], "not a valid name"),
    (None, [{"name": "a", "study": "1.2", "series": ["1.2/../x"]}], "'a'\\) series: '1.2/../x' is not a DICOM UID"),
    (None, [{"name": "a", "study": "1." + "2" * 70}], "is not a DICOM UID"),
])
def test_config_errors_say_what_to_fix(pacs, cases, message):
    with pytest.raises(PacsError, match=message):
        parsed(pacs, cases)


def test_a_pacs_file_is_read_from_toml_and_its_errors_name_it(tmp_path):
    path = tmp_path / "pacs.toml"
    path.write_text('[pacs]\nhost = "pacs.example.org"\nport = 104\ncalled_aet = "PACS"\ncalling_aet = "FEDSEG"\n'
                    'method = "c-move"\nmove_port = 11112\n\n[[cases]]\nname = "c1"\nstudy = "1.2.3"\n')
    config = load_config(path)
    assert (config.move_aet, config.cases[0].series, config.address) == ("FEDSEG", (), "PACS@pacs.example.org:104")
    path.write_text("[pacs\n")
    with pytest.raises(PacsError, match="pacs.toml is not valid TOML"):
        load_config(path)
    with pytest.raises(PacsError, match="cannot read the PACS file"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_received_file_of_another_study_or_series_is_refused_and_not_written(tmp_path):
    from fedseg.data.pacs.cache import SiteCache
    from fedseg.data.pacs.config import Case

    study, series = generate_uid(), generate_uid()
    cache, case = SiteCache(tmp_path / "site"), Case("c1", study, (series,))
    for ds, what in ((ct_instance(generate_uid(), series, 1), "not asked for"),
                     (ct_instance(study, generate_uid(), 1), "not asked for"),
                     (ct_instance(study, series, 1, sop="1.2.3/../../x"), "is not a DICOM UID")):
        with pytest.raises(PacsError, match=what):
            cache.accept(case, encoded(ds), {series}, "test")
    with pytest.raises(PacsError, match="not a DICOM file"):
        cache.accept(case, b"HTTP/1.1 500 oops", {series}, "test")
    assert not list((tmp_path / "site").rglob("*.dcm"))
    good = ct_instance(study, series, 1)
    assert cache.accept(case, encoded(good), {series}, "test").sop == good.SOPInstanceUID
    assert cache.present(case) == {(series, good.SOPInstanceUID)}


def test_a_pacs_that_never_answers_is_a_timeout_error_naming_the_setting(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv(USER_ENV, "u")
    monkeypatch.setenv(PASSWORD_ENV, "p")
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        web = tmp_path / "web.toml"
        web.write_text(f'[pacs]\ndicomweb = "http://127.0.0.1:{port}/dicom-web"\nusername_env = "{USER_ENV}"\n'
                       f'password_env = "{PASSWORD_ENV}"\ntimeout_s = 0.3\n\n{case_toml("c", "1.2.3")}')
        with pytest.raises(PacsUnavailable, match="no answer within timeout_s = 0.3 s.*raise timeout_s"):
            pull(load_config(web), tmp_path / "site")
        dimse = tmp_path / "dimse.toml"
        dimse.write_text(f'[pacs]\nhost = "127.0.0.1"\nport = {port}\ncalled_aet = "PACS"\ncalling_aet = "ME"\n'
                         f'timeout_s = 0.3\n\n{case_toml("c", "1.2.3")}')
        with pytest.raises(PacsUnavailable, match="cannot reach the PACS at DICOM PACS@127.0.0.1.*timeout 0.3 s"):
            pull(load_config(dimse), tmp_path / "site")


def without_group_lengths(dataset: pydicom.Dataset) -> pydicom.Dataset:
    for tag in [t for t in dataset.keys() if t.element == 0]:
        del dataset[tag]
    return dataset


REAL_CT_SEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "ct-liver-seg"


@pytest.mark.real_data
@pytest.mark.parametrize("method", ["dicomweb", "c-get"])
def test_a_real_ct_and_its_seg_pulled_are_the_files_uploaded_and_a_dicom_site_case(orthanc, credentials, tmp_path,
                                                                                  method):
    if not REAL_CT_SEG.is_dir():
        pytest.skip(f"real DICOM not found at {REAL_CT_SEG} (../shared/data/dicom from the repository root)")
    files = sorted(REAL_CT_SEG.rglob("*.dcm"))
    orthanc.upload(*files)
    originals = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in files}
    study = next(iter(originals.values())).StudyInstanceUID
    cases = case_toml("liver", study)
    path = web_config(tmp_path, orthanc, cases) if method == "dicomweb" else dimse_config(tmp_path, orthanc, cases,
                                                                                         method)
    summary = pull(load_config(path), tmp_path / "site")
    assert (summary.downloaded, summary.complete) == (4, 1)  # 3 CT slices and the SEG, in their series folders
    pulled = {p.stem: p for p in (tmp_path / "site" / "dicom" / "liver").glob("*/*.dcm")}
    assert pulled.keys() == originals.keys()
    for sop, file in pulled.items():
        if method == "dicomweb":  # WADO-RS in the stored transfer syntax: the very file that was uploaded
            assert file.read_bytes() == Path(originals[sop].filename).read_bytes()
        else:  # DIMSE sends the data set without its (retired, optional) group lengths
            assert without_group_lengths(pydicom.dcmread(file)) == without_group_lengths(originals[sop])
    from fedseg.data.dicom.scan import scan_folder

    problems = []
    scan = scan_folder(tmp_path / "site" / "dicom" / "liver", problems)
    assert (len(scan.series), len(scan.labels), problems) == (1, 1, [])


def test_a_pacs_file_only_for_pushing_may_leave_out_cases_but_a_pull_needs_them(tmp_path):
    path = tmp_path / "push.toml"
    path.write_text('[pacs]\ndicomweb = "http://127.0.0.1:8042/dicom-web"\n')
    assert load_config(path, cases=False).cases == ()
    with pytest.raises(PacsError, match=r"no \[\[cases\]\]"):
        load_config(path)
    path.write_text('[pacs]\ndicomweb = "http://127.0.0.1:8042/dicom-web"\n[[cases]]\nname = "a/b"\nstudy = "1.2"\n')
    with pytest.raises(PacsError, match="a/b"):
        load_config(path, cases=False)  # cases that are there are still checked
