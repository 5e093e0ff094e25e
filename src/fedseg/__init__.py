"""fedseg: federated training and evaluation of medical image segmentation models.

Layers, lowest first (nothing imports upward): ``types`` and ``data`` / ``models``;
``training``; ``plans``; ``runtime``; ``report``; ``experiment``, ``pipeline`` and ``cli``.
"""

__version__ = "0.1.0"
