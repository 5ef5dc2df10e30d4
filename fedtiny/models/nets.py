"""PyTorch definitions of fedtiny's backbones, built only from layers the device trainer
has: Conv2d (1-D convolutions as kernel height 1), depthwise Conv2d, ReLU/ReLU6, global
average pooling, Flatten and Linear. Inputs are NHWC numpy arrays; the nets take NCHW.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedtiny.errors import ConfigError
from fedtiny.plugins import call, resolve


def imu_cnn(input_shape: tuple[int, int, int], num_classes: int, width: int = 32) -> nn.Sequential:
    """1-D CNN for (1, T, 6) IMU windows: two strided convolutions, a depthwise-separable
    block, global average pooling and a two-layer head."""
    _, _, c = input_shape
    half = width // 2
    return nn.Sequential(
        nn.Conv2d(c, half, (1, 5), stride=(1, 2), padding=(0, 2)), nn.ReLU(),
        nn.Conv2d(half, width, (1, 5), stride=(1, 2), padding=(0, 2)), nn.ReLU(),
        nn.Conv2d(width, width, (1, 3), padding=(0, 1), groups=width), nn.ReLU(),
        nn.Conv2d(width, width, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, num_classes),
    )


def image_cnn(input_shape: tuple[int, int, int], num_classes: int, width: int = 32) -> nn.Sequential:
    """Small 2-D CNN for (H, W, 1) images: strided convolutions, a depthwise-separable block,
    global average pooling and a two-layer head."""
    _, _, c = input_shape
    quarter, half = max(4, width // 4), width // 2
    return nn.Sequential(
        nn.Conv2d(c, quarter, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(quarter, quarter, 3, padding=1, groups=quarter), nn.ReLU(),
        nn.Conv2d(quarter, half, 1), nn.ReLU(),
        nn.Conv2d(half, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, num_classes),
    )


ARCHITECTURES = {"imu_cnn": imu_cnn, "image_cnn": image_cnn}


def model_name(model_cfg) -> str:
    """What runs and reports call a backbone: its ``_target_`` (a plugin), ``tflite-<file name>``
    (an imported .tflite) or its ``arch``."""
    if model_cfg.get("arch") == "tflite" and not model_cfg.get("_target_"):
        return f"tflite-{Path(str(model_cfg.get('path'))).stem}"
    return str(model_cfg.get("_target_") or model_cfg.get("arch"))


def build_backbone(model_cfg, input_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """The float backbone of a model config: the plugin its ``_target_`` names, called as
    ``fn(input_shape, num_classes, width)``, or the built-in ``arch``."""
    target = model_cfg.get("_target_")
    if not target:
        return build_net(model_cfg.arch, input_shape, num_classes, int(model_cfg.width))
    net = call(resolve(target, "model._target_"), {},
               {"input_shape": tuple(input_shape), "num_classes": int(num_classes), "width": int(model_cfg.width)})
    if not isinstance(net, nn.Sequential):
        raise ConfigError(f"model._target_: {target} returned {type(net).__name__}; fedtiny exports an nn.Sequential "
                          "of Conv2d (incl. depthwise), ReLU/ReLU6, AdaptiveAvgPool2d(1), Flatten and Linear")
    return net


def build_net(name: str, input_shape: tuple[int, int, int], num_classes: int, width: int) -> nn.Sequential:
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown model architecture '{name}' (known: {', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[name](tuple(input_shape), num_classes, width)


def to_nchw(x) -> torch.Tensor:
    """NHWC numpy (or tensor) -> NCHW float32 tensor."""
    t = torch.as_tensor(x, dtype=torch.float32)
    return t.permute(0, 3, 1, 2).contiguous()
