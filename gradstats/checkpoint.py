r"""Checkpoint files of long runs: safe to load, and signed by everything the result depends on.

A checkpoint holds plain tensors, numbers, strings, lists and dicts only, and
is read with ``torch.load(..., weights_only=True)``, so loading a file never
runs code from it. It carries a checksum of its content (a flipped bit is
refused, the path named) and a signature: the SHA-256 of a *fingerprint* of
the run (the library's version and source, the problem, the estimator, its
options and the noise stream). A run resumes only from a checkpoint with its
own signature.

:func:`fingerprint` turns a value into a JSON-able description that changes
whenever the value could compute something else: tensors by dtype, shape and
bytes; Python functions written by the user by their bytecode, constants,
default arguments, closure values and the globals they read, recursively;
functions of gradstats and of installed libraries by name, version and
closure values; other objects by their class and attributes. Where identity
cannot be established (an object with no inspectable state, such as a lock or
a C extension object) it raises :class:`UnidentifiableError`, and a run that
asked for a checkpoint is refused rather than risk resuming another run.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FORMAT", "UnidentifiableError", "NotResumableError", "InUseError", "fingerprint", "signature", "library_identity",
           "content_checksum", "save", "load", "claim", "file_identity", "RunFile", "PeriodicSaver", "sigterm_as_exit", "saving"]

FORMAT = "gradstats-checkpoint/3"

logger = logging.getLogger(__name__)


class UnidentifiableError(ValueError):
    """A value whose identity (what it would compute) cannot be established."""


class InUseError(ValueError):
    """A path that a live process has claimed (:func:`claim`): another run is writing there."""


class NotResumableError(ValueError):
    """A checkpoint file that a run cannot resume from: unreadable, not a gradstats checkpoint, another run's, or
    altered after it was written (the file is left in place)."""


@functools.lru_cache(maxsize=1)
def library_identity() -> dict:
    """The gradstats version and a hash of its source files (Python and C): a checkpoint of other code is never
    resumed."""
    from . import __version__

    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.c")]):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return {"version": __version__, "source": digest.hexdigest()}


def _tensor_digest(t: torch.Tensor) -> str:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def _package_version(module_name: str) -> str | None:
    top = sys.modules.get(module_name.split(".")[0])
    return getattr(top, "__version__", None) if top is not None else None


def _is_library_code(fn: types.FunctionType) -> bool:
    """gradstats' own functions and installed third-party ones (identified by name and version)."""
    module = getattr(fn, "__module__", None) or ""
    if module == "gradstats" or module.startswith("gradstats."):
        return True
    filename = fn.__code__.co_filename
    return module not in ("__main__", "") and "-packages" + os.sep in filename and _package_version(module) is not None


