"""Build a MONAI segmentation network from a small, named configuration.

``ModelConfig`` is checked here against what MONAI's networks accept, without importing MONAI or
torch (they are imported when a network is built), so reading an experiment file stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedseg.tables import check_range

if TYPE_CHECKING:
    from torch import nn

NETWORKS = ("UNet", "BasicUNet", "SegResNet")
NORMS = ("instance", "batch")
"""MONAI's norm layers that need no arguments besides the channels (``group``, ``layer`` and
``localresponse`` do); ``tests/test_config_ranges.py`` checks each builds every network."""
MAX_WIDTH = 4096


@dataclass(frozen=True)
class ModelConfig:
    """``channels`` are the feature widths per level (BasicUNet wants 6; SegResNet uses the first)."""

    name: str = "UNet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 2
    dropout: float = 0.0
    norm: str = "instance"

    def __post_init__(self) -> None:
        if self.name not in NETWORKS:
            raise ValueError(f"model.name must be one of {NETWORKS}, got '{self.name}'")
        if self.name == "BasicUNet" and len(self.channels) != 6:
            raise ValueError(f"model.channels for BasicUNet needs 6 widths, got {list(self.channels)}")
        if len(self.channels) < 2:
            raise ValueError(f"model.channels needs at least 2 widths, got {list(self.channels)}")
        for width in self.channels:
            check_range("model.channels: each width", width, 1, MAX_WIDTH)
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r:.40}")
        check_range("model.num_res_units", self.num_res_units, 0, 16)
        check_range("model.dropout", self.dropout, 0, 1, below=True)

    @property
    def downsampling_factor(self) -> int:
        """Input sizes must be divisible by this for whole-image inference."""
        levels = {"UNet": len(self.channels) - 1, "BasicUNet": 4, "SegResNet": 3}[self.name]
        return 2**levels

    def check_input_size(self, size: tuple[int, ...], what: str) -> None:
        """ValueError unless the network runs on inputs of ``size``: multiples of the down-sampling
        factor (BasicUNet pads on its own) with more than one voxel left at the deepest level."""
        factor = self.downsampling_factor
        divisible = self.name == "BasicUNet" or not any(s % factor for s in size)
        if not divisible or math.prod(s // factor for s in size) < 2:
            raise ValueError(f"{what} {list(size)} does not fit the {self.name}, which halves its input "
                             f"{factor.bit_length() - 1} times: give multiples of {factor} that leave more than "
                             f"one voxel at the deepest level, e.g. {[2 * factor] * len(size)}")


def build_network(config: ModelConfig, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import BasicUNet, SegResNet, UNet

    if config.name == "UNet":
        return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                    channels=config.channels, strides=(2,) * (len(config.channels) - 1),
                    num_res_units=config.num_res_units, dropout=config.dropout, norm=config.norm)
    if config.name == "BasicUNet":
        return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                         features=config.channels, dropout=config.dropout, norm=config.norm)
    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                     init_filters=config.channels[0], dropout_prob=config.dropout or None,
                     norm=config.norm)
