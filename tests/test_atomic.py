"""Failed writes keep the previous file byte for byte and leave no temporary file; modes follow the umask."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising import atomic
from napari_divnoising.atomic import (
    StagedFiles,
    WriteError,
    atomic_write_bytes,
    check_output_dir,
    check_output_file,
    write_error,
)
from napari_divnoising.errors import DivNoisingError
from napari_divnoising.export import write_tiff
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.model_io import last_checkpoint_path, load_model, save_model
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_model_io import load_gmm_npz, save_gmm_npz
from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel


def _model() -> DivNoisingModel:
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=4)
    return DivNoisingModel(net, GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.1), 20.0, 15.0, name="t")


def _gmm() -> GMMNoiseModel:
    return GMMNoiseModel.initial(0.0, 255.0, generator=torch.Generator().manual_seed(1))


class _DiskFullsHalfway:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, handle, exc: BaseException):
        self._handle = handle
        self._exc = exc

    def write(self, data) -> int:
        data = bytes(data)
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise self._exc

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.fixture()
def fail_mid_write(monkeypatch):
    """Make the next writes of user files fail half way through (``exc`` defaults to ENOSPC)."""

    def arm(exc: BaseException | None = None) -> None:
        exc = exc or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real = os.fdopen
        monkeypatch.setattr(atomic.os, "fdopen", lambda fd, *a, **k: _DiskFullsHalfway(real(fd, *a, **k), exc))

    return arm


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


WRITERS = {
    "model": ("m.pt", lambda p: save_model(_model(), p)),
    "last checkpoint": ("m.last.pt", lambda p: save_model(_model(), p, training_state={"plateau_lr": 1e-3})),
    "noise model": ("nm.npz", lambda p: save_gmm_npz(_gmm(), p)),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, fail_mid_write, writer):
    name, write = WRITERS[writer]
    target = tmp_path / name
    target.write_bytes(b"the previous file")
    fail_mid_write()
    with pytest.raises(WriteError, match="disk is full") as info:
        write(target)
    assert info.value.errno == errno.ENOSPC and info.value.path == target
    assert target.read_bytes() == b"the previous file"
    assert _only(tmp_path) == [name]


@pytest.mark.parametrize("writer", list(WRITERS))
def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, fail_mid_write, writer):
    name, write = WRITERS[writer]
    target = tmp_path / name
    target.write_bytes(b"the previous file")
    fail_mid_write(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write(target)
    assert target.read_bytes() == b"the previous file"
    assert _only(tmp_path) == [name]


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_files_follow_the_umask(tmp_path, writer, umask):
    name, write = WRITERS[writer]
    old = os.umask(umask)
    try:
        write(tmp_path / name)
        tifffile.imwrite(tmp_path / "reference.tif", np.zeros((2, 2), np.uint8))
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "reference.tif").stat().st_mode)


def test_saved_files_still_load(tmp_path):
    assert load_model(save_model(_model(), tmp_path / "m.pt")).name == "t"
    assert float(load_gmm_npz(save_gmm_npz(_gmm(), tmp_path / "nm.npz")).max_signal) == 255.0


def test_last_checkpoint_kept_when_training_cannot_write(tmp_path, fail_mid_write):
    """The training loop's own checkpoint writes: a failure never damages the previous files."""
    from napari_divnoising.training import TrainingConfig, train

    out = tmp_path / "m.pt"
    out.write_bytes(b"previous best")
    last_checkpoint_path(out).write_bytes(b"previous last")
    image = np.random.default_rng(0).normal(100, 10, (48, 48)).astype(np.float32)
    fail_mid_write()
    try:
        train(image, 10.0, TrainingConfig(max_steps=2, patch_size=16, batch_size=2, start_filters=8, z_dim=4,
                                          device="cpu"), checkpoint_path=out)
    except DivNoisingError as exc:  # training goes on past failed checkpoints; the end may still report it
        assert "disk is full" in str(exc)
    assert out.read_bytes() == b"previous best"
    assert last_checkpoint_path(out).read_bytes() == b"previous last"
    assert _only(tmp_path) == ["m.last.pt", "m.pt"]


def _tiff_set(folder: Path) -> dict[str, Path]:
    return {kind: folder / f"cells_{kind}.tif" for kind in ("mmse", "variance", "samples")}


def test_staged_set_lands_whole(tmp_path):
    outputs = _tiff_set(tmp_path)
    for path in outputs.values():
        path.write_bytes(b"old")
    with StagedFiles() as staged:
        for kind, path in outputs.items():
            data = np.full((3, 4, 5) if kind == "samples" else (4, 5), 2.0, np.float32)
            staged.stage(path, lambda tmp, kind=kind, data=data: write_tiff(tmp, data, kind=kind))
        assert _only(tmp_path) != sorted(p.name for p in outputs.values())  # staged files are extra
        assert staged.commit() == list(outputs.values())
    assert _only(tmp_path) == sorted(p.name for p in outputs.values())
    assert tifffile.imread(outputs["samples"]).shape == (3, 4, 5)


