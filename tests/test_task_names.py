"""Task classes found by name in DICOM SEG / RTSTRUCT / .seg.nrrd files (``task.names``)."""

from __future__ import annotations

import pytest

from fedseg.data.site_spec import SiteSpec, site_task
from fedseg.data.task import Task, name_key
from fedseg.tables import ConfigError
from fedseg.experiment import parse_experiment

from tiny_experiment import tiny_experiment


def test_a_class_declared_by_name_stores_its_position_and_is_found_by_that_name():
    task = Task({"background": 0, "liver": "Liver", "tumour": ["Tumor", "Lesion  1"]})
    assert task.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert task.names == {"liver": ("Liver",), "tumour": ("Tumor", "Lesion  1")}
    assert task.dicom_names == {"background": 0, "liver": 1, "tumor": 2, "lesion 1": 2}


def test_a_class_with_a_value_is_found_by_its_own_name_unless_names_are_given():
    assert Task({"background": 0, "liver": 7}).dicom_names == {"background": 0, "liver": 7}
    task = Task({"background": 0, "liver": 7}, names={"liver": ["LIVER_GTV", "Leber"]})
    assert task.dicom_names == {"background": 0, "liver_gtv": 7, "leber": 7}
    assert name_key("  Liver \t GTV ") == name_key("liver gtv")


@pytest.mark.parametrize("labels, names, message", [
    ({"background": 0, "a": 2, "b": "B"}, {}, r"stores the value of its position \(2\)"),
    ({"background": 0, "liver": "Liver"}, {"liver": "Other"}, "named both in task.labels and task.names"),
    ({"background": 0, "a": 1}, {"zz": "Q"}, "does not declare"),
    ({"background": 0, "a": []}, {}, "give a DICOM segment/ROI name"),
    ({"background": 0, "a": ["x" * 65]}, {}, "at most 64 characters"),
    ({"background": 0, "a": 1, "b": 2}, {"a": "Kidney", "b": " KIDNEY"}, "given to two classes"),
    ({"background": 0, "a": 3.5}, {}, "must be integers"),
])
def test_bad_names_are_refused_with_the_fix(labels, names, message):
    with pytest.raises(ValueError, match=message):
        Task(labels, names=names)


def test_names_survive_the_resolved_experiment_and_a_sites_partial_labels(tmp_path):
    data = tiny_experiment(tmp_path, task={"labels": {"background": 0, "lesion": "Lesion"}})
    experiment = parse_experiment(data)
    assert experiment.task.labels == {"background": 0, "lesion": 1}
    again = parse_experiment(experiment.to_dict())
    assert again.task == experiment.task and again.task.dicom_names == {"background": 0, "lesion": 1}
    spec = SiteSpec("a", tmp_path, labels={"background": 0, "lesion": 3})
    assert site_task(spec, experiment.task).dicom_names == {"background": 0, "lesion": 3}


def test_the_experiment_file_reports_a_bad_name_as_a_config_error(tmp_path):
    data = tiny_experiment(tmp_path, task={"labels": {"background": 0, "lesion": 1}, "names": {"lesoin": "L"}})
    with pytest.raises(ConfigError, match="lesoin"):
        parse_experiment(data)
