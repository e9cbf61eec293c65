"""``divnoising --help`` answers without loading torch (which takes seconds to import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
from napari_divnoising.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("torch loaded" if "torch" in sys.modules else "torch not loaded")
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"]])
def test_help_does_not_load_torch(argv):
    run = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "usage: divnoising" in run.stdout
    assert run.stdout.strip().endswith("torch not loaded")
