"""Quality benchmark: PSNR against ground truth on FMD BPAE (or any folder laid out the same way).

Trains on ``train_noisy.tif``, evaluates on the frames of ``val_noisy.tif`` against ``val_gt.tif``
(data range 255 by default), and compares, under one wall-clock training budget each:

- DivNoising MMSE and MAP with (a) the GMM noise model fitted on ``calibration_fov01.tif``,
  (b) the co-learned Gaussian noise model, (c) a bootstrapped GMM: fitted on (noisy training data,
  MMSE of model (b)) with a 0.5/99.5 percentile clip, then a new model trained with it
  (``--bootstrap-warm-start`` also trains model (b)'s network on with it), (d) a GMM estimated from
  the noisy training images alone (``fit_gmm_from_noisy``; its fitting time is reported);
- the noisy input; BM3D with a generalized Anscombe VST (noise line from the calibration stack);
- Noise2Void (CAREamics), run from its own virtual environment as a subprocess.

It also reports MMSE PSNR against the number of samples (1, 10, 100, 1000) for the best variant.
All estimates are clipped to the data range before scoring. Writes ``results/quality.json`` and
``results/quality.md``.

Run ``python benchmarks/run_quality.py`` (about 55 minutes on 2 CPU cores with the default
10-minute budgets), ``--quick`` for a smoke run, ``--skip n2v bm3d`` to leave parts out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# The package's tested PSNR (napari_divnoising.metrics needs only numpy, so this also works in a
# baseline's own environment where the package is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from napari_divnoising.metrics import intensity_matched_reference, psnr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_DIR,
    RESULTS_DIR,
    fmd_dir,
    fmt,
    machine_info,
    machine_markdown,
    markdown_table,
    write_results,
)

#: The FMD BPAE folder (the four TIFFs); set DIVNOISING_FMD_DIR or pass --data.
FMD_DIR = fmd_dir()
DEFAULT_N2V_PYTHON = Path(os.environ.get("DIVNOISING_N2V_PYTHON", ".venv-careamics/bin/python"))
PARTS = ("calibration", "colearn", "bootstrap", "estimated", "bm3d", "n2v", "samples")
VARIANT_LABELS = {
    "calibration": "DivNoising, GMM from calibration (a)",
    "colearn": "DivNoising, co-learned Gaussian (b)",
    "bootstrap": "DivNoising, bootstrapped GMM (c)",
    "bootstrap_warm": "DivNoising, bootstrapped GMM, model (b)'s network trained on (c')",
    "estimated": "DivNoising, GMM from the noisy images alone (d)",
}


def load_data(data_dir: Path, max_frames: int | None = None) -> dict[str, np.ndarray]:
    """Read the four TIFFs of the benchmark folder as float32 arrays."""
    from napari_divnoising.io import read_tiff

    data_dir = Path(data_dir)
    names = {"train": "train_noisy.tif", "val_noisy": "val_noisy.tif", "val_gt": "val_gt.tif",
             "calibration": "calibration_fov01.tif"}
    missing = [n for n in names.values() if not (data_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"{data_dir} lacks {', '.join(missing)}")
    data = {key: np.asarray(read_tiff(data_dir / name), dtype=np.float32) for key, name in names.items()}
    if data["val_noisy"].ndim == 2:
        data["val_noisy"] = data["val_noisy"][None]
    if max_frames:
        data["val_noisy"] = data["val_noisy"][:max_frames]
    return data


def _train(images: np.ndarray, noise_model: Any, config: Any, log, events: Any = None) -> tuple[Any, dict[str, Any]]:
    """Train with the user's code path (``training.train_iter``, or the given training ``events``, e.g. of
    ``workflows.bootstrap_iter``); return the model and a summary."""
    from napari_divnoising.training import TrainingDone, TrainingWarning, TrainStep, train_iter

    done, warnings, last_step = None, [], None
    t0 = time.perf_counter()
    for event in events if events is not None else train_iter(images, noise_model, config):
        if isinstance(event, TrainStep):
            last_step = event
            if event.step % 100 == 0:
                log(f"    step {event.step}: loss {event.loss:.4f}, {event.elapsed_s:.0f} s")
        elif isinstance(event, TrainingWarning):
            warnings.append(event.message)
            log(f"    warning: {event.message}")
        elif isinstance(event, TrainingDone):
            done = event
    seconds = time.perf_counter() - t0
    summary = {"train_seconds": seconds, "steps": done.steps, "stop_reason": done.reason,
               "best_val_loss": done.best_val_loss, "best_step": done.best_step, "warnings": warnings,
               "last_train_loss": None if last_step is None else last_step.loss}
    return done.model, summary


def evaluate_model(model: Any, val_noisy: np.ndarray, val_gt: np.ndarray, n_samples: int, data_range: float,
                   with_map: bool = True) -> dict[str, Any]:
    """MMSE (and MAP) of each validation frame with ``prediction.predict``; PSNR and seconds per image."""
    from napari_divnoising.map_estimate import map_estimate
    from napari_divnoising.prediction import predict

    mmse_psnr, mmse_matched, map_psnr, map_matched, predict_s, map_s = [], [], [], [], [], []
    for i, frame in enumerate(val_noisy):
        reference = intensity_matched_reference(frame, val_gt)[0]
        t0 = time.perf_counter()
        result = predict(model, frame, n_samples, keep_samples=n_samples if with_map else 0, seed=i)
        predict_s.append(time.perf_counter() - t0)
        mmse = np.clip(result.mmse, 0, data_range)
        mmse_psnr.append(psnr(mmse, val_gt, data_range))
        mmse_matched.append(psnr(mmse, reference, data_range))
        if with_map:
            t0 = time.perf_counter()
            map_image = np.clip(map_estimate(result.samples), 0, data_range)
            map_s.append(time.perf_counter() - t0)
            map_psnr.append(psnr(map_image, val_gt, data_range))
            map_matched.append(psnr(map_image, reference, data_range))
    out = {"n_samples": n_samples, "psnr": mmse_psnr, "psnr_mean": float(np.mean(mmse_psnr)),
           "psnr_std": float(np.std(mmse_psnr)), "psnr_matched": mmse_matched,
           "psnr_matched_mean": float(np.mean(mmse_matched)), "predict_seconds_per_image": float(np.median(predict_s)),
           "predict_seconds_all": predict_s}
    if with_map:
        out["map"] = {"psnr": map_psnr, "psnr_mean": float(np.mean(map_psnr)), "psnr_std": float(np.std(map_psnr)),
                      "psnr_matched": map_matched, "psnr_matched_mean": float(np.mean(map_matched)),
                      "seconds_per_image": float(np.median(map_s))}
    return out


def samples_sweep(model: Any, val_noisy: np.ndarray, val_gt: np.ndarray, counts: list[int], data_range: float,
                  batch_size: int = 10, with_map: bool = True) -> dict[str, Any]:
    """MMSE (and MAP) PSNR after each of ``counts`` samples, from one run of ``max(counts)`` samples per frame.

    Also the PSNR of single samples (each of the first ``max(counts)`` samples scored alone).
    MAP is computed for counts of at least 2 from the first ``count`` samples (all kept in memory).
    """
    from napari_divnoising.map_estimate import map_estimate
    from napari_divnoising.prediction import SampleBatch, predict_iter

    counts = sorted(set(counts))
    per_count: dict[int, list[float]] = {c: [] for c in counts}
    map_per_count: dict[int, list[float]] = {c: [] for c in counts if c >= 2}
    map_seconds: dict[int, list[float]] = {c: [] for c in counts if c >= 2}
    seconds: dict[int, list[float]] = {c: [] for c in counts}
    single: list[float] = []
    for i, frame in enumerate(val_noisy):
        running_sum = np.zeros(frame.shape, np.float64)
        kept: list[np.ndarray] = []
        done = 0
        t0 = time.perf_counter()
        for event in predict_iter(model, frame, counts[-1], batch_size=batch_size, keep_samples=0, seed=1000 + i):
            if not isinstance(event, SampleBatch):
                continue
            for sample in event.samples:  # exact running mean at every count, whatever the batch size
                running_sum += sample
                done += 1
                single.append(psnr(np.clip(sample, 0, data_range), val_gt, data_range))
                if with_map:
                    kept.append(sample)  # SampleBatch.samples is a fresh array per batch
                if done in per_count:
                    per_count[done].append(psnr(np.clip(running_sum / done, 0, data_range), val_gt, data_range))
                    seconds[done].append(time.perf_counter() - t0)
        if with_map:
            for c in map_per_count:
                if c <= len(kept):
                    t1 = time.perf_counter()
                    estimate = map_estimate(np.stack(kept[:c]))
                    map_seconds[c].append(time.perf_counter() - t1)
                    map_per_count[c].append(psnr(np.clip(estimate, 0, data_range), val_gt, data_range))
        del kept
    out: dict[str, Any] = {}
    for c in counts:
        if not per_count[c]:
            continue
        row = {"psnr": per_count[c], "psnr_mean": float(np.mean(per_count[c])),
               "psnr_std": float(np.std(per_count[c])), "seconds_per_image": float(np.median(seconds[c]))}
        if map_per_count.get(c):
            row["map"] = {"psnr": map_per_count[c], "psnr_mean": float(np.mean(map_per_count[c])),
                          "psnr_std": float(np.std(map_per_count[c])),
                          "seconds_per_image": float(np.median(map_seconds[c]))}
        out[str(c)] = row
    if single:
        out["single_sample"] = {"psnr_mean": float(np.mean(single)), "psnr_std": float(np.std(single)),
                                "n": len(single)}
    return out


def run_bm3d(data: dict[str, np.ndarray], data_range: float, sigma_multiplier: float = 1.0) -> dict[str, Any]:
    """BM3D + generalized Anscombe VST (``baselines/bm3d_vst.py``)."""
    sys.path.insert(0, str(BENCH_DIR / "baselines"))
    import bm3d_vst

    return bm3d_vst.evaluate(data["val_noisy"], data["val_gt"], data["calibration"], sigma_multiplier,
                             data_range=data_range)


def run_n2v(data_dir: Path, budget_minutes: float, python: Path, max_frames: int | None,
            data_range: float, timeout_s: float) -> dict[str, Any]:
    """Noise2Void in CAREamics' own environment, as a subprocess that writes JSON."""
    if not Path(python).exists():
        return {"skipped": f"no CAREamics environment at {python} (see benchmarks/README.md)"}
    with tempfile.TemporaryDirectory(prefix="n2v_quality_") as tmp:
        out = Path(tmp) / "n2v.json"
        cmd = [str(python), str(BENCH_DIR / "baselines" / "n2v_careamics.py"),
               "--train", str(Path(data_dir) / "train_noisy.tif"),
               "--val-noisy", str(Path(data_dir) / "val_noisy.tif"),
               "--val-gt", str(Path(data_dir) / "val_gt.tif"),
               "--budget-minutes", str(budget_minutes), "--data-range", str(data_range), "--json", str(out)]
        if max_frames:
            cmd += ["--max-frames", str(max_frames)]
        try:
            child = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"error": f"N2V timed out after {timeout_s:.0f} s"}
        if child.returncode != 0 or not out.exists():
            tail = [ln for ln in child.stderr.strip().splitlines() if ln.strip()]
            return {"error": tail[-1] if tail else f"exit code {child.returncode}"}
        return json.loads(out.read_text())


