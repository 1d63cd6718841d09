"""The C kernel of :mod:`gradstats.chunk_sums` on a CPU (``gradstats/chunk_sums.c``), built on first use.

The source is compiled once per machine with the platform's C compiler (``$CC``, else ``cc``; ``-O3`` and, where
the compiler takes them, ``-fopenmp`` and ``-march=native``) into ``$XDG_CACHE_HOME/gradstats/native``
(``~/.cache/...``), under a name that carries a digest of the source, the command and the processor's flags, so
that a changed source or another machine builds its own. The library is written to a temporary file and renamed
into place, so that processes building at once never load half a file. With OpenMP the kernel's threads are the
OpenMP team of the process, which, once torch is imported, is torch's own (the library asks for
``libgomp.so.1``, which the loader finds already loaded from torch's wheel): separate threads would compete with
torch's, which keep spinning for a while after every parallel operation, and ran at half speed on a two-core
machine. Loaded through :mod:`ctypes`: no Python headers, no torch headers, a build of well under a second.
:func:`load` raises :class:`NativeUnavailable` (with the compiler's message) where no library can be built;
:mod:`gradstats.chunk_sums` then falls back to torch's kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("chunk_sums.c")
FLAGS = ("-O3", "-fopenmp-simd", "-fPIC", "-shared")
# tried in this order: OpenMP (the threads torch's OpenMP runtime already runs) and the machine's own instructions,
# then without each
VARIANTS = (("-fopenmp", "-march=native"), ("-fopenmp",), ("-march=native",), ())

_loaded: dict[tuple, ctypes.CDLL] = {}


class NativeUnavailable(RuntimeError):
    """No C library could be built or loaded here (no compiler, a compiler error, an unloadable file)."""


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gradstats/native`` (``~/.cache/gradstats/native``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradstats" / "native"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compile(cc: list[str], flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([*cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if done.returncode != 0:
            raise NativeUnavailable(f"{shlex.join(cc)} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        os.replace(tmp, target)
    except FileNotFoundError as err:
        raise NativeUnavailable(f"no C compiler ({shlex.join(cc)}: {err.strerror})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(directory: str | Path | None = None) -> ctypes.CDLL:
    """The kernel's library, built into ``directory`` (default :func:`cache_dir`) if it is not there yet."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    directory = Path(directory) if directory is not None else cache_dir()
    key = (tuple(cc), str(directory))
    if key in _loaded:
        return _loaded[key]
    source = SOURCE.read_bytes()
    errors = []
    for variant in VARIANTS:
        flags = [*FLAGS, *variant]
        digest = hashlib.sha256(b"\0".join([source, " ".join(cc + flags).encode(), _cpu_flags().encode(),
                                            platform.machine().encode()])).hexdigest()[:16]
        target = directory / f"chunk_sums-{digest}.so"
        try:
            if not target.exists():
                _compile(cc, flags, target)
            lib = ctypes.CDLL(str(target))
            break
        except (NativeUnavailable, OSError) as err:
            errors.append(str(err))
    else:
        raise NativeUnavailable("; ".join(errors))
    fn = lib.gradstats_chunk_sums
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    fn.argtypes = [i64, p, p, p, i64, p, p, p, p, p, i64, p, p, p, ctypes.c_int, p, p, p, p]
    fn.restype = ctypes.c_int
    _loaded[key] = lib
    return lib
