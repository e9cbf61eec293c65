"""Held-out denoising quality across training seeds: every seed must denoise a frame it never saw.

The recipe (train on 5 noisy frames of smooth blobs, predict the 6th, compare with its known clean
signal) is run for several training seeds, so that a pass does not hang on one lucky initialisation.
Thresholds come from measured margins (seeds 0-4 of this recipe on a CPU, see ``MIN_GAIN_DB``).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_divnoising.metrics import psnr
from napari_divnoising.prediction import predict
from napari_divnoising.training import TrainingConfig, TrainingDone, TrainingWarning, train_iter

SEEDS = (0, 1, 2)
SIGMA = 15.0
DATA_RANGE = 255.0
STEPS = 300
#: Least PSNR gain of the MMSE over the noisy input, for every seed. Measured for seeds 0-4 on a CPU with
#: 1 and 2 threads (thread count changes the rounding, hence the trajectory): +6.5 to +10.2 dB.
MIN_GAIN_DB = 4.5
#: An oracle Gaussian blur (its sigma chosen on the truth) gains 11.0 dB on this frame of smooth blobs, a
#: strict baseline: at this budget the model is measured 0.8 to 4.5 dB behind it (it draws level after
#: about 1000 steps of a larger network), so the test bounds the gap rather than asking for a win.
MAX_GAP_TO_ORACLE_BLUR_DB = 6.5
#: The KL per pixel at the end of training, measured 0.14 to 0.16: far from a collapsed posterior (0).
MIN_FINAL_KL = 0.05


def blob_frames(n: int = 6, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clean frames of smooth Gaussian blobs on a background and their noisy versions (Gaussian noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    clean = np.full((n, size, size), 20.0, np.float32)
    for frame in clean:
        for _ in range(12):
            cy, cx = rng.uniform(0, size, 2)
            r, a = rng.uniform(2, 6), rng.uniform(50, 150)
            frame += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    noisy = clean + rng.normal(0, SIGMA, clean.shape).astype(np.float32)
    return clean, noisy


def quality_config(seed: int) -> TrainingConfig:
    return TrainingConfig(patch_size=32, batch_size=8, max_steps=STEPS, max_minutes=None, learning_rate=3e-3,
                          start_filters=8, z_dim=16, n_validation_patches=8, validation_interval=50,
                          kl_annealing_steps=90, device="cpu", seed=seed)


def oracle_blur_gain(noisy: np.ndarray, clean: np.ndarray) -> float:
    """PSNR gain of a Gaussian blur at the sigma that is best for this very frame (chosen on the truth)."""
    from scipy.ndimage import gaussian_filter

    base = psnr(noisy, clean, DATA_RANGE)
    return max(psnr(gaussian_filter(noisy, s), clean, DATA_RANGE) for s in np.arange(0.5, 4.01, 0.25)) - base


def train_and_score(seed: int, clean: np.ndarray, noisy: np.ndarray) -> dict:
    """Train on frames 0-4 with ``seed``; return the MMSE gain on frame 5 and what training reported."""
    events = list(train_iter(noisy[:5], SIGMA, quality_config(seed)))
    done = events[-1]
    assert isinstance(done, TrainingDone)
    result = predict(done.model, noisy[5], 20, seed=0)
    gain = psnr(result.mmse, clean[5], DATA_RANGE) - psnr(noisy[5], clean[5], DATA_RANGE)
    return {
        "gain": gain,
        "collapse_warnings": [e.message for e in events if isinstance(e, TrainingWarning) and e.kind == "collapse"],
        "final_kl": float(np.mean(done.history["train_kl"][-20:])),
        "steps": done.steps,
        "model": done.model,
    }


@pytest.fixture(scope="module")
def frames():
    return blob_frames()


@pytest.fixture(scope="module")
def scores(frames):
    clean, noisy = frames
    return {seed: train_and_score(seed, clean, noisy) for seed in SEEDS}


def test_every_seed_beats_the_noisy_input_on_an_unseen_frame(scores):
    gains = {seed: round(s["gain"], 2) for seed, s in scores.items()}
    assert all(g > MIN_GAIN_DB for g in gains.values()), gains


def test_every_seed_stays_close_to_an_oracle_blur(scores, frames):
    clean, noisy = frames
    blur = oracle_blur_gain(noisy[5], clean[5])
    assert blur > MIN_GAIN_DB  # the baseline itself denoises well: the comparison means something
    gaps = {seed: round(blur - s["gain"], 2) for seed, s in scores.items()}
    assert all(gap < MAX_GAP_TO_ORACLE_BLUR_DB for gap in gaps.values()), (blur, gaps)


def test_no_seed_collapses_or_stops_early(scores):
    for seed, s in scores.items():
        assert s["steps"] == STEPS, (seed, s)
        assert not s["collapse_warnings"], (seed, s["collapse_warnings"])
        assert s["final_kl"] > MIN_FINAL_KL, (seed, s["final_kl"])  # the latents carry information


def test_map_estimate_also_beats_the_noisy_input(scores, frames):
    clean, noisy = frames
    result = predict(scores[SEEDS[0]]["model"], noisy[5], 20, seed=0, compute_map=True)
    assert psnr(result.map, clean[5], DATA_RANGE) > psnr(noisy[5], clean[5], DATA_RANGE) + MIN_GAIN_DB / 2
