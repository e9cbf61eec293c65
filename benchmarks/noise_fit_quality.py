"""How well GMM noise models fit a calibration stack: variance and likelihood per signal bin.

The FMD calibration stack (50 frames of one field of view) is split by frame: the even frames
give the signal (their per-pixel mean) and the fitting pairs, the odd frames are scored against
that same signal. Splitting alternately keeps slow changes over the stack (bleaching) out of the
comparison. For each fit setting the report gives, per signal bin, the empirical variance of the
held-out observations around the signal, the model's variance, and the held-out negative
log-likelihood (nats per pixel; whole-number observations are spread uniformly over their
quantisation interval before scoring, so a density cannot profit from peaking on integers).
The empirical variance includes the signal estimate's own noise (1/25 of the noise variance).

Settings are given as ``--fit LABEL:KEY=VALUE,...`` (keywords of ``fit_gmm_iter``); by default
the package's defaults (variance floor: half the smallest binned variance) are compared with
floors of 1 and 1/12 grey values squared.

Run ``python benchmarks/noise_fit_quality.py --data DIR`` (about 1 minute per setting on a 2-core
CPU); ``--quick`` runs on a small synthetic stack. Writes ``results/noise_fit.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, fmd_dir, machine_info, markdown_table, parse_settings, write_results  # noqa: E402

FMD_DIR = fmd_dir()
BIN_EDGES = (0, 3.5, 4, 4.5, 5, 6, 8, 10, 13, 20, 30, 50, 70, 100, 150, 256)
EVAL_PAIRS = 2_000_000
NOISY_ALONE = "noisy images alone"
LINE = "Gaussian line"
CLIPPED_LINE = "Gaussian line, clipped"
DEFAULT_FITS = ("defaults:", "floor 1:min_variance=1.0", "floor 1/12:min_variance=0.083333")


def parse_fit(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL:KEY=VALUE,...`` -> (label, keyword arguments), the values read as in ``parse_settings``."""
    label, _, rest = text.partition(":")
    return label.strip(), parse_settings([item.strip() for item in rest.split(",") if item.strip()])


