"""PACS pull and push against a real Orthanc (tests/orthanc_harness.py): DICOMweb and DIMSE."""

from __future__ import annotations

import pytest
import requests


def test_harness_orthanc_answers_with_auth_and_dicomweb(orthanc):
    assert requests.get(orthanc.url + "/system", timeout=5).status_code == 401
    assert orthanc.rest("GET", "/system").json()["DicomAet"] == orthanc.aet
    assert orthanc.rest("GET", "/plugins").json().count("dicom-web") == 1
    assert orthanc.rest("GET", "/modalities").json() == ["fedseg"]
