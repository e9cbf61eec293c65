"""Fault matrix: bad inputs, full and read-only disks, signals, wrong API arguments.

Every command case runs the real ``divnoising`` command line in a process of
its own (``_faults_driver.py``; by default one long-lived process serves the
quick cases so torch is imported once, set ``DIVNOISING_FAULTS_FRESH=1`` to
start a new process for each). Disks that fill up or are read-only are real
tmpfs mounts where the machine allows it (root); those cases are skipped with
the reason otherwise. Each case asserts the exit code, exactly one error line
without a traceback, and that files which existed before are byte for byte
unchanged with no temporary file left behind.

Cases that still need a change in the training code are marked
``xfail(strict=True)``: they turn red as soon as that change lands, as a
reminder to drop the mark.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_divnoising
from napari_divnoising.errors import DivNoisingError

SRC = Path(napari_divnoising.__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("_faults_driver.py")
FRESH = os.environ.get("DIVNOISING_FAULTS_FRESH") == "1"
TRAIN_FAST = ["--max-steps", "2", "--patch-size", "16", "--batch-size", "2"]
TEMP_MARKS = (".tmp", ".partial", ".old", "divnoising-probe")


# ---------------------------------------------------------------------- running the command line


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def error_line(self, *words: str) -> str:
        """The one ``error:`` line; no traceback; every word in it (case-insensitive)."""
        assert "Traceback" not in self.text, self.text
        lines = [line for line in self.err.splitlines() if "error:" in line]
        assert len(lines) == 1, self.text
        for word in words:
            assert word.lower() in lines[0].lower(), lines[0]
        return lines[0]


def _env(temp_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # A model the command cannot write is rescued to the temporary folder: the test's, not the machine's.
    env["TMPDIR"] = str(temp_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DIVNOISING_FAULTS_FRESH", None)
    return env


class Cli:
    """The command line in a subprocess: one long-lived server for quick cases, or a fresh process."""

    def __init__(self, temp_dir: Path) -> None:
        self._server: subprocess.Popen | None = None
        self._temp_dir = temp_dir

    def _serve(self) -> subprocess.Popen:
        if self._server is None or self._server.poll() is not None:
            self._server = subprocess.Popen(
                [sys.executable, str(DRIVER), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, env=_env(self._temp_dir),
            )
        return self._server

    def __call__(self, *argv: object, patch: str | None = None, fresh: bool = FRESH, timeout: float = 300) -> Result:
        args = [str(a) for a in argv]
        if fresh:
            cmd = [sys.executable, str(DRIVER)] + (["--patch", patch] if patch else []) + ["--", *args]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(self._temp_dir))
            return Result(done.returncode, done.stdout, done.stderr)
        server = self._serve()
        server.stdin.write(json.dumps({"argv": args, "patch": patch}) + "\n")
        server.stdin.flush()
        line = server.stdout.readline()
        if not line:
            raise RuntimeError("the fault-matrix driver died; rerun with DIVNOISING_FAULTS_FRESH=1 to see why")
        reply = json.loads(line)
        return Result(reply["rc"], reply["out"], reply["err"])

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    runner = Cli(tmp_path_factory.mktemp("cli-temp"))
    yield runner
    runner.close()


# ---------------------------------------------------------------------- files


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def assert_kept(before: dict[str, bytes], root: Path) -> dict[str, bytes]:
    """Files of ``before`` unchanged, no temporary file left; returns the new snapshot."""
    now = snapshot(root)
    for name, data in before.items():
        assert name in now, f"{name} was removed"
        assert now[name] == data, f"{name} was changed"
    leftovers = [name for name in now if any(mark in name for mark in TEMP_MARKS)]
    assert not leftovers, leftovers
    return now


def _clean(size: int = 64, seed: int = 0, frames: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    clean = 40 + 100 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 3) ** 2) / (size * 0.8))
    return np.stack([clean + rng.normal(0, 10, clean.shape) for _ in range(frames)])


@pytest.fixture(scope="session")
def data(tmp_path_factory, cli):
    """Inputs shared by all cases, and a model trained by the command line for 2 steps."""
    from napari_divnoising.noise_model_io import save_gmm_npz
    from napari_divnoising.noise_models import GMMNoiseModel

    root = tmp_path_factory.mktemp("fault-data")
    noisy = np.clip(_clean(), 0, 255).astype(np.uint8)
    tifffile.imwrite(root / "noisy.tif", noisy)
    tifffile.imwrite(root / "cells.tif", noisy[0])
    tifffile.imwrite(root / "big.tif", np.clip(_clean(128, frames=1)[0], 0, 255).astype(np.uint8))
    gen = torch.Generator().manual_seed(0)
    save_gmm_npz(GMMNoiseModel.initial(0.0, 255.0, generator=gen), root / "nm8.npz")
    save_gmm_npz(GMMNoiseModel.initial(1652.0, 22648.0, generator=gen), root / "nm16.npz")
    # Depth 3: a network whose checkpoints do not fit the 4 MB disk of the free-space cases.
    result = cli("train", "--data", root / "noisy.tif", "--co-learn", "--out", root / "model.pt", "--depth", "3",
                 *TRAIN_FAST)
    assert result.rc == 0, result.text
    return root


def _mount(path: Path, options: str) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root to mount; full-disk and read-only cases skipped")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); full-disk cases skipped")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture(scope="session")
def small_disk_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tmpfs-4m") / "mnt"
    _mount(root, "size=4m")
    yield root
    _umount(root)


@pytest.fixture()
def disk(small_disk_root):
    """An empty folder on a real 4 MB file system (emptied again after the test)."""
    yield small_disk_root
    for entry in sorted(small_disk_root.rglob("*"), reverse=True):
        entry.unlink() if entry.is_file() or entry.is_symlink() else entry.rmdir()


@pytest.fixture(scope="session")
def ro_disk(tmp_path_factory):
    """A real read-only file system holding an old model and an old set of prediction outputs."""
    root = tmp_path_factory.mktemp("tmpfs-ro") / "mnt"
    _mount(root, "size=1m")
    (root / "old").mkdir()
    for name in ("m.pt", "nm.npz", "p.tif", "cells_mmse.tif", "cells_variance.tif", "cells_samples.tif"):
        (root / "old" / name).write_bytes(f"old {name}".encode())
    done = subprocess.run(["mount", "-o", "remount,ro", str(root)], capture_output=True, text=True)
    if done.returncode:
        _umount(root)
        pytest.skip(f"cannot remount the tmpfs read-only ({done.stderr.strip()})")
    yield root
    _umount(root)


def _old_set(folder: Path, stem: str = "cells", kinds=("mmse", "variance", "samples")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        (folder / f"{stem}_{kind}.tif").write_bytes(f"old {stem} {kind}".encode())


# ---------------------------------------------------------------------- bad input images


def _write_bad_image(path: Path, kind: str) -> Path:
    rng = np.random.default_rng(1)
    frame = rng.normal(100, 10, (48, 48)).astype(np.float32)
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        tifffile.imwrite(path, np.stack([frame] * 4))
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "rgb":
        tifffile.imwrite(path, rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), photometric="rgb")
    elif kind == "4d":
        tifffile.imwrite(path, np.stack([[frame] * 3] * 2), imagej=True, metadata={"axes": "TZYX"})
    elif kind == "5d":
        tifffile.imwrite(path, rng.normal(100, 10, (2, 2, 2, 48, 48)).astype(np.float32))
    elif kind == "nan":
        frame[3, 4] = np.nan
        tifffile.imwrite(path, np.stack([frame] * 3))
    elif kind == "inf":
        frame[3, 4] = np.inf
        tifffile.imwrite(path, np.stack([frame] * 3))
    elif kind == "constant":
        tifffile.imwrite(path, np.full((3, 48, 48), 7, np.uint16))
    elif kind == "huge":
        tifffile.imwrite(path, (np.stack([frame] * 3) * 1e28).astype(np.float32))
    elif kind == "ome_2ch":
        tifffile.imwrite(path, np.stack([frame, frame * 2]), metadata={"axes": "CYX"})
    elif kind == "imagej_2ch":
        tifffile.imwrite(path, np.stack([frame, frame * 2]), imagej=True, metadata={"axes": "CYX"})
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


BAD_IMAGES = {
    "missing": "not found", "empty": "could not read", "random": "could not read", "truncated": "",
    "rgb": "RGB", "4d": "dimensions", "5d": "dimensions", "nan": "NaN", "inf": "infinite", "constant": "constant",
    "huge": "values up to", "ome_2ch": "2 channels", "imagej_2ch": "2 channels",
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
@pytest.mark.parametrize("command", ["train", "predict", "fit-noise-model"])
def test_bad_image_is_refused_before_any_work(cli, data, tmp_path, command, kind):
    bad = _write_bad_image(tmp_path / f"bad_{kind}.tif", kind)
    before = snapshot(tmp_path)
    if command == "train":
        result = cli("train", "--data", bad, "--co-learn", "--out", tmp_path / "m.pt", *TRAIN_FAST)
    elif command == "predict":
        result = cli("predict", "--model", data / "model.pt", "--input", bad, "--out-dir", tmp_path / "out",
                     "--samples", "2")
    else:
        result = cli("fit-noise-model", "--calibration", bad, "--out", tmp_path / "nm.npz")
    assert result.rc == 1
    result.error_line(BAD_IMAGES[kind])
    assert "Training on" not in result.out
    assert set(assert_kept(before, tmp_path)) == set(before)  # nothing written


def test_tiny_training_image_is_refused(cli, tmp_path):
    tifffile.imwrite(tmp_path / "tiny.tif", np.random.default_rng(0).normal(9, 1, (8, 8)).astype(np.float32))
    result = cli("train", "--data", tmp_path / "tiny.tif", "--co-learn", "--out", tmp_path / "m.pt", *TRAIN_FAST)
    assert result.rc == 1
    result.error_line("smaller than")


def test_tiny_image_predicts(cli, data, tmp_path):
    tifffile.imwrite(tmp_path / "tiny.tif", np.random.default_rng(0).normal(60, 9, (5, 7)).astype(np.float32))
    result = cli("predict", "--model", data / "model.pt", "--input", tmp_path / "tiny.tif", "--out-dir", tmp_path,
                 "--samples", "3")
    assert result.rc == 0, result.text
    assert tifffile.imread(tmp_path / "tiny_mmse.tif").shape == (5, 7)


# ---------------------------------------------------------------------- bad model and noise-model files


class _RunsCode:
    """A pickle that would create a file when unpickled by an unsafe loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write_bad_model(path: Path, kind: str, good: Path) -> Path:
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(2).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "malicious":
        torch.save({"format": _RunsCode(path.with_name("PWNED"))}, path)
    elif kind == "raw_pickle":
        path.write_bytes(pickle.dumps(_RunsCode(path.with_name("PWNED"))))
    elif kind == "state_dict":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind.startswith("version_"):
        payload = torch.load(good, weights_only=True)
        payload["format_version"] = {"version_str": "1", "version_0": 0, "version_99": 99}[kind]
        torch.save(payload, path)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


