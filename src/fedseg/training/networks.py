"""The networks of one process's site trainers: one per kind, shared, so that 100 simulated sites
cost the memory of one network, not of 100 (or more: every comparison arm builds its own site apps).

A network's kind is what fixes its shapes and where it lives: the model config, the task's
spatial dimensions and input channels, the loss's output channels, the device, and whether
DP-SGD trains it (Opacus's per-case gradient hooks stay on a network once added: a network
with them is shared only by DP-SGD sites). Sharing is correct because the trainers of one
process take turns (the in-process simulation calls sites one after another; a deployed site
is a process of its own) and every trainer verb loads the weights it works on before it uses
the network (``SiteTrainer``): nothing a site computes depends on what another site left in it.
What a site keeps between rounds (kept optimizer moments, SCAFFOLD's ``c_i``, FedBN's
normalisation, the DP ledger) is kept by the site, never in the network.

A pool holds its networks weakly: a kind's network goes when its last trainer goes.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from fedseg.data.task import Task
from fedseg.models.registry import ModelConfig, build_network
from fedseg.training.losses import output_channels


def build_site_network(model: ModelConfig, task: Task, loss: str) -> torch.nn.Module:
    """The network every site and the coordinator share for this task and loss (a new one:
    its initial weights come from torch's global generator)."""
    return build_network(model, task.spatial_dims, task.in_channels, output_channels(loss, task.n_classes))


class NetworkPool:
    """Site networks by kind, built at first use and shared by every trainer that asks for that kind."""

    def __init__(self) -> None:
        self._networks: weakref.WeakValueDictionary[tuple, torch.nn.Module] = weakref.WeakValueDictionary()
        self.built = 0
        """Networks this pool has built (tests and ``benchmarks/many_sites.py`` count them)."""

    def network(self, model: ModelConfig, task: Task, loss: str, device: torch.device | str,
                private: bool = False) -> torch.nn.Module:
        """The network of this kind (``private``: trained by DP-SGD), built on ``device`` if the
        pool has none. Its weights are whatever its last user loaded: load before use."""
        key = (dataclasses.astuple(model), task.spatial_dims, task.in_channels,
               output_channels(loss, task.n_classes), str(torch.device(device)), private)
        network = self._networks.get(key)
        if network is None:
            network = build_site_network(model, task, loss).to(device)
            self._networks[key] = network
            self.built += 1
        return network


SHARED = NetworkPool()
"""The process's pool: ``study.site_app`` gives it to every site trainer it builds."""
