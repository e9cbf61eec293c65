"""What each network type costs on this machine: training steps per second and prediction time, in one run.

For the CPU defaults of each network (``divnoising``: depth 2, 16 filters, 64 latent channels;
``hierarchical``: 3 levels of 16 latent channels, 16 / 32 filters), with random weights (timing does not
depend on them) and the machine's threads (or ``--threads N``):

- ``train``: steps per second of :func:`~napari_divnoising.training.train_iter` (batch 8 of 64 x 64, the
  CPU defaults, co-learned noise model) after a warm-up, validations off;
- ``predict``: 100 posterior samples of a 512 x 512 image with the default views (8 orientations, 2 grid
  offsets) and with one view, median of ``--repeats`` calls.

Run ``python benchmarks/bench_networks.py`` on an idle machine (a few minutes on 2 cores); ``--quick`` for
a smoke test. Writes ``results/networks.json`` and ``results/networks.md`` unless ``--no-save``; compare
ratios from one run, not absolute times across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, markdown_table  # noqa: E402

from napari_divnoising.model import DivNoisingModel  # noqa: E402
from napari_divnoising.network import build_network  # noqa: E402
from napari_divnoising.noise_models import GaussianNoiseModel  # noqa: E402
from napari_divnoising.prediction import predict  # noqa: E402
from napari_divnoising.training import TrainingConfig, TrainStep, train_iter  # noqa: E402
from napari_divnoising.training.config import CPU_DEFAULTS, NETWORK_DEFAULTS, NETWORK_TYPES  # noqa: E402


def train_rate(network: str, seconds: float, warm_up: float) -> float:
    """Steps per second of the CPU defaults with ``network`` after ``warm_up`` seconds."""
    frames = np.random.default_rng(0).normal(100, 20, (4, 256, 256)).astype(np.float32)
    config = TrainingConfig(network=network, max_minutes=(seconds + warm_up) / 60 + 0.5, device="cpu",
                            validations_per_run=1)
    marks = []
    events = train_iter(frames, None, config)
    for event in events:
        if isinstance(event, TrainStep):
            marks.append((event.step, time.perf_counter()))
            if marks[-1][1] - marks[0][1] > seconds + warm_up:
                break
    events.close()
    timed = [m for m in marks if m[1] - marks[0][1] >= warm_up]
    return (timed[-1][0] - timed[0][0]) / (timed[-1][1] - timed[0][1])


def predict_seconds(network: str, side: int, n_samples: int, repeats: int, views: dict) -> list[float]:
    """Wall-clock seconds of :func:`predict` (``n_samples`` of a ``side`` x ``side`` image), ``repeats`` times."""
    torch.manual_seed(0)
    settings = NETWORK_DEFAULTS[network]
    net = build_network(network, settings["depth"], CPU_DEFAULTS["start_filters"], settings["z_dim"])
    model = DivNoisingModel(net, GaussianNoiseModel(a=1.0, b=4.0), data_mean=100.0, data_std=20.0)
    image = np.random.default_rng(1).normal(100, 20, (side, side)).astype(np.float32)
    predict(model, image, 2, seed=0, **views)  # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        predict(model, image, n_samples, seed=r, **views)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="seconds instead of minutes (smoke test)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds, warm_up, side, n_samples, repeats = (30.0, 5.0, 512, 100, args.repeats) if not args.quick else (
        1.0, 0.5, 64, 4, 1)
    result: dict = {"machine": machine_info(), "threads": torch.get_num_threads(), "image": f"{side}x{side}",
                    "n_samples": n_samples, "networks": {}}
    for network in NETWORK_TYPES:
        rate = train_rate(network, seconds, warm_up)
        default_views = predict_seconds(network, side, n_samples, repeats, {})
        one_view = predict_seconds(network, side, n_samples, repeats, {"orientations": 1, "offsets": 1})
        result["networks"][network] = {
            "settings": {**NETWORK_DEFAULTS[network], "start_filters": CPU_DEFAULTS["start_filters"]},
            "train_steps_per_s": rate, "predict_default_views_s": default_views,
            "predict_one_view_s": one_view,
        }
        print(f"{network}: {rate:.1f} steps/s, {n_samples} samples of {side}x{side}: "
              f"{statistics.median(default_views):.2f} s (default views), "
              f"{statistics.median(one_view):.2f} s (one view)", flush=True)
    base = result["networks"]["divnoising"]
    rows = []
    for network, r in result["networks"].items():
        views = statistics.median(r["predict_default_views_s"])
        rows.append([network, f"{r['train_steps_per_s']:.1f}",
                     f"{r['train_steps_per_s'] / base['train_steps_per_s']:.2f}", f"{views:.2f}",
                     f"{statistics.median(r['predict_one_view_s']):.2f}",
                     f"{views / statistics.median(base['predict_default_views_s']):.2f}"])
    table = markdown_table(["network", "train steps/s", "x divnoising", f"predict {n_samples} of {side}² (s), "
                            "default views", "one view (s)", "x divnoising (default views)"], rows)
    m = result["machine"]
    text = (f"# Network types: training and prediction speed\n\nMachine: {m.get('cpu', '?')}; "
            f"{result['threads']} threads; torch {m.get('torch', '?')}; load {m.get('load_avg_1min', 0):.2f}; "
            f"random weights; medians of {repeats} predictions.\n\n{table}\n")
    print(text)
    if not args.no_save and not args.quick:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "networks.json").write_text(json.dumps(result, indent=1))
        (RESULTS_DIR / "networks.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
