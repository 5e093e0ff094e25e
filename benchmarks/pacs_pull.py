"""``fedseg pacs pull`` against a real Orthanc (tests/orthanc_harness.py): seconds to pull one CT-like
study of ``--slices`` 256 x 256 uint16 slices over DICOMweb (WADO-RS, one request per series), DIMSE
C-GET and C-MOVE, against Orthanc's own REST download of the same files (GET /instances/{id}/file,
one request each: the floor of what any client pays); and the second, resumed pull (no PACS contact).

Measured 2026-11-26 on 2 shared CPU cores (load average 0.4), Orthanc 1.10.1 on 127.0.0.1, 300 slices
(39.5 MB): REST file downloads 1.33 s; DICOMweb 0.38 s (0.28 x REST, 105 MB/s), C-GET 1.28 s (0.96 x),
C-MOVE 1.81 s (1.36 x); the resumed pull 1.5-1.7 ms and 0 downloads for each (the PACS is not asked).
100 slices: DICOMweb 0.19 s, C-GET 0.70 s, C-MOVE 0.75 s against 0.51 s of REST downloads.

Run:  .venv/bin/python benchmarks/pacs_pull.py [--slices 100]
      .venv/bin/python benchmarks/pacs_pull.py --quick     # a smoke run (10 slices)
Prints numbers and ratios; never asserts. Needs Debian's orthanc and orthanc-dicomweb.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def slice_dataset(study: str, series: str, number: int, size: int) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
    ds.PatientName, ds.PatientID, ds.InstanceNumber = "Bench^Pacs", "BENCH", number
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.random.default_rng(number).integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="10 slices")
    args = parser.parse_args()
    slices = 10 if args.quick else args.slices
    from orthanc_harness import missing, running_orthanc

    from fedseg.data.pacs import load_config, pull

    if missing():
        print(f"skipped: {missing()}")
        return
    with tempfile.TemporaryDirectory() as tmp, running_orthanc(Path(tmp) / "orthanc") as orthanc:
        study, series = generate_uid(), generate_uid()
        ids = orthanc.upload(*(slice_dataset(study, series, n + 1, 256) for n in range(slices)))
        start = time.perf_counter()
        megabytes = sum(len(orthanc.rest("GET", f"/instances/{i}/file").content) for i in ids) / 1e6
        floor = time.perf_counter() - start
        print(f"{slices} slices of 256x256 ({megabytes:.1f} MB of files); Orthanc REST file downloads: {floor:.2f} s")
        os.environ["BENCH_USER"], os.environ["BENCH_PASSWORD"] = orthanc.username, orthanc.password
        case = f'\n[[cases]]\nname = "ct"\nstudy = "{study}"\n'
        configs = {
            "dicomweb": f'[pacs]\ndicomweb = "{orthanc.dicomweb}"\nusername_env = "BENCH_USER"\n'
                        'password_env = "BENCH_PASSWORD"\n',
            **{method: f'[pacs]\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\ncalled_aet = "{orthanc.aet}"\n'
                       f'calling_aet = "{orthanc.peer_aet}"\nmethod = "{method}"\n'
                       + (f"move_port = {orthanc.peer_port}\n" if method == "c-move" else "")
               for method in ("c-get", "c-move")}}
        for name, text in configs.items():
            path = Path(tmp) / f"{name}.toml"
            path.write_text(text + case)
            config = load_config(path)
            start = time.perf_counter()
            summary = pull(config, Path(tmp) / f"site_{name}")
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            again = pull(config, Path(tmp) / f"site_{name}")
            resumed = time.perf_counter() - start
            print(f"{name:9s} pull {seconds:6.2f} s ({summary.downloaded} instances, {megabytes / seconds:5.1f} MB/s,"
                  f" {seconds / floor:4.2f} x REST files); resumed pull {resumed * 1000:6.1f} ms "
                  f"({again.downloaded} downloaded)")


if __name__ == "__main__":
    main()