BAD_MODELS = {
    "missing": "not found", "empty": "not a readable", "random": "not a readable", "truncated": "not a readable",
    "malicious": "not a readable", "raw_pickle": "not a readable", "state_dict": "not a napari-divnoising model",
    "version_str": "damaged", "version_0": "damaged", "version_99": "update napari-divnoising",
}


@pytest.mark.parametrize("kind", list(BAD_MODELS))
@pytest.mark.parametrize("command", ["predict", "generate", "train --resume"])
def test_bad_model_file_is_refused(cli, data, tmp_path, command, kind):
    bad = _write_bad_model(tmp_path / "bad.pt", kind, data / "model.pt")
    before = snapshot(tmp_path)
    if command == "predict":
        result = cli("predict", "--model", bad, "--input", data / "cells.tif", "--out-dir", tmp_path / "out")
    elif command == "generate":
        result = cli("generate", "--model", bad, "--count", "2", "--size", "32", "--out", tmp_path / "p.tif")
    else:
        result = cli("train", "--data", data / "noisy.tif", "--resume", bad, "--out", tmp_path / "m.pt", *TRAIN_FAST)
    assert result.rc == 1
    result.error_line(BAD_MODELS[kind])
    assert not (tmp_path / "PWNED").exists(), "code in a model file ran"
    assert set(assert_kept(before, tmp_path)) == set(before)


