"""Field shift: how a deployed sensor's data differ from the vendor's.

The vendor pretrains on clean data; each field device sees the world through its own sensor.
A device draws its parameters once, from its own seeded generator, and applies them to all of
its samples (train and test); the server's held-out field data draw a device per sample from the
same distribution, so they measure the fleet, not the vendor.

* images (``image_shift``): exposure (an offset of the pixel values), contrast (a gain about
  mid-grey), rotation (the camera's mounting angle) and sensor noise (Gaussian, per pixel),
  each drawn uniformly from a configured range ``[lo, hi]``; a range off zero is a systematic
  shift (a fleet of cheaper, dimmer cameras than the vendor's);
* IMU windows (``imu_shift``): mounting rotation (the same 3-D rotation of the accelerometer's
  and the gyroscope's axes, up to an angle), gain (per axis, log-uniform) and offset (per axis).

All zero leaves the data untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageSensor:
    exposure: float  # added to every pixel (pixels are in [-0.5, 0.5])
    contrast: float  # gain about 0 (mid-grey)
    angle: float  # degrees
    noise: float  # std of the per-pixel Gaussian noise

    @staticmethod
    def draw(rng: np.random.Generator, exposure, contrast, rotation, noise) -> ImageSensor:
        """A sensor with each parameter uniform in its ``(lo, hi)`` range (contrast: the log gain)."""
        return ImageSensor(float(rng.uniform(*exposure)), float(np.exp(rng.uniform(*contrast))),
                           float(rng.uniform(*rotation)), float(rng.uniform(*noise)))

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`x`: (N, H, W, C) float32 in [-0.5, 0.5]; the same shape back, clipped to that range."""
        out = x.astype(np.float32)
        if self.angle:
            from scipy.ndimage import rotate

            out = rotate(out, self.angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=-0.5)
        out = out * self.contrast + self.exposure
        if self.noise:
            out = out + rng.normal(0.0, self.noise, out.shape).astype(np.float32)
        return np.clip(out, -0.5, 0.5).astype(np.float32)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by an angle up to `max_deg` about a uniformly random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    theta = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


@dataclass(frozen=True)
class ImuSensor:
    rotation: np.ndarray  # 3x3, applied to the accelerometer and the gyroscope alike
    gain: np.ndarray  # (6,)
    offset: np.ndarray  # (6,), raw sensor units (added before the task standardises the channels)

    @staticmethod
    def draw(rng: np.random.Generator, rotation: float, gain: float, offset: float) -> ImuSensor:
        return ImuSensor(_rotation(rng, rotation), np.exp(rng.uniform(-gain, gain, 6)), rng.normal(0.0, offset, 6))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """`x`: (..., 6) raw windows, accelerometer xyz then gyroscope xyz."""
        acc, gyro = x[..., :3] @ self.rotation.T, x[..., 3:] @ self.rotation.T
        return (np.concatenate([acc, gyro], axis=-1) * self.gain + self.offset).astype(x.dtype)


def image_shift(cfg) -> dict | None:
    """The image shift ranges of a dataset config (``field_shift``), None when all are 0."""
    fs = cfg.get("field_shift")
    if fs is None:
        return None
    out = {k: tuple(float(v) for v in fs.get(k, (0.0, 0.0))) for k in ("exposure", "contrast", "rotation", "noise")}
    return out if any(any(r) for r in out.values()) else None


def imu_shift(cfg) -> dict | None:
    """The IMU shift settings of a dataset config (``field_shift``), None when all are 0."""
    fs = cfg.get("field_shift")
    if fs is None or not any(float(fs.get(k, 0.0)) for k in ("rotation", "gain", "offset")):
        return None
    return {k: float(fs.get(k, 0.0)) for k in ("rotation", "gain", "offset")}


def shift_images(x: np.ndarray, owners: np.ndarray, settings: dict, seed: int) -> np.ndarray:
    """Each sample seen by the sensor of its owner (`owners[i]`, a device index); every device's
    sensor and noise come from its own generator, seeded by (seed, device)."""
    out = np.empty_like(x, dtype=np.float32)
    for dev in np.unique(owners):
        idx = np.flatnonzero(owners == dev)
        rng = np.random.default_rng([seed, 0x5E45, int(dev)])
        out[idx] = ImageSensor.draw(rng, **settings).apply(x[idx], rng)
    return out
