"""``divnoising predict ... --out results.ome.zarr``: the OME-Zarr / Dask path of the predict command."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import DivNoisingError

if TYPE_CHECKING:
    from .runner import ZarrPredictionSettings


def settings_from_args(args: argparse.Namespace) -> ZarrPredictionSettings:
    """:class:`~napari_divnoising.scale.ZarrPredictionSettings` from ``divnoising predict``'s options."""
    from .runner import ZarrPredictionSettings

    return ZarrPredictionSettings(
        n_samples=args.samples, keep_samples=args.save_samples, compute_map=args.map, seed=args.seed,
        batch_size=args.batch_size, tile_size=args.tile_size, precision=args.precision, device=args.device,
        clip=args.clip, dtype=args.dtype, region_size=args.region_size, threads=args.threads,
    )


def run_zarr(args: argparse.Namespace) -> int:
    """Predict one input into an OME-Zarr store (resuming it if it holds this job), with a progress bar."""
    from tqdm import tqdm

    from .events import UnitDone, ZarrPlan, ZarrPredictionDone
    from .runner import predict_to_zarr_iter

    if not args.out:
        raise DivNoisingError("OME-Zarr input needs an OME-Zarr output: add --out results.ome.zarr.")
    if args.out_dir:
        raise DivNoisingError("Give either --out-dir (TIFF files) or --out (an OME-Zarr store), not both.")
    if len(args.input) != 1:
        raise DivNoisingError(f"--out writes one store per input; got {len(args.input)} inputs: run once per input.")
    bar = None
    try:
        for event in predict_to_zarr_iter(
            args.model, args.input[0], args.out, settings_from_args(args), workers=args.workers,
            scheduler=args.scheduler, force=args.force,
        ):
            if isinstance(event, ZarrPlan):
                if event.already_done:
                    print(f"resuming {event.path}: {event.already_done}/{event.total} units already done")
                bar = tqdm(total=event.total, initial=event.already_done, desc=event.path, unit="unit",
                           dynamic_ncols=True)
                bar.set_postfix_str(f"seed {event.seed}, {event.workers}")
            elif isinstance(event, UnitDone) and bar is not None:
                bar.update(event.done - bar.n)
            elif isinstance(event, ZarrPredictionDone):
                if bar is not None:
                    bar.close()
                    bar = None
                print(f"wrote {event.path} ({event.computed} unit(s) computed now, {event.total} in all; "
                      f"seed {event.seed})")
    finally:
        if bar is not None:
            bar.close()
    return 0
