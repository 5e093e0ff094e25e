"""A site restarted whole during a deployed job gets the job again (``server_process``), and the
job's process takes the site's new token (``FlareController.sync_sites``): the decisions, on
FLARE's own data structures without processes. The real thing (a site SIGKILLed and started
again mid-run) is ``test_deployment.py::test_a_site_killed_and_restarted_rejoins_the_running_job``."""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from nvflare.apis.client import Client
from nvflare.apis.fl_constant import RunProcessKey
from nvflare.apis.job_def import JobMetaKey, RunStatus
from nvflare.private.fed.server.client_manager import ClientManager

from fedseg.runtime.flare import server_process
from fedseg.runtime.flare.controller import FlareController
from fedseg.runtime.flare.server_process import Rejoins, _list_participant, _rejoin, jobs_to_rejoin

JOB = "job-1"


def coordinator(logged_in: dict[str, str], participants: dict[str, str], job_status=RunStatus.RUNNING,
                aborted: bool = False):
    """A coordinator's main process as FLARE keeps it: clients logged in now (token -> name) and
    one running job's participants at its start (token -> name)."""
    manager = ClientManager()
    manager.set_clients({token: Client(name, token) for token, name in logged_in.items()})
    running = SimpleNamespace(run_aborted=aborted, deploy_map={"app": ["@ALL"]}, meta={})
    stored = SimpleNamespace(meta={JobMetaKey.STATUS: job_status})
    engine = SimpleNamespace(
        run_processes={JOB: {RunProcessKey.PARTICIPANTS: {t: Client(n, t) for t, n in participants.items()}}},
        exception_run_processes={}, lock=threading.Lock(), new_context=contextlib.nullcontext,
        job_runner=SimpleNamespace(running_jobs={JOB: running}),
        get_component=lambda name: SimpleNamespace(get_job=lambda job_id, ctx: stored))
    return SimpleNamespace(client_manager=manager, engine=engine)


def test_a_participant_back_under_a_new_token_without_the_job_is_found():
    server = coordinator({"new": "hospital_a", "b": "hospital_b"}, {"old": "hospital_a", "b": "hospital_b"})
    assert jobs_to_rejoin(server, "hospital_a", "new", []) == [JOB]


def test_nothing_is_redeployed_for_a_site_that_runs_the_job_or_kept_its_token():
    server = coordinator({"new": "hospital_a", "b": "hospital_b"}, {"old": "hospital_a", "b": "hospital_b"})
    assert jobs_to_rejoin(server, "hospital_a", "new", [JOB]) == []  # its job process runs
    assert jobs_to_rejoin(server, "hospital_b", "b", []) == []  # only its job process died: FLARE's drop-out


def test_a_site_that_was_not_a_participant_is_never_added():
    server = coordinator({"new": "hospital_a", "x": "hospital_x"}, {"b": "hospital_b"})
    assert jobs_to_rejoin(server, "hospital_a", "new", []) == []
    assert jobs_to_rejoin(server, "hospital_x", "x", []) == []


def test_a_token_that_is_unknown_or_of_another_site_names_no_one():
    server = coordinator({"new": "hospital_a", "b": "hospital_b"}, {"old": "hospital_a", "b": "hospital_b"})
    assert jobs_to_rejoin(server, "hospital_a", "forged", []) == []
    assert jobs_to_rejoin(server, "hospital_a", "b", []) == []  # hospital_b's token claiming hospital_a
    assert jobs_to_rejoin(server, "hospital_a", "old", []) == []  # the dead process's token


@given(site=st.one_of(st.none(), st.integers(), st.text(max_size=12)),
       token=st.one_of(st.none(), st.integers(), st.text(max_size=8)),
       reported=st.one_of(st.none(), st.text(max_size=5), st.lists(st.one_of(st.text(max_size=6), st.integers(),
                                                                              st.none()), max_size=5)))
