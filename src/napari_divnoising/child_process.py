"""A workflow's events from a separate Python process, as an iterator of the same events.

The napari panels train in a child process: there the work has an interpreter, a main thread
and the CPU cores to itself, instead of sharing them with the viewer's event loop and
renderer (``benchmarks/bench_gui.py`` measures the difference). The parent sees the same typed
events as in-process, in the same order:

- models inside events are sent as a file's worth of bytes (:func:`~napari_divnoising.model_io.model_to_dict`
  through ``torch.save``) and read back with ``torch.load(weights_only=True)``, so nothing that
  arrives from the child can run code; a noise model travels as its config and tensors;
- every model that came through an event is *mirrored* in the parent: one object per model of
  the child, whose weights and history are updated in place after a
  :class:`~napari_divnoising.training.Validation` (at most every :data:`SNAPSHOT_INTERVAL_S`)
  and which gets the child's whole final state when the run ends (the in-process loop hands out
  the live model; its mirror here holds a recent state while the run goes on, the final one
  after it);
- a model passed *to* the child is mirrored too (a model sent back under its name updates it);
- :meth:`ChildEvents.request_stop` (any thread) asks the child to stop after its current event;
  the child then closes its generator (the workflow's own clean-up runs: a training records its
  steps and writes its last checkpoint), sends the final state of its models and ends; the
  iterator ends after passing on every event the child sent. Closing the iterator does the same
  and waits for the child (then ends it by force after ``close_timeout_s``);
- an exception in the child is raised again in the parent (the same exception where it can be
  pickled, else a ``RuntimeError`` with its text; either way with the child's traceback as a
  note); a child that dies (killed, out of memory) is reported in one line.

The child is a fresh interpreter with the parent's ``sys.path`` (forking a process that runs
Qt or CUDA is unsafe, and unlike ``multiprocessing``'s spawn it never runs the parent's main
script again, from which a user's script without a ``__main__`` guard would open a second
viewer). Its start costs an interpreter and the imports (seconds). The processes talk over a
:mod:`multiprocessing.connection` (a local socket or named pipe that only a holder of a random
key can open); ``target`` is named by module and name and must be a module-level function.
The child runs at a lower priority (:data:`CHILD_NICENESS`), so the viewer draws first.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import torch
from torch import nn

from .errors import DivNoisingError
from .model import DivNoisingModel

#: The child runs at a lower priority (Unix niceness; "below normal" on Windows): when the viewer
#: has to draw, it gets the cores first, and the work takes what is left (``benchmarks/bench_gui.py``).
CHILD_NICENESS = 5
#: The parent's mirror of a training model gets the child's weights at most this often (seconds).
SNAPSHOT_INTERVAL_S = 10.0
#: Seconds :meth:`ChildEvents.close` waits for the child's clean-up before ending it by force.
CLOSE_TIMEOUT_S = 60.0


class ChildStartError(DivNoisingError):
    """The child process could not be started (or did not answer); nothing of the work ran."""


@dataclass(frozen=True)
class ModelPayload:
    """A model on its way between the processes: ``ident`` names the model, ``data`` its file bytes."""

    ident: str
    data: bytes


@dataclass(frozen=True)
class NoiseModelPayload:
    """A noise model on its way between the processes: its config and ``torch.save`` bytes of its tensors."""

    config: dict
    data: bytes


@dataclass(frozen=True)
class TensorPayload:
    """A tensor on its way between the processes (bytes, not a shared-memory handle that dies with its sender)."""

    data: bytes


@dataclass(frozen=True)
class _LiveState:
    """The current state of a model the parent mirrors (not passed on as an event)."""

    model: ModelPayload


@dataclass(frozen=True)
class _LiveWeights:
    """The current weights (network and noise model tensors) and history of a model the parent mirrors."""

    ident: str
    data: bytes
    history: dict


@dataclass(frozen=True)
class _Failure:
    """The child's work raised: the exception (pickled, if it could be) and its text."""

    exception: bytes | None
    type_name: str
    message: str
    traceback: str


@dataclass(frozen=True)
class _End:
    """The child has sent everything."""


