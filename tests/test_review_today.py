"""Hostile inputs to today's features (fedseg predict's inputs and outputs, ensembles on the wire, a
site's tasks with an ensemble where one model belongs): each is refused with a reason, never a crash
or a silent overwrite."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedseg.errors import UserError
from fedseg.plans.checks import UpdateRejected
from fedseg.predict import Input, collect_inputs, output_paths
from fedseg.runtime.flare import wire
from fedseg.runtime.site_app import SiteApp
from fedseg.types import RoundConfig, Update

W = {"w": np.ones(2, np.float32)}


def test_an_input_whose_name_is_not_utf8_is_refused_naming_it_printably(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Path(os.fsdecode(os.fsencode(folder) + b"/bad\xff.png")).write_bytes(b"")
    with pytest.raises(UserError, match=r"bad\\xff.*not printable UTF-8") as caught:
        collect_inputs([folder], 1)
    str(caught.value).encode("utf-8")  # the message itself can be printed


def test_an_input_that_is_only_a_suffix_is_refused(tmp_path):
    (tmp_path / ".nii.gz").write_bytes(b"")
    with pytest.raises(UserError, match="only a suffix"):
        collect_inputs([tmp_path / ".nii.gz"], 1)


def test_outputs_never_replace_their_inputs_links_or_folders(tmp_path):
    image = tmp_path / "in" / "case.nii.gz"
    image.parent.mkdir()
    image.write_bytes(b"patient image")
    item = Input("case", (image,))
    with pytest.raises(UserError, match="is the input image itself"):
        output_paths([item], image.parent, overwrite=True)
    (tmp_path / "o1" / "case.nii.gz").mkdir(parents=True)
    with pytest.raises(UserError, match="not a plain file"):
        output_paths([item], tmp_path / "o1", overwrite=True)
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "case.nii.gz").symlink_to(tmp_path / "elsewhere.nii.gz")
    with pytest.raises(UserError, match="not a plain file"):
        output_paths([item], tmp_path / "o2", overwrite=True)
    (tmp_path / "o3").mkdir()
    shutil.copy(image, tmp_path / "o3" / "case.nii.gz")
    assert output_paths([item], tmp_path / "o3", overwrite=True) == [tmp_path / "o3" / "case.nii.gz"]


@pytest.mark.parametrize("spelling", ["00", "\u0660", "+0", " 0"])  # 0 written otherwise: Arabic-Indic zero
def test_an_ensemble_member_index_has_one_spelling(spelling):
    params = {"ensemble/0/w": np.zeros(1), f"ensemble/{spelling}/w": np.ones(1), "ensemble/1/w": np.ones(1)}
    with pytest.raises(ValueError, match="names no member"):
        wire.model_from_params(params, {wire.ENSEMBLE: 2})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.builds("ensemble/{}/{}".format, st.text(max_size=3), st.sampled_from(["w", "v"])),
                       st.integers(0, 9), max_size=6))
def test_every_parameter_of_an_ensemble_message_lands_in_exactly_one_member(params):
    try:
        members = wire.model_from_params(params, {wire.ENSEMBLE: 2})
    except ValueError:
        return
    assert sorted(f"ensemble/{i}/{k}" for i, m in enumerate(members) for k in m) == sorted(params)


class Trainer:
    def weights(self):
        return dict(W)

    def train(self, weights, config):
        return Update({k: v + 1 for k, v in weights.items()}, 1, {})

    def case_losses(self, weights, split):
        return [float(sum(v.sum() for v in weights.values()))]


@pytest.mark.parametrize("task, payload", [("train", RoundConfig(round=0, seed=1)), ("membership", None)])
def test_a_task_that_trains_or_attacks_one_model_refuses_an_ensemble(task, payload):
    with pytest.raises(UpdateRejected, match="one model, not an ensemble of 2"):
        SiteApp("a", Trainer()).handle(task, [dict(W), dict(W)], payload)


def test_a_decathlon_site_whose_case_numbers_have_four_digits_is_not_read_as_channel_files(tmp_path):
    import nibabel as nib

    from fedseg.data.nnunet import nnunet_cases

    for kind in ("imagesTr", "labelsTr"):
        (tmp_path / kind).mkdir()
        for case in ("patient_0001", "patient_0002"):
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(tmp_path / kind / f"{case}.nii.gz"))
    cases, problems = nnunet_cases(tmp_path)
    assert problems == [] and [(c.name, c.channels) for c in cases] == [("patient_0001", ()), ("patient_0002", ())]