def test_staged_set_failing_mid_write_keeps_the_old_set(tmp_path, monkeypatch):
    outputs = _tiff_set(tmp_path)
    for path in outputs.values():
        path.write_bytes(f"old {path.name}".encode())
    real = tifffile.imwrite

    def third_fails(file, data, *args, **kwargs):
        if "samples" in str(file):
            raise OSError("1179648 requested and 849540 written")  # numpy's short write: no errno
        return real(file, data, *args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", third_fails)
    with pytest.raises(WriteError, match=r"cells_samples\.tif: the disk is full"):
        with StagedFiles() as staged:
            for kind, path in outputs.items():
                staged.stage(path, lambda tmp, kind=kind: write_tiff(tmp, np.zeros((4, 5), np.float32), kind="mmse"))
            staged.commit()
    for path in outputs.values():
        assert path.read_bytes() == f"old {path.name}".encode()
    assert _only(tmp_path) == sorted(p.name for p in outputs.values())


def test_commit_failing_part_way_restores_the_old_set(tmp_path, monkeypatch):
    outputs = _tiff_set(tmp_path)
    outputs["mmse"].write_bytes(b"old mmse")
    outputs["variance"].write_bytes(b"old variance")  # "samples" is new
    real = os.replace
    calls = {"n": 0}

    def second_fails(src, dst):
        if str(dst).endswith(".tif") and not Path(src).name.endswith(".old"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst)

    with StagedFiles() as staged:
        for path in outputs.values():
            staged.stage(path, lambda tmp: tmp.write_bytes(b"new"))
        monkeypatch.setattr(atomic.os, "replace", second_fails)
        with pytest.raises(WriteError):
            staged.commit()
    assert outputs["mmse"].read_bytes() == b"old mmse"
    assert outputs["variance"].read_bytes() == b"old variance"
    assert not outputs["samples"].exists()
    assert _only(tmp_path) == ["cells_mmse.tif", "cells_variance.tif"]


def test_leaving_without_commit_removes_the_staged_files(tmp_path):
    with StagedFiles() as staged:
        staged.stage(tmp_path / "a.tif", lambda tmp: tmp.write_bytes(b"x"))
    assert _only(tmp_path) == []


def test_atomic_write_bytes_replaces_whole(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents" and _only(tmp_path) == ["f.bin"]


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "disk is full"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "no permission"),
        (errno.EPERM, "no permission"),
        (errno.ENOTDIR, "not a folder"),
        (errno.EISDIR, "is a folder"),
        (errno.ENAMETOOLONG, "too long"),
    ],
)
def test_os_errors_become_one_clear_line(tmp_path, code, words):
    exc = write_error(OSError(code, os.strerror(code)), tmp_path / "out" / "m.pt")
    assert isinstance(exc, DivNoisingError) and exc.errno == code
    assert words in str(exc) and str(tmp_path / "out" / "m.pt") in str(exc) and "\n" not in str(exc)


def test_output_file_checks(tmp_path, monkeypatch):
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(DivNoisingError, match="afile is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "sub" / "m.pt")
    with pytest.raises(DivNoisingError, match="is a folder; give a file name for the model"):
        check_output_file(tmp_path, what="model", force=True)
    with pytest.raises(DivNoisingError, match="already exists"):
        check_output_file(tmp_path / "afile")
    assert check_output_file(tmp_path / "new" / "deeper" / "m.pt", planned_bytes=10) == tmp_path / "new/deeper/m.pt"
    assert (tmp_path / "new" / "deeper").is_dir() and _only(tmp_path / "new" / "deeper") == []  # probe removed
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 1000)
    with pytest.raises(WriteError, match="Not enough free space .* about 1.2 MB needed, 1000 bytes free"):
        check_output_file(tmp_path / "big.pt", planned_bytes=1_000_000)
    with pytest.raises(DivNoisingError, match="file path"):
        check_output_file(None)


def test_output_dir_checks(tmp_path, monkeypatch):
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(DivNoisingError, match="is a file; give a folder"):
        check_output_dir(tmp_path / "afile", option="--out-dir")
    with pytest.raises(DivNoisingError, match="afile is a file, not a folder"):
        check_output_dir(tmp_path / "afile" / "sub")
    real_open = os.open

    def read_only(path, flags, mode=0o777, **kwargs):
        if "divnoising-probe" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(atomic.os, "open", read_only)
    with pytest.raises(WriteError, match=r"Cannot write in .*read-only file system"):
        check_output_dir(tmp_path / "results")
