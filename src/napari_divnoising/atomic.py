"""Writing user files safely: checks before the work starts, atomic writes, clear messages for OS errors.

Every file the package writes for the user (models, checkpoints, noise models,
result TIFFs) goes through here or follows the same rules:

- output locations are checked before any work starts (:func:`check_output_file`,
  :func:`check_output_dir`): not a folder, parent is a folder, writable, enough
  free space for the planned files;
- a file is written to a temporary name in its own folder, flushed to disk
  and moved into place with ``os.replace`` (:func:`atomic_write_bytes`), so an
  existing file is either kept byte for byte or replaced whole, and the
  temporary file is removed on any error or interruption;
- new files get the permissions ``open()`` gives them (``0o666`` less the
  umask), like any other program's output;
- a set of files that belongs together (the outputs of one prediction) is
  staged as temporary files and moved into place together
  (:class:`StagedFiles`): all of the new set lands, or the old set stays;
- OS errors (disk full, read-only file system, no permission, a file where a
  folder should be, ...) become one :class:`~napari_divnoising.errors.DivNoisingError`
  line naming the path and what to do (:func:`write_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DivNoisingError

#: Extra free space asked for beyond the planned bytes (file-system blocks, metadata, headers).
SPACE_MARGIN_BYTES = 256 * 1024


class WriteError(DivNoisingError):
    """A file could not be written; ``path`` is the file and ``errno`` the OS error number (or None).

    Raised instead of ``OSError`` by the writers of user files, so that callers that must not lose
    work (a training loop writing checkpoints) can catch exactly this and try again later.
    """

    def __init__(self, message: str, path: str | Path | None = None, errno_: int | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.errno = errno_


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1024, one decimal)."""
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def as_path(path: Any, what: str = "path") -> Path:
    """``path`` as a :class:`Path`; a clear error for None, numbers and other non-paths."""
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        text = os.fspath(path)
        if isinstance(text, str) and text.strip():
            return Path(text)
    raise DivNoisingError(f"The {what} must be a file path (str or pathlib.Path); got {path!r}.")


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` (or ``path`` itself) that exists, following the names given."""
    current = path
    while not os.path.lexists(current):
        parent = current.parent
        if parent == current:
            break
        current = parent
    return current


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing ancestor), or None if unknown."""
    try:
        return int(shutil.disk_usage(_existing_ancestor(Path(folder).absolute())).free)
    except OSError:
        return None


def _explain(exc: BaseException, path: Path) -> tuple[int | None, str]:
    """(errno, what went wrong and what to do) for an error while writing ``path``."""
    folder = path.parent
    code = getattr(exc, "errno", None)
    detail = getattr(exc, "strerror", None) or str(exc)
    if code is None and isinstance(exc, OSError) and "requested and" in str(exc) and "written" in str(exc):
        code = errno.ENOSPC  # numpy's tofile reports a short write without an errno
    if code is None:
        free = free_bytes(folder)
        if free is not None and free < SPACE_MARGIN_BYTES:
            code = errno.ENOSPC
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        free = free_bytes(folder)
        left = f" ({format_bytes(free)} free)" if free is not None else ""
        return code, f"the disk is full{left}; free some space or choose another folder"
    if code == errno.EROFS:
        return code, f"{folder} is on a read-only file system; choose a writable folder"
    if code in (errno.EACCES, errno.EPERM):
        return code, f"no permission to write in {folder}; choose a folder you can write to"
    if code == errno.ENOTDIR:
        blocker = _file_in_the_way(path)
        where = f"{blocker} is a file, not a folder" if blocker else "part of the path is a file, not a folder"
        return code, f"{where}; choose another location"
    if code == errno.EISDIR:
        return code, "it is a folder; give a file name"
    if code == errno.ENAMETOOLONG:
        return code, "the file name is too long; choose a shorter name"
    if code == errno.ENOENT:
        return code, f"the folder {folder} does not exist (or was removed)"
    return code, str(detail)


def write_error(exc: BaseException, path: str | Path, what: str = "write") -> WriteError:
    """One clear line for an error while writing ``path``: what happened and what to do."""
    path = Path(path)
    code, reason = _explain(exc, path)
    return WriteError(f"Could not {what} {path}: {reason}.", path, code)


def _file_in_the_way(path: Path) -> Path | None:
    """The first component of ``path`` that exists but is not a folder (where one is needed), if any."""
    for parent in reversed(path.parents):
        if os.path.lexists(parent) and not parent.is_dir():
            return parent
    return None


def ensure_folder(folder: str | Path, what: str = "create the folder") -> Path:
    """Create ``folder`` (and its parents) if needed; clear errors when a file is in the way or it cannot be made."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    blocker = folder if os.path.lexists(folder) else _file_in_the_way(folder)
    if blocker is not None:
        raise WriteError(f"Cannot use {folder} as a folder: {blocker} is a file; choose another location.", folder,
                         errno.ENOTDIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, folder, what) from None
    return folder


def _probe_writable(folder: Path) -> None:
    """Create and remove a small file in ``folder``: the only reliable test (root, ACLs, read-only mounts)."""
    probe = folder / f".divnoising-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        code, reason = _explain(exc, probe)
        raise WriteError(f"Cannot write in {folder}: {reason}.", folder, code) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_space(folder: str | Path, planned_bytes: int, what: str = "the output") -> None:
    """Refuse when the file system of ``folder`` has less free space than ``planned_bytes`` plus a margin."""
    if planned_bytes <= 0:
        return
    free = free_bytes(folder)
    need = int(planned_bytes) + SPACE_MARGIN_BYTES
    if free is not None and free < need:
        raise WriteError(
            f"Not enough free space in {folder} for {what}: about {format_bytes(need)} needed, "
            f"{format_bytes(free)} free; free some space or choose another folder.",
            folder, errno.ENOSPC,
        )


def check_output_file(
    path: Any, *, force: bool = False, planned_bytes: int = 0, what: str = "file", option: str | None = None,
    create_folder: bool = True,
) -> Path:
    """Check that ``path`` can be written before any work starts; returns it as a Path.

    Refuses, with one line naming the path: a folder at ``path``; an existing file unless ``force``;
    a file where a parent folder should be; a folder that cannot be written (read-only, no
    permission); less free space than ``planned_bytes``. The parent folder is created when
    ``create_folder`` (so its creation errors show now, not after the work).

    Parameters
    ----------
    path
        The file to write.
    force
        Whether an existing file may be replaced.
    planned_bytes
        Bytes that will be written there (all files planned on that file system; 0: no check).
    what
        What the file is, for messages ("model", "noise model", ...).
    option
        The command-line option that gave the path (e.g. ``"--out"``), for messages.
    create_folder
        Create the parent folder now.
    """
    path = as_path(path, f"{what} path")
    if path.is_dir():
        raise DivNoisingError(folder_message(path, what, option))
    if os.path.lexists(path) and not force:
        raise DivNoisingError(f"{path} already exists; pass --force to overwrite it." if option else
                              f"{path} already exists; choose another name or allow overwriting.")
    folder = path.parent
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise WriteError(f"Cannot write {path}: {blocker} is a file, not a folder; choose another location.", path,
                         errno.ENOTDIR)
    if create_folder:
        ensure_folder(folder)
    if folder.is_dir():
        _probe_writable(folder)
    check_space(folder, planned_bytes, f"the {what}")
    return path


_SUFFIX_HINT = {"model": ".pt", "noise model": ".npz", "plot": ".png", "image": ".tif"}


def folder_message(path: Path, what: str = "file", option: str | None = None) -> str:
    """'--out X is a folder; give a file name ...' (with an example name when ``what`` is known)."""
    named = f"{option} {path}" if option else str(path)
    hint = _SUFFIX_HINT.get(what)
    if hint:
        return f"{named} is a folder; give a file name for the {what} (e.g. {path / (what.split()[-1] + hint)})."
    return f"{named} is a folder; give a file name."


def check_output_dir(folder: Any, *, planned_bytes: int = 0, option: str | None = None) -> Path:
    """Check (and create) an output folder before any work starts: not a file, writable, enough space."""
    folder = as_path(folder, "output folder")
    named = f"{option} {folder}" if option else str(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise DivNoisingError(f"{named} is a file; give a folder.")
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise WriteError(f"Cannot use {named}: {blocker} is a file, not a folder; choose another location.",
                         folder, errno.ENOTDIR)
    ensure_folder(folder)
    _probe_writable(folder)
    check_space(folder, planned_bytes, "the results")
    return folder


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible everywhere (Windows, some network file systems).
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _removed_on_error(tmp: Path, path: Path):
    """Remove ``tmp`` if the block fails or is interrupted; OS errors become a :class:`WriteError` naming ``path``."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(exc, path) from None
        raise


def write_temp(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a temporary file next to ``path`` with ``write(handle)``, flushed to disk; return its name.

    The temporary file is created with mode ``0o666`` less the umask (like ``open()``), and removed on
    any error or interruption; OS errors become a :class:`WriteError` naming ``path``.
    """
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise write_error(exc, path) from None
    with _removed_on_error(tmp, path), os.fdopen(fd, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary handle) to ``path`` atomically.

    The previous file, if any, stays byte for byte until the new one is complete on disk; no
    temporary file is left behind on any error. Raises :class:`WriteError` for OS errors.
    """
    path = Path(path)
    if isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)

        def write(handle: BinaryIO) -> None:
            handle.write(payload)

    else:
        write = data
    tmp = write_temp(path, write)
    with _removed_on_error(tmp, path):
        os.replace(tmp, path)
    _fsync_folder(path.parent)
    return path


class StagedFiles:
    """A set of files written as one unit: stage each as a temporary file, then :meth:`commit` them together.

    Use as a context manager; leaving it without a commit (an error, Ctrl-C) removes the staged
    files and leaves every existing target untouched. :meth:`commit` moves the new files into
    place; if a move fails part way, the targets already replaced get their old files back
    (kept as hard links until the end) and new targets are removed, so the old set stays whole.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()

    @property
    def targets(self) -> list[Path]:
        return [target for _, target in self._staged]

    def stage(self, path: str | Path, write: Callable[[Path], None]) -> Path:
        """Stage ``path``: ``write(tmp)`` must create the file ``tmp`` (same folder); returns ``tmp``.

        OS errors become a :class:`WriteError` naming ``path``; the temporary file is removed on errors.
        """
        path = Path(path)
        tmp = _temp_name(path).with_suffix(path.suffix)  # some writers insist on the right suffix
        self._staged.append((tmp, path))
        try:
            write(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        except OSError as exc:
            raise write_error(exc, path) from None
        except DivNoisingError as exc:  # a writer that already turned its OSError into a message
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                raise write_error(cause, path) from None
            raise
        return tmp

    def discard(self) -> None:
        """Remove every staged temporary file that is still there."""
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged.clear()

    def commit(self) -> list[Path]:
        """Move every staged file into place, all or none; returns the targets."""
        backups: list[tuple[Path, Path | None, bool]] = []  # (target, backup of the old file, existed)
        done: list[tuple[Path, Path | None, bool]] = []
        try:
            for _tmp, target in self._staged:
                existed = os.path.lexists(target)
                backup = None
                if existed:
                    backup = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.old")
                    try:
                        os.link(target, backup)
                    except OSError:
                        backup = None  # no hard links here: the old file cannot be restored after a failed move
                backups.append((target, backup, existed))
            for (tmp, target), entry in zip(self._staged, backups):
                os.replace(tmp, target)
                done.append(entry)
        except BaseException as exc:
            for target, backup, existed in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, target)
                    elif not existed:
                        os.unlink(target)
            for _target, backup, _existed in backups:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(backup)
            failed = self._staged[min(len(done), len(self._staged) - 1)][1]
            self.discard()
            if isinstance(exc, OSError):
                raise write_error(exc, failed) from None
            raise
        for _target, backup, _existed in backups:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)
        folders = {target.parent for target in self.targets}
        for folder in folders:
            _fsync_folder(folder)
        targets = self.targets
        self._staged.clear()
        return targets

