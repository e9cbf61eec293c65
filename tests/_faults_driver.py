"""Runs the real ``divnoising`` command line for the fault matrix (``tests/test_faults.py``).

Two modes, both in a process of their own:

``python _faults_driver.py [--patch NAME] -- ARGS...``
    one command, exactly like the console script (``sys.exit(main(ARGS))``); an
    uncaught exception prints Python's traceback and exits 1, as the script would.
``python _faults_driver.py --serve``
    many commands, one per JSON line on stdin (``{"argv": [...], "cwd": ..., "patch": ...}``),
    each answered by one JSON line (``{"rc": ..., "out": ..., "err": ...}``): the same
    ``main`` with stdout/stderr captured, so torch is imported once for the whole matrix.

``--patch`` names a fault injected around the command (see ``PATCHES``); everything
else is the real code on the real file system.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import sys
import traceback
from unittest import mock


@contextlib.contextmanager
def plenty_of_space():
    """Report 1 PB free, so the checks before the work pass and the real disk fills up while writing."""
    usage = shutil.disk_usage("/")
    fake = type(usage)(1 << 50, 0, 1 << 50)
    with mock.patch("shutil.disk_usage", return_value=fake):
        yield


@contextlib.contextmanager
def checkpoint_write_fails_once():
    """The first model save (a checkpoint during training) fails as on a full disk."""
    from napari_divnoising import model_io

    real = model_io.save_model
    calls = {"n": 0}

    def failing(model, path, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            try:
                from napari_divnoising.atomic import write_error
            except ImportError:  # older code: a plain OSError
                raise exc from None
            raise write_error(exc, path) from None
        return real(model, path, **kwargs)

    with mock.patch.object(model_io, "save_model", failing):
        yield


PATCHES = {"plenty_of_space": plenty_of_space, "checkpoint_write_fails_once": checkpoint_write_fails_once}


def _patched(name: str | None):
    return PATCHES[name]() if name else contextlib.nullcontext()


def serve() -> None:
    from napari_divnoising.cli import main

    real_out = sys.stdout
    home = os.getcwd()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        os.chdir(request.get("cwd") or home)
        rc = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                with _patched(request.get("patch")):
                    rc = int(main(request["argv"]) or 0)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # what the interpreter would print for the console script
                traceback.print_exc()
                rc = 1
        os.chdir(home)
        real_out.write(json.dumps({"rc": rc, "out": out.getvalue(), "err": err.getvalue()}) + "\n")
        real_out.flush()


def one(argv: list[str]) -> None:
    patch = None
    if argv[:1] == ["--patch"]:
        patch, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    from napari_divnoising.cli import main

    with _patched(patch):
        code = main(argv)
    sys.exit(code)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        one(sys.argv[1:])
