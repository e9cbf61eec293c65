"""Run the whole benchmark suite: speed, then quality; results in ``benchmarks/results/``.

``python benchmarks/run_all.py`` runs both parts (about 10 + 55 minutes on 2 CPU cores);
``--quick`` runs both as smoke runs; ``--only speed|quality`` runs one part; options after ``--``
are passed to the quality part (e.g. ``-- --budget-minutes 5 --skip n2v``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs of both parts")
    parser.add_argument("--only", choices=("speed", "quality"), help="run one part only")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    common = ["--out-dir", str(args.out_dir)] + (["--quick"] if args.quick else [])
    status = 0
    if args.only in (None, "speed"):
        import run_speed

        status |= run_speed.main(common)
    if args.only in (None, "quality"):
        import run_quality

        status |= run_quality.main(common + extra)
    return status


if __name__ == "__main__":
    sys.exit(main())
