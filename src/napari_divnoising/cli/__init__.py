"""The ``divnoising`` command line: ``divnoising <command> --help`` for each command."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from ..errors import DivNoisingError, SettingError
from ._options import flag_named

# (command name, module under napari_divnoising.cli); each module defines
# ``add_parser(subparsers)`` registering its command with ``func=run``.
COMMANDS = [
    ("fit-noise-model", "fit_noise_model"),
    ("train", "train"),
    ("predict", "predict"),
    ("generate", "generate"),
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="divnoising",
        description="DivNoising: diverse unsupervised denoising for microscopy (noise models, training, prediction).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module in COMMANDS:
        try:
            mod = import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{module}":
                continue  # command not implemented yet
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``divnoising`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except DivNoisingError as exc:
        if isinstance(exc, SettingError):
            exc = flag_named(exc, args)
        print(f"divnoising {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"divnoising {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a writer that does not turn its OS errors into a message yet
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"divnoising {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"divnoising {args.command}: error: out of memory; try a smaller tile, patch or batch size",
              file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
