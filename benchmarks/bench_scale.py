"""Scale-out: throughput and peak memory of OME-Zarr prediction in one process and on 1, 2, ... Dask workers.

On a synthetic stack (default 2000 frames of 512x512, uint16, written to a temporary OME-Zarr store
chunk by chunk), each configuration runs in a fresh child process:

- ``cli-tiff``: the plain single-process CLI, ``divnoising predict --input x.tif --out-dir d``
  (reads the whole stack and keeps every result in memory), on ``--baseline-frames`` frames;
- ``zarr``: ``divnoising predict --input x.ome.zarr --out r.ome.zarr`` in one process (no Dask);
- ``dask-N``: the same with ``--workers N`` (an embedded LocalCluster of N processes).

Reported: frames/s over the whole run (cluster start included) and over the compute phase (first
unit submitted to last unit written), peak resident memory of the main process and of each worker
(Linux ``VmHWM``), and the overhead of each configuration against ``cli-tiff`` (time per frame).
A memory sweep (``--sweep-gb``) runs the single-process ``zarr`` path on inputs of growing size with
``--sweep-samples`` samples per frame: its peak memory should stay flat.

Random weights of the chosen architecture (timing does not depend on them). Results go to
``benchmarks/results/scale.{json,md}`` (``--out-dir`` to change). Full run on a GPU machine::

    python benchmarks/bench_scale.py --frames 2000 --size 512 --samples 10 --workers 1,2 \\
        --sweep-gb 0.1,0.5,1,2 --device cuda

Smoke run (seconds): ``python benchmarks/bench_scale.py --frames 4 --size 64 --samples 2 --arch tiny
--workers 1 --sweep-gb 0.0005,0.001 --out-dir scale-runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    RESULTS_DIR,
    machine_info,
    machine_markdown,
    markdown_table,
    peak_rss_mib,
    run_python_child,
    write_results,
)

ARCHS = {"reference": {"depth": 2, "start_filters": 32, "z_dim": 64},
         "tiny": {"depth": 2, "start_filters": 8, "z_dim": 8}}

CHILD = "import sys; sys.path.insert(0, 'benchmarks'); import bench_scale; bench_scale.child(sys.argv[1])"


# ---------------------------------------------------------------------- data


def make_model(path: Path, arch: str) -> Path:
    import torch

    from napari_divnoising.model import DivNoisingModel
    from napari_divnoising.model_io import save_model
    from napari_divnoising.network import DivNoisingVAE
    from napari_divnoising.noise_models import GaussianNoiseModel

    torch.manual_seed(0)
    model = DivNoisingModel(DivNoisingVAE(**ARCHS[arch]), GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.1), 300.0, 100.0,
                            name=f"bench-{arch}")
    return save_model(model, path)


def _frames(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 300 + 200 * np.sin(6 * yy) * np.cos(5 * xx)
    return np.clip(base[None] + rng.normal(0, 60, (n, size, size)), 0, 65535).astype(np.uint16)


def make_zarr_input(path: Path, frames: int, size: int, block: int = 16) -> Path:
    """A (frames, size, size) uint16 OME-Zarr image (NGFF 0.5), written ``block`` frames at a time."""
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = root.create_array("0", shape=(frames, size, size), chunks=(1, size, size), dtype="uint16",
                              dimension_names=["t", "y", "x"])
    rng = np.random.default_rng(0)
    for start in range(0, frames, block):
        array[start : start + block] = _frames(rng, min(block, frames - start), size)
    axes = [{"name": "t", "type": "time"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.1, 0.1]}]}]
    write_multiscales_metadata(root, datasets=datasets, axes=axes, name="synthetic")
    return path


def make_tiff_input(path: Path, zarr_input: Path, frames: int) -> Path:
    """The first ``frames`` frames of the Zarr input as an ImageJ TIFF (for the plain CLI baseline)."""
    import tifffile
    import zarr

    data = zarr.open_group(str(zarr_input), mode="r")["0"][:frames]
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TYX"})
    return path


# ---------------------------------------------------------------------- child processes


def child(spec_json: str) -> None:
    """Run one configuration (in a fresh interpreter) and print its measurements as one JSON line."""
    spec = json.loads(spec_json)
    start = time.perf_counter()
    out: dict[str, Any] = {}
    if spec["mode"] == "cli-tiff":
        from napari_divnoising.cli import main

        code = main(["predict", "--model", spec["model"], "--input", spec["input"], "--out-dir", spec["out"],
                     "--samples", str(spec["samples"]), "--save-samples", "0", "--seed", "1",
                     "--device", spec["device"]])
        if code != 0:
            raise SystemExit(code)
        out["compute_seconds"] = time.perf_counter() - start
    else:
        from napari_divnoising.scale import UnitDone, ZarrPlan, ZarrPredictionSettings, predict_to_zarr_iter

        settings = ZarrPredictionSettings(n_samples=spec["samples"], keep_samples=0, seed=1, device=spec["device"])
        workers: dict[str, int] = {}
        first = None
        for event in predict_to_zarr_iter(spec["model"], spec["input"], spec["out"], settings,
                                          workers=spec.get("workers")):
            if isinstance(event, ZarrPlan):
                first = time.perf_counter()
            elif isinstance(event, UnitDone):
                workers[event.worker] = max(workers.get(event.worker, 0), event.peak_rss)
        out["compute_seconds"] = time.perf_counter() - (first or start)
        out["worker_peak_mib"] = sorted(v / 2**20 for v in workers.values())
    out["seconds"] = time.perf_counter() - start
    out["main_peak_mib"] = peak_rss_mib()
    print(json.dumps(out))


def run_config(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    result = run_python_child(CHILD, [json.dumps(spec)], timeout=timeout)
    if "error" not in result:
        result["frames_per_s"] = spec["frames"] / result["seconds"]
        result["compute_frames_per_s"] = spec["frames"] / result["compute_seconds"]
    described = {k: spec[k] for k in ("mode", "frames", "samples") if k in spec}
    return {**described, "workers": spec.get("workers"), **result}


# ---------------------------------------------------------------------- main


def throughput_runs(args: argparse.Namespace, tmp: Path, model: str, workers: list[int]) -> list[dict[str, Any]]:
    """cli-tiff, zarr and dask-N on the synthetic stack, each in its own process."""
    src = make_zarr_input(tmp / "input.ome.zarr", args.frames, args.size)
    base_frames = min(args.frames, args.baseline_frames or args.frames)
    common = {"model": model, "samples": args.samples, "device": args.device}
    tif = make_tiff_input(tmp / "input.tif", src, base_frames)
    runs = [run_config({**common, "mode": "cli-tiff", "input": str(tif), "out": str(tmp / "tif_out"),
                        "frames": base_frames}, args.timeout)]
    runs.append(run_config({**common, "mode": "zarr", "input": str(src), "out": str(tmp / "zarr.ome.zarr"),
                            "frames": args.frames}, args.timeout))
    for n in workers:
        runs.append(run_config({**common, "mode": f"dask-{n}", "workers": n, "input": str(src),
                                "out": str(tmp / f"dask{n}.ome.zarr"), "frames": args.frames}, args.timeout))
    base = runs[0].get("seconds")
    for r in runs:
        if base and "seconds" in r:
            r["time_per_frame_vs_cli"] = (r["seconds"] / r["frames"]) / (base / base_frames)
    return runs


def run(args: argparse.Namespace) -> dict[str, Any]:
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    sweep = [float(g) for g in args.sweep_gb.split(",") if g.strip()]
    with tempfile.TemporaryDirectory(prefix="bench_scale_", dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        model = str(make_model(tmp / "model.pt", args.arch))
        runs: list[dict[str, Any]] = []
        if args.frames > 0:
            runs = throughput_runs(args, tmp, model, workers)
        sweep_rows = []
        for gb in sweep:
            frames = max(1, round(gb * 2**30 / (args.size * args.size * 2)))
            path = make_zarr_input(tmp / f"sweep_{gb}.ome.zarr", frames, args.size)
            row = run_config({"model": model, "samples": args.sweep_samples, "device": args.device, "mode": "zarr",
                              "input": str(path), "out": str(tmp / f"sweep_{gb}_out.ome.zarr"), "frames": frames},
                             args.timeout)
            sweep_rows.append({"input_gb": frames * args.size * args.size * 2 / 2**30, **row})
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(tmp / f"sweep_{gb}_out.ome.zarr", ignore_errors=True)
    return {
        "machine": machine_info(args.device if args.device != "auto" else None),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "tmp_dir")},
        "runs": runs,
        "sweep": sweep_rows,
    }


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    rows = []
    for r in results["runs"]:
        if "error" in r:
            rows.append([r["mode"], r["frames"], r["error"], None, None, None, None, None])
            continue
        workers = r.get("worker_peak_mib") or []
        rows.append([
            r["mode"], r["frames"], r["frames_per_s"], r["compute_frames_per_s"], r["main_peak_mib"],
            max(workers) if workers else None, len(workers) or None, r.get("time_per_frame_vs_cli"),
        ])
    text = [
        (f"# Scale-out prediction: {s['size']}x{s['size']} frames, {s['samples']} samples per frame, "
         f"{s['arch']} architecture, device {s['device']}"),
        "",
        machine_markdown(results["machine"]),
    ]
    if rows:
        text += [
            "",
            markdown_table(["config", "frames", "frames/s", "frames/s (compute)", "main peak MiB",
                            "peak MiB per worker", "workers", "time/frame vs cli-tiff"], rows),
            "",
            ("`frames/s` includes process and cluster start; `compute` counts from the first unit submitted. "
             "`cli-tiff` is the plain single-process CLI with the whole stack in memory."),
        ]
    if results["sweep"]:
        sweep = [[r["input_gb"], r["frames"], r.get("main_peak_mib"), r.get("frames_per_s"), r.get("error")]
                 for r in results["sweep"]]
        text += ["", f"## Peak memory vs input size (one process, {s['sweep_samples']} samples per frame)", "",
                 markdown_table(["input GiB", "frames", "peak MiB", "frames/s", "error"], sweep)]
    return "\n".join(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=2000,
                   help="frames of the synthetic stack (default 2000; 0: only the memory sweep)")
    p.add_argument("--size", type=int, default=512, help="frame side in pixels (default 512)")
    p.add_argument("--samples", type=int, default=10, help="posterior samples per frame (default 10)")
    p.add_argument("--workers", default="1,2", help="comma-separated Dask worker counts (default 1,2; empty: none)")
    p.add_argument("--baseline-frames", type=int, default=0,
                   help="frames for the in-memory cli-tiff baseline (default 0: all)")
    p.add_argument("--sweep-gb", default="0.1,0.5,1,2", help="input sizes (GiB) of the memory sweep; empty: none")
    p.add_argument("--sweep-samples", type=int, default=2, help="samples per frame in the memory sweep (default 2)")
    p.add_argument("--arch", choices=sorted(ARCHS), default="reference", help="network size (default reference)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per configuration")
    p.add_argument("--tmp-dir", default=None, help="where the synthetic stores go (needs room for them)")
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="where scale.json and scale.md go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results = run(args)
    text = markdown(results)
    json_path, md_path = write_results("scale", results, text, Path(args.out_dir))
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return results


if __name__ == "__main__":
    main()