def _tensor_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _map_leaves(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """``obj`` with ``leaf`` applied to everything that is not a dataclass, list, tuple or dict.

    ``leaf`` returns its argument unchanged, or a replacement (which is not walked into).
    """
    replaced = leaf(obj)
    if replaced is not obj:
        return replaced
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _map_leaves(getattr(obj, f.name), leaf) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_leaves(v, leaf) for v in obj)
    if isinstance(obj, dict):
        return {k: _map_leaves(v, leaf) for k, v in obj.items()}
    return obj


class _Packer:
    """Turns models into payloads and back, keeping one object per model on each side."""

    def __init__(self, side: str) -> None:
        self._side = side
        self._count = 0
        self.ident_of: dict[int, str] = {}
        self.models: dict[str, DivNoisingModel] = {}

    def ident(self, model: DivNoisingModel) -> str:
        key = id(model)
        if key not in self.ident_of:
            self._count += 1
            ident = f"{self._side}-{self._count}"
            self.ident_of[key] = ident
            self.models[ident] = model
        return self.ident_of[key]

    def model_payload(self, model: DivNoisingModel) -> ModelPayload:
        from .model_io import model_to_dict

        return ModelPayload(self.ident(model), _tensor_bytes(model_to_dict(model)))

    def pack(self, obj: Any) -> Any:
        """``obj`` with its models, noise models and tensors turned into payloads."""
        return _map_leaves(obj, self._pack_leaf)

    def unpack(self, obj: Any) -> Any:
        """``obj`` with its payloads turned back into models, noise models and tensors."""
        return _map_leaves(obj, self._unpack_leaf)

    def _pack_leaf(self, obj: Any) -> Any:
        from .model_io import cpu_state_copy

        if isinstance(obj, DivNoisingModel):
            return self.model_payload(obj)
        if isinstance(obj, nn.Module) and hasattr(obj, "to_config"):
            return NoiseModelPayload(obj.to_config(), _tensor_bytes(cpu_state_copy(obj.state_dict())))
        if isinstance(obj, torch.Tensor):
            return TensorPayload(_tensor_bytes(obj.detach().cpu()))
        return obj

    def _unpack_leaf(self, obj: Any) -> Any:
        if isinstance(obj, ModelPayload):
            return self.update(obj)
        if isinstance(obj, NoiseModelPayload):
            from .noise_models import noise_model_from_config

            return noise_model_from_config(obj.config, _from_bytes(obj.data))
        if isinstance(obj, TensorPayload):
            return _from_bytes(obj.data)
        return obj

    def weights(self, model: DivNoisingModel) -> _LiveWeights:
        from .training.checkpoints import state_copy

        return _LiveWeights(self.ident(model), _tensor_bytes(state_copy(model)), dict(model.history))

    def update_weights(self, message: _LiveWeights) -> None:
        from .training.checkpoints import load_state

        model = self.models.get(message.ident)
        if model is None:
            return
        with torch.no_grad():
            load_state(model, _from_bytes(message.data))
        model.history = message.history

    def update(self, payload: ModelPayload) -> DivNoisingModel:
        """The model ``payload`` names, created or updated in place from its bytes."""
        from .model_io import model_from_dict
        from .training.checkpoints import load_state

        fresh = model_from_dict(_from_bytes(payload.data), source="the model from the other process")
        model = self.models.get(payload.ident)
        if model is None:
            self.models[payload.ident] = fresh
            self.ident_of[id(fresh)] = payload.ident
            return fresh
        with torch.no_grad():
            load_state(model, {"network": fresh.network.state_dict(), "noise_model": fresh.noise_model.state_dict()})
        model.data_mean, model.data_std = fresh.data_mean, fresh.data_std
        model.config, model.history, model.name = fresh.config, fresh.history, fresh.name
        model.training_state = fresh.training_state
        return model


_STOP = "stop"


def _events_models(event: Any) -> list[DivNoisingModel]:
    if not (dataclasses.is_dataclass(event) and not isinstance(event, type)):
        return []
    return [value for value in (getattr(event, f.name) for f in dataclasses.fields(event))
            if isinstance(value, DivNoisingModel)]