def run(quick: bool = False, budget_minutes: float | None = None, data_dir: Path = FMD_DIR,
        skip: tuple[str, ...] = (), n_samples: int | None = None, sample_counts: list[int] | None = None,
        max_frames: int | None = None, data_range: float = 255.0, max_steps: int | None = None,
        n2v_python: Path = DEFAULT_N2V_PYTHON, bootstrap_samples: int = 20, verbose: bool = True,
        seed: int = 0, bootstrap_warm_start: bool = False) -> dict[str, Any]:
    """Run the quality benchmark and return its JSON-serialisable results (see the module docstring).

    ``quick`` shrinks budgets (0.2 min), samples (10), the sweep (1, 10) and the frames (2) for a smoke run.
    ``seed`` is the training seed of every DivNoising model (weights, patches, latent noise).
    ``bootstrap_warm_start``: also bootstrap by training model (b)'s network on (c'), from the same model (b)'s
    denoising.
    """
    from napari_divnoising.errors import DivNoisingError
    from napari_divnoising.noise_model_fitting import fit_gmm_from_calibration, fit_gmm_from_noisy
    from napari_divnoising.training import COLEARN, TrainingConfig
    from napari_divnoising.workflows import BootstrapPhase, bootstrap_iter

    def log(message: str) -> None:
        if verbose:
            print(message, flush=True)

    budget = budget_minutes if budget_minutes is not None else (0.2 if quick else 10.0)
    n_samples = n_samples or (10 if quick else 100)
    sample_counts = sample_counts or ([1, 10] if quick else [1, 10, 100, 1000])
    max_frames = max_frames or (2 if quick else None)
    bad = set(skip) - set(PARTS)
    if bad:
        raise ValueError(f"unknown part(s) to skip: {', '.join(sorted(bad))}; choose from {', '.join(PARTS)}")
    data = load_data(data_dir, max_frames)
    config = TrainingConfig(max_minutes=budget, max_steps=max_steps, seed=seed)
    val_noisy, val_gt = data["val_noisy"], data["val_gt"]

    results: dict[str, Any] = {
        "machine": machine_info(), "data": Path(data_dir).name, "data_range": data_range,
        "budget_minutes": budget, "max_steps": max_steps, "seed": seed, "n_samples": n_samples,
        "n_frames": len(val_noisy),
        "quick": quick, "skipped": sorted(skip), "training_config": {"patch_size": config.patch_size,
                                                                     "batch_size": config.batch_size,
                                                                     "depth": config.depth},
        "methods": {},
    }
    methods = results["methods"]
    noisy_scores = [psnr(f, val_gt, data_range) for f in val_noisy]
    intensity_fits = [intensity_matched_reference(f, val_gt) for f in val_noisy]
    results["frame_intensity"] = [{"a": a, "b": b} for _, a, b in intensity_fits]
    methods["noisy"] = {"label": "Noisy input", "psnr": noisy_scores, "psnr_mean": float(np.mean(noisy_scores)),
                        "psnr_std": float(np.std(noisy_scores)),
                        "psnr_matched_mean": float(np.mean([psnr(f, fit[0], data_range)
                                                            for f, fit in zip(val_noisy, intensity_fits)]))}
    log(f"noisy input: {methods['noisy']['psnr_mean']:.2f} dB")

    models: dict[str, Any] = {}
    def with_fitted_noise_model(key: str, fit: Any) -> None:
        """Fit a noise model (timed apart from the training budget), train with it and score the model."""
        t0 = time.perf_counter()
        noise_model = fit()
        fit_s = time.perf_counter() - t0
        models[key], summary = _train(data["train"], noise_model, config, log)
        summary["noise_fit_seconds"] = fit_s
        methods[key] = {"label": VARIANT_LABELS[key], **summary,
                        **evaluate_model(models[key], val_noisy, val_gt, n_samples, data_range)}
        log(f"    MMSE {methods[key]['psnr_mean']:.2f} dB (noise model fitted in {fit_s:.1f} s)")

    if "calibration" not in skip:
        log(f"(a) GMM from calibration + {budget:g} min training")
        with_fitted_noise_model("calibration", lambda: fit_gmm_from_calibration(data["calibration"]))
    if "colearn" not in skip or "bootstrap" not in skip:
        log(f"(b) co-learned noise model + {budget:g} min training")
        models["colearn"], summary = _train(data["train"], COLEARN, config, log)
        methods["colearn"] = {"label": VARIANT_LABELS["colearn"], **summary,
                              **evaluate_model(models["colearn"], val_noisy, val_gt, n_samples, data_range)}
        log(f"    MMSE {methods['colearn']['psnr_mean']:.2f} dB")
    bootstraps = [] if "bootstrap" in skip else ["bootstrap"] + (["bootstrap_warm"] if bootstrap_warm_start else [])
    for key in bootstraps:
        warm_start = key == "bootstrap_warm"
        letter, how = ("c'", "model (b)'s network trained on") if warm_start else ("c", "a new network trained")
        log(f"({letter}) bootstrapped GMM from (noisy, MMSE of (b)), {how} for {budget:g} min")
        t0 = time.perf_counter()
        fit_seconds: list[float] = []

        def timed(events: Any, t0: float = t0, fit_seconds: list[float] = fit_seconds) -> Any:
            for event in events:
                if isinstance(event, BootstrapPhase) and event.stage == 3:
                    fit_seconds.append(time.perf_counter() - t0)
                yield event

        # The same workflow as the Train panel's and `divnoising train --bootstrap`, from model (b).
        events = bootstrap_iter(data["train"], config, first_model=models["colearn"], n_samples=bootstrap_samples,
                                clip=(0.5, 99.5), seed=500, warm_start=warm_start)
        try:
            models[key], summary = _train(data["train"], None, config, log, events=timed(events))
        except DivNoisingError as exc:  # e.g. model (b) too weak to give a usable pseudo-clean signal
            methods[key] = {"label": VARIANT_LABELS[key], "error": f"bootstrap fit refused: {exc}"}
            log(f"    {methods[key]['error']}")
        else:
            summary["train_seconds"] -= fit_seconds[0]
            summary["bootstrap_seconds"] = fit_seconds[0]
            summary["bootstrap_samples"] = bootstrap_samples
            summary["warm_start"] = models[key].history.get("warm_start")
            methods[key] = {"label": VARIANT_LABELS[key], **summary,
                            **evaluate_model(models[key], val_noisy, val_gt, n_samples, data_range)}
            log(f"    MMSE {methods[key]['psnr_mean']:.2f} dB")
    if "estimated" not in skip:
        log(f"(d) GMM estimated from the noisy training images + {budget:g} min training")
        with_fitted_noise_model("estimated", lambda: fit_gmm_from_noisy(list(data["train"])))
    if "bm3d" not in skip:
        log("BM3D + VST")
        try:
            methods["bm3d"] = {"label": "BM3D + generalized Anscombe VST", **run_bm3d(data, data_range)}
            log(f"    {methods['bm3d']['psnr_mean']:.2f} dB")
        except ImportError as exc:
            methods["bm3d"] = {"label": "BM3D + generalized Anscombe VST",
                               "skipped": f"{exc} (pip install -e '.[benchmark]')"}
    if "n2v" not in skip:
        log(f"Noise2Void (CAREamics) + {budget:g} min training, in {n2v_python}")
        n2v = run_n2v(data_dir, budget, n2v_python, max_frames, data_range, timeout_s=budget * 60 + 900)
        methods["n2v"] = {"label": "Noise2Void (CAREamics)", **n2v}
        log(f"    {fmt(n2v.get('psnr_mean'), 4)} dB {n2v.get('error', n2v.get('skipped', ''))}")

    trained = [k for k in VARIANT_LABELS if k in models and "psnr_mean" in methods.get(k, {})]
    if trained and "samples" not in skip:
        best = max(trained, key=lambda k: methods[k]["psnr_mean"])
        log(f"MMSE PSNR against the number of samples ({', '.join(map(str, sample_counts))}) for {best}")
        results["samples_sweep"] = {"variant": best, "label": VARIANT_LABELS[best],
                                    "counts": samples_sweep(models[best], val_noisy, val_gt, sample_counts,
                                                            data_range)}
    return results


