"""A hostile review of the DICOM/PACS code: what a careless user or a hostile network puts in front of it
is named as a problem (never skipped silently, never accepted from the wrong party)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_dicom_series import write  # noqa: E402

from fedseg.data.dicom.scan import scan_folder  # noqa: E402
from fedseg.data.pacs.dimse import addresses, from_pacs  # noqa: E402


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX links and pipes")
def test_links_pipes_and_devices_in_a_case_folder_are_named_not_skipped(tmp_path):
    case = tmp_path / "case"
    files = write(case, 3)
    (case / "loop").symlink_to(case / "loop")
    (case / "broken").symlink_to(tmp_path / "nowhere")
    (case / "zero").symlink_to("/dev/zero")
    os.mkfifo(case / "fifo")
    (case / "sub").symlink_to(case)  # a folder link (a loop if followed)
    problems = []
    scan = scan_folder(case, problems)
    assert [sorted(v) for v in scan.series.values()] == [sorted(files)]  # the series is still read
    named = {p.path.name: p.message for p in problems}
    assert set(named) == {"loop", "broken", "zero", "fifo", "sub"}
    assert all("remove" in m for m in named.values())
    assert "not followed" in named["sub"] and "not a regular file" in named["fifo"]


def test_a_c_move_store_is_accepted_only_from_the_pacs_address():
    pacs = addresses("127.0.0.1")
    assert from_pacs("127.0.0.1", pacs) and from_pacs("::ffff:127.0.0.1", pacs)
    assert not from_pacs("10.9.8.7", pacs) and not from_pacs("127.0.0.2", pacs)
    assert not from_pacs("127.0.0.1", addresses("no-such-host.invalid"))  # unresolvable: nobody
