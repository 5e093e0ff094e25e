"""Where a site trains: the device it resolves ``[training] device`` to, mixed precision, and the
one setting that makes a CUDA round reproducible.

Placement (one rule, in simulation and deployment): ``auto`` is ``cuda:(i mod n)`` when this
machine has n >= 1 visible GPUs and ``i`` is the site's position in the experiment's
``[[sites]]`` (several sites of a simulation, or several site processes sharing one machine,
spread over its GPUs), else ``cpu``; ``cuda`` is the same but refuses a machine without a GPU;
``cuda:N`` pins the site to GPU N; ``cpu`` is the CPU. A site's operator overrides the
experiment with ``fedseg site --device``. The experiment file keeps what it says (``auto``):
the resolved device is the site's own business.

Reproducibility holds per device: a round given the same weights and round config on the same
device gives the same update bit for bit, which is what resume relies on. On the CPU nothing is
changed. On CUDA, ``reproducible`` turns on cuDNN's deterministic kernels and turns off its
autotuner (``benchmarks/dp_step.py`` on an H100: plain rounds without these settings differed
by 3e-3 to 8e-3 in the weights between two runs; DP rounds with them retraced bit for bit;
``benchmarks/gpu_round.py`` checks plain rounds). A round retraced on another device (a GPU,
or the CPU after a GPU) differs in the last bits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence

import torch

from fedseg.training.config import DEVICE, TrainingConfig


def gpu_count() -> int:
    """CUDA GPUs this process sees (``CUDA_VISIBLE_DEVICES`` applies)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def placed_device(requested: str, site: str, sites: Sequence[str] = (), what: str = "training.device") -> str:
    """The concrete device (``cpu`` or ``cuda:N``) for ``site``, the ``sites``' position deciding
    its GPU under ``auto`` and ``cuda`` (a site not among them takes the first GPU); ``what`` names
    the setting in errors."""
    if not (isinstance(requested, str) and DEVICE.fullmatch(requested)):
        raise ValueError(f"site {site}: {what} must be auto, cpu, cuda or cuda:N (N a GPU's index, e.g. cuda:1), "
                         f"got {requested!r:.40}")
    n = gpu_count()
    index = list(sites).index(site) if site in sites else 0
    if requested == "cpu" or (requested == "auto" and n == 0):
        return "cpu"
    if n == 0:
        raise ValueError(f"site {site}: {what} = {requested!r} but no CUDA GPU is visible here "
                         "(torch.cuda.is_available() is False): use device = \"auto\" (a GPU when there is one) "
                         "or \"cpu\", or start the site with --device cpu")
    if requested in ("auto", "cuda"):
        return f"cuda:{index % n}"
    number = int(requested.removeprefix("cuda:"))
    if number >= n:
        raise ValueError(f"site {site}: {what} = {requested!r} but this machine has {n} visible GPU(s) "
                         f"(cuda:0 to cuda:{n - 1}): pick one of them, or use \"auto\"")
    return f"cuda:{number}"


def site_training(config: TrainingConfig, site: str, device: str | None = None,
                  sites: Sequence[str] = ()) -> TrainingConfig:
    """``config`` as ``site`` trains: its device resolved (``device``: the site's own choice, over
    the experiment's), ``amp`` off on the CPU, where it would do nothing (with a warning)."""
    resolved = placed_device(device or config.device, site, sites)
    amp = config.amp and resolved != "cpu"
    if config.amp and not amp:
        warnings.warn(f"site {site}: training.amp = true is ignored on the CPU (mixed precision needs a GPU); "
                      "this site trains in float32", stacklevel=2)
    return dataclasses.replace(config, device=resolved, amp=amp)


@contextlib.contextmanager
def reproducible(device: torch.device) -> Iterator[None]:
    """cuDNN's deterministic kernels, no autotuning, for the block on a CUDA ``device``: the same
    request answered again gives the same result (nothing changes on the CPU)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


class Precision:
    """Automatic mixed precision on CUDA (``torch.autocast`` and a ``GradScaler``, fresh each round
    so a round depends on its request alone); float32 and plain ``backward``/``step`` otherwise."""

    def __init__(self, device: torch.device, enabled: bool):
        self.device = device
        self.enabled = bool(enabled) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.enabled else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimizer step; with a scaler a step whose gradients overflowed is skipped."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
