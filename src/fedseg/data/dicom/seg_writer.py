"""A label map written as a DICOM SEG (highdicom) that a viewer shows over its series.

The SEG refers to every image of the series (its frames to the image each segments), shares its
study, patient and frame of reference, and has one segment per foreground class, labelled with the
class's name. A prediction is AUTOMATIC with the model as its algorithm ("fedseg FL_global"); a
reference annotation converted from another format (``algorithm_name=""``) is MANUAL. Classes a
case does not show are still listed (their segment has no pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedseg.data.dicom.geometry import Series
from fedseg.data.dicom.pixels import read_dicom

SEG_SERIES_NUMBER = 9901


def write_seg(label: np.ndarray, series: Series, class_names: Sequence[str], out: Path, *, algorithm_name: str,
              algorithm_version: str, series_description: str = "fedseg segmentation",
              series_number: int = SEG_SERIES_NUMBER) -> Path:
    """``label`` (class indices on ``series``' grid: 0 background, i -> ``class_names[i - 1]``) as a
    BINARY DICOM SEG at ``out``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label = np.asarray(label)
    if label.shape != series.spatial_shape:
        raise ValueError(f"label of shape {label.shape} is not on the series' grid {series.spatial_shape}")
    if label.min() < 0 or label.max() > len(class_names):
        raise ValueError(f"label values {label.min()}..{label.max()} outside 0..{len(class_names)} (the classes)")
    frames = label[None] if label.ndim == 2 else label.transpose(2, 1, 0)  # (slices, rows, columns)
    sources = [read_dicom(path, stop_before_pixels=True) for path in series.files]
    for source in sources:  # an empty SpecificCharacterSet means the default repertoire; highdicom refuses ''
        if "SpecificCharacterSet" in source and not source.SpecificCharacterSet:
            del source.SpecificCharacterSet
    if algorithm_name:
        kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, family=codes.DCM.ArtificialIntelligence,
                                                       version=algorithm_version or "unknown")
    else:
        kind, algorithm = hd.seg.SegmentAlgorithmTypeValues.MANUAL, None
    segments = [hd.seg.SegmentDescription(segment_number=i, segment_label=name[:64],
                                          segmented_property_category=codes.SCT.Tissue,
                                          segmented_property_type=codes.SCT.Tissue,
                                          algorithm_type=kind, algorithm_identification=algorithm)
                for i, name in enumerate(class_names, start=1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.ascontiguousarray(frames, dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="fedseg", manufacturer_model_name=algorithm_name or "fedseg conversion",
        software_versions=algorithm_version or "fedseg", device_serial_number="0",
        series_description=series_description, omit_empty_frames=bool(frames.any()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out