def synthetic_stack(n_frames: int = 8, seed: int = 0) -> np.ndarray:
    """A small 8-bit stack with a dark background: offset 3, gain 4, read noise 0.8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    clean = 3.3 + 1.5 * (0.5 + 0.5 * np.sin(xx / 11.0)) + 150.0 * np.clip(np.sin(xx / 6.0) * np.cos(yy / 9.0), 0,
                                                                            None) ** 3
    frames = 3.0 + 4.0 * rng.poisson((clean - 3.0) / 4.0, size=(n_frames, *clean.shape))
    return np.clip(np.round(frames + rng.normal(0, 0.8, frames.shape)), 0, 255).astype(np.uint8)


def score(model: Any, signal: np.ndarray, observation: np.ndarray, integer: bool, seed: int = 0) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng(seed)
    flat_s = np.broadcast_to(signal, observation.shape).reshape(-1)
    flat_x = observation.reshape(-1).astype(np.float64)
    index = rng.choice(flat_s.size, min(EVAL_PAIRS, flat_s.size), replace=False)
    s, x = flat_s[index].astype(np.float64), flat_x[index]
    if integer:
        spread = x + rng.uniform(-0.5, 0.5, x.size)
        clipped = np.zeros(x.size, bool)  # a model that knows clipping gives a clipped value its probability
        if getattr(model, "floor", None) is not None:
            clipped |= x <= model.floor
        if getattr(model, "ceiling", None) is not None:
            clipped |= x >= model.ceiling
        x = np.where(clipped, x, spread)
    with torch.no_grad():
        nll = -model.log_likelihood(torch.from_numpy(x), torch.from_numpy(s)).numpy()
        fitted_var = model.variance(torch.from_numpy(s)).numpy()
    bins = []
    for lo, hi in zip(BIN_EDGES[:-1], BIN_EDGES[1:]):
        inside = (s >= lo) & (s < hi)
        if inside.sum() < 500:
            continue
        bins.append({"signal": [lo, hi], "count": int(inside.sum()),
                     "empirical_variance": float(np.var(x[inside] - s[inside])),
                     "model_variance": float(fitted_var[inside].mean()), "nll": float(nll[inside].mean())})
    return {"nll": float(nll.mean()), "bins": bins, "roughness": roughness(model, signal)}


def roughness(model: Any, signal: np.ndarray) -> float:
    """Largest |d² log p(x | s) / ds²| for whole numbers x over the darker half of the signal range.

    A smooth likelihood changes slowly as the signal moves between integers; components narrower
    than a grey value make it jump, and training follows the jumps.
    """
    import torch

    low, high = float(signal.min()), float(np.percentile(signal, 50)) * 2
    grid = torch.linspace(low, high, 400, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    with torch.no_grad():
        curves = torch.stack([model.log_likelihood(torch.full_like(grid, float(x)), grid)
                              for x in range(int(np.floor(low)), int(np.ceil(high)) + 1)])
    second = (curves[:, 2:] - 2 * curves[:, 1:-1] + curves[:, :-2]) / step**2
    return float(second.abs().max())


def fit_line(signal: np.ndarray, observation: np.ndarray, integer: bool, clipping: bool, iterations: int = 400,
             seed: int = 0) -> Any:
    """The co-learned noise model's form (variance a·signal + b), fitted by maximum likelihood to the pairs:
    a plain Gaussian density, or with ``clipping`` one that knows where the stack is clipped."""
    import torch

    from napari_divnoising.noise_model_fitting import clipping_limits, estimate_noise_line
    from napari_divnoising.noise_models import GaussianNoiseModel

    rng = np.random.default_rng(seed)
    flat_s = np.broadcast_to(signal, observation.shape).reshape(-1)
    index = rng.choice(flat_s.size, min(EVAL_PAIRS, flat_s.size), replace=False)
    s = torch.from_numpy(flat_s[index].astype(np.float32))
    x = torch.from_numpy(observation.reshape(-1)[index].astype(np.float32))
    line = estimate_noise_line(list(observation))
    limits = clipping_limits(list(observation)) if clipping else None
    model = GaussianNoiseModel(
        a=line.a, b=line.b, sigma_min=float(np.sqrt(max(line.least_variance, 1e-6))), offset=float(s.mean()),
        scale=float(s.std()), quantum=limits.quantum if limits else 0.0, floor=limits.floor if limits else None,
        ceiling=limits.ceiling if limits else None)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(iterations):
        optimiser.zero_grad()
        (-model.log_likelihood(x, s).mean()).backward()
        optimiser.step()
    return model.requires_grad_(False).double()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=FMD_DIR, help="folder with calibration_fov01.tif")
    parser.add_argument("--fit", action="append", default=None, metavar="LABEL:KEY=VALUE,...")
    parser.add_argument("--quick", action="store_true", help="small synthetic stack, short fits")
    parser.add_argument("--noisy-alone", action="store_true",
                        help="also fit from noisy images alone (fit_gmm_from_noisy on train_noisy.tif without its "
                        "frame 0, which is the calibration's field of view; --quick: the stack's fitting frames)")
    parser.add_argument("--lines", action="store_true",
                        help="also fit the co-learned noise model's form (variance a * signal + b) by maximum "
                        "likelihood: a plain Gaussian density, and one that knows where the stack is clipped")
    parser.add_argument("--name", default="noise_fit", help="results file name (without suffix)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    import torch

    from napari_divnoising.io import read_tiff
    from napari_divnoising.noise_model_fitting import fit_gmm_from_calibration, fit_gmm_from_noisy, is_integer_valued

    stack = synthetic_stack() if args.quick else np.asarray(read_tiff(args.data / "calibration_fov01.tif"))
    fitting, held_out = stack[0::2].astype(np.float32), stack[1::2].astype(np.float32)
    signal = fitting.mean(0)
    integer = is_integer_valued(stack)
    extra = {"max_pairs": 5_000, "heldout_pairs": 0, "explore_iterations": 150, "polish_iterations": 20} \
        if args.quick else {}

    fits = []
    requested = list(map(parse_fit, args.fit or DEFAULT_FITS))
    if args.noisy_alone:
        requested.append((NOISY_ALONE, {}))
    if args.lines:
        requested += [(LINE, {}), (CLIPPED_LINE, {})]
    for label, kwargs in requested:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        if label in (LINE, CLIPPED_LINE):
            model = fit_line(signal, fitting, integer, clipping=label == CLIPPED_LINE,
                             iterations=50 if args.quick else 400)
        elif label == NOISY_ALONE:
            noisy = list(fitting) if args.quick else list(np.asarray(read_tiff(args.data / "train_noisy.tif"))[1:])
            model = fit_gmm_from_noisy(noisy, **{**extra, **kwargs})
        else:
            model = fit_gmm_from_calibration(fitting, **{**extra, **kwargs})
        seconds = time.perf_counter() - t0
        scored = score(model, signal, held_out, integer)
        floor = float(model.min_variance) if hasattr(model, "min_variance") else float(model.sigma_min) ** 2
        fits.append({"label": label, "settings": kwargs, "fit_seconds": seconds, "min_variance": floor, **scored})
        if hasattr(model, "a"):
            fits[-1].update(a=model.a, b=model.b, clipped_below=model.floor, clipped_above=model.ceiling)
        print(f"{label}: held-out NLL {scored['nll']:.4f} nats/pixel, roughness {scored['roughness']:.1f}, "
              f"floor {floor:.3g}, {seconds:.1f} s", flush=True)

    results = {"benchmark": "noise_fit", "quick": args.quick, "machine": machine_info("cpu"),
               "integer_data": integer, "frames": int(stack.shape[0]), "fits": fits}
    header = ["signal", "pixels", "empirical variance"] + [f"{f['label']}: variance" for f in fits] + \
        [f"{f['label']}: NLL" for f in fits]
    rows = []
    for i, b in enumerate(fits[0]["bins"]):
        rows.append([f"{b['signal'][0]:g}-{b['signal'][1]:g}", b["count"], f"{b['empirical_variance']:.2f}"]
                    + [f"{f['bins'][i]['model_variance']:.2f}" for f in fits]
                    + [f"{f['bins'][i]['nll']:.3f}" for f in fits])
    rows.append(["all", sum(b["count"] for b in fits[0]["bins"]), ""] + [""] * len(fits)
                + [f"**{f['nll']:.4f}**" for f in fits])
    rows.append(["roughness", "", ""] + [f"{f['roughness']:.1f}" for f in fits] + [""] * len(fits))
    settings = "; ".join(f"{f['label']}: {f['settings'] or 'package defaults'} (floor {f['min_variance']:.3g}, "
                         f"fit {f['fit_seconds']:.1f} s)" for f in fits)
    m = results["machine"]
    md = "\n".join([
        "# GMM noise-model fit per signal bin (held-out frames)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, commit {m['commit']}, {m['date']}."
        + (" **Quick smoke run: not representative.**" if args.quick else ""),
        "",
        "Fitted on the even frames of the calibration stack (signal: their mean), scored on the odd frames "
        "against the same signal. NLL: nats per pixel, whole-number observations spread over their "
        "quantisation interval. Roughness: the largest |d² log p(x | s) / ds²| for whole numbers x over the "
        "darker half of the signal range (how much the likelihood jumps as the signal moves between integers). "
        "Fits: " + settings + ".",
        "",
        markdown_table(header, rows),
        "",
    ])
    write_results(args.name, results, md, out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
