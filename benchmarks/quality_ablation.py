"""Ablation runs for the training defaults: one training setting, several seeds, two validation sets.

Each run trains on the FMD training frames **except field of view 1** and scores the model on

- ``val``: the five frames of ``val_noisy.tif`` against ``val_gt.tif`` (field of view 20), and
- ``holdout``: frames 0-4 of ``calibration_fov01.tif`` (field of view 1, which the model never
  saw) against the mean of that stack's frames 5-49 (so the target does not contain the input).

Reported per set: MMSE PSNR (``--n-samples`` samples), MAP PSNR from the same samples, the mean
PSNR of single samples and the diversity (standard deviation over the samples of each sample's
PSNR, averaged over the frames). Every run appends one JSON line to ``--out``; ``--table``
summarises such a file as markdown (mean and spread over seeds per setting).

The budget is a number of steps (``--steps``) or minutes (``--minutes``). A step budget makes
runs comparable on a busy machine: measure each setting's idle step rate first
(``--rate-only``), then give every setting the steps it makes in the same wall-clock time.

``--with-targets`` adds the noisy frames that are scored (both sets) to the training frames:
adapting to the images being denoised, which an unsupervised method may do (no clean image is
used).

Examples::

    python benchmarks/quality_ablation.py --rate-only --set ema_decay=0.999
    python benchmarks/quality_ablation.py --label ema --set ema_decay=0.999 --steps 17000 --seeds 0 1 2
    python benchmarks/quality_ablation.py --table results/ablation_runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, fmd_dir, machine_info, markdown_table, parse_settings  # noqa: E402

FMD_DIR = fmd_dir()


def load_sets(data_dir: Path) -> dict[str, Any]:
    """Training frames (field of view 1 left out), both validation sets and the calibration stack."""
    from napari_divnoising.io import read_tiff

    def read(name: str) -> np.ndarray:
        return np.asarray(read_tiff(Path(data_dir) / name), dtype=np.float32)

    train, calibration = read("train_noisy.tif"), read("calibration_fov01.tif")
    if not np.array_equal(train[0], calibration[0]):
        raise SystemExit("expected train_noisy.tif frame 0 to be calibration frame 0 (field of view 1)")
    return {
        "train": train[1:],
        "calibration": calibration,
        "sets": {
            "val": (read("val_noisy.tif"), read("val_gt.tif")),
            "holdout": (calibration[:5], calibration[5:].mean(axis=0)),
        },
    }


def score(model: Any, noisy: np.ndarray, gt: np.ndarray, n_samples: int, data_range: float = 255.0,
          orientations: int = 1, offsets: int = 1) -> dict:
    """MMSE, MAP, single-sample PSNR and diversity of ``model`` on the frames ``noisy`` (samples spread over
    ``orientations`` orientations of each frame at ``offsets`` latent-grid offsets), and the MMSE's PSNR at each
    frame's own intensity (``mmse_matched``)."""
    from napari_divnoising.map_estimate import map_estimate
    from napari_divnoising.metrics import intensity_matched_reference, psnr
    from napari_divnoising.prediction import predict

    mmse, map_, single, spread, mmse_matched = [], [], [], [], []
    for i, frame in enumerate(noisy):
        result = predict(model, frame, n_samples, keep_samples=n_samples, seed=i, orientations=orientations,
                         offsets=offsets)
        estimate = np.clip(result.mmse, 0, data_range)
        mmse.append(psnr(estimate, gt, data_range))
        mmse_matched.append(psnr(estimate, intensity_matched_reference(frame, gt)[0], data_range))
        map_.append(psnr(np.clip(map_estimate(result.samples), 0, data_range), gt, data_range))
        per_sample = [psnr(np.clip(s, 0, data_range), gt, data_range) for s in result.samples]
        single.append(float(np.mean(per_sample)))
        spread.append(float(np.std(per_sample)))
    return {"mmse": float(np.mean(mmse)), "map": float(np.mean(map_)), "single": float(np.mean(single)),
            "diversity": float(np.mean(spread)), "mmse_frames": mmse, "mmse_matched": float(np.mean(mmse_matched))}