class _Fingerprinter:
    def __init__(self):
        self.seen: dict[int, int] = {}

    def __call__(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return [type(value).__name__, value]
        if isinstance(value, float):
            return ["float", repr(value)]
        if isinstance(value, complex):
            return ["complex", repr(value)]
        if isinstance(value, bytes):
            return ["bytes", hashlib.sha256(value).hexdigest()]
        if isinstance(value, (torch.dtype, torch.device, torch.layout)):
            return [type(value).__name__, str(value)]
        if isinstance(value, enum.Enum):
            return ["enum", self(type(value), where), value.name]
        if isinstance(value, types.ModuleType):
            return ["module", value.__name__, _package_version(value.__name__)]
        if isinstance(value, type):
            return ["class", value.__module__, value.__qualname__, _package_version(value.__module__)]
        if isinstance(value, torch.Tensor):
            return ["tensor", str(value.dtype), list(value.shape), _tensor_digest(value)]
        if isinstance(value, np.ndarray):
            digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
            return ["ndarray", str(value.dtype), list(value.shape), digest]
        if isinstance(value, np.generic):
            return ["numpy", str(value.dtype), repr(value.item())]
        if isinstance(value, torch.Generator):
            return ["generator", str(value.device), _tensor_digest(value.get_state())]
        if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType, types.WrapperDescriptorType,
                              types.MethodWrapperType, types.MethodDescriptorType, np.ufunc)):
            owner = getattr(value, "__self__", None)
            owner_fp = None if owner is None or isinstance(owner, types.ModuleType) else self(owner, where)
            return ["builtin", getattr(value, "__module__", None), getattr(value, "__qualname__", repr(value)), owner_fp]
        key = id(value)
        if key in self.seen:  # a cycle (an estimator whose draw closes over itself): its order of first visit
            return ["seen", self.seen[key]]
        self.seen[key] = len(self.seen)
        if isinstance(value, (list, tuple)):
            return [type(value).__name__, [self(v, f"{where}[{i}]") for i, v in enumerate(value)]]
        if isinstance(value, (set, frozenset)):
            return [type(value).__name__, sorted((self(v, where) for v in value), key=json.dumps)]
        if isinstance(value, dict):
            items = [[self(k, where), self(v, f"{where}[{k!r}]")] for k, v in value.items()]
            return ["dict", sorted(items, key=lambda kv: json.dumps(kv[0]))]
        if isinstance(value, functools.partial):
            return ["partial", self(value.func, where), self(value.args, where), self(value.keywords, where)]
        if isinstance(value, types.MethodType):
            return ["method", self(value.__func__, where), self(value.__self__, where)]
        if isinstance(value, types.FunctionType):
            return self._function(value, where)
        if isinstance(value, types.CodeType):
            return self._code(value, where)
        if isinstance(value, slice):
            return ["slice", self(value.start, where), self(value.stop, where), self(value.step, where)]
        state = getattr(value, "__dict__", None)
        slots = [s for cls in type(value).__mro__ for s in getattr(cls, "__slots__", ()) if hasattr(value, s)]
        if state is None and not slots:
            raise UnidentifiableError(f"{where} holds an object of type {type(value).__module__}.{type(value).__qualname__} "
                                      "whose identity cannot be established (no inspectable state)")
        attributes = dict(state or {})
        attributes.update({s: getattr(value, s) for s in slots})
        return ["object", self(type(value), where), self(attributes, f"{where}.{type(value).__name__}")]

    def _code(self, code: types.CodeType, where: str) -> list:
        consts = [self._code(c, where) if isinstance(c, types.CodeType) else self(c, where) for c in code.co_consts]
        return ["code", hashlib.sha256(code.co_code).hexdigest(), consts, list(code.co_names), code.co_argcount,
                code.co_kwonlyargcount, code.co_flags]

    def _function(self, fn: types.FunctionType, where: str) -> list:
        name = f"{fn.__module__}.{fn.__qualname__}"
        here = f"{where} ({name})"
        closure = []
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                closure.append([var, "empty"])
                continue
            closure.append([var, self(contents, f"{here}, closure variable {var!r}")])
        defaults = [self(fn.__defaults__, here), self(fn.__kwdefaults__, here)]
        if _is_library_code(fn):  # the library's own source or version stands for its code
            return ["function", name, fn.__code__.co_firstlineno, _package_version(fn.__module__), defaults, closure]
        names = set()
        stack = [fn.__code__]
        while stack:
            code = stack.pop()
            names.update(code.co_names)
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        referenced = [[n, self(fn.__globals__[n], f"{here}, global {n!r}")] for n in sorted(names) if n in fn.__globals__]
        return ["function", name, self._code(fn.__code__, here), defaults, closure, referenced]


def fingerprint(value: Any, where: str = "value") -> Any:
    """A JSON-able description of ``value`` that changes when what it computes could change.

    Raises :class:`UnidentifiableError` (a ValueError naming ``where``) when that cannot be established.
    """
    return _Fingerprinter()(value, where)


def signature(**parts: Any) -> str:
    """SHA-256 of the fingerprints of ``parts`` and of the library (version and source)."""
    payload = {"format": FORMAT, "library": library_identity(),
               **{name: fingerprint(value, name) for name, value in parts.items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, allow_nan=True).encode()).hexdigest()


