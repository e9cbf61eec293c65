"""``divnoising generate``: synthetic images from a trained model's prior (z ~ N(0, I))."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import StagedFiles, folder_message
from ..errors import DivNoisingError
from ._common import check_output_path

DESCRIPTION = """\
Generate synthetic images by decoding random latents z ~ N(0, I) with a
trained model: they show what the model has learned about the structures
in its training data (any size; the network is fully convolutional).
Writes one float32 ImageJ TIFF stack (image k = frame k).

examples:
  divnoising generate --model model.pt --count 8 --size 256 --out prior.tif
  divnoising generate --model model.pt --count 4 --size 128x512 --out prior.tif --seed 1
"""


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '128x512' -> (128, 512) (height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise DivNoisingError(f"--size must be N or HxW in pixels (e.g. 256 or 128x512); got {text!r}.") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise DivNoisingError(f"--size must be N or HxW with positive numbers; got {text!r}.")
    return values[0], values[1]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``generate`` command."""
    p = subparsers.add_parser(
        "generate", help="synthetic images from a trained model's prior", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="MODEL.pt", help="model file from `divnoising train`")
    p.add_argument("--count", type=int, default=8, metavar="N", help="number of images (default 8)")
    p.add_argument("--size", default="256", metavar="S", help="image size: N or HxW pixels (default 256)")
    p.add_argument("--out", required=True, metavar="OUT.tif", help="TIFF stack to write")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    p.add_argument("--tile-size", type=int, metavar="T", help="decode in tiles of T x T pixels (default: automatic)")
    p.add_argument("--batch-size", type=int, metavar="B", help="images decoded at once (default: automatic)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Generate the images with a progress bar and write them; returns the exit status."""
    from tqdm import tqdm

    from ..device import resolve_device
    from ..export import write_tiff
    from ..model_io import load_model
    from ..prediction import PriorBatch, PriorDone, check_tile_size, generate_prior_iter
    from ..validation import check_finite_result

    if args.count < 1:
        raise DivNoisingError(f"--count must be at least 1 (got {args.count}).")
    size = parse_size(args.size)
    out = Path(args.out)
    if out.is_dir():
        raise DivNoisingError(folder_message(out, "image", "--out"))
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise DivNoisingError(f"--out must end in .tif or .tiff; got {out.name}.")
    if args.seed is not None and args.seed < 0:
        raise DivNoisingError(f"--seed must be 0 or more (got {args.seed}).")
    model = load_model(args.model, device=resolve_device(args.device))
    check_output_path(out, args.force, planned_bytes=4 * args.count * size[0] * size[1] + 64 * 1024, what="image")
    check_tile_size(args.tile_size, model.network)
    images = None
    with tqdm(total=args.count, desc="generate", unit="image", dynamic_ncols=True) as bar:
        for event in generate_prior_iter(
            model, args.count, size, batch_size=args.batch_size, tile_size=args.tile_size, seed=args.seed
        ):
            if isinstance(event, PriorBatch):
                bar.update(event.done - bar.n)
            elif isinstance(event, PriorDone):
                images = event.images
    assert images is not None
    check_finite_result({"prior": images}, name=args.model, hint="The model file is probably damaged; train it again.")
    with StagedFiles() as staged:
        staged.stage(
            out, lambda tmp: write_tiff(tmp, images, kind="prior", n_samples=args.count, model_name=model.name)
        )
        staged.commit()
    print(f"wrote {out} ({args.count} images of {size[0]}x{size[1]} pixels)")
    return 0
