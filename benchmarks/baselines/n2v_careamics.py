"""Noise2Void baseline with CAREamics, trained under a wall-clock budget; prints and writes JSON results.

Runs in CAREamics' OWN virtual environment (see ``benchmarks/README.md`` and
``benchmarks/baselines/requirements-n2v.txt``), never in the plugin's environment: this file imports
only numpy, tifffile, torch, lightning and careamics, and from ``napari_divnoising`` only the numpy-only
``metrics`` module (from the source tree, for the package's PSNR).

Usage (the quality harness ``benchmarks/run_quality.py`` calls it like this)::

    .venv-careamics/bin/python benchmarks/baselines/n2v_careamics.py \\
        --train data/fmd_bpae_b/train_noisy.tif \\
        --val-noisy data/fmd_bpae_b/val_noisy.tif \\
        --val-gt data/fmd_bpae_b/val_gt.tif \\
        --budget-minutes 10 --json n2v.json

Settings (N2V as published, sized for a CPU): UNet depth 2 with 32 first-level filters (CAREamics'
default), 64x64 patches, batch 32, Adam lr 1e-3 (torch's default; N2V used 4e-4, slower for a short
budget) with ReduceLROnPlateau, 8-fold augmentation, 0.2% masked pixels (the N2V default), mean/std
normalisation; training stops when the budget is spent (checked after every batch) and the last weights
are used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The package's tested PSNR (napari_divnoising.metrics needs only numpy, so this also works in a
# baseline's own environment where the package is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from napari_divnoising.metrics import intensity_matched_reference, psnr


def _time_budget_callback(seconds: float):
    from lightning.pytorch.callbacks import Callback

    class TimeBudget(Callback):
        """Stop training once ``seconds`` of wall-clock time have passed (checked after every batch)."""

        def __init__(self) -> None:
            self.start = 0.0
            self.steps = 0

        def on_train_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps += 1
            if time.perf_counter() - self.start >= seconds:
                trainer.should_stop = True
                trainer.limit_val_batches = 0

    return TimeBudget()


def train_and_evaluate(
    train: np.ndarray,
    val_noisy: np.ndarray,
    val_gt: np.ndarray,
    budget_seconds: float,
    patch: int = 64,
    batch: int = 32,
    steps_per_epoch: int = 50,
    data_range: float = 255.0,
    seed: int = 1,
    learning_rate: float = 1e-3,
    work_dir: Path | None = None,
) -> dict:
    """Train N2V on ``train`` (S, Y, X) for ``budget_seconds`` and score it on ``val_noisy`` against ``val_gt``."""
    import torch
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    torch.manual_seed(seed)
    config = create_advanced_n2v_config(
        experiment_name="n2v_benchmark",
        data_type="array",
        axes="SYX",
        patch_size=[patch, patch],
        batch_size=batch,
        num_epochs=100_000,  # the time budget stops training
        num_steps=steps_per_epoch,
        n_val_patches=16,
        num_workers=0,
        optimizer_params={"lr": learning_rate},
        seed=seed,
    )
    budget = _time_budget_callback(budget_seconds)
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="n2v_bench_"))
    careamist = CAREamist(config, work_dir=work_dir, callbacks=[budget], enable_progress_bar=False)

    t0 = time.perf_counter()
    careamist.train(train_data=train.astype(np.float32))
    train_seconds = time.perf_counter() - t0

    frames = val_noisy.astype(np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    predictions, seconds = [], []
    for frame in frames:
        t0 = time.perf_counter()
        out = careamist.predict(frame, axes="YX", data_type="array")
        seconds.append(time.perf_counter() - t0)
        prediction = out[0] if isinstance(out, tuple) else out
        if isinstance(prediction, list):
            prediction = prediction[0]
        predictions.append(np.clip(np.squeeze(np.asarray(prediction)), 0.0, data_range))
    scores = [psnr(p, val_gt, data_range) for p in predictions]
    matched = [psnr(p, intensity_matched_reference(f, val_gt)[0], data_range) for p, f in zip(predictions, frames)]
    return {
        "method": "Noise2Void (CAREamics)",
        "careamics_version": _version("careamics"),
        "torch": torch.__version__,
        "settings": {"patch": patch, "batch": batch, "steps_per_epoch": steps_per_epoch,
                     "unet_depth": config.algorithm_config.model.depth,
                     "unet_first_filters": config.algorithm_config.model.num_channels_init,
                     "masked_pixel_percentage": config.algorithm_config.n2v_config.masked_pixel_percentage,
                     "lr": config.algorithm_config.optimizer.parameters.get("lr"), "seed": seed},
        "budget_seconds": budget_seconds,
        "train_seconds": train_seconds,
        "train_steps": budget.steps,
        "predict_seconds_per_image": statistics.median(seconds),
        "predict_seconds_all": seconds,
        "n_frames": len(frames),
        "data_range": data_range,
        "psnr": scores,
        "psnr_mean": float(np.mean(scores)),
        "psnr_std": float(np.std(scores)),
        "psnr_matched": matched,
        "psnr_matched_mean": float(np.mean(matched)),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "predictions": predictions,  # removed before JSON (see main); kept for callers that want images
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    try:
        return version(package)
    except Exception:  # noqa: BLE001 - a version string is informational only
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="TIFF stack (S, Y, X) of noisy training images")
    parser.add_argument("--val-noisy", type=Path, required=True, help="TIFF of noisy validation frames")
    parser.add_argument("--val-gt", type=Path, required=True, help="TIFF of the validation ground truth")
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="wall-clock training budget")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data-range", type=float, default=255.0)
    parser.add_argument("--max-frames", type=int, default=None, help="score only the first N validation frames")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--save-predictions", type=Path, help="write the denoised frames here (.npy)")
    args = parser.parse_args(argv)

    import tifffile

    train = tifffile.imread(args.train)
    if train.ndim == 2:
        train = train[None]
    val_noisy = tifffile.imread(args.val_noisy)
    if val_noisy.ndim == 2:
        val_noisy = val_noisy[None]
    if args.max_frames:
        val_noisy = val_noisy[: args.max_frames]
    val_gt = tifffile.imread(args.val_gt)
    with tempfile.TemporaryDirectory(prefix="n2v_bench_") as work_dir:
        result = train_and_evaluate(train, val_noisy, val_gt, args.budget_minutes * 60.0, args.patch, args.batch,
                                    data_range=args.data_range, work_dir=Path(work_dir))
    predictions = result.pop("predictions")
    if args.save_predictions:
        np.save(args.save_predictions, np.stack(predictions).astype(np.float32))
    print(f"N2V (CAREamics {result['careamics_version']}): {result['train_steps']} steps in "
          f"{result['train_seconds']:.0f} s; PSNR {result['psnr_mean']:.2f} +- {result['psnr_std']:.2f} dB "
          f"({', '.join(f'{p:.2f}' for p in result['psnr'])}); {result['predict_seconds_per_image']:.2f} s per image")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
