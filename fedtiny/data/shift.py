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

All zero leaves the data untouched. Every draw and transform uses :mod:`fedtiny.data.detmath`
and explicit sums (no libm, BLAS or SIMD-dispatched transcendental), so a shifted data set is
the same bytes on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedtiny.data import detmath

_DEG = 0.017453292519943295  # pi / 180


def rotate_images(x: np.ndarray, angle: float, cval: float) -> np.ndarray:
    """Rotate (N, H, W, C) images by `angle` degrees about their centre (from axis 1 towards
    axis 2), bilinear, with `cval` outside the image: what ``scipy.ndimage.rotate(x, angle,
    axes=(1, 2), reshape=False, order=1, mode="grid-constant", cval=cval)`` computes."""
    n, h, w, c = x.shape
    t = float(angle) * _DEG
    cs, sn = float(detmath.cos(t)), float(detmath.sin(t))
    ci, cj = (h - 1) / 2.0, (w - 1) / 2.0
    di = np.arange(h, dtype=np.float64)[:, None] - ci
    dj = np.arange(w, dtype=np.float64)[None, :] - cj
    si = (cs * di + sn * dj) + ci  # source coordinates of each output pixel
    sj = (cs * dj - sn * di) + cj
    i0, j0 = np.floor(si), np.floor(sj)
    fi, fj = si - i0, sj - j0
    i0, j0 = i0.astype(np.int64), j0.astype(np.int64)
    src = x.astype(np.float64)

    def tap(ii, jj):
        inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        v = src[:, np.clip(ii, 0, h - 1), np.clip(jj, 0, w - 1), :]
        return np.where(inside[None, :, :, None], v, cval)

    top = tap(i0, j0) * (1.0 - fj)[None, :, :, None] + tap(i0, j0 + 1) * fj[None, :, :, None]
    bottom = tap(i0 + 1, j0) * (1.0 - fj)[None, :, :, None] + tap(i0 + 1, j0 + 1) * fj[None, :, :, None]
    out = top * (1.0 - fi)[None, :, :, None] + bottom * fi[None, :, :, None]
    return out.astype(np.float32).reshape(n, h, w, c)


@dataclass(frozen=True)
class ImageSensor:
    exposure: float  # added to every pixel (pixels are in [-0.5, 0.5])
    contrast: float  # gain about 0 (mid-grey)
    angle: float  # degrees
    noise: float  # std of the per-pixel Gaussian noise

    @staticmethod
    def draw(rng: np.random.Generator, exposure, contrast, rotation, noise) -> ImageSensor:
        """A sensor with each parameter uniform in its ``(lo, hi)`` range (contrast: the log gain)."""
        return ImageSensor(float(detmath.uniform(rng, *exposure)), float(detmath.exp(detmath.uniform(rng, *contrast))),
                           float(detmath.uniform(rng, *rotation)), float(detmath.uniform(rng, *noise)))

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`x`: (N, H, W, C) float32 in [-0.5, 0.5]; the same shape back, clipped to that range."""
        out = x.astype(np.float32)
        if self.angle:
            out = rotate_images(out, self.angle, cval=-0.5)
        out = out * np.float32(self.contrast) + np.float32(self.exposure)
        if self.noise:
            out = out + detmath.normal(rng, out.shape, 0.0, self.noise).astype(np.float32)
        return np.clip(out, -0.5, 0.5).astype(np.float32)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by an angle up to `max_deg` about a uniformly random axis (Rodrigues)."""
    axis = detmath.normal(rng, 3)
    axis = axis / np.sqrt((axis[0] * axis[0] + axis[1] * axis[1]) + axis[2] * axis[2])
    theta = float(detmath.uniform(rng, -max_deg, max_deg)) * _DEG
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + float(detmath.sin(theta)) * k + (1 - float(detmath.cos(theta))) * _matmul3(k, k)


def _matmul3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for 3x3 matrices with each sum in index order (no BLAS)."""
    return np.array([[(a[i, 0] * b[0, j] + a[i, 1] * b[1, j]) + a[i, 2] * b[2, j] for j in range(3)] for i in range(3)])


def _apply3(v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """r applied to the 3-vectors of the last axis of v (v @ r.T), each sum in index order."""
    v = v.astype(np.float64)
    return np.stack([(v[..., 0] * r[i, 0] + v[..., 1] * r[i, 1]) + v[..., 2] * r[i, 2] for i in range(3)], axis=-1)


@dataclass(frozen=True)
class ImuSensor:
    rotation: np.ndarray  # 3x3, applied to the accelerometer and the gyroscope alike
    gain: np.ndarray  # (6,)
    offset: np.ndarray  # (6,), raw sensor units (added before the task standardises the channels)

    @staticmethod
    def draw(rng: np.random.Generator, rotation: float, gain: float, offset: float) -> ImuSensor:
        return ImuSensor(_rotation(rng, rotation), detmath.exp(detmath.uniform(rng, -gain, gain, 6)),
                         detmath.normal(rng, 6, 0.0, offset))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """`x`: (..., 6) raw windows, accelerometer xyz then gyroscope xyz."""
        acc, gyro = _apply3(x[..., :3], self.rotation), _apply3(x[..., 3:], self.rotation)
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