def content_checksum(value: Any) -> str:
    """SHA-256 of a plain record's content (tensors by dtype, shape and bytes; numbers exactly; dicts in key
    order): stored beside the record, it tells a record altered afterwards (a flipped bit, an edit) from the one
    written."""
    return hashlib.sha256(json.dumps(fingerprint(value, "record"), sort_keys=True, allow_nan=True).encode()).hexdigest()


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, str, torch.Tensor)):
        return
    if isinstance(value, float):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise ValueError(f"{where} has a key of type {type(k).__name__}: a checkpoint stores str or int keys only")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise ValueError(f"{where} is a {type(value).__name__}: a checkpoint stores tensors, numbers, strings, "
                     "lists and dicts only")


def save(path: Path, signature: str, payload: dict) -> None:
    """Write ``payload`` (plain values) with ``signature`` and a checksum of its content to ``path`` atomically (a
    temporary file, then a rename)."""
    record = {"format": FORMAT, "signature": signature, **payload}
    _check_plain(record, "the checkpoint")
    record["checksum"] = content_checksum(record)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(record, tmp)
    os.replace(tmp, path)


def load(path: Path, signature: str, device: torch.device) -> dict:
    """The payload saved at ``path``; a :class:`NotResumableError` (a ValueError) naming the path (which is kept)
    when it cannot be read, is not a gradstats checkpoint, belongs to another run or fails its checksum."""
    try:
        record = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated, corrupted, or not written by torch.save of plain values
        raise NotResumableError(f"checkpoint {str(path)!r} cannot be read as a gradstats checkpoint ({type(err).__name__}: "
                         f"{_first_line(err)}); it was left in place: remove it or pass another path") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise NotResumableError(f"checkpoint {str(path)!r} is not a {FORMAT} file (found {found!r}); it was left in place: "
                         "remove it or pass another path")
    if record.get("signature") != signature:
        raise NotResumableError(f"checkpoint {str(path)!r} belongs to another run (the problem, estimator, options, noise "
                         "stream or library version differ); it was left in place: remove it or pass another path")
    stored = record.pop("checksum", None)
    if stored != content_checksum(record):
        raise NotResumableError(f"checkpoint {str(path)!r} fails its checksum: it was altered after it was written (a flipped "
                         "bit, an edit); it was left in place: remove it or pass another path")
    return record


