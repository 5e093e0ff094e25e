"""GPUs and threads (issue 11, items 5 and 6), tested where CUDA is absent: the placement and option
logic runs with ``torch.cuda``'s answers monkeypatched; every training here is real and on the CPU."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import subprocess
import sys
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_experiment import tiny_experiment

from fedseg.errors import UserError
from fedseg.experiment import parse_experiment
from fedseg.runtime.flare.processes import DEVICE_ENV, site_resources
from fedseg.study import initial_weights, load_site, site_app
from fedseg.tables import ConfigError
from fedseg.training.config import TrainingConfig
from fedseg.training.devices import Precision, placed_device, reproducible, site_training
from fedseg.training.losses import build_loss
from fedseg.training.trainer import SiteTrainer, build_site_network
from fedseg.training.weights import get_weights, set_weights
from fedseg.types import RoundConfig

SITES = ["a", "b", "c", "d", "e"]


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: this process sees n CUDA GPUs (0: none), as far as placement asks."""
    def see(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return see


def test_auto_is_the_default_the_file_keeps_it_and_a_cpu_machine_trains_on_the_cpu(tmp_path, gpus):
    gpus(0)
    assert TrainingConfig().device == "auto"
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=1))
    assert experiment.to_dict()["training"]["device"] == "auto" and 'device = "auto"' in experiment.to_toml()
    data = load_site(experiment, experiment.sites[0])
    trainer = site_app(experiment, data).trainer
    assert trainer.device == torch.device("cpu") and trainer.config.device == "cpu"
    assert next(trainer.network.parameters()).device.type == "cpu"


def test_sites_spread_over_the_gpus_by_their_position(gpus):
    gpus(3)
    for requested in ("auto", "cuda"):
        assert [placed_device(requested, s, SITES) for s in SITES] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert placed_device("auto", "pooled", SITES) == "cuda:0"  # not a site of the list (the pooled arm)
    assert [placed_device("cuda:2", s, SITES) for s in SITES] == ["cuda:2"] * 5
    assert placed_device("cpu", "c", SITES) == "cpu"
    gpus(1)
    assert {placed_device("auto", s, SITES) for s in SITES} == {"cuda:0"}


def test_a_gpu_that_is_not_there_is_refused_naming_the_site_and_the_gpus(tmp_path, gpus):
    gpus(0)
    assert placed_device("auto", "b", SITES) == "cpu"
    for requested in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"site b: training.device = '{requested}' but no CUDA GPU is visible"):
            placed_device(requested, "b", SITES)
    gpus(2)
    with pytest.raises(ValueError, match=r"site b: --device = 'cuda:2' but this machine has 2 visible GPU\(s\) "
                                         r"\(cuda:0 to cuda:1\)"):
        placed_device("cuda:2", "b", SITES, what="--device")
    gpus(0)  # the site's own --device reaches its app, and is checked before the network is built
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=1))
    name, data = experiment.sites[0].name, load_site(experiment, experiment.sites[0])
    with pytest.raises(UserError, match=f"site {name}: --device = 'cuda:1' but no CUDA GPU"):
        site_app(experiment, data, device="cuda:1")
    with pytest.raises(UserError, match=f"site {name}: training.device = 'cuda' but no CUDA GPU"):
        site_app(dataclasses.replace(experiment, training=TrainingConfig(device="cuda")), data)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=12))
def test_any_device_text_is_placed_or_refused_with_a_message(text):
    try:
        with mock.patch.object(torch.cuda, "is_available", lambda: False):
            placed = placed_device(text, "site_a")
    except ValueError as exc:
        assert str(exc).startswith("site site_a: training.device")
    else:
        assert placed == "cpu" and text in ("auto", "cpu")
    try:
        TrainingConfig(device=text)
    except ValueError as exc:
        assert "training.device must be 'cpu', 'cuda' or 'cuda:N'" in str(exc)
    else:
        assert text in ("auto", "cpu", "cuda") or text.startswith("cuda:")