def test_any_heartbeat_headers_only_ever_name_a_job_the_logged_in_site_took_part_in(site, token, reported):
    server = coordinator({"new": "hospital_a", "b": "hospital_b"}, {"old": "hospital_a", "c": "hospital_c"})
    found = jobs_to_rejoin(server, site, token, reported)
    assert found in ([], [JOB])
    if found:
        assert (site, token) == ("hospital_a", "new") and JOB not in reported


def test_each_login_is_given_the_job_once():
    rejoins = Rejoins()
    assert rejoins.first(JOB, "new") and not rejoins.first(JOB, "new")
    assert rejoins.first(JOB, "newer")  # restarted again: another try


def test_the_new_token_replaces_the_old_one_in_a_new_participants_dict():
    server = coordinator({"new": "hospital_a", "b": "hospital_b"}, {"old": "hospital_a", "b": "hospital_b"})
    before = server.engine.run_processes[JOB][RunProcessKey.PARTICIPANTS]
    assert _list_participant(server, JOB, "hospital_a", "new")
    after = server.engine.run_processes[JOB][RunProcessKey.PARTICIPANTS]
    assert after is not before and {t: c.name for t, c in after.items()} == {"new": "hospital_a", "b": "hospital_b"}
    server.engine.run_processes.clear()  # the job ended meanwhile
    assert not _list_participant(server, JOB, "hospital_a", "new")


def test_a_job_that_ended_or_is_aborting_is_not_redeployed():
    for server in (coordinator({"new": "hospital_a"}, {"old": "hospital_a"}, job_status=RunStatus.FINISHED_COMPLETED),
                   coordinator({"new": "hospital_a"}, {"old": "hospital_a"}, aborted=True)):
        assert "no longer running" in _rejoin(server, JOB, "hospital_a", "new")
        assert set(server.engine.run_processes[JOB][RunProcessKey.PARTICIPANTS]) == {"old"}


def test_a_failed_redeployment_is_logged_not_raised(caplog):
    server = coordinator({"new": "hospital_a"}, {"old": "hospital_a"})
    server.engine.job_runner = None  # anything going wrong in the background thread
    server_process.rejoin(server, JOB, "hospital_a", "new")
    assert "hospital_a came back during job job-1: failed" in caplog.text


def job_process(started_with: dict[str, str], main_process_answers):
    """The job's process as FLARE starts it: the tokens learnt at its start, and its request to
    the main process for the current ones."""
    controller = FlareController("experiment")
    manager = ClientManager()
    manager.set_clients({token: Client(name, token) for token, name in started_with.items()})
    asked = []
    controller.engine = SimpleNamespace(client_manager=manager,
                                        _retrieve_clients_data=lambda job: asked.append(job) or main_process_answers())
    controller.fl_ctx = SimpleNamespace(get_job_id=lambda: JOB)
    return controller, manager, asked


def test_the_job_process_takes_a_restarted_sites_new_token_at_most_once_a_second():
    answer = {"new": Client("hospital_a", "new"), "b": Client("hospital_b", "b")}
    controller, manager, asked = job_process({"old": "hospital_a", "b": "hospital_b"}, lambda: answer)
    controller.sync_sites()
    assert set(manager.clients) == {"new", "b"} and manager.get_client_from_name("hospital_a").token == "new"
    controller.sync_sites()
    assert asked == [JOB]


def test_the_job_process_never_takes_a_site_it_did_not_start_with_or_a_malformed_answer():
    for answer in ({"x": Client("hospital_x", "x"), "b": Client("hospital_b", "b")},  # another site
                   {"b2": Client("hospital_b", "b")},  # a token that is not the client's
                   {"b": "hospital_b"}, None, {}):
        controller, manager, _ = job_process({"old": "hospital_a", "b": "hospital_b"}, lambda: answer)
        controller.sync_sites()
        assert set(manager.clients) == {"old", "b"}, answer
