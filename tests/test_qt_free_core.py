"""The core must import without Qt or napari (for servers and the command line)."""

import subprocess
import sys

CORE_MODULES = [
    "napari_divnoising",
    "napari_divnoising.errors",
    "napari_divnoising.io",
    "napari_divnoising.device",
    "napari_divnoising.network",
    "napari_divnoising.noise_models",
    "napari_divnoising.model",
    "napari_divnoising.cli",
]

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        root = name.split('.')[0]
        if root in {'qtpy', 'napari', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'superqt', 'vispy'}:
            raise ImportError('blocked for this test: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_core_imports_without_qt_or_napari():
    import pkgutil

    import napari_divnoising

    names = set(CORE_MODULES)
    for info in pkgutil.walk_packages(napari_divnoising.__path__, "napari_divnoising."):
        skip = ("._widgets" in info.name or info.name.endswith(("_sample_data", "__main__")) or "_writer" in info.name)
        if not skip:
            names.add(info.name)
    code = BLOCKER + "".join(f"\nimport {m}" for m in sorted(names)) + "\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_blocker_really_blocks():
    code = BLOCKER + "\nimport qtpy\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "blocked for this test" in result.stderr