def test_amp_is_refused_with_a_cpu_device_and_dropped_where_auto_finds_no_gpu(tmp_path, gpus):
    with pytest.raises(ValueError, match="training.amp = true needs a GPU, but training.device = 'cpu'"):
        TrainingConfig(amp=True, device="cpu")
    with pytest.raises(ValueError, match="training.amp must be true or false"):
        TrainingConfig(amp="yes")
    with pytest.raises(ConfigError, match="training.amp = true needs a GPU"):
        parse_experiment(tiny_experiment(tmp_path, training={"amp": True, "device": "cpu"}))
    config = TrainingConfig(amp=True)
    gpus(0)
    with pytest.warns(UserWarning, match="site a: training.amp = true is ignored on the CPU"):
        resolved = site_training(config, "a")
    assert (resolved.device, resolved.amp) == ("cpu", False)
    gpus(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = site_training(config, "b", sites=SITES)
    assert (resolved.device, resolved.amp) == ("cuda:1", True)
    assert not Precision(torch.device("cpu"), True).enabled and Precision(torch.device("cuda:0"), True).enabled


def test_reproducible_sets_cudnn_for_cuda_only_and_restores_it():
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        with reproducible(torch.device("cpu")):
            assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
        with reproducible(torch.device("cuda:1")):
            assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def test_a_cpu_round_is_a_plain_torch_loop_bit_for_bit(tmp_path, gpus):
    """device = "cpu", "auto" (no GPU) and "auto" with amp (ignored) train exactly as a hand-written
    loop with the trainer's seed, batches, loss and Adam: nothing of AMP or placement on the CPU."""
    gpus(0)
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=1, training={"validate_local": False}))
    data = load_site(experiment, experiment.sites[0])
    start, round = initial_weights(experiment), RoundConfig(round=0, seed=11)
    training = experiment.training

    network = build_site_network(experiment.model, experiment.task, training.loss)
    set_weights(network, start)
    loss_fn = build_loss(training.loss, experiment.task.n_classes, data.annotated)
    optimizer = torch.optim.Adam(network.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    torch.manual_seed(round.seed)
    network.train()
    loader = data.train_loader(training.batch_size, round.seed)
    cycles = math.ceil(training.local_steps / len(loader))
    for batch in itertools.islice(itertools.chain.from_iterable(loader for _ in range(cycles)), training.local_steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(batch["image"]), batch["label"])  # plain tensors
        loss.backward()
        optimizer.step()
    plain = get_weights(network)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # amp ignored on the CPU
        for config in (dataclasses.replace(training, device="cpu"), training, dataclasses.replace(training, amp=True)):
            trained = SiteTrainer(data, experiment.model, config).train(start, round).weights
            assert all(np.array_equal(trained[k], plain[k]) for k in plain), config.device


@pytest.mark.slow
def test_threads_reach_the_site_process_and_a_leftover_device_does_not(tmp_path, monkeypatch, gpus):
    monkeypatch.setenv(DEVICE_ENV, "cuda:3")  # left over in the operator's shell: not this start's choice
    environment = site_resources({**os.environ, "OMP_NUM_THREADS": "2"}, "site_a", threads=1)
    assert DEVICE_ENV not in environment
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=environment,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1", out.stderr[-2000:]  # torch uses no more threads than cores: 1 shows it
    assert site_resources({}, "site_a", device="cpu")[DEVICE_ENV] == "cpu"
    for threads in (0, -1, 1025, True, 2.5, "3"):
        with pytest.raises(ValueError, match="--threads must be a whole number from 1 to 1024"):
            site_resources({}, "site_a", threads=threads)
    gpus(0)
    with pytest.raises(ValueError, match="site site_a: --device = 'cuda:1' but no CUDA GPU"):
        site_resources({}, "site_a", device="cuda:1")
    with pytest.raises(ValueError, match="site site_a: --device must be auto, cpu, cuda or cuda:N"):
        site_resources({}, "site_a", device="tpu")


@pytest.mark.slow
def test_fedseg_site_refuses_a_missing_gpu_and_bad_threads_before_starting(tmp_path, capsys, gpus):
    from consortium_harness import write_project

    from fedseg.cli import main
    from fedseg.runtime.flare.provision import load_project, provision

    gpus(0)
    kits = provision(load_project(write_project(tmp_path / "p.toml", "p", ["hospital_a"], [1, 2])), tmp_path / "kits")
    kit = str(kits["hospital_a"])
    assert main(["site", kit, "--data", str(tmp_path), "--device", "cuda:1"]) != 0
    assert main(["site", kit, "--data", str(tmp_path), "--threads", "0"]) != 0
    out = capsys.readouterr().out
    assert "site hospital_a: --device = 'cuda:1' but no CUDA GPU" in out and "--threads must be a whole" in out
    assert not (kits["hospital_a"] / "local" / "resources.json").exists()  # refused before anything was written


def test_a_deployed_site_trains_where_its_operator_said(tmp_path, monkeypatch, gpus):
    """``fedseg site --device`` reaches the site's app through its job process's environment."""
    from fedseg.deployment import Site

    gpus(0)
    experiment = parse_experiment(tiny_experiment(tmp_path, rounds=1))
    spec = experiment.sites[1]
    site = Site(experiment.to_toml())
    monkeypatch.setenv(DEVICE_ENV, "cuda:1")
    with pytest.raises(UserError, match=f"site {spec.name}: --device = 'cuda:1' but no CUDA GPU"):
        site.make_site_app(spec.name, spec.path, tmp_path / "state", None)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert site.make_site_app(spec.name, spec.path, tmp_path / "state", None).trainer.device == torch.device("cpu")


def test_a_run_saved_on_one_device_resumes_on_another_but_not_with_other_training(tmp_path):
    """Where a run trains is the machine's business: a run saved with device = "cpu" (or before
    "auto" was the default) goes on with "auto"; any other training setting is another experiment."""
    from fedseg.errors import UserError
    from fedseg.runtime.run_directory import RunDirectory
    from fedseg.study import prepare_run_dir
    from tiny_experiment import tiny_experiment

    def experiment(**training):
        return parse_experiment(tiny_experiment(tmp_path, training=training))

    run_dir = RunDirectory(tmp_path / "run")
    prepare_run_dir(run_dir, experiment(device="cpu"), resume=False)
    prepare_run_dir(run_dir, experiment(device="auto"), resume=True)
    with pytest.raises(UserError, match="differs from the experiment given"):
        prepare_run_dir(run_dir, experiment(device="auto", lr=0.5), resume=True)
