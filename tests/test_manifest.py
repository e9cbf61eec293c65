"""The npe2 manifest validates and contributes the three widgets, sample data and the TIFF writer."""

import shutil
import subprocess
import sys
from pathlib import Path

import npe2


def test_npe2_validate_passes():
    exe = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    result = subprocess.run([exe, "validate", "napari-divnoising", "--imports"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_contributions_have_the_names_users_see():
    manifest = npe2.PluginManifest.from_distribution("napari-divnoising")
    widgets = [w.display_name for w in manifest.contributions.widgets]
    assert widgets == ["Noise model", "Train", "Predict"]
    writer = manifest.contributions.writers[0]
    assert set(writer.filename_extensions) == {".tif", ".tiff"}
    assert [t.value if hasattr(t, "value") else t for t in writer.layer_types] == ["image"]
    assert len(manifest.contributions.sample_data) >= 2
