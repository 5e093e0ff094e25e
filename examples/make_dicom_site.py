"""Convert a NIfTI site into a DICOM site: a DICOM MR series and a DICOM SEG per case.

    python examples/make_dicom_site.py ../shared/data/msd-hippocampus runs/dicom/msd-hippocampus \
        --labels background=0,anterior=1,posterior=2

writes ``OUT/dicom/<case>/image/0001.dcm ...`` and ``OUT/dicom/<case>/label.dcm`` (one segment per
class, named after it), the layout a PACS export or ``fedseg pacs pull`` gives;
examples/hippocampus_dicom.toml trains on it exactly as examples/hippocampus_fedavg_2x2.toml trains on
the NIfTI original. Upload the files to a PACS to try ``fedseg pacs pull`` (README: "Data from a
hospital's PACS").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedseg.data.dicom.export import export_site
from fedseg.data.task import Task
from fedseg.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="a NIfTI site (images/ + labels/, nnU-Net layout or CSV manifest)")
    parser.add_argument("out", type=Path, help="the DICOM site folder to write (OUT/dicom/<case>/)")
    parser.add_argument("--labels", default="background=0,anterior=1,posterior=2",
                        help="the label values of the NIfTI files; the segments are named after the classes")
    parser.add_argument("--modality", default="MR", choices=("MR", "CT"))
    args = parser.parse_args(argv)
    try:
        task = Task({name: int(value) for name, value in (item.split("=") for item in args.labels.split(","))})
        count = export_site(args.site, args.out, task, modality=args.modality)
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} DICOM cases to {args.out / 'dicom'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