def noise_line_from_calibration(stack: np.ndarray, max_pixels: int = 20_000, iterations: int = 1000,
                                seed: int = 0) -> Any:
    """A fixed Gaussian noise line ``a * signal + b``, clipped where the stack is (``clipping_limits``), fitted to a
    calibration stack by maximum likelihood with each pixel's signal a free parameter (the frames' mean is not the
    signal where the camera clips). Tried against the calibration GMM (ablation.md); not in the package."""
    import torch

    from napari_divnoising.noise_model_fitting import (
        _linear_variance_fit,
        calibration_statistics,
        clipping_limits,
        default_min_variance,
    )
    from napari_divnoising.noise_models import GaussianNoiseModel

    frames = np.asarray(stack, np.float32)
    flat = frames.reshape(frames.shape[0], -1)
    rng = np.random.default_rng(seed)
    if flat.shape[1] > max_pixels:
        flat = flat[:, rng.choice(flat.shape[1], max_pixels, replace=False)]
    observation = torch.from_numpy(np.ascontiguousarray(flat.T))
    limits = clipping_limits([frames], seed=seed)
    stats = calibration_statistics(frames)
    slope, intercept = _linear_variance_fit(stats)
    mean_signal = observation.mean(1)
    centre, spread = float(mean_signal.mean()), max(float(mean_signal.std()), 1e-6)
    model = GaussianNoiseModel(a=max(slope, 0.0), b=intercept,
                               sigma_min=float(np.sqrt(default_min_variance(stats, limits.quantum > 0))),
                               offset=centre, scale=spread, trainable=True, quantum=limits.quantum,
                               floor=limits.floor, ceiling=limits.ceiling)
    signal = torch.nn.Parameter(mean_signal.clone())
    optimiser = torch.optim.Adam([{"params": [signal], "lr": 0.05 * spread},
                                  {"params": [model.alpha, model.beta], "lr": 0.05}])
    for _ in range(iterations):
        optimiser.zero_grad()
        loss = -model.log_likelihood(observation, signal[:, None]).mean()
        loss.backward()
        optimiser.step()
    model.requires_grad_(False)
    return model


def build_noise_model(data: dict, noise: str) -> Any:
    """The noise model ``noise`` names: a GMM fitted to the calibration stack, one estimated from the training
    images, or the co-learned Gaussian."""
    from napari_divnoising.noise_model_fitting import fit_gmm_from_calibration, fit_gmm_from_noisy
    from napari_divnoising.training import COLEARN

    if noise == "calibration":
        return fit_gmm_from_calibration(data["calibration"])
    if noise == "calibration_line":
        return noise_line_from_calibration(data["calibration"])
    if noise == "estimated":
        return fit_gmm_from_noisy(list(data["train"]))
    return COLEARN


def train_once(data: dict, noise: str, settings: dict, seed: int, steps: int | None, minutes: float | None,
               threads: int) -> tuple[Any, dict]:
    import torch

    from napari_divnoising.training import TrainingConfig, TrainingDone, TrainingWarning, train_iter

    torch.set_num_threads(threads)
    noise_model = build_noise_model(data, noise)
    config = TrainingConfig(**{**settings, "max_steps": steps, "max_minutes": minutes, "seed": seed,
                               "device": "cpu"})
    t0 = time.perf_counter()
    done, warnings = None, []
    for event in train_iter(data["train"], noise_model, config):
        if isinstance(event, TrainingWarning):
            warnings.append(event.message)
        elif isinstance(event, TrainingDone):
            done = event
    info = {"train_seconds": time.perf_counter() - t0, "steps": done.steps, "reason": done.reason,
            "best_step": done.best_step, "best_val_loss": done.best_val_loss, "warnings": warnings,
            "restarts": len(done.history.get("collapse_restarts", []))}
    nm = done.model.noise_model
    if hasattr(nm, "a"):
        info["noise_a"], info["noise_b"] = float(nm.a), float(nm.b)
    return done.model, info


def step_rate(data: dict, noise: str, settings: dict, threads: int, seconds: float = 40.0) -> float:
    """Steps per second of ``settings`` with the noise model ``noise`` (which decides the network a CPU trains
    by default) after a warm-up (no validation in the timed part)."""
    import torch

    from napari_divnoising.training import TrainingConfig, TrainStep, train_iter

    torch.set_num_threads(threads)
    config = TrainingConfig(**{**settings, "max_minutes": seconds / 60 + 0.5, "device": "cpu",
                               "validations_per_run": 1})
    marks = []
    events = train_iter(data["train"], build_noise_model(data, noise), config)
    for event in events:
        if isinstance(event, TrainStep):
            marks.append((event.step, time.perf_counter()))
            if marks[-1][1] - marks[0][1] > seconds + 5:
                break
    events.close()
    timed = [m for m in marks if m[1] - marks[0][1] >= 5]  # 5 s warm-up
    return (timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1])


