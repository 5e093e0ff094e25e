"""fedseg: federated training and evaluation of medical image segmentation models.

Layers, lowest first (nothing imports upward): ``types`` and ``data`` / ``models``;
``training``; ``plans``; ``runtime``; ``report``; ``experiment``, ``pipeline`` and ``cli``.
"""

import os

# Before torch starts OpenMP: idle OpenMP threads spin briefly, then sleep. With libgomp's long
# default spin, two torch processes sharing a 2-core machine made each training step ~10x slower;
# with 10000 an idle machine is as fast as with the default (benchmarks/simulation_overhead.py).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
