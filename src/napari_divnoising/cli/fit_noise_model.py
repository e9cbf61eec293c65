"""``divnoising fit-noise-model``: fit a GMM noise model to a calibration stack, noisy/clean pairs or noisy images."""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

from ..atomic import StagedFiles, folder_message
from ..errors import DivNoisingError
from ._common import check_output_path

DESCRIPTION = """\
Fit a Gaussian-mixture noise model p(x | s) (DivNoising / PPN2V) and save it as .npz.

Give a calibration stack (many noisy frames of a static sample; the signal
is the per-pixel mean over frames), or noisy and clean images of the same
shape (2-D images or stacks), or noisy images alone (--noisy without
--clean: the noise is estimated from the images, read as Poisson-Gaussian
noise and simulated; no calibration data needed, a little less exact). The
.npz file loads in the reference DivNoising / PPN2V code and in CAREamics.

examples:
  divnoising fit-noise-model --calibration calib.tif --out nm.npz --plot nm.png
  divnoising fit-noise-model --noisy noisy.tif --clean clean.tif --out nm.npz
  divnoising fit-noise-model --noisy noisy.tif --out nm.npz
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``fit-noise-model`` command."""
    parser = subparsers.add_parser(
        "fit-noise-model", help="fit a GMM noise model from calibration frames or noisy/clean pairs",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("data (give --calibration, or --noisy with or without --clean)")
    source.add_argument("--calibration", metavar="CAL.tif", help="TIFF stack (frames, Y, X) of a static sample")
    source.add_argument("--noisy", metavar="N.tif", help="noisy TIFF image or stack")
    source.add_argument("--clean", metavar="C.tif", help="clean TIFF of the same shape as --noisy")
    parser.add_argument("--out", required=True, metavar="NM.npz", help="noise model file to write (.npz)")
    parser.add_argument("--n-gaussians", type=int, default=3, help="mixture components (default 3)")
    parser.add_argument("--n-coeffs", type=int, default=2,
                        help="polynomial coefficients, 2 = linear in signal (default 2)")
    parser.add_argument(
        "--min-variance", "--min-sigma", dest="min_variance", type=float, default=None, metavar="V",
        help="floor on each component's variance, in grey values squared (default: from the data); "
        "--min-sigma is the old, deprecated name",
    )
    parser.add_argument(
        "--clip-percentiles", type=float, nargs=2, default=None, metavar=("LO", "HI"),
        help="ignore pairs whose signal is outside these percentiles (e.g. 0.5 99.5)",
    )
    parser.add_argument("--plot", metavar="NM.png", help="also save a diagnostic plot (variance vs signal) as PNG")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the pair subsampling (default 0)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Fit, save and summarise; returns the exit status."""
    from tqdm import tqdm

    from ..io import as_image_stack, read_tiff
    from ..noise_model_fitting import (
        NoiseFitProgress,
        NoiseFitResult,
        fit_gmm_iter,
        fitting_pairs,
        noisy_image_pairs,
        variance_line,
    )
    from ..noise_model_io import save_gmm_npz

    if args.calibration and (args.noisy or args.clean):
        raise DivNoisingError("give either --calibration or --noisy with --clean, not both.")
    if args.clean and not args.noisy:
        raise DivNoisingError("--clean needs --noisy N.tif (the noisy images of the same shape).")
    if not args.calibration and not args.noisy:
        raise DivNoisingError("give --calibration CAL.tif, --noisy N.tif with --clean C.tif, or --noisy N.tif alone.")
    for given, what, option in ((args.out, "noise model", "--out"), (args.plot, "plot", "--plot")):
        if given and Path(given).is_dir():
            raise DivNoisingError(folder_message(Path(given), what, option))
    if Path(args.out).suffix.lower() != ".npz":
        raise DivNoisingError(f"--out must be a .npz file; got {args.out}.")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise DivNoisingError(f"--plot must be a .png file; got {args.plot}.")
    out = check_output_path(args.out, args.force, planned_bytes=64 * 1024, what="noise model")
    plot_path = check_output_path(args.plot, args.force, planned_bytes=512 * 1024, what="plot", option="--plot") \
        if args.plot else None

    if args.calibration:
        pairs = fitting_pairs(calibration=read_tiff(args.calibration), name=Path(args.calibration).name)
    elif args.clean:
        pairs = fitting_pairs(noisy=read_tiff(args.noisy), clean=read_tiff(args.clean),
                              name=f"{Path(args.noisy).name} / {Path(args.clean).name}")
    else:
        frames = as_image_stack(read_tiff(args.noisy), name=Path(args.noisy).name)
        pairs = noisy_image_pairs(list(frames), seed=args.seed, name=Path(args.noisy).name)
    signal, observation, integer_data = pairs.signal, pairs.observation, pairs.integer_data
    description = f"fitted to {pairs.description}"

    events = fit_gmm_iter(
        signal, observation, n_gaussians=args.n_gaussians, n_coeffs=args.n_coeffs, min_variance=args.min_variance,
        clip_percentiles=args.clip_percentiles, seed=args.seed,
        integer_data=integer_data,
    )
    # The first event comes after the inputs are checked, so errors print before any progress bar.
    first = next(events)
    result = None
    with tqdm(desc="fitting noise model", unit="it", leave=False) as bar:
        for event in itertools.chain([first], events):
            if isinstance(event, NoiseFitProgress):
                if bar.total != event.total:
                    bar.total = event.total
                bar.set_postfix(stage=event.stage, nll=f"{event.nll:.5f}", refresh=False)
                bar.update(event.iteration - bar.n)
            elif isinstance(event, NoiseFitResult):
                result = event
    assert result is not None
    # The noise model and its plot land together, or neither replaces an old file.
    with StagedFiles() as staged:
        staged.stage(out, lambda tmp: save_gmm_npz(result.model, tmp, description=description))
        if plot_path is not None:
            from ..plotting import save_noise_model_plot

            staged.stage(plot_path, lambda tmp: save_noise_model_plot(
                result.model, tmp, signal, observation, title=description
            ))
        staged.commit()
    slope, intercept = variance_line(result.model)
    held = "n/a" if math.isnan(result.heldout_nll) else f"{result.heldout_nll:.4f}"
    print(
        f"saved {out}: variance ~ {slope:.4g} * signal {intercept:+.4g} over signal "
        f"{float(result.model.min_signal):.4g}..{float(result.model.max_signal):.4g}, "
        f"held-out NLL {held} nats/pixel, {result.iterations} iterations in {result.seconds:.1f} s"
        + (f"; plot {plot_path}" if plot_path else "")
    )
    return 0
