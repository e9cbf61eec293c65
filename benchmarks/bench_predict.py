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
from _common import matmul_gflops  # noqa: E402

from napari_divnoising.map_estimate import map_estimate
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.prediction import predict


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
from napari_divnoising.prediction import predict
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
    ours = timed(lambda: predict(model, image, n_samples, keep_samples=0, seed=0), repeats)
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
                    "speedup_vs_reference_style": statistics.median(ref) / statistics.median(ours)},
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


def main() -> None:
    quick = "--quick" in sys.argv
    r = run(quick=quick)
    p = r["predict"]
    print(f"prediction of {r['n_samples']} samples, {r['image']} (depth 2), {r['machine']['threads']} threads, "
          f"load {r['machine']['load_avg_1min']:.1f}")
    print(f"  matmul rate            {r['matmul_gflops']:8.1f} GFLOP/s")
    print(f"  FLOP floor             {p['floor_s']:8.2f} s")
    print(f"  ours (median)          {p['ours_median_s']:8.2f} s   x{p['ours_over_floor']:.2f} floor")
    print(f"  reference-style        {p['reference_style_median_s']:8.2f} s   x{p['reference_style_over_floor']:.2f} floor"
          f"   (ours {p['speedup_vs_reference_style']:.1f}x faster)")
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