def to_markdown(results: dict[str, Any]) -> str:
    """The README/docs table for :func:`run`'s results."""
    methods = results["methods"]
    lines = [f"# Quality: PSNR against ground truth (data range {fmt(results['data_range'])})", "",
             f"Data: `{results['data']}`, {results['n_frames']} validation frame(s); training budget "
             f"{fmt(results['budget_minutes'])} min per model"
             + (f" (at most {results['max_steps']} steps)" if results.get("max_steps") else "")
             + f"; training seed {results.get('seed', 0)}"
             + f"; DivNoising MMSE of {results['n_samples']} samples, MAP from the same samples; "
               "all estimates clipped to the data range." + (" **Quick smoke run: not representative.**"
                                                           if results.get("quick") else ""),
             "", machine_markdown(results["machine"]), ""]
    rows = []

    def pm(entry: dict[str, Any]) -> str:
        return f"{entry['psnr_mean']:.2f} ± {entry['psnr_std']:.2f}"

    order = ["noisy", "bm3d", "n2v", "calibration", "colearn", "bootstrap", "bootstrap_warm", "estimated"]
    for key in order:
        if key not in methods:
            continue
        m = methods[key]
        if "psnr_mean" not in m:
            rows.append([m.get("label", key), "–", "–", "–", "–", "–",
                         m.get("skipped") or m.get("error") or "failed"])
            continue
        note = ""
        if key == "bm3d":
            p = m["noise_params"]
            note = f"noise var = {p['gain']:.2f}·mean {p['offset']:+.1f}; sigma ×{fmt(m['sigma_multiplier'])}"
        elif key == "n2v":
            note = f"{m.get('train_steps')} steps of {m['settings']['batch']}×{m['settings']['patch']}²"
        elif key in VARIANT_LABELS:
            note = f"{m['steps']} steps ({m['stop_reason']})"
            if key == "estimated" and "noise_fit_seconds" in m:
                note += f"; noise model fitted in {m['noise_fit_seconds']:.0f} s"
            if m.get("warm_start"):
                note += f"; network trained on from model (b) ({m['warm_start']['steps']} steps there)"
            if m.get("warnings"):
                note += f"; {len(m['warnings'])} warning(s)"
        matched = f"{m['psnr_matched_mean']:.2f}" if "psnr_matched_mean" in m else "–"
        if "map" in m and "psnr_matched_mean" in m["map"]:
            matched += f" (MAP {m['map']['psnr_matched_mean']:.2f})"
        rows.append([m.get("label", key), pm(m), pm(m["map"]) if "map" in m else "–", matched,
                     m.get("train_seconds"), m.get("predict_seconds_per_image"), note])
    lines.append(markdown_table(["method", "PSNR (dB)", "MAP PSNR (dB)", "PSNR at the frame's intensity (dB)",
                                 "train (s)", "predict (s / image)", "notes"], rows))
    sweep = results.get("samples_sweep")
    if sweep:
        lines += ["", f"MMSE PSNR against the number of samples, {sweep['label']}:", ""]
        counts = {c: v for c, v in sweep["counts"].items() if c != "single_sample"}
        lines.append(markdown_table(
            ["samples", "MMSE PSNR (dB)", "MAP PSNR (dB)", "seconds / image (sampling to that count)",
             "MAP seconds / image"],
            [[c, f"{v['psnr_mean']:.2f} ± {v['psnr_std']:.2f}",
              f"{v['map']['psnr_mean']:.2f} ± {v['map']['psnr_std']:.2f}" if "map" in v else "–",
              v["seconds_per_image"], v["map"]["seconds_per_image"] if "map" in v else "–"]
             for c, v in counts.items()]))
        single = sweep["counts"].get("single_sample")
        if single:
            lines += ["", f"A single posterior sample scores {single['psnr_mean']:.2f} ± {single['psnr_std']:.2f} dB "
                          f"(mean ± std over {single['n']} samples of all frames); the spread is the diversity "
                          "(standard-deviation PSNR, docs/method.md 7)."]
    lines += ["", "PSNR: mean ± std over the validation frames. Train and predict times are wall-clock on the "
                  "machine above; BM3D needs no training."]
    fits = results.get("frame_intensity")
    if fits:
        lines += ["", "PSNR at the frame's intensity: against the ground truth brought to each noisy frame's own "
                      "intensity, a·gt + b fitted by least squares of the frame on the ground truth (here a = "
                      + ", ".join(f"{f['a']:.3f}" for f in fits) + "; b = " + ", ".join(f"{f['b']:.2f}" for f in fits)
                      + "). A ground truth averaged over many frames need not be as bright as each of them; this "
                      "column scores the denoising without that difference (mean over the frames)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=None, help="training budget per model (10)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and 2 frames: a smoke run")
    parser.add_argument("--skip", nargs="+", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--data", type=Path, default=FMD_DIR, help="folder with the four TIFFs")
    parser.add_argument("--n-samples", type=int, default=None, help="posterior samples per MMSE (100)")
    parser.add_argument("--sample-counts", type=int, nargs="+", default=None, help="sweep (1 10 100 1000)")
    parser.add_argument("--max-frames", type=int, default=None, help="score only the first N validation frames")
    parser.add_argument("--max-steps", type=int, default=None, help="also cap each training at N steps")
    parser.add_argument("--n2v-python", type=Path, default=DEFAULT_N2V_PYTHON,
                        help="python of the CAREamics environment")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="quality", help="output file stem (quality -> quality.json/.md)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the DivNoising models (0)")
    parser.add_argument("--bootstrap-warm-start", action="store_true",
                        help="also bootstrap by training model (b)'s network on with the GMM (c')")
    args = parser.parse_args(argv)
    results = run(quick=args.quick, budget_minutes=args.budget_minutes, data_dir=args.data, skip=tuple(args.skip),
                  n_samples=args.n_samples, sample_counts=args.sample_counts, max_frames=args.max_frames,
                  max_steps=args.max_steps, n2v_python=args.n2v_python, seed=args.seed,
                  bootstrap_warm_start=args.bootstrap_warm_start)
    markdown = to_markdown(results)
    json_path, md_path = write_results(args.name, results, markdown, args.out_dir)
    print()
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
