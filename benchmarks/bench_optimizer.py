"""Training-loop speed with each Adam implementation and with CUDA graphs, and where a step's time goes.

For each implementation of :func:`napari_divnoising.training.optimiser.make_adam` (``single``: one set
of kernels per parameter; ``foreach``: batched kernels; ``fused``: one kernel), without CUDA graphs, and
on CUDA for the fused one with the step recorded as a CUDA graph (``TrainingConfig.cuda_graphs``), the
real loop (``training.train_iter``) runs ``--steps`` steps on ``--device``; the rate is taken between the
end of the warm-up (a fifth of the steps) and the last step, as a user's loop runs (no extra
synchronisation). The variants alternate over ``--repeats`` rounds; the report gives each one's median
and its ratio to the default (fused Adam, with CUDA graphs on a CUDA device), and any warning that the
step could not be recorded.

It also profiles ``--profile-steps`` steps of the default loop: kernels launched per step, the
GPU's busy time per step (sum of kernel times) against the wall time per step, and the host-side
operators that take the most time, which says whether a step is bound by the GPU or by the host.

Run ``python benchmarks/bench_optimizer.py --device cuda`` (about a minute on one GPU) or
``python benchmarks/bench_optimizer.py --device cpu`` (the CPU defaults; several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    fmt,
    machine_info,
    machine_markdown,
    markdown_table,
    median,
    sync_device,
    write_results,
)

from napari_divnoising.training import (  # noqa: E402
    TrainingConfig,
    TrainingWarning,
    TrainStep,
    device_defaults,
    train_iter,
)
from napari_divnoising.training import optimiser as optimiser_module  # noqa: E402

#: (label, Adam implementation, CUDA graphs)
VARIANTS = (("single", "single", False), ("foreach", "foreach", False), ("fused", "fused", False),
            ("fused + CUDA graphs", "fused", True))


def loop_config(device: torch.device, batch: int, patch: int, steps: int, filters: int | None = None,
                cuda_graphs: bool = True, network: str | None = None, depth: int | None = None) -> TrainingConfig:
    """A step-budgeted run without validations or restarts (``filters``, ``network`` and ``depth`` None: the
    device's and the network's defaults)."""
    return TrainingConfig(batch_size=batch, patch_size=patch, start_filters=filters, max_steps=steps,
                          max_minutes=None, device=str(device), validation_interval=10**6, collapse_restarts=0,
                          cuda_graphs=cuda_graphs, network=network, depth=depth)


def loop_rate(frames: np.ndarray, device: torch.device, config: TrainingConfig, implementation: str | None = None,
              warnings: list[str] | None = None, warm: int | None = None) -> float:
    """Steps per second of ``train_iter`` as it runs for a user (no extra synchronisation), from step
    ``warm`` (default a fifth of the steps, at least 5) to the last, with Adam ``implementation`` (default:
    the package's); the run's warnings are appended to ``warnings``."""
    default = optimiser_module.ADAM_IMPLEMENTATION
    optimiser_module.ADAM_IMPLEMENTATION = implementation or default
    try:
        steps = int(config.max_steps)
        warm = warm if warm is not None else max(5, steps // 5)
        marks = {}
        for event in train_iter(frames, 10.0, config):
            if isinstance(event, TrainStep) and event.step in (warm, steps):
                sync_device(device)
                marks[event.step] = time.perf_counter()
            elif isinstance(event, TrainingWarning) and warnings is not None:
                warnings.append(event.message)
        return (steps - warm) / (marks[steps] - marks[warm])
    finally:
        optimiser_module.ADAM_IMPLEMENTATION = default


def profile_steps(frames: np.ndarray, device: torch.device, config: TrainingConfig, n_steps: int) -> dict[str, Any]:
    """Kernels per step, GPU busy time and wall time per step, and the costliest host operators (CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    start = int(config.max_steps) - n_steps
    prof = None
    wall = {}
    for event in train_iter(frames, 10.0, config):
        if not isinstance(event, TrainStep):
            continue
        if event.step == start:
            sync_device(device)
            prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            prof.__enter__()
            wall["start"] = time.perf_counter()
        elif event.step == int(config.max_steps) and prof is not None:
            sync_device(device)
            wall["end"] = time.perf_counter()
            prof.__exit__(None, None, None)
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(getattr(e, "self_device_time_total", 0.0) for e in kernels)
    host = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU),
                  key=lambda e: -e.self_cpu_time_total)[:15]
    return {
        "steps": n_steps,
        "wall_ms_per_step": 1e3 * (wall["end"] - wall["start"]) / n_steps,
        "gpu_busy_ms_per_step": gpu_us / 1e3 / n_steps,
        "kernels_per_step": sum(e.count for e in kernels) / n_steps,
        "host_ops_per_step": sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CPU) / n_steps,
        "top_host_ops": [{"name": e.key, "calls_per_step": e.count / n_steps,
                          "self_ms_per_step": e.self_cpu_time_total / 1e3 / n_steps} for e in host],
    }


