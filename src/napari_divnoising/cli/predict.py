"""``divnoising predict``: denoise images with a trained model (MMSE, variance, samples, MAP)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import StagedFiles, check_output_dir
from ..errors import DivNoisingError
from ..orientations import DEFAULT_OFFSETS, DEFAULT_ORIENTATIONS, OFFSET_CHOICES, ORIENTATION_CHOICES

DESCRIPTION = """\
Denoise TIFF images or stacks with a trained DivNoising model.

For each input IN.tif, posterior samples are drawn and these files are
written to --out-dir (float32 ImageJ TIFFs keeping the input's pixel size):

  IN_mmse.tif      MMSE estimate: the mean of the samples (the denoised image)
  IN_variance.tif  per-pixel variance of the samples (uncertainty)
  IN_samples.tif   the first --save-samples samples (diverse plausible images)
  IN_map.tif       with --map: MAP estimate (mode of the samples, mean shift)

Stacks (3-D inputs: T, Z or a series of images) are denoised frame by frame.
Large images are processed in overlapping tiles without seams; lower
--tile-size if memory runs out. Existing files are never overwritten
without --force (all outputs, the folder and its free space are checked
before anything is computed). The files of one input are written as a set:
all of them are replaced, or (on an error or Ctrl-C) none.

examples:
  divnoising predict --model model.pt --input noisy.tif --out-dir results
  divnoising predict --model model.pt --input a.tif --input b.tif --out-dir results --samples 200 --map --clip

With --out results.ome.zarr (input: an OME-Zarr image or a TIFF), frames are
read and written one at a time into one OME-Zarr store; running the same
command again resumes a stopped run. --workers N or --scheduler tcp://HOST:PORT
spread the frames over Dask worker processes (see docs/scale_out.md):
  divnoising predict --model model.pt --input stack.ome.zarr --out results.ome.zarr --workers 4
"""

DTYPE_CHOICES = ("float32", "input")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``predict`` command."""
    p = subparsers.add_parser(
        "predict", help="denoise images with a trained model (MMSE, variance, samples, MAP)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="model file from `divnoising train`")
    p.add_argument("--input", action="append", required=True, metavar="IN.tif",
                   help="noisy image or stack (repeat for several files)")
    p.add_argument("--out-dir", metavar="DIR", help="folder for the results (TIFF files)")
    p.add_argument("--out", metavar="OUT.ome.zarr",
                   help="write one OME-Zarr results store instead (input read lazily; a killed run resumes)")
    p.add_argument("--workers", type=int, metavar="N", help="with --out: run on a local Dask cluster of N processes")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="with --out: run on an existing Dask cluster")
    p.add_argument("--region-size", type=int, default=1024, metavar="R",
                   help="with --out: frames larger than R x R pixels are split into regions (default 1024)")
    p.add_argument("--threads", type=int, metavar="T",
                   help="with --out: torch CPU threads per process (default: all cores, shared out between "
                        "--workers); the same T gives bit-identical results whatever the number of workers")
    p.add_argument("--samples", type=int, default=100, metavar="N",
                   help="posterior samples per image or frame (default 100; more: smoother MMSE)")
    p.add_argument("--map", action="store_true", help="also write the MAP estimate (mode of the samples)")
    p.add_argument("--save-samples", type=int, default=10, metavar="K",
                   help="how many samples to write to IN_samples.tif (default 10; 0: none)")
    p.add_argument("--tile-size", type=int, metavar="T",
                   help="process images in tiles of T x T pixels (default: automatic; lower it if memory runs out)")
    p.add_argument("--batch-size", type=int, metavar="B", help="samples decoded at once (default: automatic)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="compute precision (default auto: float16 on CUDA GPUs, float32 elsewhere)")
    p.add_argument("--seed", type=int, help="random seed for reproducible samples (default: random)")
    p.add_argument("--orientations", type=int, choices=ORIENTATION_CHOICES, metavar="{1,2,4,8}",
                   help=f"spread each frame's samples over this many rotations and mirror images of it, which "
                        f"averages the network's orientation-dependent errors out of the MMSE (default "
                        f"{DEFAULT_ORIENTATIONS}; with --out: 1)")
    p.add_argument("--offsets", type=int, choices=OFFSET_CHOICES, metavar="{1,2}",
                   help=f"2: also see each orientation shifted by half a latent cell, so that the network's grid "
                        f"falls on other pixels, and spread the samples over both (default {DEFAULT_OFFSETS}; "
                        f"with --out: 1)")
    p.add_argument("--clip", action="store_true",
                   help="clip MMSE, MAP and samples at the data's physical minimum: 0 for unsigned or "
                        "non-negative input, else the input's minimum")
    p.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES,
                   help="float32 (default), or input: the input's type, rounded and clipped to its range "
                        "(variance always float32)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=run)
    return p


def output_paths(input_path: Path, out_dir: Path, save_samples: int, want_map: bool) -> dict[str, Path]:
    """The files written for one input, by kind."""
    stem = input_path.name
    for suffix in (".tiff", ".tif", ".TIFF", ".TIF"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    from ..outputs import OUTPUT_KINDS, PREDICTION_KINDS

    skipped = {"samples"} if save_samples <= 0 else set()
    if not want_map:
        skipped.add("map")
    return {kind: out_dir / OUTPUT_KINDS[kind].file_name(stem) for kind in PREDICTION_KINDS if kind not in skipped}


def _check_args(args: argparse.Namespace) -> None:
    if args.samples < 1:
        raise DivNoisingError(f"--samples must be at least 1 (got {args.samples}).")
    if args.save_samples < 0:
        raise DivNoisingError(f"--save-samples must be 0 or more (got {args.save_samples}).")
    if args.batch_size is not None and args.batch_size < 1:
        raise DivNoisingError(f"--batch-size must be at least 1 (got {args.batch_size}).")
    if args.seed is not None and args.seed < 0:
        raise DivNoisingError(f"--seed must be 0 or more (got {args.seed}).")


def _plan_outputs(args: argparse.Namespace) -> list[tuple[Path, dict[str, Path]]]:
    """The outputs of every input, checked without writing anything (names, overwriting, the folder's path)."""
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DivNoisingError(f"--out-dir {out_dir} is a file; give a folder.")
    for parent in out_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise DivNoisingError(
                f"Cannot use --out-dir {out_dir}: {parent} is a file, not a folder; choose another location."
            )
    plan: list[tuple[Path, dict[str, Path]]] = []
    seen: dict[Path, Path] = {}
    for name in args.input:
        path = Path(name)
        if not path.exists():
            raise DivNoisingError(f"Input file not found: {path}")
        outputs = output_paths(path, out_dir, args.save_samples, args.map)
        for out in outputs.values():
            if out in seen:
                raise DivNoisingError(f"{seen[out]} and {path} would both write {out}; rename one of them.")
            seen[out] = path
            if path.resolve() == out.resolve():
                raise DivNoisingError(f"Writing {out} would overwrite the input; choose another --out-dir.")
        plan.append((path, outputs))
    existing = [str(p) for _, outs in plan for p in outs.values() if p.exists()]
    if existing and not args.force:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise DivNoisingError(f"{shown} already exist(s); pass --force to overwrite.")
    folders = [p for _, outs in plan for p in outs.values() if p.is_dir()]
    if folders:
        raise DivNoisingError(f"{folders[0]} is a folder; move it away or choose another --out-dir.")
    return plan


#: Bytes of TIFF headers and metadata per output file (generous).
_TIFF_OVERHEAD = 64 * 1024


def planned_bytes(shape: tuple[int, ...], outputs: dict[str, Path], save_samples: int) -> int:
    """Bytes the outputs of an input of ``shape`` take at most (float32 pixels plus headers)."""
    pixels = int(np.prod(shape))
    per_kind = {"mmse": pixels, "variance": pixels, "map": pixels, "samples": pixels * save_samples}
    return sum(4 * per_kind[kind] + _TIFF_OVERHEAD for kind in outputs)


def clip_minimum(raw: np.ndarray) -> float:
    """Physical minimum for ``--clip``: 0 for unsigned or non-negative data, else the data's minimum."""
    if np.issubdtype(raw.dtype, np.unsignedinteger):
        return 0.0
    low = float(np.min(raw))
    return 0.0 if low >= 0 else low


def run(args: argparse.Namespace) -> int:
    """Denoise every input with a progress bar and write the result files; returns the exit status."""
    from tqdm import tqdm

    from ..events import Progress
    from ..export import read_tiff_metadata, stack_axes, write_tiff
    from ..io import as_image_stack, read_tiff
    from ..model_io import load_model
    from ..prediction import PredictionDone, SampleBatch, check_tile_size, predict_iter
    from ..scale.ome import is_zarr_path
    from ..validation import check_finite_result, prediction_range_warning

    if args.out or any(is_zarr_path(name) for name in args.input):
        from ..scale.cli import run_zarr

        for option, value in (("--orientations", args.orientations), ("--offsets", args.offsets)):
            if value not in (None, 1):
                raise DivNoisingError(f"{option} is not available with --out (OME-Zarr results): leave it out.")

        return run_zarr(args)
    if not args.out_dir:
        raise DivNoisingError("Give --out-dir DIR for TIFF results, or --out results.ome.zarr for an OME-Zarr store.")
    if args.workers or args.scheduler:
        raise DivNoisingError("--workers and --scheduler need --out results.ome.zarr (an OME-Zarr results store).")
    _check_args(args)
    plan = _plan_outputs(args)
    from ..device import resolve_device

    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    check_tile_size(args.tile_size, model.network)
    # Check every input before computing anything, so a bad file late in the list fails fast.
    need = 0
    for path, outputs in plan:
        stack = as_image_stack(read_tiff(path), name=str(path))
        need += planned_bytes(stack.shape, outputs, min(args.save_samples, args.samples))
        warning = prediction_range_warning(model, stack, name=str(path))
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        del stack
    check_output_dir(args.out_dir, planned_bytes=need, option="--out-dir")

    for path, outputs in plan:
        raw = read_tiff(path)
        meta = read_tiff_metadata(path)
        squeezed = raw.reshape([s for i, s in enumerate(raw.shape) if not (s == 1 and i < raw.ndim - 2)])
        axes = stack_axes(meta["axes"][-squeezed.ndim :] if meta["axes"] else None, squeezed.ndim)
        n_frames = 1 if squeezed.ndim == 2 else squeezed.shape[0]
        total = n_frames * args.samples
        result = None
        with tqdm(total=total, desc=path.name, unit="sample", dynamic_ncols=True) as bar:
            for event in predict_iter(
                model, squeezed, args.samples, batch_size=args.batch_size, tile_size=args.tile_size,
                seed=args.seed, keep_samples=args.save_samples, compute_map=args.map, precision=args.precision,
                orientations=args.orientations or DEFAULT_ORIENTATIONS, offsets=args.offsets or DEFAULT_OFFSETS,
                name=str(path),
            ):
                if isinstance(event, SampleBatch):
                    bar.update(event.frame * event.total + event.done - bar.n)
                elif isinstance(event, Progress):
                    bar.set_postfix_str(f"{event.message} {event.done}/{event.total}", refresh=True)
                elif isinstance(event, PredictionDone):
                    result = event.result
        assert result is not None
        arrays = {"mmse": result.mmse, "variance": result.variance, "samples": result.samples, "map": result.map}
        check_finite_result({kind: arrays[kind] for kind in outputs}, name=str(path))
        dtype: Any = raw.dtype if args.dtype == "input" and np.issubdtype(raw.dtype, np.integer) else "float32"
        clip_min = clip_minimum(raw) if args.clip else None
        common = dict(
            input_axes=axes, pixel_size=meta["pixel_size"], unit=meta["unit"], spacing=meta["spacing"],
            frame_interval=meta["frame_interval"], n_samples=result.n_samples, model_name=model.name,
            source=path.name,
            extra={"seed": result.seed, "orientations": result.orientations, "offsets": result.offsets},
        )
        # All files of this input land together, or none replaces the old set.
        with StagedFiles() as staged:
            for kind, out in outputs.items():
                staged.stage(out, lambda tmp, kind=kind: write_tiff(
                    tmp, arrays[kind], kind=kind, dtype=dtype, clip_min=clip_min, **common
                ))
            for out in staged.commit():
                print(f"wrote {out}")
    return 0
