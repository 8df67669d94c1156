"""genfast.data.load_fashion_mnist and its IDX reader: on small IDX files the tests
write (gzipped and raw), and on the real data set where the Debian package
dataset-fashion-mnist is installed (skipped with the reason elsewhere)."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from genfast import data

HAS_PACKAGE = os.path.isfile(os.path.join(data.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
requires_package = pytest.mark.skipif(
    not HAS_PACKAGE, reason=f"Fashion-MNIST not installed ({data.FASHION_MNIST_DIR} missing): "
                            f"apt-get install {data.FASHION_MNIST_PACKAGE}")


def write_idx(path, array, type_code=0x08, gz=False):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)


def fake_split(folder, prefix, n, gz, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_types(tmp_path, gz):
    rng = np.random.default_rng(0)
    for code, dtype in ((0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                        (0x0D, np.float32), (0x0E, np.float64)):
        array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
        path = tmp_path / f"a{code}.idx"
        write_idx(path, array, code, gz=gz)
        got = data.read_idx(str(path))
        assert got.dtype == dtype and got.shape == (3, 4, 5)
        np.testing.assert_array_equal(got, array)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(str(bad))
    short = tmp_path / "short"
    write_idx(short, np.zeros((4, 3), np.uint8))
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"IDX shape \(4, 3\) needs 24 bytes, the file has 23"):
        data.read_idx(str(short))


@pytest.mark.parametrize("gz", [False, True])
def test_load_from_folder(tmp_path, gz):
    train_images, train_labels = fake_split(tmp_path, "train", 7, gz, 0)
    test_images, test_labels = fake_split(tmp_path, "t10k", 5, gz, 1)
    train = data.load_fashion_mnist(str(tmp_path), "train")
    test = data.load_fashion_mnist(str(tmp_path), split="test")
    assert train.images.shape == (7, 1, 28, 28) and test.images.shape == (5, 1, 28, 28)
    assert torch.equal(train.images[:, 0], torch.from_numpy(train_images).long())  # 256 levels: exact
    assert torch.equal(test.labels, torch.from_numpy(test_labels).long())
    assert train.levels == 256 and train.num_classes == 10
    small = data.load_fashion_mnist(str(tmp_path), "train", size=14, levels=16, limit=3)
    assert small.images.shape == (3, 1, 14, 14) and small.images.max() <= 15 and small.images.min() >= 0
    assert torch.equal(small.labels, torch.from_numpy(train_labels[:3]).long())


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.load_fashion_mnist(str(tmp_path / "missing"))
    fake_split(tmp_path, "train", 2, True, 0)
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\(\.gz\) not found.*dataset-fashion-mnist"):
        data.load_fashion_mnist(str(tmp_path), "test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.load_fashion_mnist(str(tmp_path), "validation")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        data.load_fashion_mnist(str(tmp_path), limit=0)


@requires_package
def test_installed_package():
    test = data.load_fashion_mnist(split="test")
    assert test.images.shape == (10_000, 1, 28, 28) and test.images.dtype == torch.int64
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert 0 <= test.images.min() and test.images.max() <= 255 and test.images.float().std() > 50
    train = data.load_fashion_mnist(split="train", limit=100)
    assert train.images.shape == (100, 1, 28, 28)
    assert not torch.equal(train.images, test.images[:100])