def run(device: torch.device, batch: int, patch: int, filters: int, steps: int, repeats: int,
        profile_n: int) -> dict[str, Any]:
    frames = np.random.default_rng(0).poisson(40.0, (8, 256, 256)).astype(np.float32)
    variants = [v for v in VARIANTS if device.type == "cuda" or not v[2]]
    rates: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    warnings: dict[str, list[str]] = {label: [] for label, _, _ in variants}
    for _ in range(repeats):
        for label, implementation, graphs in variants:
            config = loop_config(device, batch, patch, steps, filters, cuda_graphs=graphs)
            rates[label].append(loop_rate(frames, device, config, implementation, warnings[label]))
    default = variants[-1][0]
    results: dict[str, Any] = {
        "machine": machine_info(str(device)), "batch": batch, "patch": patch, "filters": filters, "steps": steps,
        "repeats": repeats, "default": default, "steps_per_s": rates,
        "median_steps_per_s": {name: median(r) for name, r in rates.items()},
        "warnings": {label: sorted(set(w)) for label, w in warnings.items() if w},
    }
    if profile_n > 0:
        results["profile"] = profile_steps(frames, device, loop_config(device, batch, patch, steps, filters), profile_n)
    return results


def markdown(results: dict[str, Any]) -> str:
    medians = results["median_steps_per_s"]
    base = medians[results["default"]]
    lines = ["# Training loop: Adam implementations", "", machine_markdown(results["machine"]), "",
             f"Batch {results['batch']} x {results['patch']}², {results['filters']} first-level filters, "
             f"{results['steps']} steps per run, {results['repeats']} rounds (alternating); the default "
             f"here: `{results['default']}`.", ""]
    lines.append(markdown_table(
        ["Adam", "steps/s (median)", "ms/step", "rate vs default", "all rounds"],
        [[name, rate, 1e3 / rate, rate / base, ", ".join(fmt(r) for r in results["steps_per_s"][name])]
         for name, rate in medians.items()]))
    for label, messages in results.get("warnings", {}).items():
        lines += ["", f"Warnings with {label}:", *(f"- {m}" for m in messages)]
    if "profile" in results:
        p = results["profile"]
        lines += ["", f"## Profile of {p['steps']} steps (the default)", "",
                  f"Wall {fmt(p['wall_ms_per_step'])} ms/step; GPU busy {fmt(p['gpu_busy_ms_per_step'])} ms/step; "
                  f"{fmt(p['kernels_per_step'])} kernels and {fmt(p['host_ops_per_step'])} host operators per step.",
                  "", markdown_table(["host operator", "calls/step", "self ms/step"],
                                     [[o["name"], o["calls_per_step"], o["self_ms_per_step"]]
                                      for o in p["top_host_ops"]])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: the device's")
    parser.add_argument("--patch", type=int, default=None, help="default: the device's")
    parser.add_argument("--filters", type=int, default=None, help="default: the device's")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 400 on a GPU, 150 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    defaults = device_defaults(device)
    batch = args.batch or (2 if args.quick else defaults["batch_size"])
    patch = args.patch or (16 if args.quick else defaults["patch_size"])
    filters = args.filters or (8 if args.quick else defaults["start_filters"])
    steps = args.steps or (12 if args.quick else 400 if device.type == "cuda" else 150)
    results = run(device, batch, patch, filters, steps, 1 if args.quick else args.repeats, args.profile_steps)
    text = markdown(results)
    kwargs = {"out_dir": args.out_dir} if args.out_dir else {}
    name = f"optimizer_{device.type}" + ("_quick" if args.quick else "")
    paths = write_results(name, results, text, **kwargs)
    print(text)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
