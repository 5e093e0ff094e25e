"""What ``fedseg predict`` adds to the network's own prediction: reading the file, the run's
preprocessing (reorientation, resampling to 1 mm, z-score), inverting it onto the input's grid
(MONAI Invertd, nearest) and writing the NIfTI, against the sliding-window prediction alone.

The model is the hippocampus one (3D U-Net 16-32-64-128, 2 residual units, patch 40 x 56 x 40,
untrained: the cost does not depend on the weights); the input a 32 x 44 x 32 LPS volume at 1.5 mm
(resampled to 48 x 66 x 48 and padded). Figures are the median seconds per image over ``--images``
images after one warm-up image.

Measured 2026-11-26 on 2 shared CPU cores (torch CPU, load average 11-18 from other jobs, so
noisy): 3 images: 3.75 s/image whole against 2.98 s network alone (ratio 1.26); 5 images: 2.50
against 3.13 (0.80: the load changed between the two timings). --quick (tiny U-Net, whole image):
0.84 against 0.25 s (3.4: MONAI's resampling there and back dominates when the network is tiny).

Run:  .venv/bin/python benchmarks/predict_overhead.py [--images 5] [--device cpu]
      .venv/bin/python benchmarks/predict_overhead.py --quick     # a smoke run (tiny U-Net, 2 images)
Prints numbers and the ratio; never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHAPE = (32, 44, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import nibabel as nib
    import torch
    from monai.data.meta_tensor import MetaTensor

    from fedseg.experiment import parse_experiment
    from fedseg.predict import Input, TrainedModel
    from fedseg.predictor import Predictor
    from fedseg.study import initial_weights
    from fedseg.training.inference import predict_labels

    images = 2 if args.quick else args.images
    model = {"name": "UNet", "channels": [4, 8], "num_res_units": 0} if args.quick else {
        "name": "UNet", "channels": [16, 32, 64, 128], "num_res_units": 2, "norm": "instance"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        experiment = parse_experiment({
            "name": "bench", "task": {"labels": {"background": 0, "anterior": 1, "posterior": 2}},
            "sites": [{"name": "a", "path": str(root)}],
            "preprocessing": {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "zscore",
                              **({} if args.quick else {"patch_size": [40, 56, 40]})},  # quick: whole images
            "model": model, "training": {"device": args.device}})
        predictor = Predictor(TrainedModel("bench", experiment, [initial_weights(experiment)]), args.device)
        affine = np.diag([-1.5, -1.5, 1.5, 1.0])
        rng = np.random.default_rng(0)
        total, network = [], []
        for i in range(images + 1):
            path = root / f"case_{i}.nii.gz"
            nib.save(nib.Nifti1Image(rng.normal(100, 20, SHAPE).astype(np.float32), affine), str(path))
            started = time.perf_counter()
            predictor.write(Input(f"case_{i}", (path,)), root / f"out_{i}.nii.gz")
            total.append(time.perf_counter() - started)
            volume = predictor.read(Input(f"case_{i}", (path,)))
            prepared = predictor.prepare({"image": MetaTensor(torch.from_numpy(volume.array),
                                                              affine=torch.as_tensor(volume.affine)),
                                          "label": MetaTensor(torch.zeros((1, *SHAPE)),
                                                              affine=torch.as_tensor(affine))})
            started = time.perf_counter()
            predict_labels(predictor.network, predictor.model.members, [prepared["image"].as_tensor()],
                           predictor.config, experiment.preprocessing.patch_size, predictor.device)
            network.append(time.perf_counter() - started)
        whole, alone = statistics.median(total[1:]), statistics.median(network[1:])
        prepared_shape = "x".join(map(str, prepared["image"].shape[1:]))
        print(f"input {'x'.join(map(str, SHAPE))} at 1.5 mm, prepared {prepared_shape}; {images} images on "
              f"{args.device}")
        print(f"fedseg predict: {whole:.3f} s/image; network prediction alone: {alone:.3f} s/image; "
              f"ratio {whole / alone:.2f} (read, preprocess, invert, write: {whole - alone:+.3f} s)")


if __name__ == "__main__":
    main()
