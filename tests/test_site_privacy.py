"""What a site logs stays at the site unless its operator allows otherwise (issue 8, finding 5).

FLARE 2.9 streams each site job's error log to the coordinator, which keeps it in its job store,
and lets the coordinator's admins read a site's files (``cat``, ``grep``, ...) and its jobs'
error messages (``show_errors``). A site's error messages name its files, and file names can
name patients. Here a site's own settings close each of those channels, and a job (written by
whoever submits it) cannot open them again.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from PIL import Image

from consortium_harness import Consortium
from fedseg import cli
from fedseg.consortium import follow, submit
from fedseg.deployment import COMPONENTS
from fedseg.experiment import load_experiment
from fedseg.runtime.flare import processes, site_process
from fedseg.runtime.flare.provision import load_project, provision, read_kit
from tiny_experiment import tiny_experiment

PATIENT_FILE = "Doe_John_19700101_MRN123456.png"
IDENTIFIERS = (b"Doe_John", b"MRN123456")


@pytest.fixture
def site_kit(tmp_path):
    project = tmp_path / "p.toml"
    project.write_text('name = "p"\n[coordinator]\nhost = "localhost"\n[[sites]]\nname = "a"\n'
                       '[[admins]]\nname = "me@lab.org"\n')
    return read_kit(provision(load_project(project), tmp_path / "kits")["a"], "site")


def local_settings(kit, name: str = "resources.json") -> dict:
    return json.loads((kit.root / "local" / name).read_text())


def test_a_site_streams_no_logs_unless_its_operator_allows_it(site_kit):
    assert local_settings(site_kit, "resources.json.default")["allow_log_streaming"] is True  # FLARE's default
    processes.configure_site(site_kit, COMPONENTS.executor)
    settings = local_settings(site_kit)
    assert settings["allow_log_streaming"] is False
    assert processes.SITE_LOG_STREAMER not in json.dumps(settings["components"])
    assert not site_process.shares_logs(site_kit.root)

    processes.configure_site(site_kit, COMPONENTS.executor, share_logs=True)
    settings = local_settings(site_kit)
    assert settings["allow_log_streaming"] is True
    assert processes.SITE_LOG_STREAMER in json.dumps(settings["components"])
    assert processes.JOB_LOG_STREAMER in settings["class_allow_list"]  # the streamer it injects into jobs
    assert site_process.shares_logs(site_kit.root)


@pytest.mark.parametrize("component", [
    processes.JOB_LOG_STREAMER,  # streams any log file of the job to the coordinator
    "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",  # would forward error-log events
    "nvflare.app_common.widgets.event_recorder.ClientEventRecorder",
])
def test_a_job_cannot_bring_its_own_log_channel(site_kit, component):
    from nvflare.apis.fl_exception import UnsafeComponentError
    from nvflare.apis.workspace import Workspace
    from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer

    workspace = Workspace(str(site_kit.root), site_kit.name)
    authorizer = ComponentPathAuthorizer()
    authorizer.authorize_component_config({"path": component}, workspace=workspace)  # FLARE's kit allows it
    processes.configure_site(site_kit, COMPONENTS.executor)
    authorizer.authorize_component_config({"path": COMPONENTS.executor}, workspace=workspace)
    with pytest.raises(UnsafeComponentError, match="not in allow_list"):
        ComponentPathAuthorizer().authorize_component_config({"path": component}, workspace=workspace)


def test_no_one_may_run_custom_code_at_a_site(site_kit):
    from nvflare.fuel.sec.authz import AuthzContext, Person
    from nvflare.security.security import FLAuthorizer

    def allowed(policy: dict, role: str, right: str) -> bool:
        person = Person("me@lab.org", "coordinator", role)
        return FLAuthorizer(site_kit.org, policy).authorize(AuthzContext(right, person, person))[0]

    assert allowed(local_settings(site_kit, "authorization.json.default"), "project_admin", "byoc")
    processes.configure_site(site_kit, COMPONENTS.executor)
    policy = local_settings(site_kit, "authorization.json")
    for role in ("project_admin", "org_admin", "lead", "member"):
        assert not allowed(policy, role, "byoc"), role
    for right in ("submit_job", "abort_job", "check_status", "download_job"):  # what a run needs
        assert allowed(policy, "project_admin", right), right


def test_the_site_refuses_admin_commands_that_read_its_files_or_errors():
    from nvflare.private.admin_defs import Message, MsgHeader, ReturnCode
    from nvflare.private.defs import InfoCollectorTopic, SysCommandTopic
    from nvflare.private.fed.client.client_req_processors import ClientRequestProcessors
    from nvflare.private.fed.client.info_coll_cmd import ClientInfoProcessor

    processors = list(ClientRequestProcessors.request_processors)
    site_process.keep_logs_here(processors)
    by_topic: dict[str, object] = {}
    for processor in processors:  # as FLARE's admin agent registers them: one processor per topic
        for topic in processor.get_topics():
            assert topic not in by_topic
            by_topic[topic] = processor
    reply = by_topic[SysCommandTopic.SHELL].process(Message(SysCommandTopic.SHELL, "cat log.txt"), app_ctx=None)
    assert reply.get_header(MsgHeader.RETURN_CODE) == ReturnCode.ERROR and "--share-logs" in reply.body
    for topic in (InfoCollectorTopic.SHOW_ERRORS, InfoCollectorTopic.RESET_ERRORS):
        reply = by_topic[topic].process(Message(topic, ""), app_ctx=None)
        assert "--share-logs" in json.loads(reply.body)["refused"]  # FLARE's server reads these replies as JSON
    assert isinstance(by_topic[InfoCollectorTopic.SHOW_STATS].flare_info, ClientInfoProcessor)


def test_share_logs_is_a_flag_of_the_site_command(site_kit, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("fedseg.consortium.os.execve", lambda *args: started.append(args))
    for flags, shared in (([], False), (["--share-logs"], True)):
        assert cli.main(["site", str(site_kit.root), "--data", str(tmp_path), *flags]) == 0
        assert local_settings(site_kit)["allow_log_streaming"] is shared
    assert len(started) == 2


# -- a real consortium ----------------------------------------------------------------------------


def holds_identifier(data: bytes) -> bool:
    """The identifiers in these bytes, or in the zip archives or gzip streams they are."""
    if any(identifier in data for identifier in IDENTIFIERS):
        return True
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return any(holds_identifier(archive.read(name)) for name in archive.namelist())
        except zipfile.BadZipFile:
            return False
    if data[:2] == b"\x1f\x8b":
        try:
            return holds_identifier(gzip.decompress(data))
        except OSError:
            return False
    return False


def files_with_identifiers(*roots: Path) -> list[str]:
    files = [path for root in map(Path, roots) for path in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return [str(path) for path in files if path.is_file() and holds_identifier(path.read_bytes())]


def site_logs(kit: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in kit.rglob("*log*.txt"))


def wait_for_site_log(kit: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in site_logs(kit):
        if time.monotonic() > deadline:
            raise TimeoutError(f"'{text}' not in the logs under {kit} after {timeout} s")
        time.sleep(0.5)


def admin_output(command) -> str:
    try:
        return repr(command())
    except Exception as exc:  # a refusal arrives as an exception from FLARE's admin API
        return repr(exc)


@pytest.mark.slow
def test_a_sites_data_error_stays_at_the_site(tmp_path):
    experiment = tiny_experiment(tmp_path, rounds=2, federation={"validate_global": False},
                                 deployment={"round_timeout": 120, "min_responses": 1, "round_retries": 0})
    clean, leaky = experiment["sites"][0], experiment["sites"][1]
    shutil.copytree(leaky["path"], tmp_path / "leaky")
    leaky["path"] = str(tmp_path / "leaky")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "leaky" / "images" / PATIENT_FILE)  # no label
    experiment["sites"], experiment["name"] = [clean, leaky], "privacy"
    (tmp_path / "privacy.toml").write_text(tomli_w.dumps(experiment))

    consortium = Consortium(tmp_path, {clean["name"]: Path(clean["path"]), leaky["name"]: Path(leaky["path"])})
    outputs: list[str] = []
    try:
        consortium.start_all()
        session, job_id = submit(load_experiment(tmp_path / "privacy.toml"), consortium.kits["admin"])
        probe = consortium.session()
        site = leaky["name"]
        wait_for_site_log(consortium.kits[site], PATIENT_FILE)  # its job still runs: its errors are held
        outputs.append(admin_output(lambda: probe.show_errors(job_id, "client", [site])))
        follow(consortium.kits["admin"], session, job_id, tmp_path / "run", on_progress=lambda job: None)
        deadline = time.monotonic() + 60
        while consortium.job_processes(site) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # FLARE uploads a finished job's error log from the site's daemon afterwards
        outputs += [admin_output(command) for command in (
            lambda: probe.cat_target(site, file=f"{job_id}/error_log.txt"),
            lambda: probe.grep_target(site, options="-n", pattern="label", file=f"{job_id}/log.txt"),
            lambda: probe.tail_target_log(site),
            lambda: probe.ls_target(site, options="-R"),
            lambda: probe.get_job_meta(job_id),
        )]
        downloads = [admin_output(lambda: probe.download_job_components(job_id)),
                     admin_output(lambda: probe.download_job_result(job_id))]
        probe.close()
    finally:
        consortium.stop()

    site_log = site_logs(consortium.kits[site])
    assert PATIENT_FILE in site_log and "image without label" in site_log  # the operator can act on it
    assert not [text for text in outputs if holds_identifier(text.encode())], outputs
    assert all("--share-logs" in text for text in outputs[:5]), outputs  # refused, with the reason
    assert not files_with_identifiers(consortium.kits["coordinator"], consortium.kits["admin"],
                                      consortium.logs / "server.log", tmp_path / "run"), downloads
