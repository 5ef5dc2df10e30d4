"""A backbone for fedtiny, from the layers its device trainer has (Conv2d with 1-D kernels,
depthwise Conv2d, ReLU, global average pooling, Flatten, Linear). fedtiny calls it as
``tcn(input_shape, num_classes, width)`` with samples shaped ``(1, T, channels)``."""

from __future__ import annotations

from torch import nn


def tcn(input_shape: tuple[int, int, int], num_classes: int, width: int = 24) -> nn.Sequential:
    """Dilation-free temporal conv net: a wide first kernel, two depthwise-separable blocks,
    global average pooling and a two-layer head (the layers fedtiny fine-tunes)."""
    _, _, channels = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, width, (1, 7), stride=(1, 2), padding=(0, 3)), nn.ReLU(),
        nn.Conv2d(width, width, (1, 5), padding=(0, 2), groups=width), nn.ReLU(),
        nn.Conv2d(width, width, 1), nn.ReLU(),
        nn.Conv2d(width, width, (1, 5), stride=(1, 2), padding=(0, 2), groups=width), nn.ReLU(),
        nn.Conv2d(width, width, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, num_classes),
    )
