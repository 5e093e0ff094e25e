"""One input image through a trained model and back onto its own grid (``fedseg predict``).

The steps are the ones the run used, not copies: the reader (``data.case_files.read_image``), the
channel rules (``data.loading``), the deterministic preprocessing (``data.preprocessing``), the
size guard against a header spacing that would blow up resampling (``data.dataset``), the
trainer's prediction of one model or an ensemble (``training.inference.predict_labels``). The
spatial steps are undone by MONAI's ``Invertd`` with nearest-neighbour interpolation; a region the
preprocessing cropped away is background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedseg.data.case_files import Case, read_image
from fedseg.data.prepare import resampled_too_big
from fedseg.data.errors import Problem
from fedseg.data.loading import LoadedCase, _image_channels
from fedseg.data.preprocessing import deterministic_transforms
from fedseg.data.readers import NIFTI_SUFFIXES, Volume
from fedseg.errors import UserError
from fedseg.predict import Input, TrainedModel

PNG_MAX = 2**16 - 1
"""A PNG holds 16-bit values at most: a task with larger label values is written as NIfTI only."""


class Predictor:
    """A model ready to predict, on ``device`` (default: the experiment's ``[training] device``)."""

    def __init__(self, model: TrainedModel, device: str | None = None):
        import torch
        from monai.transforms import Compose, FgBgToIndicesd, Invertd

        from fedseg.training.devices import site_training
        from fedseg.training.trainer import build_site_network

        experiment = model.experiment
        self.model, self.task, self.preprocessing = model, experiment.task, experiment.preprocessing
        try:
            self.config = site_training(experiment.training, "predict", device)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.device = torch.device(self.config.device)
        self.network = build_site_network(experiment.model, self.task, self.config.loss).to(self.device)
        steps = deterministic_transforms(self.preprocessing, self.task.spatial_dims,
                                         experiment.model.downsampling_factor)
        # the patch sampler's voxel lists of the (blank) label would only cost memory here
        self.prepare = Compose([t for t in steps.transforms if not isinstance(t, FgBgToIndicesd)])
        self.invert = Invertd(keys="pred", transform=self.prepare, orig_keys="label", nearest_interp=True)
        self.series = None  # the DICOM series last read: its SEG refers to it

    def read(self, item: Input) -> Volume:
        """The input's image with the model's channels; UserError naming the file otherwise."""
        problems: list[Problem] = []
        if item.dicom:
            from fedseg.data.dicom.case import read_folder_series

            self.series = read_folder_series(item.files[0], self.task.spatial_dims, problems)[0]
            volume = self.series.volume if self.series is not None else None
        else:
            volume = read_image(item.files, self.task.spatial_dims, problems)
        if volume is not None:
            channels = _image_channels(volume, item.files[0], self.task, [])
            if channels is None:
                problems.append(Problem(item.files[0], f"has {volume.array.shape[0]} channel(s) but the model takes "
                                                       f"{self.task.in_channels} (task.in_channels of its experiment)"))
            elif not np.isfinite(channels).all():
                problems.append(Problem(item.files[0], "contains NaN or infinite values"))
            else:
                volume = Volume(channels.astype(np.float32, copy=False), volume.affine)
                too_big = resampled_too_big(LoadedCase(Case(item.name, item.files[0], item.files[0]), volume, None),
                                             self.preprocessing)
                problems.extend([too_big] if too_big else [])
        if problems:
            raise UserError("cannot predict " + "; ".join(str(p) for p in problems))
        return volume

    def labels(self, volume: Volume) -> np.ndarray:
        """The task's label values for ``volume``, on its own grid (shape ``volume.spatial_shape``)."""
        import torch
        from monai.data.meta_tensor import MetaTensor

        from fedseg.training.inference import predict_labels

        affine = torch.as_tensor(volume.affine, dtype=torch.float64)
        blank = torch.zeros((1, *volume.spatial_shape), dtype=torch.uint8)  # the steps are keyed on a label too
        prepared = self.prepare({"image": MetaTensor(torch.from_numpy(volume.array), affine=affine),
                                 "label": MetaTensor(blank, affine=affine)})
        [indices] = predict_labels(self.network, self.model.members, [prepared["image"].as_tensor()], self.config,
                                   self.preprocessing.patch_size, self.device)
        prepared["pred"] = MetaTensor(indices.to(torch.float32), affine=prepared["label"].affine)
        back = np.asarray(self.invert(prepared)["pred"])[0]
        if back.shape != volume.spatial_shape:  # Invertd restores the input's grid; anything else is a bug
            raise RuntimeError(f"inverted prediction has shape {back.shape}, input {volume.spatial_shape}")
        return np.asarray(self.task.class_values)[np.rint(back).astype(np.int64)]

    def write(self, item: Input, target: Path) -> Path:
        """Predict ``item`` and write its label map to ``target`` (a DICOM SEG for a DICOM series,
        NIfTI or PNG as the input)."""
        values = self.labels(self.read(item))
        dtype = np.uint8 if values.max() < 2**8 else np.uint16 if values.max() <= PNG_MAX else np.int32
        if item.dicom:
            from fedseg import __version__
            from fedseg.data.dicom.seg_writer import write_seg

            write_seg(np.searchsorted(self.task.class_values, values), self.series, self.task.foreground_names,
                      target, algorithm_name=f"fedseg {self.model.name}", algorithm_version=__version__)
        elif item.files[0].name.lower().endswith(NIFTI_SUFFIXES):
            _write_nifti(values.astype(dtype), item.files[0], target)
        elif dtype == np.int32:
            raise UserError(f"{item.files[0]}: label values up to {values.max()} do not fit a PNG (16 bits); "
                            "give the input as NIfTI")
        else:
            from PIL import Image

            Image.fromarray(values.astype(dtype)).save(target)
        return target


def _write_nifti(values: np.ndarray, source: Path, target: Path) -> None:
    """``values`` with ``source``'s affine, qform/sform codes and voxel sizes; one volume (no channels)."""
    import nibabel as nib

    image = nib.load(str(source))
    spatial = image.shape[:3] if len(image.shape) > 3 else image.shape  # a 4D input: its channels are gone
    header = image.header.copy()
    out = type(image)(values.reshape(spatial), image.affine, header)  # NIfTI-1 or NIfTI-2, as the input
    out.set_data_dtype(values.dtype)
    out.header.set_slope_inter(1, 0)
    out.set_qform(image.get_qform(), int(image.header["qform_code"]))
    out.set_sform(image.get_sform(), int(image.header["sform_code"]))
    nib.save(out, str(target))
