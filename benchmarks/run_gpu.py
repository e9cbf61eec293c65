"""Device benchmark: training and prediction speed on one GPU, and a time-budgeted FMD training.

Measures, on ``--device`` (default ``cuda``):

1. the float32 and bfloat16 matrix-product rates (the yardstick of the floors, measured in this run);
2. the training step of the real loop (``training.train_iter``: patches cut on the device, bf16
   autocast, losses read back every ``log_interval`` steps) of the paper's network at depth 2 (the
   issue's yardstick) at the CPU default (batch 8 x 64^2), the GPU default (batch 32 x 128^2) and
   batch 64 x 128^2, and of the device's default network (when it is another) at the last two, as the
   median step time after warm-up, against the FLOP floor (conv FLOPs of a training forward pass,
   counted as the layers run, x 3 for forward + backward at the bf16 matmul rate);
3. posterior sampling with each of those networks: samples per second for 100 and 1000 samples of
   512^2 and for 20 and 100 samples of 4096^2 (``prediction.predict_iter``, default settings: 8
   orientations at 2 grid offsets), MAP time, and the peak GPU memory;
4. ``divnoising fit-noise-model`` on the calibration stack and ``divnoising train --max-minutes M``
   on ``train_noisy.tif`` through the command line, as a user would run them; the share of the
   budget the run used; MMSE (100 samples) and MAP PSNR on ``val_noisy.tif`` against ``val_gt.tif``
   (data range 255, estimates clipped to it).

Writes ``results/gpu.json`` and ``results/gpu.md``. Run
``python benchmarks/run_gpu.py --data DIR`` (DIR holds the FMD files; about 8 minutes with the
default 5-minute training), or ``--quick --device cpu`` for a smoke run. ``--parts sampling,fmd`` runs some
parts only (``train_steps``, ``sampling``, ``fmd``); ``--name`` names the results files; ``--start-filters F``
trains the FMD model with F first-level filters.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    fmt,
    machine_info,
    machine_markdown,
    markdown_table,
    median,
    sync_device,
    write_results,
)
from bench_optimizer import loop_config, loop_rate  # noqa: E402
from bench_train_step import training_forward_macs  # noqa: E402

from napari_divnoising.io import read_tiff  # noqa: E402
from napari_divnoising.metrics import psnr  # noqa: E402

#: Progress-bar lines of the command line's output, left out of the report.
PROGRESS_LINE = re.compile(r"^\s*(step \d+, |fitting noise model:|training )")


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Median matrix-product rate in GFLOP/s for ``n x n`` operands of ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync_device(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync_device(device)
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / median(times) / 1e9


def train_step_times(images: np.ndarray, device: torch.device, batch: int, patch: int, steps: int,
                     network: str | None = None, depth: int | None = None) -> dict[str, Any]:
    """Median step time of the real training loop after warm-up (seconds), from its own events (``network``
    and ``depth`` None: the device's default network)."""
    from napari_divnoising.training import TrainStep, train_iter

    config = loop_config(device, batch, patch, steps, network=network, depth=depth)
    stamps = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for event in train_iter(images, 10.0, config):
        if isinstance(event, TrainStep):
            sync_device(device)  # so each stamp is the end of a finished step
            stamps.append(time.perf_counter())
    warm = max(10, steps // 5)
    per_step = np.diff(stamps[warm:])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    resolved = config.resolved(device)
    return {"network": f"{resolved.network}, depth {resolved.depth}", "batch": batch, "patch": patch,
            "steps": steps, "step_median_s": float(np.median(per_step)),
            "steps_per_s_unsynced": None, "peak_gpu_mib": peak}


def sampling_speed(model: Any, device: torch.device, size: int, n_samples: int, compute_map: bool = False,
                   repeats: int = 2) -> dict[str, Any]:
    """Seconds and samples/s (median of ``repeats``) to draw ``n_samples`` of a ``size`` x ``size`` image."""
    from napari_divnoising.prediction import predict

    image = np.random.default_rng(0).poisson(40.0, (size, size)).astype(np.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    predict(model, image, min(n_samples, 4), device=str(device), keep_samples=0, seed=0)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predict(model, image, n_samples, device=str(device), keep_samples=0, seed=1, compute_map=compute_map)
        sync_device(device)
        times.append(time.perf_counter() - t)
    seconds = median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"network": f"{model.network.kind}, depth {model.network.depth}", "size": size, "samples": n_samples,
            "map": compute_map, "seconds": seconds,
            "samples_per_s": n_samples / seconds, "mpx_samples_per_s": n_samples * size * size / seconds / 1e6,
            "peak_gpu_mib": peak}


def cli(*args: str, log: list[str], placeholders: dict[str, str] | None = None) -> str:
    """Run ``divnoising ARGS`` as a user would; return its output (raise with it on failure)."""
    command = [sys.executable, "-m", "napari_divnoising.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    output = run.stdout + run.stderr
    entry = f"$ divnoising {' '.join(args)}  ({time.perf_counter() - t:.0f} s)\n" + "\n".join(
        line for line in output.splitlines() if line.strip() and not PROGRESS_LINE.match(line))
    for path, name in (placeholders or {}).items():  # the report names no folder of the machine it ran on
        entry = entry.replace(path, name)
    log.append(entry)
    if run.returncode != 0:
        raise RuntimeError(f"divnoising {args[0]} failed:\n{output[-3000:]}")
    return output


def fmd_training(data_dir: Path, device: torch.device, minutes: float, work: Path, log: list[str],
                 train_options: Sequence[str] = ()) -> dict[str, Any]:
    """Fit the noise model and train through the CLI (``train_options``: more ``divnoising train`` options), then
    score MMSE and MAP on the validation frames."""
    from napari_divnoising.model_io import load_model
    from napari_divnoising.prediction import predict

    nm = work / "nm.npz"
    model_path = work / "model.pt"
    names = {str(work): "WORK", str(data_dir): "DATA"}
    cli("fit-noise-model", "--calibration", str(data_dir / "calibration_fov01.tif"), "--out", str(nm), log=log,
        placeholders=names)
    t = time.perf_counter()
    output = cli("train", "--data", str(data_dir / "train_noisy.tif"), "--noise-model", str(nm),
                 "--max-minutes", str(minutes), "--device", str(device), "--out", str(model_path), *train_options,
                 log=log, placeholders=names)
    wall = time.perf_counter() - t
    model = load_model(model_path)
    last_run = model.history["runs"][-1]
    noisy = np.asarray(read_tiff(data_dir / "val_noisy.tif"), np.float32)
    truth = np.asarray(read_tiff(data_dir / "val_gt.tif"), np.float32)
    scores: dict[str, list[float]] = {"noisy": [], "mmse": [], "map": []}
    t = time.perf_counter()
    for frame in noisy:
        result = predict(model, frame, 100, device=str(device), keep_samples=0, compute_map=True, seed=0)
        scores["noisy"].append(psnr(frame, truth, 255.0))
        scores["mmse"].append(psnr(np.clip(result.mmse, 0, 255), truth, 255.0))
        scores["map"].append(psnr(np.clip(result.map, 0, 255), truth, 255.0))
    predict_s = (time.perf_counter() - t) / len(noisy)
    summary = next((line for line in output.splitlines() if line.startswith("Done:")), "")
    return {
        "minutes": minutes, "wall_s": wall, "steps": int(model.history["steps"]), "reason": last_run["reason"],
        "budget_used": last_run.get("budget_used"), "train_elapsed_s": last_run.get("elapsed_s"),
        "best_step": model.history.get("best_step"), "batch": model.config.get("batch_size"),
        "patch": model.config.get("patch_size"), "network": model.config.get("network"), "summary": summary,
        "predict_s_per_frame": predict_s, "train_options": list(train_options),
        **{f"{k}_psnr_mean": float(np.mean(v)) for k, v in scores.items()},
        **{f"{k}_psnr_std": float(np.std(v)) for k, v in scores.items()},
    }


def section(results: dict[str, Any], name: str, fn: Any, save: Any) -> None:
    """Run one part of the benchmark into ``results[name]``; a failure is recorded, not fatal, so the other
    parts of a device run that may not be repeated still report."""
    t = time.perf_counter()
    try:
        results[name] = fn()
    except Exception:
        results.setdefault("errors", {})[name] = traceback.format_exc()
        print(results["errors"][name], file=sys.stderr)
    results.setdefault("section_s", {})[name] = time.perf_counter() - t
    try:
        save(results)
    except Exception:
        traceback.print_exc()


#: The parts of the benchmark, in the order they run (the matrix-product yardstick always runs).
PARTS = ("train_steps", "sampling", "fmd")


def run(data_dir: Path, device: torch.device, minutes: float, quick: bool, save: Any = lambda results: None,
        parts: Sequence[str] = PARTS, train_options: Sequence[str] = ()) -> dict[str, Any]:
    from napari_divnoising.model import DivNoisingModel
    from napari_divnoising.network import build_network
    from napari_divnoising.noise_models import GaussianNoiseModel
    from napari_divnoising.training import TrainingConfig, device_defaults

    log: list[str] = []
    results: dict[str, Any] = {"machine": machine_info(str(device)), "log": log}
    n = 1024 if quick else 8192
    section(results, "matmul_gflops", lambda: {"float32": matmul_rate(device, torch.float32, n),
                                               "bfloat16": matmul_rate(device, torch.bfloat16, n)}, save)
    train_frames = np.asarray(read_tiff(data_dir / "train_noisy.tif"), np.float32)
    steps = 20 if quick else 400
    configs = [(4, 32), (8, 64)] if quick else [(8, 64), (32, 128), (64, 128)]
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    defaults = device_defaults(device)  # the network a user trains on this device
    start_filters = defaults["start_filters"]
    results["start_filters"] = start_filters
    # The yardstick (the paper's network, depth 2) and the device's default network, where it is another
    # (its own depth); the yardstick's steps at every size, the default's at the sizes of a GPU.
    networks = [("divnoising", 2)]
    if defaults["network"] != "divnoising":
        networks.append((defaults["network"], None))
    step_runs = [(network, depth, batch, patch) for i, (network, depth) in enumerate(networks)
                 for batch, patch in (configs if i == 0 else configs[-2:])]

    def train_steps() -> list[dict[str, Any]]:
        yardstick = results.get("matmul_gflops", {}).get("bfloat16" if bf16 else "float32", float("nan"))
        rows = []
        for network, depth, batch, patch in step_runs:
            row = train_step_times(train_frames, device, batch, patch, steps, network, depth)
            config = loop_config(device, batch, patch, steps, network=network, depth=depth)
            row["loop_steps_per_s"] = loop_rate(train_frames, device, config, warm=max(10, steps // 5))
            resolved = config.resolved(device)
            built = build_network(resolved.network, resolved.depth, resolved.start_filters, resolved.z_dim)
            row["gflop_per_step"] = 3 * 2 * training_forward_macs(built, patch, patch) * batch / 1e9
            row["floor_s"] = row["gflop_per_step"] / yardstick
            row["ratio_to_floor"] = row["step_median_s"] / row["floor_s"]
            rows.append(row)
        return rows

    if "train_steps" in parts:
        section(results, "train_steps", train_steps, save)

    def sampling() -> list[dict[str, Any]]:
        small, large = (128, 256) if quick else (512, 4096)
        rows = []
        for network, depth in networks:
            settings = TrainingConfig(network=network, depth=depth, start_filters=start_filters).network_settings()
            torch.manual_seed(0)
            model = DivNoisingModel(build_network(network, settings["depth"], start_filters, settings["z_dim"]),
                                    GaussianNoiseModel(a=4.0, b=0.0), 20.0, 20.0)
            rows += [sampling_speed(model, device, small, 10 if quick else 100),
                     sampling_speed(model, device, small, 20 if quick else 1000),
                     sampling_speed(model, device, small, 10 if quick else 100, compute_map=True),
                     sampling_speed(model, device, large, 4 if quick else 20, repeats=1),
                     sampling_speed(model, device, large, 10 if quick else 100, repeats=1)]
        return rows

    if "sampling" in parts:
        section(results, "sampling", sampling, save)

    def fmd() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            return fmd_training(data_dir, device, minutes, Path(tmp), log, train_options)

    if "fmd" in parts:
        section(results, "fmd", fmd, save)
    return results


def shortened(output: str, head: int = 12, tail: int = 20) -> str:
    """``output`` with the lines between its first ``head`` and last ``tail`` left out (the JSON keeps all)."""
    lines = output.splitlines()
    if len(lines) <= head + tail + 1:
        return output
    return "\n".join([*lines[:head], f"[... {len(lines) - head - tail} lines ...]", *lines[-tail:]])


def markdown(results: dict[str, Any]) -> str:
    lines = ["# GPU benchmark", "", machine_markdown(results["machine"]), ""]
    if "matmul_gflops" in results:
        m = results["matmul_gflops"]
        lines += [f"Matrix-product yardstick: {fmt(m['float32'])} GFLOP/s float32, {fmt(m['bfloat16'])} GFLOP/s "
                  "bfloat16.", ""]
    if "train_steps" in results:
        lines += [f"## Training step (real loop, {results['start_filters']} first-level filters as the device "
                  "default, bf16 autocast where supported)", ""]
        lines.append(markdown_table(
            ["network", "batch x patch", "GFLOP/step", "floor (ms)", "step median (ms)", "ratio to floor",
             "loop steps/s", "peak GPU MiB"],
            [[r.get("network", "divnoising, depth 2"), f"{r['batch']} x {r['patch']}²", r["gflop_per_step"],
              1e3 * r["floor_s"], 1e3 * r["step_median_s"], r["ratio_to_floor"], r["loop_steps_per_s"],
              r["peak_gpu_mib"]] for r in results["train_steps"]]))
        lines.append("")
    if "sampling" in results:
        lines += ["## Posterior sampling", ""]
        rows = results["sampling"]
        lines.append(markdown_table(
            ["network", "image", "samples", "MAP", "seconds", "samples/s", "Mpx-samples/s", "peak GPU MiB"],
            [[s.get("network", "divnoising, depth 2"), f"{s['size']}²", s["samples"], s["map"], s["seconds"],
              s["samples_per_s"], s["mpx_samples_per_s"], s["peak_gpu_mib"]] for s in rows]))
        lines.append("")
        lines += large_image_rates(rows)
        lines.append("")
    if "fmd" in results:
        f = results["fmd"]
        lines += ["## FMD training through the command line", "",
                  f"`divnoising train --max-minutes {f['minutes']:g} --device {results['machine']['device']}"
                  f"{''.join(' ' + o for o in f.get('train_options', []))}` "
                  f"(calibration GMM, {f.get('network') or 'divnoising'} network): {f['steps']} steps of batch "
                  f"{f['batch']} x {f['patch']}², ended by "
                  f"{f['reason']} after {fmt(f['train_elapsed_s'])} s ({fmt(100 * (f['budget_used'] or 0))}% of the "
                  f"budget); best validation at step {f['best_step']}.", "",
                  markdown_table(["", "PSNR mean (dB)", "std"],
                                 [[k, f[f"{k}_psnr_mean"], f[f"{k}_psnr_std"]] for k in ("noisy", "mmse", "map")]),
                  "", f"MMSE of 100 samples + MAP: {fmt(f['predict_s_per_frame'])} s per 512² frame.", ""]
    for name, error in results.get("errors", {}).items():
        lines += [f"## {name} failed", "", "```", error.rstrip(), "```", ""]
    if results.get("log"):
        lines += ["## Command-line output", "", "```", *(shortened(entry) for entry in results["log"]), "```"]
    return "\n".join(lines)


def large_image_rates(rows: list[dict[str, Any]]) -> list[str]:
    """Per network and large-image row: its rate per pixel relative to the small image's sample rows."""
    lines = []
    small_size = min(r["size"] for r in rows)
    for big in rows:
        if big["size"] == small_size or big["map"]:
            continue
        network = big.get("network", "divnoising, depth 2")
        smalls = [r for r in rows if r.get("network", "divnoising, depth 2") == network and r["size"] == small_size
                  and not r["map"]]
        ratios = ", ".join(f"{fmt(big['mpx_samples_per_s'] / r['mpx_samples_per_s'])} against {r['samples']} samples"
                           for r in smalls)
        lines.append(f"- {network}, {big['samples']} samples of {big['size']}²: rate per pixel relative to "
                     f"{small_size}²: {ratios}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with the FMD files (train_noisy.tif, ...)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-minutes", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write gpu.json/.md (default results/)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default all: {', '.join(PARTS)})")
    parser.add_argument("--name", default=None, help="results file name (default gpu, or gpu_quick with --quick)")
    parser.add_argument("--start-filters", type=int, default=None,
                        help="the FMD training's first-level filters (default: the device's)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    device = torch.device(args.device)
    kwargs = {"out_dir": args.out_dir} if args.out_dir else {}
    name = args.name or ("gpu" if not args.quick else "gpu_quick")
    train_options = ["--start-filters", str(args.start_filters)] if args.start_filters else []
    results = run(args.data, device, args.train_minutes, args.quick, parts=parts, train_options=train_options,
                  save=lambda partial: write_results(name, partial, markdown(partial), **kwargs))
    paths = write_results(name, results, markdown(results), **kwargs)
    print(markdown(results))
    print("wrote", *paths)
    if results.get("errors"):
        sys.exit(f"{len(results['errors'])} part(s) failed: {', '.join(results['errors'])}")


if __name__ == "__main__":
    main()
