"""Synthetic sample data: a noisy image and a matching calibration stack, made on the fly (numpy only).

How the data is made
--------------------
Clean images ("signal", in grey values) are a dim background of
``OFFSET`` = 100 grey values plus smooth structures: round Gaussian blobs
("nuclei" / vesicles, radii 3-10 px) and thin curved filaments (Gaussian
profile, width ~1.5 px, following random smooth sine-modulated paths).
Brightness above the background is at most about 400 grey values.

Noise is Poisson-Gaussian, like a camera: the signal above the offset is
counted in photo-electrons with ``GAIN`` = 2 grey values per electron
(Poisson shot noise), and Gaussian read noise of ``READ_NOISE`` = 4 grey
values is added; values are rounded and stored as ``uint16``. So the noise
variance grows linearly with the signal: ``variance = 2 * (s - 100) + 16``.

The calibration stack is 20 noisy frames (128 x 128) of a *second*, static
clean sample (different seed) with the same noise: the per-pixel mean over
the frames estimates the signal, which is what the noise-model fit needs.

Sizes are small (256 x 256 image, 20 x 128 x 128 stack) so a new user can click
through fitting, a short training and prediction in a few minutes on a laptop.
"""

from __future__ import annotations

import numpy as np

GAIN = 2.0
READ_NOISE = 4.0
OFFSET = 100.0
IMAGE_SHAPE = (256, 256)
CALIBRATION_SHAPE = (20, 128, 128)


def clean_image(shape: tuple[int, int] = IMAGE_SHAPE, seed: int = 0) -> np.ndarray:
    """A smooth synthetic fluorescence-like image (float32 grey values, background ``OFFSET``).

    Parameters
    ----------
    shape
        (height, width) in pixels.
    seed
        Seed of the random structure layout.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros(shape, dtype=np.float32)
    area_scale = height * width / (256.0 * 256.0)
    for _ in range(max(3, int(round(30 * area_scale)))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(3.0, 10.0)
        brightness = rng.uniform(80.0, 300.0)
        image += brightness * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * radius**2))
    for _ in range(max(2, int(round(8 * area_scale)))):
        # A filament: a curve x(t), y(t) drawn as many small Gaussian dots along it.
        start = rng.uniform(0, 1, 2) * (height, width)
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.4, 0.9) * max(height, width)
        wiggle, period = rng.uniform(3, 12), rng.uniform(30, 90)
        brightness = rng.uniform(60.0, 150.0)
        t = np.arange(0.0, length, 1.0)
        cy = start[0] + t * np.sin(angle) + wiggle * np.sin(2 * np.pi * t / period) * np.cos(angle)
        cx = start[1] + t * np.cos(angle) - wiggle * np.sin(2 * np.pi * t / period) * np.sin(angle)
        inside = (cy > -5) & (cy < height + 5) & (cx > -5) & (cx < width + 5)
        for y0, x0 in zip(cy[inside], cx[inside]):
            y_lo, y_hi = max(int(y0) - 5, 0), min(int(y0) + 6, height)
            x_lo, x_hi = max(int(x0) - 5, 0), min(int(x0) + 6, width)
            if y_lo >= y_hi or x_lo >= x_hi:
                continue
            patch = (yy[y_lo:y_hi, x_lo:x_hi] - y0) ** 2 + (xx[y_lo:y_hi, x_lo:x_hi] - x0) ** 2
            # Dots 1 px apart with sigma 1.5 px overlap into a smooth line; the 0.27 keeps peak ~brightness.
            image[y_lo:y_hi, x_lo:x_hi] += 0.27 * brightness * np.exp(-patch / (2 * 1.5**2))
    np.minimum(image, 400.0, out=image)
    return image + np.float32(OFFSET)


def add_camera_noise(
    signal: np.ndarray, rng: np.random.Generator, gain: float = GAIN, read_noise: float = READ_NOISE,
    offset: float = OFFSET,
) -> np.ndarray:
    """Poisson-Gaussian noise: ``gain * Poisson((s - offset) / gain) + offset + N(0, read_noise^2)``, as uint16."""
    electrons = rng.poisson(np.maximum(signal - offset, 0.0) / gain)
    noisy = gain * electrons + offset + rng.normal(0.0, read_noise, size=signal.shape)
    return np.clip(np.round(noisy), 0, 65535).astype(np.uint16)


def noisy_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 256 x 256 sample: ``(noisy uint16, clean float32)``."""
    clean = clean_image(IMAGE_SHAPE, seed=seed)
    return add_camera_noise(clean, np.random.default_rng(seed + 1000)), clean


def calibration_stack(seed: int = 1) -> np.ndarray:
    """The calibration sample: 20 noisy frames (uint16) of one static 128 x 128 clean image."""
    clean = clean_image(CALIBRATION_SHAPE[1:], seed=seed)
    rng = np.random.default_rng(seed + 1000)
    return np.stack([add_camera_noise(clean, rng) for _ in range(CALIBRATION_SHAPE[0])])


def noisy_image_sample() -> list[tuple]:
    """napari sample: the synthetic noisy image."""
    noisy, _ = noisy_image()
    return [(noisy, {"name": "noisy"}, "image")]


def calibration_stack_sample() -> list[tuple]:
    """napari sample: the synthetic calibration stack."""
    return [(calibration_stack(), {"name": "calibration", "visible": False}, "image")]


def noisy_and_calibration_sample() -> list[tuple]:
    """napari sample: the calibration stack (hidden) and the noisy image."""
    return calibration_stack_sample() + noisy_image_sample()
