"""Partial labels: a site annotates only some classes; its loss must not punish the others."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from fedseg.data.dataset import SiteDataset, SiteSpec
from fedseg.data.errors import DataError
from fedseg.data.preprocessing import Preprocessing
from fedseg.data.splits import SplitFractions
from fedseg.data.task import Task
from fedseg.experiment import ConfigError, parse_experiment
from fedseg.models.registry import ModelConfig
from fedseg.training.losses import build_loss
from fedseg.training.trainer import SiteTrainer, TrainingConfig
from fedseg.training.weights import get_weights
from fedseg.types import RoundConfig
from test_training import write_spheres

TASK = Task({"background": 0, "core": 1, "shell": 2}, spatial_dims=3)


@pytest.mark.parametrize("loss", ["dice_ce", "dice", "bce"])
def test_predicting_an_unannotated_class_is_not_punished(loss):
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[0, 0, :2] = 1  # core on the top half; the rest is "background" at a site without shell
    channels = 2 if loss == "bce" else 3

    def logits(rest: int) -> torch.Tensor:  # confident core on top, class ``rest`` elsewhere
        out = torch.full((1, channels, 4, 4), -8.0)
        if loss == "bce":
            out[0, 0, :2] = 8.0
            if rest:
                out[0, rest - 1, 2:] = 8.0
        else:
            out[0, 1, :2] = 8.0
            out[0, rest, 2:] = 8.0
        return out

    partial = build_loss(loss, 3, annotated=[0, 1])
    full = build_loss(loss, 3)
    assert float(partial(logits(2), label)) == pytest.approx(float(partial(logits(0), label)), abs=1e-3)
    assert float(full(logits(2), label)) > float(full(logits(0), label)) + 0.1
    wrong = torch.full((1, channels, 4, 4), -8.0)  # annotated core missed entirely: still punished
    assert float(partial(wrong, label)) > float(partial(logits(0), label)) + 0.1


def core_only_site(root, n_cases=4):
    """Spheres whose label files keep only the core (the shell is not annotated at this site)."""
    write_spheres(root, n_cases=n_cases)
    for path in (root / "labels").iterdir():
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        nib.save(nib.Nifti1Image(np.where(data == 1, 1, 0).astype(np.uint8), image.affine), path)
    return root


def test_a_site_maps_its_own_label_values_into_the_task(tmp_path):
    core_only_site(tmp_path / "site")
    spec = SiteSpec("partial", tmp_path / "site", labels={"background": 0, "core": 1})
    data = SiteDataset(spec, TASK, Preprocessing(spatial_size=(16, 16, 16)), SplitFractions(0.5, 0.0, 0.5), 0)
    assert data.annotated == [0, 1]
    assert set(np.unique(data.cases["train"][0]["label"].numpy())) == {0, 1}

    relabelled = SiteSpec("partial", tmp_path / "site", labels={"background": 0, "core": 3})
    with pytest.raises(DataError, match=r"undeclared label values \{1:"):
        SiteDataset(relabelled, TASK, Preprocessing(spatial_size=(16, 16, 16)), SplitFractions(0.5, 0.0, 0.5), 0)


def test_unannotated_classes_are_not_scored_at_that_site(tmp_path):
    core_only_site(tmp_path / "site")
    spec = SiteSpec("partial", tmp_path / "site", labels={"background": 0, "core": 1})
    data = SiteDataset(spec, TASK, Preprocessing(spatial_size=(16, 16, 16)), SplitFractions(0.5, 0.0, 0.5), 0)
    trainer = SiteTrainer(data, ModelConfig("UNet", (4, 8), num_res_units=0), TrainingConfig(local_steps=2))
    update = trainer.train(get_weights(trainer.network), RoundConfig(round=0, seed=0))
    assert math.isfinite(update.metrics["train_loss"])
    for case in trainer.evaluate(update.weights):
        assert math.isnan(case.dice["shell"]) and math.isnan(case.bbox_coverage["shell"])
        assert not math.isnan(case.dice["core"]) and case.mean_dice == case.dice["core"]


def test_site_labels_must_name_task_classes(tmp_path):
    config = {"task": {"labels": {"background": 0, "core": 1, "shell": 2}},
              "sites": [{"name": "a", "path": "x", "labels": {"background": 0, "tumour": 1}}]}
    with pytest.raises(ConfigError, match="site 'a' labels must name classes of the task"):
        parse_experiment(config)
    config["sites"][0]["labels"] = {"core": 1}
    with pytest.raises(ConfigError, match="the background 'background' included"):
        parse_experiment(config)
    config["sites"][0]["labels"] = {"background": 0, "core": 4}
    assert parse_experiment(config).sites[0].labels == {"background": 0, "core": 4}
    with pytest.raises(ConfigError, match="'centralized' arm pools all sites' labels"):
        parse_experiment({**config, "arms": ["federated", "centralized"]})
