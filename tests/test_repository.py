"""The repository is self-contained: no machine paths, cited docs exist, licence, GUI stack optional."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", ".tox", ".ruff_cache", ".pytest_cache", "build", "dist", "__pycache__"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".json", ".ini", ".cfg", ".sh", ""}
MACHINE_PATH = re.compile(r"(?<![\w.])/(work|root|home|Users|mnt|scratch|tmp)/[\w.-]")


def _repository_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / line for line in listed.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist)
        files = [p for p in ROOT.rglob("*") if p.is_file()]
    return [p for p in files if p.exists() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)
            and p.suffix in TEXT_SUFFIXES]


def test_no_absolute_machine_paths_anywhere():
    offenders = []
    for path in _repository_files():
        if path.name == "test_repository.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "absolute machine paths:\n" + "\n".join(offenders)


def test_cited_method_description_is_in_the_repository():
    assert (ROOT / "docs" / "method.md").is_file()
    offenders = [str(p.relative_to(ROOT)) for p in _repository_files()
                 if p.name != "test_repository.py" and "METHOD.md" in p.read_text(encoding="utf-8", errors="replace")]
    assert not offenders, f"cite docs/method.md instead of METHOD.md in: {', '.join(offenders)}"


def test_licence_and_optional_gui_stack():
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gui = ("napari", "qtpy", "superqt", "magicgui", "pyqt5", "pyqt6", "pyside2", "pyside6")
    core = [re.split(r"[<>=\[ ;]", dep)[0].lower() for dep in project["dependencies"]]
    assert not set(core) & set(gui), f"GUI packages must be an extra, not core dependencies: {core}"
    extras = project["optional-dependencies"]
    napari_extra = [re.split(r"[<>=\[ ;]", dep)[0].lower() for dep in extras["napari"]]
    assert {"napari", "qtpy", "superqt"} <= set(napari_extra)
    assert any(dep.lower().startswith("pyqt6") for dep in extras["all"])