def _write_bad_npz(path: Path, kind: str, good: Path) -> Path:
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:300])
    elif kind == "pickled":
        np.savez(path, trained_weight=np.array([{"a": 1}], dtype=object), min_signal=[0.0], max_signal=[1.0],
                 min_sigma=1.0)
    elif kind == "nan":
        arrays = dict(np.load(good))
        arrays["trained_weight"] = arrays["trained_weight"] * np.nan
        np.savez(path, **arrays)
    elif kind == "not_npz":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("hello.txt", "not arrays")
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


BAD_NPZ = {
    "missing": "not found", "empty": "empty", "random": "not a zip archive", "truncated": "could not read",
    "pickled": "could not read", "nan": "NaN", "not_npz": "missing",
}


@pytest.mark.parametrize("kind", list(BAD_NPZ))
def test_bad_noise_model_file_is_refused(cli, data, tmp_path, kind):
    bad = _write_bad_npz(tmp_path / "bad.npz", kind, data / "nm8.npz")
    before = snapshot(tmp_path)
    result = cli("train", "--data", data / "noisy.tif", "--noise-model", bad, "--out", tmp_path / "m.pt", *TRAIN_FAST)
    assert result.rc == 1
    line = result.error_line(BAD_NPZ[kind])
    assert "pickled" not in line or kind == "pickled"
    assert set(assert_kept(before, tmp_path)) == set(before)