def claim(path: Path) -> Path:
    """Claim ``path`` for one run before it computes anything: its directory must exist and be writable, and a
    lock file ``PATH.lock`` (made atomically, holding this process's id and host) keeps a second run from
    writing there at the same time. A lock left by a process of this host that is gone is taken over. Returns
    the lock's path; a ValueError names the path and what is wrong (:class:`InUseError` when a live process holds
    the lock, so that a caller with other work can go on to it)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; pass a file path")
    if not path.parent.is_dir():
        raise ValueError(f"checkpoint {str(path)!r}: its directory {str(path.parent)!r} does not exist")
    lock = path.with_name(path.name + ".lock")
    owner = f"{os.getpid()} {socket.gethostname()}\n"
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, host = _lock_owner(lock)
            if attempt == 0 and host == socket.gethostname() and pid is not None and not _alive(pid):
                lock.unlink(missing_ok=True)   # its run is gone
                continue
            raise InUseError(f"checkpoint {str(path)!r} is in use by another run (process {pid} on {host}; lock "
                             f"{str(lock)!r}): give each run its own checkpoint path, or remove the lock if that run "
                             "has ended") from None
        except OSError as err:
            raise ValueError(f"checkpoint {str(path)!r} cannot be written ({type(err).__name__}: {err})") from err
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return lock
    raise AssertionError("unreachable")


class RunFile:
    """One run's checkpoint file: ``path`` claimed up front (:func:`claim`), loaded and saved under the run's
    ``signature``, and at the end removed only if the file there is the one this run wrote or resumed from (never
    one another run wrote meanwhile)."""

    def __init__(self, path: Path, signature: str):
        self.path, self.signature = Path(path), signature
        self.lock = claim(self.path)
        self.written = None       # what identifies the file this run wrote last (or resumed from)

    def load(self, device) -> dict | None:
        """The saved payload (:func:`load`), or ``None`` when there is no file yet."""
        if not self.path.exists():
            return None
        record = load(self.path, self.signature, device)
        self.written = file_identity(self.path)   # resumed: the file is this run's to remove
        return record

    def save(self, payload: dict) -> None:
        save(self.path, self.signature, payload)
        self.written = file_identity(self.path)

    def remove_own(self) -> None:
        """Remove the file if it is the one this run wrote last."""
        if self.written is not None and file_identity(self.path) == self.written:
            self.path.unlink(missing_ok=True)

    def release(self) -> None:
        self.lock.unlink(missing_ok=True)


class PeriodicSaver:
    """A long run's checkpoint: ``path`` claimed under the run's signature (``identity``: everything its result
    depends on, :func:`signature`), saved at most every ``every`` seconds and after an interruption, and at the
    end removed only if it is this run's file (:class:`RunFile`). A save that fails mid-run is said once (a
    warning) and the run goes on, keeping its result; one that fails after an interruption is logged, so that
    the interruption is what the caller sees. ``state()`` gives the payload to save (plain values), or ``None``
    while there is nothing to save."""

    def __init__(self, path: str | Path, every: float, **identity):
        try:
            run_signature = signature(**identity)
        except UnidentifiableError as err:
            raise ValueError(f"checkpoint={str(path)!r} cannot be used: {err}, so a saved run could not be told from "
                             "another; run without a checkpoint, or give the loss and estimator plain values "
                             "(numbers, tensors, functions)") from err
        self.path, self.every = Path(path), every
        self.file = RunFile(self.path, run_signature)
        self.failed = False
        self.last = time.perf_counter()

    def load(self, device) -> dict | None:
        """The saved payload, or ``None`` when there is none yet (:meth:`RunFile.load`)."""
        return self.file.load(device)

    def save(self, state: Callable[[], dict | None]) -> None:
        payload = state()
        if payload is None:
            return
        self.file.save(payload)
        self.last = time.perf_counter()

    def maybe_save(self, state: Callable[[], dict | None]) -> None:
        if time.perf_counter() - self.last <= self.every:
            return
        try:
            self.save(state)
        except OSError as err:   # the run goes on: its result matters more than its checkpoint
            self.last = time.perf_counter()
            if not self.failed:
                warnings.warn(f"could not save checkpoint {str(self.path)!r} ({type(err).__name__}: {err}); the run goes "
                              "on without it and will try again", RuntimeWarning, stacklevel=3)
            self.failed = True

    def save_after_interruption(self, state: Callable[[], dict | None]) -> None:
        try:
            self.save(state)
        except Exception:  # the interruption is what the caller must see; the failed save is logged
            logger.exception("could not save checkpoint %s after the interruption", self.path)

    def remove_own(self) -> None:
        self.file.remove_own()

    def release(self) -> None:
        self.file.release()


@contextlib.contextmanager
def saving(saver: PeriodicSaver | None, state: Callable[[], dict | None]):
    """The body of a checkpointed run: SIGTERM raises SystemExit (:func:`sigterm_as_exit`); an interruption (any
    exception) saves ``state()`` before it goes on up; completion removes the run's file; the path is released
    either way. With ``saver`` None, the body alone."""
    if saver is None:
        yield
        return
    try:
        with sigterm_as_exit():
            try:
                yield
            except BaseException:
                saver.save_after_interruption(state)
                raise
        saver.remove_own()
    finally:
        saver.release()


@contextlib.contextmanager
def sigterm_as_exit():
    """While a checkpointed run is in flight, SIGTERM raises SystemExit(143) so it saves like SIGINT
    (only from the main thread, and only where SIGTERM still has its default action)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _lock_owner(lock: Path) -> tuple[int | None, str | None]:
    try:
        pid, host = lock.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def file_identity(path: Path) -> tuple[int, ...] | None:
    """What tells the file now at ``path`` from another written there later (device, inode, time, size), or
    ``None`` where there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""

