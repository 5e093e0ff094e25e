"""Every option of the config dataclasses is checked for type, finiteness and range, and what they
accept is what MONAI accepts (without importing MONAI when a config is built)."""

import itertools
import math
import warnings

import pytest
import torch

from fedseg.data.preprocessing import Preprocessing, _orientation_ok
from fedseg.data.splits import SplitFractions
from fedseg.data.task import Task
from fedseg.models.registry import NETWORKS, NORMS, ModelConfig, build_network
from fedseg.runtime.round_policy import RoundPolicy
from fedseg.tables import check_range
from fedseg.training.config import TrainingConfig

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("make, message", [
    (lambda: TrainingConfig(device="tpu"), "training.device must be 'cpu', 'cuda' or 'cuda:N'"),
    (lambda: TrainingConfig(device="cuda:x"), "training.device"),
    (lambda: TrainingConfig(lr=NAN), "training.lr must be a finite number > 0, got nan"),
    (lambda: TrainingConfig(lr=INF), "training.lr must be a finite number > 0, got inf"),
    (lambda: TrainingConfig(lr=0.0), "training.lr must be a finite number > 0"),
    (lambda: TrainingConfig(weight_decay=-1e-5), "training.weight_decay"),
    (lambda: TrainingConfig(sw_overlap=5.0), "training.sw_overlap must be a finite number within [0, 1)"),
    (lambda: TrainingConfig(sw_overlap=1.0), "training.sw_overlap"),
    (lambda: TrainingConfig(sw_batch_size=0), "training.sw_batch_size must be >= 1, got 0"),
    (lambda: TrainingConfig(local_steps=0), "training.local_steps must be >= 1"),
    (lambda: TrainingConfig(optimizer_state="sometimes"), "training.optimizer_state must be one of"),
    (lambda: ModelConfig(norm="bogus"), "model.norm must be one of ('instance', 'batch'), got 'bogus'"),
    (lambda: ModelConfig(norm="group"), "model.norm must be one of"),
    (lambda: ModelConfig(dropout=NAN), "model.dropout"),
    (lambda: ModelConfig(dropout=1.0), "model.dropout must be a finite number within [0, 1)"),
    (lambda: ModelConfig(channels=(16, 0)), "model.channels: each width must be within [1, 4096], got 0"),
    (lambda: ModelConfig(num_res_units=-1), "model.num_res_units"),
    (lambda: Preprocessing(patch_size=(0, 0)), "preprocessing.patch_size: each size (voxels) must be within"),
    (lambda: Preprocessing(spatial_size=(-4, 32)), "preprocessing.spatial_size: each size (voxels)"),
    (lambda: Preprocessing(percentiles=(99.5, 0.5)), "preprocessing.percentiles must be [lower, upper] with 0 <="),
    (lambda: Preprocessing(percentiles=(0.5, 101.0)), "preprocessing.percentiles"),
    (lambda: Preprocessing(spacing=(1.0, 0.0)), "preprocessing.spacing: each value (mm) must be a finite number > 0"),
    (lambda: Preprocessing(spacing=(1.0, INF)), "preprocessing.spacing"),
    (lambda: Preprocessing(intensity="clip_rescale", clip=(250.0, -200.0)), "preprocessing.clip"),
    (lambda: Preprocessing(clip=(1.0, 2.0, 3.0)), "preprocessing.clip"),
    (lambda: Preprocessing(foreground_ratio=NAN), "preprocessing.foreground_ratio"),
    (lambda: Preprocessing(patches_per_case=0), "preprocessing.patches_per_case"),
    (lambda: Preprocessing(orientation="XYZ"), "preprocessing.orientation must be 3 letters"),
    (lambda: Preprocessing(orientation="RRS"), "preprocessing.orientation"),
    (lambda: SplitFractions(NAN, 0.5, 0.5), "split fractions must be within [0, 1] and add up to 1, got train=nan"),
    (lambda: SplitFractions(1.5, -0.5, 0.0), "split fractions must be within [0, 1]"),
    (lambda: Task({"background": 0, "organ": 2**40}), "task.labels values must be integers from 0 to"),
    (lambda: Task({"background": 0, "": 1}), "task.labels names must be non-empty"),
    (lambda: Task({"background": 0, "organ": 1}, in_channels=0), "task.in_channels"),
    (lambda: RoundPolicy(round_timeout=-1), "round_timeout must be >= 0"),
])
def test_bad_options_are_value_errors_that_name_the_option_and_value(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value)


def test_defaults_and_the_documented_choices_are_accepted():
    TrainingConfig(device="cuda:1", sw_overlap=0.0, lr=1e-3, local_steps=5)
    Preprocessing(orientation="LPI", spacing=(1.5, 1.5, 2.0), percentiles=(0.0, 100.0), patch_size=(32, 32, 16))
    Preprocessing(orientation="", intensity="clip_rescale", clip=(-200, 250))
    ModelConfig(name="BasicUNet", channels=(32, 32, 64, 128, 256, 32), norm="batch", dropout=0.1)


def test_check_range_says_the_rule():
    with pytest.raises(ValueError, match=r"^x must be within \(0, 1\], got 0$"):
        check_range("x", 0, 0, 1, above=True)
    check_range("x", 1, 0, 1, above=True)


@pytest.mark.parametrize("name", NETWORKS)
def test_the_accepted_norms_are_exactly_monais_that_build_and_run(name):
    from monai.networks.layers.factories import Norm

    channels = (4, 4, 4, 4, 4, 4) if name == "BasicUNet" else (4, 8, 16)
    working = set()
    for norm in sorted(n.lower() for n in Norm.names if n != "INSTANCE_NVFUSER"):  # needs NVIDIA apex
        config = ModelConfig(name=name, channels=channels)
        object.__setattr__(config, "norm", norm)  # past our own check, to ask MONAI
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build_network(config, 2, 1, 2)(torch.zeros(2, 1, 64, 64))
        except (TypeError, ValueError):
            continue
        working.add(norm)
    assert working - {"syncbatch"} == set(NORMS)  # syncbatch is batch norm across GPUs of one process group


def test_every_accepted_orientation_is_one_monai_applies():
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    image = MetaTensor(torch.rand(1, 2, 3, 4))
    accepted = [c for c in map("".join, itertools.product("LRAPSIX", repeat=3)) if _orientation_ok(c)]
    assert len(accepted) == 48  # 3! axis orders x 2^3 directions
    for code in accepted:
        assert sorted(Orientation(axcodes=code, labels=None)(image).shape[1:]) == [2, 3, 4]