def _run_job(conn: Connection) -> None:
    """In the child: receive the job, send its events packed, stop when asked, then the final states."""
    target_name, args, kwargs, snapshot_after, snapshot_interval_s = conn.recv()
    packer = _Packer("child")
    latest: DivNoisingModel | None = None
    last_snapshot = time.monotonic()
    try:
        module_name, _, qualname = target_name.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
        events = target(*packer.unpack(args), **packer.unpack(kwargs))
        try:
            for event in events:
                models = _events_models(event)
                latest = models[-1] if models else latest
                conn.send(packer.pack(event))
                if (latest is not None and type(event).__name__ in snapshot_after
                        and time.monotonic() - last_snapshot >= snapshot_interval_s):
                    conn.send(packer.weights(latest))
                    last_snapshot = time.monotonic()
                if conn.poll() and conn.recv() == _STOP:
                    break
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        for model in list(packer.models.values()):
            conn.send(_LiveState(packer.model_payload(model)))
    except (BrokenPipeError, ConnectionError, EOFError):
        return  # the parent is gone
    except BaseException as exc:  # everything else goes to the parent, which decides
        try:
            pickled: bytes | None = pickle.dumps(exc)
            pickle.loads(pickled)
        except Exception:
            pickled = None
        try:
            conn.send(_Failure(pickled, type(exc).__name__, str(exc), traceback.format_exc()))
        except (BrokenPipeError, ConnectionError):
            return
    try:
        conn.send(_End())
    except (BrokenPipeError, ConnectionError):
        pass


#: The child's first lines: take the parent's ``sys.path`` (from stdin) before importing anything of ours.
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.stdin.readline()); "
    "from napari_divnoising.child_process import serve; serve()"
)


def serve() -> None:
    """The child's main: read the key, tell the parent where to connect, run one job."""
    if hasattr(os, "nice"):
        try:
            os.nice(CHILD_NICENESS)
        except OSError:
            pass
    key = bytes.fromhex(sys.stdin.readline().strip())
    socket_dir = json.loads(sys.stdin.readline())
    # A socket in the parent's folder, which the parent removes even when this process is killed.
    address = os.path.join(socket_dir, "socket") if socket_dir else None
    with Listener(address, "AF_UNIX" if socket_dir else None, authkey=key) as listener:
        sys.stdout.write(json.dumps(listener.address) + "\n")
        sys.stdout.flush()
        # Anything printed from now on goes where errors go: nobody reads stdout any more.
        try:
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # no usable stderr (a windowless interpreter)
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), sys.stdout.fileno())
        conn = listener.accept()
    with conn:
        _run_job(conn)


