"""Prediction speed: 100 posterior samples of a 512x512 image, MAP from 100 samples, and a 4096x4096 image.

Measured in one run (the machine may be shared, so compare ratios, not absolute times):

- ``floor``: FLOPs of one encode plus 100 decodes (conv and transposed-conv MACs x 2, counted from
  the network) divided by the matrix-product rate measured here (median of 2048^3 float32 matmuls);
- ``ours``: :func:`predict` (batched decoding, inference mode, channels-last, float32), median of repeats;
- ``reference-style``: one sample at a time over the whole image, autograd on, NCHW (what the
  reference code does), timed on a few samples and scaled to 100;
- ``map``: :func:`map_estimate` of 512x512 from 100 samples;
- ``large``: a 4096x4096 image with 2 samples (automatic 1024-pixel tiles) in a child process,
  with its peak resident memory (full run only).

Depth 2, 32 start filters, z_dim 64 (reference sizes), random weights (timing does not depend on them).
Run ``python benchmarks/bench_predict.py`` (about 1-2 minutes on 2 cores) or ``--quick`` (seconds).

Device throughput (:func:`run_device`): ``python benchmarks/bench_predict.py --device cuda`` measures, with
the default settings of :func:`predict` on that device (10 kept samples), 1000 posterior samples of
512 x 512 (target on one H100/H200: under 1 s) and 100 samples of 4096 x 4096 (target: at least 80% of the
512 x 512 rate in pixel-samples per second, whole calls); also 100 and 16 samples of 4096 x 4096 without
kept samples and from them the marginal per-sample cost at 4096 x 4096 (without the per-image costs), the bare
decoder's rate at the batch used for 512 x 512 (what the network alone costs), a MAP estimate from 100
samples of 512 x 512, the plans chosen and the peak GPU memory; prints one JSON object. ``--quick``
shrinks it to seconds (for a smoke test on the CPU).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import matmul_gflops, sync_device  # noqa: E402

from napari_divnoising.map_estimate import map_estimate
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.prediction import DEFAULT_OFFSETS, DEFAULT_ORIENTATIONS, predict


def conv_flops(module: nn.Module, input_shape: tuple[int, int, int, int]) -> tuple[int, tuple[int, int, int, int]]:
    """FLOPs (2 x MACs) of the convolutions in a Sequential for one input, and the output shape."""
    flops = 0
    x = torch.zeros(input_shape)
    with torch.inference_mode():
        for layer in module:
            y = layer(x)
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                flops += 2 * y.numel() * layer.in_channels * kh * kw
            elif isinstance(layer, nn.ConvTranspose2d):
                kh, kw = layer.kernel_size
                flops += 2 * x.numel() * layer.out_channels * kh * kw
            x = y
    return flops, tuple(x.shape)


def network_flops(net: DivNoisingVAE, size: int) -> tuple[int, int]:
    """(encode FLOPs, decode FLOPs) for one size x size image."""
    enc, hidden = conv_flops(net.encoder, (1, 1, size, size))
    heads = 2 * 2 * int(np.prod(hidden[-2:])) * net.z_dim * hidden[1] * 9
    dec, _ = conv_flops(net.decoder, (1, net.z_dim, size // net.size_multiple, size // net.size_multiple))
    return enc + heads, dec


def reference_style_seconds(model: DivNoisingModel, image: np.ndarray, n: int) -> float:
    """Seconds for ``n`` samples decoded one at a time with autograd on (the reference's loop)."""
    net = model.network
    x = model.normalize(torch.from_numpy(image)[None, None])
    t = time.perf_counter()
    mu, logvar = net.encode(x)
    for _ in range(n):
        model.denormalize(net.decode(net.sample_latent(mu, logvar))).detach().numpy()
    return time.perf_counter() - t


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


LARGE_CHILD = """
import resource, sys, time, json
import numpy as np, torch
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.prediction import DEFAULT_OFFSETS, DEFAULT_ORIENTATIONS, predict
torch.manual_seed(0)
side = int(sys.argv[1])
model = DivNoisingModel(DivNoisingVAE(depth=2), GaussianNoiseModel(), 100.0, 30.0)
image = np.random.default_rng(0).normal(100, 30, (side, side)).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
result = predict(model, image, 2, keep_samples=1)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mib": base / 1024, "finite": bool(np.isfinite(result.mmse).all())}))
"""


def run(quick: bool = False) -> dict:
    """Measure and return a JSON-serialisable dict (see the module docstring)."""
    torch.manual_seed(0)
    size, n_samples, repeats = (256, 20, 1) if quick else (512, 100, 3)
    net = DivNoisingVAE(depth=2)
    model = DivNoisingModel(net, GaussianNoiseModel(), 100.0, 30.0)
    image = np.random.default_rng(0).normal(100, 30, (size, size)).astype(np.float32)

    rate = matmul_gflops(1024 if quick else 2048) * 1e9
    enc_flops, dec_flops = network_flops(net, size)
    floor = (enc_flops + n_samples * dec_flops) / rate

    predict(model, image, 2, keep_samples=0)  # warm-up (oneDNN primitive caches)
    # One view (one orientation, one grid offset): the reference's procedure and the floor's single encoding.
    ours = timed(lambda: predict(model, image, n_samples, keep_samples=0, seed=0, orientations=1, offsets=1), repeats)
    default_views = timed(lambda: predict(model, image, n_samples, keep_samples=0, seed=0), repeats)
    ref_n = 3 if quick else 10
    ref = [reference_style_seconds(model, image, ref_n) * n_samples / ref_n for _ in range(1 if quick else 2)]

    samples = predict(model, image, n_samples, keep_samples=n_samples, seed=1).samples
    map_times = timed(lambda: map_estimate(samples), repeats)

    results = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0]},
        "image": f"{size}x{size}", "n_samples": n_samples, "repeats": repeats,
        "matmul_gflops": rate / 1e9,
        "flops": {"encode_gflop": enc_flops / 1e9, "decode_gflop_per_sample": dec_flops / 1e9},
        "predict": {"floor_s": floor, "ours_median_s": statistics.median(ours), "ours_all_s": ours,
                    "ours_over_floor": statistics.median(ours) / floor,
                    "reference_style_median_s": statistics.median(ref),
                    "reference_style_over_floor": statistics.median(ref) / floor,
                    "speedup_vs_reference_style": statistics.median(ref) / statistics.median(ours),
                    "default_views": f"{DEFAULT_ORIENTATIONS} orientations x {DEFAULT_OFFSETS} grid offsets",
                    "default_views_median_s": statistics.median(default_views),
                    "default_views_over_one": statistics.median(default_views) / statistics.median(ours)},
        "map": {"median_s": statistics.median(map_times), "all_s": map_times,
                "over_predict_floor": statistics.median(map_times) / floor},
    }
    if not quick:
        child = subprocess.run([sys.executable, "-c", LARGE_CHILD, "4096"], capture_output=True, text=True,
                               timeout=600)
        if child.returncode == 0:
            results["large_4096"] = json.loads(child.stdout.strip().splitlines()[-1])
            results["large_4096"]["samples"] = 2
        else:
            results["large_4096"] = {"error": child.stderr.strip().splitlines()[-1] if child.stderr else "failed"}
    return results


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_device(device: str = "cuda", quick: bool = False, repeats: int = 3,
               sizes: tuple[int, int] | None = None, counts: tuple[int, int, int] | None = None) -> dict:
    """Throughput of :func:`predict` with its default settings on ``device`` (see the module docstring).

    ``sizes`` (small, large image side) and ``counts`` (samples of the small image, of the large one, and the
    fewer samples of the large one for the marginal cost) override the defaults (512, 4096) and (1000, 100, 16).
    """
    from napari_divnoising.device import resolve_device
    from napari_divnoising.prediction.engine import autocast_for, inference_network, resolve_precision
    from napari_divnoising.prediction.engine import run as infer
    from napari_divnoising.prediction.memory import bytes_per_pixel
    from napari_divnoising.prediction.tiling import plan_decoding

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = DivNoisingModel(DivNoisingVAE(depth=2), GaussianNoiseModel(), 100.0, 30.0).to(dev)
    small, large = sizes or ((128, 512) if quick else (512, 4096))
    n_small, n_large, n_large_few = counts or ((20, 4, 2) if quick else (1000, 100, 16))
    rng = np.random.default_rng(0)
    images = {side: rng.normal(100, 30, (side, side)).astype(np.float32) for side in (small, large)}
    precision = resolve_precision("auto", dev)
    half = precision != "float32"
    net, _ = inference_network(model, dev)
    _enc_flops, dec_flops = network_flops(DivNoisingVAE(depth=2), small)  # unfolded decoder: a yardstick
    out: dict = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": str(dev),
                    "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                    "threads": torch.get_num_threads()},
        "precision": precision, "repeats": repeats,
        "bytes_per_pixel_estimate": dict(zip(("encode", "decode"), bytes_per_pixel(net, half))),
    }
    for side, n in ((small, min(2, n_small)), (large, 1)):  # warm-up: kernel selection, allocator
        predict(model, images[side], n, seed=0)
    cases = [(f"predict_{small}", small, n_small, 10), (f"predict_{large}", large, n_large, 10),
             (f"predict_{large}_keep0", large, n_large, 0),
             (f"predict_{large}_{n_large_few}_samples_keep0", large, n_large_few, 0)]
    for key, side, n, keep in cases:
        plan = plan_decoding(net, (side, side), n, dev, half=half)
        _peak_reset(dev)
        times = timed(lambda: predict(model, images[side], n, seed=0, keep_samples=keep), repeats)
        seconds = statistics.median(times)
        out[key] = {
            "image": f"{side}x{side}", "samples": n, "keep_samples": keep, "median_s": seconds, "all_s": times,
            "samples_per_s": n / seconds, "mpx_samples_per_s": n * side * side / seconds / 1e6,
            "peak_gpu_mib": _peak_mib(dev),
            "plan": {"tiles": len(plan.tiling.tiles), "tile": plan.tile, "batch": plan.batch,
                     "tiles_per_call": plan.tiles_per_call},
        }
    few, many = out[f"predict_{large}_{n_large_few}_samples_keep0"], out[f"predict_{large}_keep0"]
    out[f"marginal_{large}"] = {  # per-sample cost without the per-image costs (input, encoding, results)
        "s_per_sample": (many["median_s"] - few["median_s"]) / (n_large - n_large_few),
        "mpx_samples_per_s": large * large / 1e6 / max(1e-9, (many["median_s"] - few["median_s"])
                                                       / (n_large - n_large_few))}
    # The bare decoder at the batch predict uses for the small image: what the network alone costs.
    batch = out[f"predict_{small}"]["plan"]["batch"]
    z = torch.randn((batch, net.z_dim, small // 4, small // 4), device=dev)
    z = z.contiguous(memory_format=torch.channels_last)
    autocast = autocast_for(dev, precision)

    def decode_all() -> None:
        for _ in range(-(-n_small // batch)):
            infer(lambda: net.decode(z), autocast)
        sync_device(dev)

    decode_all()
    decode_times = timed(decode_all, repeats)
    calls = -(-n_small // batch)
    out["decoder_only"] = {"batch": batch, "calls": calls, "median_s": statistics.median(decode_times),
                           "samples_per_s": calls * batch / statistics.median(decode_times),
                           "tflop_per_s_unfolded_equivalent": calls * batch * dec_flops
                           / statistics.median(decode_times) / 1e12}
    n_map = min(n_small, 20 if quick else 100)
    _peak_reset(dev)
    map_times = timed(lambda: predict(model, images[small], n_map, seed=0, compute_map=True), 1 if quick else 2)
    out["predict_with_map"] = {"image": f"{small}x{small}", "samples": n_map, "median_s": statistics.median(map_times),
                               "peak_gpu_mib": _peak_mib(dev)}
    rate_small = out[f"predict_{small}"]["mpx_samples_per_s"]
    rate_large = out[f"predict_{large}"]["mpx_samples_per_s"]
    out["large_over_small_rate"] = rate_large / rate_small  # both with the default settings, whole calls
    out["large_over_small_rate_marginal"] = out[f"marginal_{large}"]["mpx_samples_per_s"] / rate_small
    out["overhead_over_decoder"] = out[f"predict_{small}"]["median_s"] / (
        out["decoder_only"]["median_s"] * n_small / (calls * batch))
    if (small, large, n_small) == (512, 4096, 1000):  # the targets, for one H100/H200
        out["targets"] = {"1000_samples_512_under_1s": out[f"predict_{small}"]["median_s"] < 1.0,
                          "4096_rate_at_least_80pct_of_512": out["large_over_small_rate"] >= 0.8}
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    if "--device" in sys.argv:
        i = sys.argv.index("--device")
        device = sys.argv[i + 1] if i + 1 < len(sys.argv) else "auto"
        print(json.dumps(run_device(device, quick=quick), indent=1))
        return
    r = run(quick=quick)
    p = r["predict"]
    print(f"prediction of {r['n_samples']} samples, {r['image']} (depth 2), {r['machine']['threads']} threads, "
          f"load {r['machine']['load_avg_1min']:.1f}")
    print(f"  matmul rate            {r['matmul_gflops']:8.1f} GFLOP/s")
    print(f"  FLOP floor             {p['floor_s']:8.2f} s")
    print(f"  ours (median)          {p['ours_median_s']:8.2f} s   x{p['ours_over_floor']:.2f} floor")
    print(f"  reference-style        {p['reference_style_median_s']:8.2f} s   "
          f"x{p['reference_style_over_floor']:.2f} floor"
          f"   (ours {p['speedup_vs_reference_style']:.1f}x faster)")
    print(f"  default views          {p['default_views_median_s']:8.2f} s   "
          f"x{p['default_views_over_one']:.2f} one view ({p['default_views']})")
    print(f"  MAP from the samples   {r['map']['median_s']:8.2f} s")
    if "large_4096" in r:
        big = r["large_4096"]
        if "error" in big:
            print(f"  4096x4096: {big['error']}")
        else:
            print(f"  4096x4096, 2 samples   {big['seconds']:8.2f} s   peak RSS {big['peak_rss_mib']:.0f} MiB")
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
