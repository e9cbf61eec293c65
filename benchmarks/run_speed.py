"""Speed benchmark: training step, posterior sampling, MAP, noise-model fit, peak memory and scaling.

Each figure is a median over repeated runs next to a floor (FLOPs / a matrix-product rate measured in
the same run) and the ratio. The per-operation numbers come from the scripts
``bench_train_step.py``, ``bench_predict.py`` and ``bench_noise_fit.py`` (each ``run(quick) -> dict``);
a missing or failing script is noted in the table. The scaling part is measured here: sampling time
and peak resident memory of ``prediction.predict`` for square images of 256 ... 4096 pixels, each
size in its own process so that sizes do not pollute each other's peak memory.

Run ``python benchmarks/run_speed.py`` (under 10 minutes on 2 CPU cores) or ``--quick`` (seconds).
Uses the GPU when one is present. Writes ``results/speed.json`` and ``results/speed.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    fmt,
    load_bench_module,
    machine_info,
    machine_markdown,
    markdown_table,
    matmul_gflops,
    run_python_child,
    write_results,
)

BENCH_SCRIPTS = ("bench_train_step", "bench_predict", "bench_noise_fit")
SCALING_SIZES = (256, 512, 1024, 2048, 4096)

# One size, one fresh interpreter: time and peak RSS of predict() with a depth-2 reference-size network.
SCALING_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[5])
from _common import conv_flops
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.prediction import predict
side, n_samples, device, repeats = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def peak_mib():
    # VmHWM is this process's own peak; ru_maxrss can carry the parent's RSS over fork+exec.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
torch.manual_seed(0)
net = DivNoisingVAE(depth=2)
encode_flops = conv_flops(net, (1, 1, 64, 64), "encode") * (side / 64) ** 2
decode_flops = conv_flops(net, (1, net.z_dim, 16, 16), "decode") * (side / 64) ** 2
model = DivNoisingModel(net, GaussianNoiseModel(), 100.0, 30.0)
image = np.random.default_rng(0).normal(100, 30, (side, side)).astype(np.float32)
predict(model, image[:64, :64], 2, keep_samples=0, device=device)  # warm-up
rss_before = peak_mib()
gpu_peak = None
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
times = []
for r in range(repeats):
    t = time.perf_counter()
    result = predict(model, image, n_samples, keep_samples=0, device=device, seed=r)
    times.append(time.perf_counter() - t)
if device.startswith("cuda"):
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps({"size": side, "n_samples": n_samples, "seconds": sorted(times)[len(times) // 2], "all_s": times,
                  "peak_rss_mib": peak_mib(),
                  "rss_before_mib": rss_before, "gpu_peak_mib": gpu_peak,
                  "gflop": (encode_flops + n_samples * decode_flops) / 1e9,
                  "finite": bool(np.isfinite(result.mmse).all())}))
"""


def run_bench_scripts(quick: bool, names: tuple[str, ...] = BENCH_SCRIPTS, directory: Path | None = None,
                      log=print) -> dict[str, Any]:
    """Import and run each ``bench_*.py``; absent or failing ones become ``{"missing"|"error": ...}`` entries."""
    out: dict[str, Any] = {}
    for name in names:
        try:
            module = load_bench_module(name, directory) if directory else load_bench_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken script must not stop the suite
            out[name] = {"error": f"import failed: {type(exc).__name__}: {exc}"}
            continue
        if module is None:
            out[name] = {"missing": f"benchmarks/{name}.py not found"}
            continue
        if not hasattr(module, "run"):
            out[name] = {"error": f"{name}.py has no run(quick) function"}
            continue
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            result = module.run(quick=quick)
            out[name] = dict(result) if isinstance(result, dict) else {"result": result}
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=3)}
        out[name]["wall_s"] = time.perf_counter() - t0
    return out