class ChildEvents:
    """Iterate the events of ``target(*args, **kwargs)`` computed in a child process.

    Parameters
    ----------
    target
        A module-level generator function (it is imported by module and name in the child).
    args, kwargs
        Its arguments; :class:`~napari_divnoising.model.DivNoisingModel` and noise models
        in them travel as payloads, the rest is pickled.
    snapshot_after, snapshot_interval_s
        Names of the event types after which the child sends the current weights and history of
        the latest model it passed on (at most every ``snapshot_interval_s``), so the parent's
        mirror follows the run; the rest of its state comes with the final state.
    close_timeout_s
        How long :meth:`close` waits for the child's clean-up before ending it by force.

    Raises
    ------
    ChildStartError
        When the child cannot start.
    """

    def __init__(self, target: Callable[..., Iterator[Any]], *args: Any,
                 snapshot_after: tuple[str, ...] = ("Validation",), snapshot_interval_s: float = SNAPSHOT_INTERVAL_S,
                 close_timeout_s: float = CLOSE_TIMEOUT_S,
                 **kwargs: Any) -> None:
        self._packer = _Packer("parent")
        self._close_timeout_s = close_timeout_s
        self._ended = False
        self._send_lock = threading.Lock()
        self.stop_requested = False
        key = secrets.token_bytes(32)
        self._socket_dir = ""
        if os.name == "posix":
            try:
                self._socket_dir = tempfile.mkdtemp(prefix="divnoising-")
            except OSError as exc:
                self._ended = True
                raise ChildStartError(f"The worker process could not start: no temporary folder ({exc}).") from None
        try:
            self._process = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE,
                                             creationflags=getattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", 0))
        except OSError as exc:
            self._ended = True
            self._remove_socket_dir()
            raise ChildStartError(f"The worker process could not start ({exc}).") from None
        try:
            self._process.stdin.write(json.dumps(list(sys.path)).encode() + b"\n" + key.hex().encode() + b"\n"
                                      + json.dumps(self._socket_dir).encode() + b"\n")
            self._process.stdin.close()
            line = self._process.stdout.readline()
            self._process.stdout.close()
            if not line:
                raise ChildStartError(f"The worker process could not start (exit code {self._process.wait()}).")
            address = json.loads(line)
            self._conn = Client(tuple(address) if isinstance(address, list) else address, authkey=key)
        except (OSError, EOFError, ValueError, AuthenticationError) as exc:
            self._kill()
            if isinstance(exc, ChildStartError):
                raise
            raise ChildStartError(f"The worker process did not answer ({type(exc).__name__}: {exc}).") from None
        try:
            self._conn.send((f"{target.__module__}:{target.__qualname__}", self._packer.pack(args),
                             self._packer.pack(kwargs), tuple(snapshot_after), float(snapshot_interval_s)))
        except BaseException:
            self._kill()
            raise

    def _kill(self) -> None:
        self._ended = True
        self._process.kill()
        self._process.wait()
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def exit_code(self) -> int | None:
        """The child's exit code once it has ended, else None."""
        return self._process.poll()

    def request_stop(self) -> None:
        """Ask the child to stop after its current event (safe from any thread)."""
        self.stop_requested = True
        if self._ended:
            return
        try:
            with self._send_lock:
                self._conn.send(_STOP)
        except (OSError, ValueError):  # the child has gone: the iterator ends anyway
            pass

    def __iter__(self) -> ChildEvents:
        return self

    def __next__(self) -> Any:
        while not self._ended:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                self._finish()
                code = self._process.returncode
                raise DivNoisingError(
                    f"The worker process ended unexpectedly (exit code {code}"
                    + (", killed: perhaps out of memory" if code is not None and code < 0 else "") + ")."
                ) from None
            if isinstance(message, _End):
                self._finish()
                break
            if self._mirror(message):
                continue
            if isinstance(message, _Failure):
                self._finish()
                raise self._exception(message)
            return self._packer.unpack(message)
        raise StopIteration

    def _mirror(self, message: Any) -> bool:
        """Apply a model state the child sent to its mirror; False for any other message."""
        if isinstance(message, _LiveState):
            self._packer.update(message.model)
        elif isinstance(message, _LiveWeights):
            self._packer.update_weights(message)
        else:
            return False
        return True

    @staticmethod
    def _exception(failure: _Failure) -> BaseException:
        """The child's exception, carrying the child's traceback as a note (shown with unexpected errors)."""
        exc: BaseException | None = None
        if failure.exception is not None:
            try:
                loaded = pickle.loads(failure.exception)
                exc = loaded if isinstance(loaded, BaseException) else None
            except Exception:
                exc = None
        if exc is None:
            exc = RuntimeError(f"{failure.type_name}: {failure.message}")
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"Raised in the worker process:\n{failure.traceback}")
        return exc

    def _finish(self) -> None:
        self._ended = True
        try:
            self._process.wait(self._close_timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._conn.close()
        self._remove_socket_dir()

    def close(self) -> None:
        """Stop the child, apply the models' final states it sends, and wait for it to end."""
        if self._ended:
            return
        self.request_stop()
        try:
            while self._conn.poll(self._close_timeout_s):
                message = self._conn.recv()
                if not self._mirror(message) and isinstance(message, (_End, _Failure)):
                    break
        except (EOFError, OSError):
            pass
        self._finish()

    def __del__(self) -> None:  # an abandoned iterator must not leave its process running
        try:
            if not self._ended and self._process.poll() is None:
                self._process.kill()
            self._remove_socket_dir()
        except Exception:
            pass
