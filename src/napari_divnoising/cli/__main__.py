"""``python -m napari_divnoising.cli``: the ``divnoising`` command without its entry point."""

import sys

from . import main

sys.exit(main())