def run_scaling(sizes: tuple[int, ...], n_samples: int, device: str, repeats: int, rate_gflops: float,
                timeout_s: float = 600.0, log=print) -> list[dict[str, Any]]:
    """Sampling time and peak memory per image size (one child process each), with FLOP floors."""
    rows = []
    bench_dir = str(Path(__file__).resolve().parent)
    for side in sizes:
        log(f"scaling {side}x{side} ...")
        # Large sizes run long enough that one repeat is stable; this keeps the suite under 10 minutes on 2 cores.
        size_repeats = repeats if side <= 1024 else 1
        r = run_python_child(SCALING_CHILD, [side, n_samples, device, size_repeats, bench_dir], timeout=timeout_s)
        r.setdefault("size", side)
        if "seconds" in r:
            r["floor_s"] = r["gflop"] / rate_gflops
            r["ratio"] = r["seconds"] / r["floor_s"]
            r["s_per_sample_megapixel"] = r["seconds"] / n_samples / (side * side / 1e6)
            r["peak_rss_over_baseline_mib"] = r["peak_rss_mib"] - r["rss_before_mib"]
        rows.append(r)
    return rows


def run(quick: bool = False, sizes: tuple[int, ...] | None = None, scaling_samples: int | None = None,
        skip_scripts: bool = False, device: str | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run the speed suite and return JSON-serialisable results (see the module docstring)."""
    import torch

    log = print if verbose else (lambda *a, **k: None)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = tuple(sizes or ((64, 128) if quick else SCALING_SIZES))
    scaling_samples = scaling_samples or (2 if quick else 10)
    rate_before = matmul_gflops(512 if quick else 2048, 3 if quick else 5, device)
    results: dict[str, Any] = {"machine": machine_info(device), "quick": quick}
    results["scripts"] = {} if skip_scripts else run_bench_scripts(quick, log=log)
    rate_mid = matmul_gflops(512 if quick else 2048, 3 if quick else 5, device)
    results["matmul_gflops"] = {"before": rate_before, "after_scripts": rate_mid}
    results["scaling"] = {"n_samples": scaling_samples, "device": device,
                          "rows": run_scaling(sizes, scaling_samples, device, 1 if quick else 2,
                                              max(rate_before, rate_mid), log=log)}
    return results


def _script_rows(scripts: dict[str, Any]) -> list[list[Any]]:
    """Table rows (quantity, median s, floor s, ratio, notes) from the bench scripts' own result dicts."""
    rows: list[list[Any]] = []

    def problem(name: str) -> str | None:
        entry = scripts.get(name)
        if entry is None:
            return None
        return entry.get("missing") or entry.get("error")

    for name, label in (("bench_train_step", "training step"), ("bench_predict", "posterior sampling"),
                        ("bench_noise_fit", "noise-model fit")):
        if name not in scripts:
            continue
        msg = problem(name)
        if msg:
            rows.append([label, "–", "–", "–", f"not measured: {msg}"])
            continue
        r = scripts[name]
        if name == "bench_train_step":
            size = f"batch {r.get('batch')} × {r.get('patch')}², depth {r.get('depth')}"
            rows.append([f"training step ({size})", r.get("step_median_s"), r.get("floor_s"),
                         r.get("ratio_to_floor"), f"{fmt(r.get('matmul_gflops'))} GFLOP/s matmul"])
            if r.get("channels_last_step_median_s") is not None:
                rows.append(["training step, channels_last", r["channels_last_step_median_s"], r.get("floor_s"),
                             r.get("channels_last_ratio_to_floor"), ""])
            if r.get("reference_step_s"):
                rows.append(["training step, reference code (quoted)", r["reference_step_s"], r.get("floor_s"),
                             r["reference_step_s"] / r["floor_s"] if r.get("floor_s") else None,
                             "measured earlier on this CPU"])
        elif name == "bench_predict":
            p = r.get("predict", {})
            what = f"{r.get('n_samples')} samples, {r.get('image')}"
            rows.append([f"posterior sampling ({what}, 1 orientation, 1 grid offset)", p.get("ours_median_s"),
                         p.get("floor_s"), p.get("ours_over_floor"), f"{fmt(r.get('matmul_gflops'))} GFLOP/s matmul"])
            if p.get("default_views_median_s") is not None:
                rows.append([f"posterior sampling ({what}, {p.get('default_views')}: the default)",
                             p["default_views_median_s"], "–", "–",
                             f"{fmt(p.get('default_views_over_one'))}× one view"])
            if p.get("reference_style_median_s") is not None:
                rows.append(["posterior sampling, reference-style loop", p["reference_style_median_s"],
                             p.get("floor_s"), p.get("reference_style_over_floor"),
                             f"ours {fmt(p.get('speedup_vs_reference_style'))}× faster"])
            m = r.get("map")
            if m:
                rows.append([f"MAP from {r.get('n_samples')} samples, {r.get('image')}", m.get("median_s"), "–",
                             "–", f"{fmt(m.get('over_predict_floor'))}× the sampling floor"])
            big = r.get("large_4096")
            if big and "seconds" in big:
                rows.append([f"sampling 4096², {big.get('samples')} samples", big["seconds"], "–", "–",
                             f"peak RSS {fmt(big.get('peak_rss_mib'))} MiB"])
        elif name == "bench_noise_fit":
            rows.append(["noise-model (GMM) fit", r.get("ours_seconds_median"),
                         r.get("floor_one_likelihood_eval_seconds"), r.get("ours_over_floor"),
                         "floor = one likelihood pass over the pairs"])
            if r.get("reference_seconds") is not None:
                rows.append([f"noise-model fit, reference-style ({r.get('reference_iterations')} it.)",
                             r["reference_seconds"], r.get("floor_one_likelihood_eval_seconds"),
                             r["reference_seconds"] / r["floor_one_likelihood_eval_seconds"]
                             if r.get("floor_one_likelihood_eval_seconds") else None,
                             f"ours {fmt(r.get('speedup_vs_reference'))}× faster"])
    return rows


def to_markdown(results: dict[str, Any]) -> str:
    """The README/docs tables for :func:`run`'s results."""
    lines = ["# Speed", "", machine_markdown(results["machine"])
             + (" **Quick smoke run: not representative.**" if results.get("quick") else ""), "",
             "Medians over repeated runs; floor = FLOPs / matrix-product rate measured in the same run "
             f"({fmt(results['matmul_gflops']['before'])} GFLOP/s at the start, "
             f"{fmt(results['matmul_gflops']['after_scripts'])} after the per-operation scripts); "
             "ratio = median / floor.", ""]
    rows = _script_rows(results.get("scripts", {}))
    if rows:
        lines.append(markdown_table(["operation", "median (s)", "floor (s)", "ratio", "notes"], rows))
        lines.append("")
    sc = results["scaling"]
    lines += [f"Scaling: {sc['n_samples']} posterior samples with `prediction.predict` on {sc['device']}, "
              "each size in its own process (peak RSS = the whole process, baseline = after imports and warm-up).",
              ""]
    srows = []
    for r in sc["rows"]:
        if "seconds" not in r:
            srows.append([f"{r['size']}²", "–", "–", "–", "–", "–", "–", r.get("error", "failed")])
            continue
        srows.append([f"{r['size']}²", r["seconds"], r["floor_s"], r["ratio"], r["s_per_sample_megapixel"],
                      r["peak_rss_mib"], r["peak_rss_over_baseline_mib"],
                      f"GPU peak {fmt(r['gpu_peak_mib'])} MiB" if r.get("gpu_peak_mib") else ""])
    lines.append(markdown_table(["image", "time (s)", "floor (s)", "ratio", "s per sample per Mpx",
                                 "peak RSS (MiB)", "above baseline (MiB)", "notes"], srows))
    lines += ["", "Tiling should keep memory nearly flat (only frame-sized results grow with the image) "
                  "and time linear in pixels (constant s per sample per Mpx)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="scaling sizes (256 ... 4096)")
    parser.add_argument("--scaling-samples", type=int, default=None, help="samples per scaling run (10)")
    parser.add_argument("--skip-scripts", action="store_true", help="only the scaling part")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when present)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="speed", help="output file stem")
    args = parser.parse_args(argv)
    results = run(quick=args.quick, sizes=args.sizes, scaling_samples=args.scaling_samples,
                  skip_scripts=args.skip_scripts, device=args.device)
    markdown = to_markdown(results)
    json_path, md_path = write_results(args.name, results, markdown, args.out_dir)
    print()
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