# ---------------------------------------------------------------------- existing outputs


@pytest.mark.parametrize("command", ["train", "predict", "fit-noise-model", "generate"])
def test_existing_outputs_are_kept_without_force(cli, data, tmp_path, command):
    out = {"train": "m.pt", "predict": "cells_variance.tif", "fit-noise-model": "nm.npz", "generate": "p.tif"}[command]
    (tmp_path / out).write_bytes(b"precious")
    before = snapshot(tmp_path)
    args = {
        "train": ["--data", data / "noisy.tif", "--co-learn", "--out", tmp_path / out, *TRAIN_FAST],
        "predict": ["--model", data / "model.pt", "--input", data / "cells.tif", "--out-dir", tmp_path],
        "fit-noise-model": ["--calibration", data / "noisy.tif", "--out", tmp_path / out],
        "generate": ["--model", data / "model.pt", "--out", tmp_path / out, "--size", "32"],
    }[command]
    result = cli(command, *args)
    assert result.rc == 1
    result.error_line("already exist", "--force")
    assert set(assert_kept(before, tmp_path)) == set(before)


# ---------------------------------------------------------------------- output locations


def _command(command: str, data: Path, out: Path, force: bool = False) -> list[object]:
    extra = ["--force"] if force else []
    return {
        "train": ["train", "--data", data / "noisy.tif", "--co-learn", "--out", out / "m.pt", *TRAIN_FAST, *extra],
        "predict": ["predict", "--model", data / "model.pt", "--input", data / "cells.tif", "--out-dir", out,
                    "--samples", "3", "--save-samples", "2", *extra],
        "fit-noise-model": ["fit-noise-model", "--calibration", data / "noisy.tif", "--out", out / "nm.npz", *extra],
        "generate": ["generate", "--model", data / "model.pt", "--count", "2", "--size", "32", "--out",
                     out / "p.tif", *extra],
    }[command]


