"""Shared helpers of the benchmark suite: machine info, floors, timing medians, peak memory, output files."""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """Short commit hash of the checkout, or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, torch, device, load and date."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "commit": git_commit(),
    }
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> list[float]:
    """Wall-clock seconds of ``fn()`` for each of ``repeats`` calls (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def sync_device(device: Any) -> None:
    """Wait until the work queued on ``device`` (a CUDA GPU) is done, so that a clock read after it is
    the end of that work; nothing to wait for elsewhere."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Measured float32 matrix-product rate (GFLOP/s, median of ``repeats``) on ``device``: the floor's yardstick."""
    import torch

    dev = torch.device(device)
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)

    def product() -> None:
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = timed(product, repeats, warmup=1)
    return 2.0 * n**3 / median(times) / 1e9


def conv_flops(module: Any, input_shape: tuple[int, ...], method: str = "forward") -> int:
    """FLOPs (2 x multiply-adds) of all Conv2d / ConvTranspose2d layers run by ``module.<method>`` on zeros.

    Counted with forward hooks, so it follows whatever the module really runs.
    """
    import torch
    from torch import nn

    total = 0

    def hook(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = layer.kernel_size
        groups = getattr(layer, "groups", 1)
        if isinstance(layer, nn.ConvTranspose2d):
            total += 2 * inputs[0].numel() * layer.out_channels * kh * kw // groups
        else:
            total += 2 * output.numel() * layer.in_channels * kh * kw // groups

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            getattr(module, method)(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return int(total)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB).

    Linux: ``VmHWM`` from /proc/self/status, which belongs to this process image; ``ru_maxrss`` can
    include the parent's resident size carried over fork + exec. Elsewhere ``getrusage``.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_python_child(code: str, args: Sequence[str] = (), timeout: float = 600.0) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (so peak memory is its own) and parse the JSON of its last stdout line."""
    try:
        child = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                               timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        tail = child.stderr.strip().splitlines()
        return {"error": tail[-1] if tail else f"exit code {child.returncode}"}
    return json.loads(lines[-1])


def load_bench_module(name: str, directory: Path = BENCH_DIR) -> ModuleType | None:
    """Import ``<directory>/<name>.py`` as a module, or None when the file does not exist."""
    path = Path(directory) / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the module need it registered
    spec.loader.exec_module(module)
    return module


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers with ``digits`` significant digits, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def fmd_dir() -> Path:
    """The FMD BPAE folder (the four TIFFs): ``DIVNOISING_FMD_DIR``, else ``data/fmd_bpae_b`` (read when called)."""
    return Path(os.environ.get("DIVNOISING_FMD_DIR", "data/fmd_bpae_b"))


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse, else kept as strings."""
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (cells formatted with :func:`fmt`, ``|`` escaped)."""
    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else fmt(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_markdown(info: dict[str, Any]) -> str:
    """One line describing the machine, for the top of a results file."""
    gpu = f" ({info['gpu']})" if info.get("gpu") else ""
    parts = [f"{info.get('cpu')}", f"{info.get('cores')} cores ({info.get('torch_threads')} torch threads)",
             f"torch {info.get('torch')}", f"device {info.get('device')}{gpu}",
             f"load {fmt(info.get('load_avg_1min'), 2)}", f"{info.get('date')}"]
    if info.get("commit"):
        parts.append(f"commit {info['commit']}")
    return "Machine: " + "; ".join(parts) + "."


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and tuples so ``json.dumps`` accepts the structure."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(name: str, results: dict[str, Any], markdown: str, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(to_jsonable(results), indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path
