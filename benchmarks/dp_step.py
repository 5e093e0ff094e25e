"""What a DP-SGD step costs beside a plain one, and whether a site that restarts retraces a private
round bit for bit, on the hippocampus model (3D U-Net 16-32-64-128, 2 residual units, instance
norm, 40 x 56 x 40 voxels, Dice+CE, Adam; about 1.6M parameters).

Synthetic cases of that size (a bright sphere in a shell) stand in for the data: the cost of a step
does not depend on the pixels. Each variant trains ``--steps`` steps from the same weights; the
figure is seconds per step (median of ``--repeats`` rounds after a warm-up round). DP-SGD draws
Poisson batches of ``batch_size`` cases on average, computes every case's gradient (Opacus's
per-sample hooks), clips, adds noise, and keeps its ledger; ``retraced`` says whether a new
trainer on the same ``state_dir`` (a restarted site) gives the same weights bit for bit (else the
largest difference), and ``plain repeat`` the same for the plain trainer run twice.

Measured 2026-11-26 (1,187,766 parameters; seconds per step, plain -> DP-SGD, epsilon 8):
  2 shared CPU cores (torch 2.13 CPU), 4 steps x 3 rounds: batch 2: 0.046 -> 0.244 (5.3x);
    batch 8: 0.167 -> 0.793 (4.7x); retraced and plain repeat bit for bit (a noisy machine: an
    earlier run under load gave 0.39 -> 0.55 and 0.18 -> 0.84).
  one H100 (torch 2.11+cu130), 8 steps x 3 rounds: batch 2: 0.013 -> 0.070 (5.6x); batch 8:
    0.014 -> 0.120 (8.4x); batch 32: 0.020 -> 0.085 (4.3x). DP rounds retrace bit for bit
    (training/private.py turns on cuDNN's deterministic kernels for them; without that they
    differed); plain CUDA rounds do not (largest weight difference 3e-3 to 8e-3 between two runs).

Run:  .venv/bin/python benchmarks/dp_step.py [--device cuda] [--batch 2 8] [--steps 8] [--repeats 3]
      .venv/bin/python benchmarks/dp_step.py --quick       # a smoke run (a tiny U-Net, 2 steps)
Prints a table; never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SIZE = (40, 56, 40)


def write_cases(root: Path, n: int, size: tuple[int, ...]) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1)
    for i in range(n):
        distance = np.linalg.norm(grid - (np.array(size) / 2 + rng.uniform(-3, 3, 3)), axis=-1)
        label = np.where(distance < 5, 1, np.where(distance < 8, 2, 0)).astype(np.uint8)
        image = (200 * (label == 1) + 120 * (label == 2) + rng.normal(30, 10, size)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "images" / f"case{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / f"case{i:02d}.nii.gz")


def same(a: dict, b: dict) -> str:
    """``yes``, or the largest difference between the two models' weights."""
    gap = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    return "yes" if gap == 0 else f"{gap:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    import torch

    from fedseg.data.dataset import SiteDataset, SiteSpec
    from fedseg.data.preprocessing import Preprocessing
    from fedseg.data.splits import SplitFractions
    from fedseg.data.task import Task
    from fedseg.models.registry import ModelConfig
    from fedseg.privacy.config import PrivacyConfig
    from fedseg.training.trainer import SiteTrainer, TrainingConfig
    from fedseg.types import RoundConfig

    size = (16, 16, 16) if args.quick else SIZE
    model = ModelConfig("UNet", (4, 8) if args.quick else (16, 32, 64, 128), num_res_units=1 if args.quick else 2)
    steps, repeats = (2, 1) if args.quick else (args.steps, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        write_cases(Path(tmp) / "site", 20, size)
        data = SiteDataset(SiteSpec("site", Path(tmp) / "site"), Task({"background": 0, "a": 1, "b": 2}, 3),
                           Preprocessing(intensity="zscore", spatial_size=size), SplitFractions(1.0, 0.0, 0.0), 0,
                           model.downsampling_factor)
        params = None
        print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
              f"{data.n_train} training cases of {size}, {steps} steps a round", flush=True)
        print(f"{'batch':>5} {'plain s/step':>13} {'DP s/step':>10} {'ratio':>6} {'epsilon':>8} {'retraced':>9} "
              f"{'plain repeat':>13}")
        for batch in args.batch:
            config = TrainingConfig(lr=2e-3, batch_size=batch, local_steps=steps, validate_local=False,
                                    device=args.device)
            plain = SiteTrainer(data, model, config)
            state = Path(tmp) / f"state{batch}"
            privacy = PrivacyConfig(dp="sample", epsilon=8.0, delta=1e-5, max_grad_norm=1.0)
            private = SiteTrainer(data, model, config, state_dir=state, privacy=privacy, dp_trainings=repeats + 2)
            start = plain.weights()
            params = params or sum(v.size for v in start.values())
            times: dict[str, list[float]] = {"plain": [], "dp": []}
            updates = {}
            for r in range(repeats + 1):  # round 0 warms up
                for name, trainer in (("plain", plain), ("dp", private)):
                    update = trainer.train(start, RoundConfig(round=r, seed=r))
                    updates[name, r] = update
                    if r:
                        times[name].append(update.metrics["seconds"] / steps)
            again = SiteTrainer(data, model, config, state_dir=state, privacy=privacy, dp_trainings=repeats + 2)
            retraced = same(again.train(start, RoundConfig(round=repeats, seed=repeats)).weights,
                            updates["dp", repeats].weights)
            repeat = same(plain.train(start, RoundConfig(round=repeats, seed=repeats)).weights,
                          updates["plain", repeats].weights)
            t_plain, t_dp = statistics.median(times["plain"]), statistics.median(times["dp"])
            print(f"{batch:>5} {t_plain:>13.3f} {t_dp:>10.3f} {t_dp / t_plain:>6.1f} "
                  f"{updates['dp', repeats].metrics['epsilon']:>8.2f} {retraced:>9} {repeat:>13}", flush=True)
        print(f"({params:,} parameters)")


if __name__ == "__main__":
    main()