COMMANDS = ["train", "predict", "fit-noise-model", "generate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_parent_that_is_a_file_is_refused_before_work(cli, data, tmp_path, command):
    (tmp_path / "afile").write_bytes(b"a file")
    before = snapshot(tmp_path)
    result = cli(*_command(command, data, tmp_path / "afile" / "sub"))
    assert result.rc == 1
    result.error_line("afile", "is a file")
    assert "Training on" not in result.out and "wrote" not in result.out
    assert set(assert_kept(before, tmp_path)) == set(before)


@pytest.mark.parametrize("command", ["train", "fit-noise-model", "generate"])
def test_output_that_is_a_folder_is_refused_first(cli, data, tmp_path, command):
    args = _command(command, data, tmp_path)
    args[args.index("--out") + 1] = tmp_path  # the folder itself
    result = cli(*args)
    assert result.rc == 1
    line = result.error_line("is a folder")
    assert "--force" not in line


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_output_is_refused_before_work(cli, data, ro_disk, command):
    before = snapshot(ro_disk)
    result = cli(*_command(command, data, ro_disk / "new"))
    assert result.rc == 1
    result.error_line("read-only")
    assert "Training on" not in result.out
    assert_kept(before, ro_disk)


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_existing_outputs_with_force_are_kept(cli, data, ro_disk, command):
    before = snapshot(ro_disk)
    result = cli(*_command(command, data, ro_disk / "old", force=True))
    assert result.rc == 1
    result.error_line("read-only")
    assert_kept(before, ro_disk)


@pytest.mark.parametrize("command", ["train", "predict", "generate"])
def test_too_little_free_space_is_refused_before_work(cli, data, disk, command):
    if command == "train":
        args = _command("train", data, disk)
    elif command == "predict":
        args = ["predict", "--model", data / "model.pt", "--input", data / "big.tif", "--out-dir", disk,
                "--samples", "80", "--save-samples", "80"]
    else:
        args = ["generate", "--model", data / "model.pt", "--count", "100", "--size", "128", "--out", disk / "p.tif"]
    result = cli(*args)
    assert result.rc == 1
    result.error_line("free space", str(disk))
    assert "Training on" not in result.out
    assert snapshot(disk) == {}


@pytest.mark.parametrize("command", ["predict", "generate"])
def test_disk_full_while_writing_keeps_the_old_set(cli, data, disk, command):
    """The checks before the work are fooled (1 PB free); the real disk fills while the results are written."""
    if command == "predict":
        args = ["predict", "--model", data / "model.pt", "--input", data / "big.tif", "--out-dir", disk,
                "--samples", "72", "--save-samples", "72", "--force"]
        for kind in ("mmse", "variance", "samples"):  # the old set is named after big.tif here
            (disk / f"big_{kind}.tif").write_bytes(f"old big {kind}".encode())
    else:
        (disk / "p.tif").write_bytes(b"old prior")
        args = ["generate", "--model", data / "model.pt", "--count", "80", "--size", "128", "--out", disk / "p.tif",
                "--force"]
    before = snapshot(disk)
    result = cli(*args, patch="plenty_of_space")
    assert result.rc == 1
    result.error_line("disk is full")
    assert "wrote" not in result.out
    assert set(assert_kept(before, disk)) == set(before)


def test_checkpoint_that_cannot_be_written_does_not_end_training(cli, data, tmp_path):
    result = cli("train", "--data", data / "noisy.tif", "--co-learn", "--out", tmp_path / "m.pt",
                 "--max-steps", "10", "--patch-size", "16", "--batch-size", "2", patch="checkpoint_write_fails_once")
    assert "Traceback" not in result.text
    assert result.rc == 0, result.text
    assert "m" in result.text and "warning" in result.text.lower()
    from napari_divnoising.model_io import load_model

    assert load_model(tmp_path / "m.pt").history["steps"] == 10
    assert load_model(tmp_path / "m.last.pt").history["steps"] == 10


def test_disk_full_during_training_keeps_the_model_and_says_where(cli, data, disk):
    """The check before training is fooled (1 PB free); the 4 MB disk fills with the checkpoints."""
    from napari_divnoising.model_io import load_model

    result = cli(*_command("train", data, disk, force=True), patch="plenty_of_space")
    assert "Traceback" not in result.text
    kept = []
    for path in (disk / "m.pt", disk / "m.last.pt"):
        try:
            if load_model(path).history["steps"] == 2:
                kept.append(path)
        except DivNoisingError:
            pass
    assert kept, "the trained model was lost"
    assert any(str(path) in result.text for path in kept), result.text


def test_free_space_check_counts_the_network_being_trained(cli, data, disk):
    """A small network fits the 4 MB disk (best + last + one temporary copy); a depth-3 one would not."""
    from napari_divnoising.model_io import load_model

    result = cli("train", "--data", data / "noisy.tif", "--co-learn", "--out", disk / "m.pt", "--network",
                 "divnoising", "--depth", "1", *TRAIN_FAST)
    assert result.rc == 0, result.text
    assert load_model(disk / "m.pt").history["steps"] == 2


def test_resume_in_place_still_checks_the_place(cli, data, disk):
    """--resume m.pt --out m.pt needs no --force, but a disk without room for the checkpoints is refused first."""
    (disk / "m.pt").write_bytes((data / "model.pt").read_bytes())
    before = snapshot(disk)
    result = cli("train", "--data", data / "noisy.tif", "--resume", disk / "m.pt", "--out", disk / "m.pt",
                 *TRAIN_FAST)
    assert result.rc == 1
    result.error_line("free space", str(disk))
    assert "Training on" not in result.out
    assert_kept(before, disk)


def test_resume_in_place_needs_no_force(cli, data, tmp_path):
    (tmp_path / "m.pt").write_bytes((data / "model.pt").read_bytes())
    result = cli("train", "--data", data / "noisy.tif", "--resume", tmp_path / "m.pt", "--out", tmp_path / "m.pt",
                 *TRAIN_FAST)
    assert result.rc == 0, result.text
    from napari_divnoising.model_io import load_model

    assert load_model(tmp_path / "m.pt").history["steps"] == 4


# ---------------------------------------------------------------------- numbers and ranges


def test_prediction_far_from_the_training_range_warns(cli, data, tmp_path):
    x200 = tifffile.imread(data / "cells.tif").astype(np.uint16) * 200
    tifffile.imwrite(tmp_path / "bright.tif", x200)
    result = cli("predict", "--model", data / "model.pt", "--input", tmp_path / "bright.tif", "--out-dir", tmp_path,
                 "--samples", "3")
    assert result.rc == 0, result.text
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "far from the data the model was trained on" in warnings[0], result.err
    assert "rescale" in warnings[0]


def test_int32_input_far_out_never_writes_inf(cli, data, tmp_path):
    rng = np.random.default_rng(4)
    tifffile.imwrite(tmp_path / "wide.tif", rng.integers(-10_000_000, 10_000_000, (48, 48), dtype=np.int32))
    result = cli("predict", "--model", data / "model.pt", "--input", tmp_path / "wide.tif", "--out-dir", tmp_path,
                 "--samples", "3")
    assert "Traceback" not in result.text
    assert "warning:" in result.err
    written = sorted(tmp_path.glob("wide_*.tif"))
    if result.rc == 0:
        assert all(np.isfinite(tifffile.imread(p)).all() for p in written)
    else:
        result.error_line("NaN or infinite")
        assert not written


def test_noise_model_for_another_range_warns(cli, data, tmp_path):
    result = cli("train", "--data", data / "noisy.tif", "--noise-model", data / "nm16.npz", "--out",
                 tmp_path / "m.pt", *TRAIN_FAST)
    assert "Traceback" not in result.text
    assert "noise model covers signals 1652" in result.text


def test_resume_with_another_noise_model_is_not_ignored(cli, data, tmp_path):
    first = cli("train", "--data", data / "noisy.tif", "--noise-model", data / "nm8.npz", "--out",
                tmp_path / "m8.pt", *TRAIN_FAST)
    assert first.rc == 0, first.text
    result = cli("train", "--data", data / "noisy.tif", "--resume", tmp_path / "m8.pt", "--noise-model",
                 data / "nm16.npz", "--out", tmp_path / "m.pt", *TRAIN_FAST)
    assert "Traceback" not in result.text
    refused = result.rc == 1 and "noise model" in result.error_line()
    applied = result.rc == 0 and "nm16.npz" in result.text
    assert refused or applied, result.text


# ---------------------------------------------------------------------- signals


@pytest.fixture
def child_temp(tmp_path_factory) -> Path:
    """The temporary folder of a command run in its own process."""
    return tmp_path_factory.mktemp("child-temp")


class _Running:
    """A command in a fresh process, as a user starts it in a terminal (Ctrl+C interrupts it even where this
    test runs with SIGINT ignored, as in a background job); its output collected in the background."""

    def __init__(self, *argv: object, temp_dir: Path):
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), "--", *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=_env(temp_dir), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.err = self.out = ""
        self._readers = [threading.Thread(target=self._read, args=(name,), daemon=True) for name in ("err", "out")]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        stream = self.proc.stderr if name == "err" else self.proc.stdout
        for chunk in iter(lambda: stream.read(64), ""):
            setattr(self, name, getattr(self, name) + chunk)

    def wait_for(self, condition, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.proc.kill()
                raise AssertionError(f"gave up waiting (rc {self.proc.poll()}): {self.err[-2000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> Result:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the command did not end within {timeout} s: {self.err[-2000:]}") from None
        for reader in self._readers:
            reader.join(timeout=10)
        return Result(self.proc.returncode, self.out, self.err)


def test_sigint_during_training_keeps_a_resumable_model(cli, data, tmp_path, child_temp):
    from napari_divnoising.model_io import load_model

    out = tmp_path / "m.pt"
    run = _Running("train", "--data", data / "noisy.tif", "--co-learn", "--out", out, "--max-steps", "100000",
                   "--patch-size", "16", "--batch-size", "2", temp_dir=child_temp)
    run.wait_for(lambda: "step 3," in run.err)
    run.proc.send_signal(signal.SIGINT)
    result = run.finish()
    assert result.rc == 130, result.text
    assert "Traceback" not in result.text and "Interrupted at step" in result.out
    steps = load_model(tmp_path / "m.last.pt").history["steps"]
    assert steps >= 3 and load_model(out).history["steps"] >= 1
    resumed = cli("train", "--data", data / "noisy.tif", "--resume", tmp_path / "m.last.pt", "--out", out,
                  "--force", *TRAIN_FAST)
    assert resumed.rc == 0, resumed.text
    assert f"continuing from step {steps}" in resumed.out
    assert load_model(out).history["steps"] == steps + 2


def test_sigkill_during_training_leaves_loadable_files(cli, data, tmp_path, child_temp):
    from napari_divnoising.model_io import load_model

    out = tmp_path / "m.pt"
    run = _Running("train", "--data", data / "noisy.tif", "--co-learn", "--out", out, "--max-steps", "250",
                   "--patch-size", "16", "--batch-size", "2", temp_dir=child_temp)
    run.wait_for(lambda: (tmp_path / "m.last.pt").exists())
    run.proc.send_signal(signal.SIGKILL)
    result = run.finish()
    assert result.rc == -signal.SIGKILL
    last = load_model(tmp_path / "m.last.pt")
    assert last.history["steps"] >= 10
    assert load_model(out).history["steps"] >= 10
    resumed = cli("train", "--data", data / "noisy.tif", "--resume", tmp_path / "m.last.pt", "--out", out,
                  "--force", *TRAIN_FAST)
    assert resumed.rc == 0, resumed.text


def test_sigint_during_prediction_keeps_the_old_set(data, tmp_path, child_temp):
    _old_set(tmp_path)
    before = snapshot(tmp_path)
    run = _Running("predict", "--model", data / "model.pt", "--input", data / "cells.tif", "--out-dir", tmp_path,
                   "--samples", "1000000", "--save-samples", "2", "--force", temp_dir=child_temp)
    run.wait_for(lambda: "sample" in run.err)
    run.proc.send_signal(signal.SIGINT)
    result = run.finish()
    assert result.rc == 130, result.text
    assert "Traceback" not in result.text and "interrupted" in result.err
    assert set(assert_kept(before, tmp_path)) == set(before)


# ---------------------------------------------------------------------- the Python API


@pytest.fixture(scope="session")
def api_model(data):
    from napari_divnoising.model_io import load_model

    return load_model(data / "model.pt")


def _api_cases():
    from napari_divnoising.model_io import load_model, save_model
    from napari_divnoising.prediction import generate_prior, predict

    x = np.random.default_rng(5).normal(60, 10, (32, 32)).astype(np.float32)
    return {
        "predict(path, x)": (lambda m, p: predict(str(p / "model.pt"), x, 2), "load_model"),
        "predict(None, x)": (lambda m, p: predict(None, x, 2), "DivNoisingModel"),
        "predict(m, None)": (lambda m, p: predict(m, None, 2), "None"),
        "predict(m, 'a.tif')": (lambda m, p: predict(m, "a.tif", 2), "file name"),
        "predict n_samples=2.5": (lambda m, p: predict(m, x, 2.5), "whole number"),
        "predict n_samples='2'": (lambda m, p: predict(m, x, "2"), "whole number"),
        "predict seed=-1": (lambda m, p: predict(m, x, 2, seed=-1), "at least 0"),
        "predict batch_size=1.5": (lambda m, p: predict(m, x, 2, batch_size=1.5), "whole number"),
        "generate_prior count='2'": (lambda m, p: generate_prior(m, "2", 32), "whole number"),
        "generate_prior size=3.5": (lambda m, p: generate_prior(m, 1, 3.5), "whole number"),
        "load_model(None)": (lambda m, p: load_model(None), "file path"),
        "load_model(3)": (lambda m, p: load_model(3), "file path"),
        "save_model(None, p)": (lambda m, p: save_model(None, p / "x.pt"), "DivNoisingModel"),
        "save_model(m, None)": (lambda m, p: save_model(m, None), "file path"),
    }


@pytest.mark.parametrize("case", list(_api_cases()))
def test_api_refuses_wrong_arguments_clearly(api_model, data, case):
    call, words = _api_cases()[case]
    with pytest.raises(DivNoisingError, match=words):
        call(api_model, data)
    assert issubclass(DivNoisingError, ValueError)


def test_api_train_with_a_dict_config_is_refused_clearly():
    from napari_divnoising.training import train

    x = np.random.default_rng(6).normal(60, 10, (64, 64)).astype(np.float32)
    with pytest.raises(DivNoisingError, match="TrainingConfig"):
        train(x, 5.0, {"max_steps": 1})


def _train_cases():
    from napari_divnoising.training import TrainingConfig

    x = np.random.default_rng(8).normal(60, 10, (64, 64)).astype(np.float32)
    return {
        "train(None)": ((None,), {}, "None"),
        "train('a.tif')": (("a.tif",), {}, "file name"),
        "train(x, 'nm.npz')": ((x, "nm.npz"), {}, "load_gmm_npz"),
        "train(x, -1.0)": ((x, -1.0), {}, "positive"),
        "train(x, resume='m.pt')": ((x,), {"resume": "m.pt"}, "load_model"),
        "train(x, checkpoint_path=3)": ((x,), {"checkpoint_path": 3}, "file path"),
        "patch_size=32.5": ((x,), {"config": TrainingConfig(patch_size=32.5)}, "whole number"),
    }


@pytest.mark.parametrize("case", list(_train_cases()))
def test_api_train_refuses_wrong_arguments_before_any_work(case):
    from napari_divnoising.training import train

    args, kwargs, words = _train_cases()[case]
    with pytest.raises(DivNoisingError, match=words):
        train(*args, **kwargs)


def test_api_train_accepts_a_2d_list_as_one_image():
    from napari_divnoising.training import TrainingConfig, train

    rows = np.random.default_rng(7).normal(60, 10, (40, 40)).round(2).tolist()
    model = train(rows, 5.0, TrainingConfig(max_steps=1, patch_size=32, batch_size=2, device="cpu"))
    assert model.history["steps"] == 1