def summarise(path: Path) -> str:
    runs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["label"], run["noise"], run["budget"]), []).append(run)

    def ms(values: list[float]) -> str:
        return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    rows = []
    for (label, noise, budget), group in groups.items():
        row = [label, noise, budget, len(group)]
        for name in ("val", "holdout"):
            row += [ms([g[name]["mmse"] for g in group]), ms([g[name]["map"] for g in group]),
                    ms([g[name]["single"] for g in group]), ms([g[name]["diversity"] for g in group])]
        for name in ("val", "holdout"):
            matched = [g[name]["mmse_matched"] for g in group if "mmse_matched" in g[name]]
            row.append(ms(matched) if len(matched) == len(group) else "–")
        seconds = [g["train_seconds"] for g in group if np.isfinite(g.get("train_seconds", np.nan))]
        row += [int(np.mean([g["steps"] for g in group])), int(np.mean(seconds)) if seconds else "–"]
        if "noise_a" in group[0]:
            row[-1] = f"{row[-1]}; a,b = " + ", ".join(f"{g['noise_a']:.2f}/{g['noise_b']:.1f}" for g in group)
        rows.append(row)
    header = ["setting", "noise model", "budget", "seeds", "val MMSE", "val MAP", "val 1-sample", "val diversity",
              "holdout MMSE", "holdout MAP", "holdout 1-sample", "holdout diversity", "val MMSE, matched",
              "holdout MMSE, matched", "steps", "train s"]
    machine = runs[0].get("machine", {})
    intro = [
        "# Training ablations: PSNR (dB, data range 255) on two validation sets",
        "",
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores; torch {machine.get('torch')}; each run "
        f"with {runs[0].get('threads')} torch thread(s), two runs side by side. Commit {machine.get('commit')}.",
        "",
        "Trained on the FMD training frames without field of view 1; `val`: the 5 frames of `val_noisy.tif` "
        "(field of view 20); `holdout`: frames 0-4 of field of view 1 against the mean of its frames 5-49. "
        "MMSE and MAP from 100 samples; 1-sample: mean PSNR of single samples; diversity: standard deviation "
        "of the samples' PSNR (docs/method.md 7); matched: the MMSE's PSNR against the ground truth brought to "
        "each noisy frame's intensity (`metrics.intensity_matched_reference`; the `val` frames are about 0.94 "
        "times as bright as their ground truth). Values: mean ± std over the seeds (one value: one seed).",
        "",
        "Budgets are steps, set so that every setting gets the same wall-clock time: the steps it makes in "
        "10 minutes at its idle rate with 2 threads on this machine (`--rate-only`). `train s` is the wall-clock "
        "of each run as it happened (two runs side by side, sometimes with other work): not a speed figure.",
        "",
    ]
    return "\n".join(intro) + "\n" + markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="defaults")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainingConfig setting (repeatable)")
    parser.add_argument("--noise", choices=("calibration", "calibration_line", "colearn", "estimated"),
                        default="calibration",
                        help="noise model: GMM fitted to the calibration stack, Gaussian line (clipped where the "
                        "camera clips) fitted to it, co-learned Gaussian, or GMM estimated from the training images "
                        "alone (fit_gmm_from_noisy)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--data", type=Path, default=FMD_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ablation_runs.jsonl")
    parser.add_argument("--with-targets", action="store_true",
                        help="also train on the noisy frames that are scored (both sets): adapting to the images "
                             "being denoised, as an unsupervised method may")
    parser.add_argument("--rate-only", action="store_true", help="only measure the idle step rate")
    parser.add_argument("--table", type=Path, default=None, help="summarise a runs file as markdown")
    parser.add_argument("--orientations", type=int, nargs="+", default=[1], metavar="K",
                        help="score with the samples spread over K orientations of each frame (1: as the rows "
                             "recorded so far; several values: one record each)")
    parser.add_argument("--offsets", type=int, nargs="+", default=[1], metavar="K",
                        help="score with the samples also spread over K latent-grid offsets (1: as the rows "
                             "recorded so far; several values: one record each, with every --orientations)")
    parser.add_argument("--score-models", type=Path, nargs="+", default=None, metavar="MODEL.pt",
                        help="only score these saved models (from --save-models; their label and seed are "
                             "taken from the file name)")
    parser.add_argument("--save-models", type=Path, default=None, metavar="DIR",
                        help="also save each trained model there (LABEL-seedN.pt), for later prediction experiments")
    args = parser.parse_args(argv)
    if args.table:
        print(summarise(args.table))
        return 0
    data = load_sets(args.data)
    if args.score_models:
        return score_saved(data, args)
    if args.with_targets:
        data["train"] = np.concatenate([data["train"], *(noisy for noisy, _ in data["sets"].values())])
    settings = parse_settings(args.settings)
    if args.rate_only:
        rate = step_rate(data, args.noise, settings, args.threads)
        print(json.dumps({"label": args.label, "settings": settings, "noise": args.noise, "threads": args.threads,
                          "steps_per_s": rate, "cpu": machine_info().get("cpu")}))
        return 0
    if (args.steps is None) == (args.minutes is None):
        parser.error("give exactly one of --steps and --minutes")
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    for seed in args.seeds:
        model, info = train_once(data, args.noise, settings, seed, args.steps, args.minutes, args.threads)
        if args.save_models:
            from napari_divnoising.model_io import save_model

            args.save_models.mkdir(parents=True, exist_ok=True)
            save_model(model, args.save_models / f"{args.label.replace(' ', '_')}-seed{seed}.pt")
        record = {"label": args.label, "settings": settings, "noise": args.noise, "seed": seed, "budget": budget,
                  "threads": args.threads, "with_targets": bool(args.with_targets), **info}
        for orientations, offsets in views(args):
            scored = dict(record, orientations=orientations, offsets=offsets)
            scored["label"] = args.label + view_suffix(orientations, offsets, plain="")
            for name, (noisy, gt) in data["sets"].items():
                scored[name] = score(model, noisy, gt, args.n_samples, orientations=orientations, offsets=offsets)
            write_record(scored, args.out)
    return 0


def views(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The (orientations, offsets) pairs to score with: every ``--orientations`` with every ``--offsets``."""
    return [(orientations, offsets) for offsets in args.offsets for orientations in args.orientations]


def view_suffix(orientations: int, offsets: int, plain: str) -> str:
    """What a row's label says about its prediction views (``plain`` for 1 orientation and 1 offset)."""
    parts = [f"{orientations} orientations"] if orientations != 1 else []
    parts += [f"{offsets} grid offsets"] if offsets != 1 else []
    return ", " + ", ".join(parts) if parts else plain


def write_record(record: dict, out: Path) -> None:
    record["machine"] = machine_info()
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"{record['label']} seed {record['seed']}: val {record['val']['mmse']:.2f} (MAP {record['val']['map']:.2f}), "
          f"holdout {record['holdout']['mmse']:.2f}, {record.get('steps', '?')} steps", flush=True)


def score_saved(data: dict, args: argparse.Namespace) -> int:
    """Score saved models (``LABEL-seedN.pt``) with each of ``--orientations``: prediction settings at equal
    training."""
    import torch

    from napari_divnoising.model_io import load_model

    torch.set_num_threads(args.threads)
    for path in args.score_models:
        label, _, seed = path.stem.rpartition("-seed")
        model = load_model(path)
        for orientations, offsets in views(args):
            record = {"label": label + view_suffix(orientations, offsets, plain=", 1 orientation"),
                      "settings": {"start_filters": model.network.start_filters}, "noise": args.noise,
                      "seed": int(seed), "budget": f"{model.history.get('steps', 0)} steps", "threads": args.threads,
                      "steps": int(model.history.get("steps", 0)), "train_seconds": float("nan"),
                      "orientations": orientations, "offsets": offsets, "scored_saved_model": path.name}
            for name, (noisy, gt) in data["sets"].items():
                record[name] = score(model, noisy, gt, args.n_samples, orientations=orientations, offsets=offsets)
            write_record(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
