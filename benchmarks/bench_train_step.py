"""Speed of one DivNoising training step against a floor computed from the model's FLOPs.

One step = batch 32 of 128x128 patches, depth 2: forward, GMM noise-model loss + KL,
backward and Adam update, exactly as ``training.train_iter`` does it
(``training.loss_terms``). The floor is the step's FLOPs (conv and transposed-conv
MACs counted analytically, x2 for FLOPs, x3 for forward + backward) divided by the
median float32 matrix-product rate (2048x2048 matmul) measured in the same run, so
the ratio step / floor stays meaningful on a loaded machine.

Run ``python benchmarks/bench_train_step.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import matmul_gflops  # noqa: E402

from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GMMNoiseModel
from napari_divnoising.training import loss_terms

REFERENCE_STEP_S = 1.9  # the reference code, measured on a 2-core CPU


def conv_macs(network: DivNoisingVAE, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass (convolutions and transposed convolutions) per image."""
    macs = 0
    h, w = height, width
    for layer in network.encoder:
        if isinstance(layer, nn.Conv2d):
            macs += layer.in_channels * layer.out_channels * 9 * h * w
        elif isinstance(layer, nn.MaxPool2d):
            h, w = h // 2, w // 2
    for head in (network.mu_head, network.logvar_head):
        macs += head.in_channels * head.out_channels * 9 * h * w
    for layer in network.decoder:
        if isinstance(layer, nn.ConvTranspose2d):
            macs += layer.in_channels * layer.out_channels * 4 * h * w  # 2x2 kernel per input pixel
            h, w = h * 2, w * 2
        elif isinstance(layer, nn.Conv2d):
            macs += layer.in_channels * layer.out_channels * 9 * h * w
    return macs


def training_forward_macs(network: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of one training forward pass per image, counted on the layers as they run (any
    network type: for ``DivNoisingVAE`` the same count as :func:`conv_macs`; for the hierarchical network
    also the priors and posteriors of its finer levels that its KL needs)."""
    from napari_divnoising.hierarchical_network import HierarchicalVAE

    macs = 0

    def count(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        per_position = layer.in_channels // layer.groups * layer.out_channels * math.prod(layer.kernel_size)
        # A convolution visits each output position, a transposed convolution each input position.
        grid = output if isinstance(layer, nn.Conv2d) else inputs[0]
        macs += per_position * grid.shape[-2] * grid.shape[-1]

    layers = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            x = torch.zeros(1, 1, height, width)
            if isinstance(network, HierarchicalVAE):
                m = network.size_multiple
                network.signal_and_kl(x, torch.zeros(1, network.noise_channels, height // m, width // m))
            else:
                network.decode(network.encode(x)[0])
    finally:
        for hook in hooks:
            hook.remove()
    return macs


def _model() -> DivNoisingModel:
    torch.manual_seed(0)
    gmm = GMMNoiseModel.initial(0.0, 255.0, generator=torch.Generator().manual_seed(0))
    gmm.requires_grad_(False)
    return DivNoisingModel(DivNoisingVAE(depth=2), gmm, 30.0, 25.0)


def step_times(batch: int, size: int, repeats: int, memory_format: torch.memory_format | None = None) -> list[float]:
    model = _model()
    if memory_format is not None:
        model.network.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.network.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, size, size) * 200
    rng = np.random.default_rng(0)
    lat = size // model.network.size_multiple
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        eps = torch.from_numpy(rng.standard_normal((batch, model.network.z_dim, lat, lat), dtype=np.float32))
        recon, kl = loss_terms(model, x, eps, memory_format=memory_format)
        loss = recon + kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        if i:  # the first step allocates and warms up
            times.append(time.perf_counter() - t)
    return times


def run(quick: bool = False) -> dict:
    """Measure and return medians, the FLOP floor and ratios (JSON-serialisable)."""
    batch, size = (8, 64) if quick else (32, 128)
    repeats = 3 if quick else 7
    net = DivNoisingVAE(depth=2)
    flops = 3 * 2 * conv_macs(net, size, size) * batch
    rate_before = matmul_gflops(1024 if quick else 2048)
    times = step_times(batch, size, repeats)
    times_cl = step_times(batch, size, repeats, torch.channels_last)
    rate_after = matmul_gflops(1024 if quick else 2048)
    rate = statistics.median([rate_before, rate_after])
    floor = flops / (rate * 1e9)
    median = statistics.median(times)
    median_cl = statistics.median(times_cl)
    return {
        "batch": batch,
        "patch": size,
        "depth": 2,
        "gflop_per_step": flops / 1e9,
        "matmul_gflops": rate,
        "floor_s": floor,
        "step_median_s": median,
        "step_times_s": times,
        "ratio_to_floor": median / floor,
        "channels_last_step_median_s": median_cl,
        "channels_last_ratio_to_floor": median_cl / floor,
        "reference_step_s": None if quick else REFERENCE_STEP_S,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch (smoke test)")
    result = run(quick=parser.parse_args().quick)
    print(f"training step: batch {result['batch']} x {result['patch']}x{result['patch']}, depth 2, GMM loss, Adam")
    print(f"  FLOPs per step            {result['gflop_per_step']:.1f} GFLOP")
    print(f"  matmul rate (median)      {result['matmul_gflops']:.0f} GFLOP/s  ({result['threads']} threads)")
    print(f"  floor                     {result['floor_s']:.3f} s")
    print(f"  step (median)             {result['step_median_s']:.3f} s   ratio {result['ratio_to_floor']:.2f}")
    print(f"  step, channels_last       {result['channels_last_step_median_s']:.3f} s   ratio "
          f"{result['channels_last_ratio_to_floor']:.2f}")
    if result["reference_step_s"]:
        print(f"  reference code (measured earlier on this CPU): {result['reference_step_s']} s")


if __name__ == "__main__":
    main()
