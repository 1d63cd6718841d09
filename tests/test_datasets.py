"""Real data offline: the digits split, and MNIST's IDX format read from small files written here."""

import gzip
import struct

import numpy as np
import pytest
import torch

from gradstats import datasets


def test_digits_split_is_fixed_disjoint_and_scaled():
    a, b = datasets.digits(seed=0), datasets.digits(seed=0)
    assert torch.equal(a.train[0], b.train[0]) and torch.equal(a.test[1], b.test[1])
    sizes = [len(part[1]) for part in (a.train, a.validation, a.test)]
    assert sum(sizes) == 1797 and sizes[2] == round(0.2 * 1797)
    assert a.num_inputs == 64 and a.num_classes == 10
    rows = torch.cat([a.train[0], a.validation[0], a.test[0]])
    assert 0 <= float(rows.min()) and float(rows.max()) <= 1
    assert not torch.equal(datasets.digits(seed=1).train[1], a.train[1])


def _write_idx(path, array, type_code):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_the_four_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    train_x, test_x = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8), rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    train_y, test_y = rng.integers(0, 10, 30, dtype=np.uint8), rng.integers(0, 10, 6, dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", train_x, 0x08)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", train_y, 0x08)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", test_x, 0x08)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", test_y, 0x08)
    split = datasets.mnist(tmp_path, validation=0.2)
    assert split.num_inputs == 16 and len(split.test[1]) == 6
    assert len(split.train[1]) == 24 and len(split.validation[1]) == 6
    assert torch.allclose(split.test[0], torch.from_numpy(test_x.reshape(6, -1) / 255.0))
    assert split.test[1].tolist() == test_y.tolist()


def test_bad_idx_files_are_named(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(tmp_path / "junk")
    _write_idx(tmp_path / "short", np.zeros((3, 2), dtype=np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="promises 6 bytes"):
        datasets.read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        datasets.mnist(tmp_path)
    with pytest.raises(ValueError, match="validation must be a fraction"):
        datasets.digits(validation=1.5)
