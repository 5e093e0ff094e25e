"""External validation in simulation (``fedseg evaluate MODEL.pt EXPERIMENT.toml --out DIR``): a
model trained anywhere, scored on every site's cases and written up as a run; the forms of model
file accepted, and the refusals of everything else."""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from fedseg import cli
from fedseg.errors import UserError
from fedseg.evaluation.cross_site import read_cross_site_csv
from fedseg.experiment import parse_experiment
from fedseg.external import evaluate_simulated, load_external_model
from fedseg.plans.checks import check_weights
from fedseg.simulate import run_simulation
from fedseg.study import initial_weights
from tiny_experiment import tiny_experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short tiny run: (experiment file, run directory)."""
    root = tmp_path_factory.mktemp("external")
    config = tiny_experiment(root, rounds=1)
    path = root / "tiny.toml"
    path.write_text(tomli_w.dumps(config))
    run_simulation(parse_experiment(config), root / "run")
    return path, root / "run"


@pytest.fixture(scope="module")
def template(trained):
    return initial_weights(parse_experiment(tomllib_load(trained[0])))


def tomllib_load(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


def cli_run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    original, cli.console = cli.console, Console(file=buffer, width=300)
    try:
        return cli.main(argv), buffer.getvalue()
    finally:
        cli.console = original


def test_a_runs_own_model_scores_exactly_as_the_run_scored_it(trained, tmp_path):
    experiment_file, run = trained
    code, text = cli_run(["evaluate", str(run / "checkpoints" / "FL_global.pt"), str(experiment_file),
                          "--out", str(tmp_path / "eval")])
    assert code == 0, text
    assert "Test Dice of FL_global" in text
    assert read_cross_site_csv(tmp_path / "eval" / "cross_site.csv") == read_cross_site_csv(run / "cross_site.csv")
    ours, theirs = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "eval", run))
    assert ours["overall"] == theirs["overall"] and ours["sites"] == theirs["sites"]
    assert ours["matrix"] == theirs["matrix"]
    assert ours["external"]["file"] == "FL_global.pt" and ours["external"]["cases"] == "test"
    assert len(ours["external"]["sha256"]) == 64
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "External validation: this run trained nothing" in report and "| **overall** | 6 |" in report
    assert (tmp_path / "eval" / "checkpoints" / "FL_global.pt").is_file()


def test_all_cases_scores_every_case_of_every_site(trained, tmp_path):
    experiment_file, run = trained
    experiment = parse_experiment(tomllib_load(experiment_file))
    results = evaluate_simulated(run / "checkpoints" / "FL_global.pt", experiment, tmp_path / "all", cases="all",
                                 name="shared_model")
    assert results["model"] == "shared_model" and results["external"]["cases"] == "all"
    assert {site: s["n_cases"] for site, s in results["sites"].items()} == dict.fromkeys(results["sites"], 10)
    test_scores = {(s, c["case"]): c["mean_dice"] for s, site in json.loads((run / "results.json").read_text())[
        "sites"].items() for c in site["cases"]}
    all_scores = {(s, c["case"]): c["mean_dice"] for s, site in results["sites"].items() for c in site["cases"]}
    assert test_scores.items() <= all_scores.items()  # the test cases score as in the run


def test_an_evaluation_never_writes_into_a_run(trained):
    experiment_file, run = trained
    before = (run / "results.json").read_text()
    code, text = cli_run(["evaluate", str(run / "checkpoints" / "FL_global.pt"), str(experiment_file),
                          "--out", str(run)])
    assert code == 1 and "never writes into one" in text
    assert (run / "results.json").read_text() == before


def saved(tmp_path: Path, value, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(value, path)
    return path


def state_dict(template) -> OrderedDict:
    return OrderedDict((k, torch.from_numpy(np.array(v)) + (1 if v.dtype.kind == "f" else 0))
                       for k, v in template.items())


@pytest.mark.parametrize("wrap", [
    pytest.param(lambda sd: sd, id="plain state dict"),
    pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="lightning-style state_dict"),
    pytest.param(lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": []}}, id="ignite/MONAI model"),
    pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="DataParallel module. prefix"),
    pytest.param(lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}}, id="lightning model. prefix"),
    pytest.param(lambda sd: {f"model.module.{k}": v for k, v in sd.items()}, id="both prefixes"),
    pytest.param(lambda sd: {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}, id="float64"),
])
def test_accepted_forms_give_the_same_weights(template, tmp_path, wrap):
    expected = state_dict(template)
    weights = load_external_model(saved(tmp_path, wrap(expected)), template)
    assert list(weights) == list(template)
    for key, value in weights.items():
        assert value.dtype == template[key].dtype
        np.testing.assert_array_equal(value, expected[key].numpy().astype(template[key].dtype))


def test_monai_unet_own_model_prefix_is_not_taken_off(template):
    assert all(key.startswith("model.") for key in template)  # MONAI's UNet: why stripping is fit-driven


def test_a_model_of_another_network_is_refused_naming_the_first_keys(trained, tmp_path, template):
    config = tomllib_load(trained[0])
    other = initial_weights(parse_experiment({**config, "model": {**config["model"], "num_res_units": 2}}))
    path = saved(tmp_path, state_dict(other))
    with pytest.raises(UserError, match=r"parameter names do not fit.*not in the network.*\[model\]") as caught:
        load_external_model(path, template)
    assert str(path) in str(caught.value) and "'model." in str(caught.value)

    wider = initial_weights(parse_experiment({**config, "model": {**config["model"], "channels": [8, 16, 32]}}))
    with pytest.raises(UserError, match=r"other shapes than the experiment's network: 'model\.0\..*\[model\]"):
        load_external_model(saved(tmp_path, state_dict(wider)), template)


class Executable:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("value, message", [
    ({"weights": Executable()}, "weights_only"),
    ({"epoch": 3, "loss": 0.1}, "neither a state dict"),
    ([torch.zeros(2)], "holds a list"),
])
def test_files_that_are_not_state_dicts_are_refused(template, tmp_path, value, message, capsys):
    with pytest.raises(UserError, match=message):
        load_external_model(saved(tmp_path, value), template)
    assert "unpickled!" not in capsys.readouterr().out


def test_a_file_that_is_no_torch_file_or_missing_is_refused(template, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(UserError, match="not a file of tensors"):
        load_external_model(tmp_path / "junk.pt", template)
    with pytest.raises(UserError, match="does not exist"):
        load_external_model(tmp_path / "absent.pt", template)


def test_non_finite_weights_are_refused_as_a_site_refuses_them(template, tmp_path):
    weights = state_dict(template)
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first].view(-1)[0] = float("nan")
    with pytest.raises(UserError, match="NaN or infinite"):
        load_external_model(saved(tmp_path, weights), template)


DTYPES = [torch.float32, torch.float16, torch.int64, torch.uint8, torch.bool]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_tensor_table_is_fitted_exactly_or_refused(template, tmp_path, data):
    keys = list(template)
    chosen = data.draw(st.lists(st.sampled_from([*keys, "module.x", "model.", "", "state_dict"]), max_size=8))
    table = {}
    for key in chosen:
        shape = data.draw(st.sampled_from([template[key].shape if key in template else (1,), (), (2, 3)]))
        table[key] = torch.zeros(shape, dtype=data.draw(st.sampled_from(DTYPES)))
    if data.draw(st.booleans()):  # sometimes the whole network, then one entry spoilt or left as is
        table = {**state_dict(template), **table}
    wrap = data.draw(st.sampled_from(["plain", "state_dict", "model", "module."]))
    value = {"plain": table, "state_dict": {"state_dict": table}, "model": {"model": table, "epoch": 1},
             "module.": {f"module.{k}": v for k, v in table.items()}}[wrap]
    try:
        weights = load_external_model(saved(tmp_path, value), template)
    except UserError:
        return
    check_weights(weights, template, "model")  # accepted only as the network's own, finite weights


# -- the deployed job's pieces, without processes (the run itself: tests/test_deployment.py) ----------


def test_the_job_carries_the_model_as_arrays_and_the_coordinator_reads_them_back(trained, template, tmp_path):
    from fedseg.deployment import COMPONENTS
    from fedseg.external_deployment import MODEL_FILE, add_model, check_request, read_model
    from fedseg.runtime.flare.job import write_job
    from fedseg.runtime.flare.provision import Network

    weights = load_external_model(trained[1] / "checkpoints" / "FL_global.pt", template)
    job = write_job(tmp_path / "job", "tiny-evaluate-FL_global", "name = 'tiny'", False, 3, Network(), COMPONENTS)
    request = {"model": "FL_global", "file": "FL_global.pt", "bytes": 10, "sha256": "0" * 64, "cases": "test"}
    add_model(job, weights, request)
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    assert server["workflows"][0]["args"] == {"experiment": "name = 'tiny'", "resume": False, "evaluate": request}
    assert check_request(server["workflows"][0]["args"]["evaluate"]) == request
    back = read_model(job / "app" / "config" / MODEL_FILE, template)
    assert list(back) == list(weights) and all(np.array_equal(back[k], weights[k]) for k in weights)

    np.savez(tmp_path / "objects.npz", **{**weights, next(iter(weights)): np.array([{"x": 1}], dtype=object)})
    with pytest.raises(UserError, match="cannot be used.*(pickle|Object arrays)"):
        read_model(tmp_path / "objects.npz", template)
    np.savez(tmp_path / "short.npz", **dict(list(weights.items())[1:]))
    with pytest.raises(UserError, match="missing"):
        read_model(tmp_path / "short.npz", template)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=80),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(request=JSON | st.fixed_dictionaries({"model": JSON, "file": JSON, "bytes": JSON, "sha256": JSON,
                                             "cases": JSON | st.sampled_from(["test", "all"])}))
def test_the_jobs_evaluate_argument_is_used_only_when_it_is_one(request):
    from fedseg.external_deployment import check_request

    try:
        checked = check_request(request)
    except UserError:
        return
    assert set(checked) == {"model", "file", "bytes", "sha256", "cases"} and len(checked["sha256"]) == 64
    assert checked["cases"] in ("test", "all")


def test_deployed_evaluation_refuses_unknown_cases_and_a_run_directory_before_connecting(trained, tmp_path):
    from fedseg.external_deployment import evaluate_deployed

    experiment_file, run = trained
    experiment = parse_experiment(tomllib_load(experiment_file))
    model = run / "checkpoints" / "FL_global.pt"
    with pytest.raises(UserError, match="--cases must be one of test, all"):
        evaluate_deployed(model, experiment, tmp_path / "out", "train", None, tmp_path / "no-kit")
    with pytest.raises(UserError, match="never writes into one"):
        evaluate_deployed(model, experiment, run, "test", None, tmp_path / "no-kit")


@pytest.mark.parametrize("cases", ["train", None, 1, ["all"]])
def test_a_site_refuses_a_job_that_asks_it_to_score_other_cases(cases):
    from fedseg.deployment import Site

    with pytest.raises(TypeError, match="the cases a model is scored on"):
        Site("name = 'x'", "run", cases)


def test_a_scoring_job_for_all_cases_tells_the_sites(tmp_path):
    from fedseg.deployment import COMPONENTS
    from fedseg.runtime.flare.job import write_job
    from fedseg.runtime.flare.provision import Network

    for cases, args in (("test", {"experiment": "x", "run_name": "r"}),
                        ("all", {"experiment": "x", "run_name": "r", "cases": "all"})):
        job = write_job(tmp_path / cases, "r", "x", False, 1, Network(), COMPONENTS, cases=cases)
        client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
        assert client["executors"][0]["executor"]["args"] == args


@pytest.mark.parametrize("task", ["train", "validate", "membership", "arms", "share_model"])
def test_a_site_scoring_every_case_takes_no_task_but_join_and_evaluate(task):
    """Its training cases are test cases in that job: it must never train on them or release them."""
    from types import SimpleNamespace

    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.shareable import Shareable

    from fedseg.deployment import Site

    site = Site("name = 'x'", "run", "all")
    site.log_error = lambda *args, **kwargs: None
    reply = site.execute(task, Shareable(), SimpleNamespace(get_identity_name=lambda: "hospital_a"), None)
    assert reply.get_return_code() == ReturnCode.TASK_UNKNOWN
