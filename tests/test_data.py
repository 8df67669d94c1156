"""genfast.data: the embedded digits, user data (folder, .npy), quantisation, PNG grids."""
import numpy as np
import pytest
import torch
from PIL import Image

from genfast.data import ImageData, load_dataset, load_digits, quantize, save_grid, split


@pytest.mark.parametrize("size,levels", [(16, 16), (28, 256)])
def test_digits(size, levels):
    train, test = load_digits(size, levels)
    assert train.images.shape == (1500, 1, size, size) and test.images.shape == (297, 1, size, size)
    for part in (train, test):
        assert part.images.dtype == torch.long and part.levels == levels and part.num_classes == 10
        assert part.images.min() == 0 and part.images.max() == levels - 1
        assert set(part.labels.tolist()) == set(range(10))
    # The split is fixed: the same on every call, and train and test are disjoint.
    again, _ = load_digits(size, levels)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    flat = lambda d: {tuple(img.flatten().tolist()) for img in d.images}
    assert not flat(train) & flat(test)


def test_digits_at_native_resolution_keep_their_17_levels():
    from sklearn.datasets import load_digits as sklearn_digits

    train, test = load_digits(8, 17)
    original = torch.from_numpy(sklearn_digits().images).long()
    both = torch.cat([train.images, test.images])[:, 0]
    assert sorted(map(lambda t: tuple(t.flatten().tolist()), both)) == \
        sorted(map(lambda t: tuple(t.flatten().tolist()), original))


def test_quantize():
    v = torch.tensor([0.0, 0.1, 0.5, 0.99, 1.0, -0.2, 1.3])
    assert quantize(v, 2).tolist() == [0, 0, 0, 1, 1, 0, 1]
    assert quantize(v, 256).tolist() == [0, 26, 128, 252, 255, 0, 255]
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        quantize(v, 1)


def test_npy_grey_and_rgb(tmp_path):
    gen = np.random.default_rng(0)
    grey = gen.integers(0, 256, (20, 10, 12), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    np.save(tmp_path / "labels.npy", np.arange(20) % 4)
    train, test = load_dataset(str(tmp_path / "grey.npy"), 10, 256, 1, str(tmp_path / "labels.npy"))
    assert len(train) == 18 and len(test) == 2 and train.num_classes == 4
    rgb = gen.random((10, 8, 8, 3)).astype(np.float32)
    np.save(tmp_path / "rgb.npy", rgb)
    train, test = load_dataset(str(tmp_path / "rgb.npy"), 8, 256, 3)
    both = torch.cat([train.images, test.images])
    expected = torch.round(torch.from_numpy(rgb).permute(0, 3, 1, 2) * 255).long()
    assert sorted(both.flatten().tolist()) == sorted(expected.flatten().tolist())
    assert train.labels is None
    with pytest.raises(ValueError, match="has 3 channels, expected 1"):
        load_dataset(str(tmp_path / "rgb.npy"), 8, 256, 1)


def test_npy_bad_input(tmp_path):
    np.save(tmp_path / "neg.npy", -np.ones((3, 4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match=r"integer images must lie in \[0, 255\]"):
        load_dataset(str(tmp_path / "neg.npy"), 4, 8)
    np.save(tmp_path / "nan.npy", np.full((3, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="finite and lie in"):
        load_dataset(str(tmp_path / "nan.npy"), 4, 8)
    np.save(tmp_path / "flat.npy", np.zeros((3, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected an array"):
        load_dataset(str(tmp_path / "flat.npy"), 4, 8)
    np.save(tmp_path / "ok.npy", np.zeros((3, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="labels must be 3 integers"):
        load_dataset(str(tmp_path / "ok.npy"), 4, 8, 1, str(tmp_path / "labels.npy"))
    with pytest.raises(ValueError, match="data must be 'digits'"):
        load_dataset(str(tmp_path / "missing.npy"), 4, 8)
    with pytest.raises(ValueError, match="the digits are grey"):
        load_dataset("digits", 4, 8, 3)


def test_image_folder_with_class_subfolders(tmp_path):
    for k, name in enumerate(["cats", "dogs"]):
        (tmp_path / name).mkdir()
        for i in range(5):
            value = 100 * k + 10 * i
            Image.fromarray(np.full((6, 9, 3), value, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    train, test = load_dataset(str(tmp_path), 4, 256, 3, test_fraction=0.2)
    assert train.images.shape == (8, 3, 4, 4) and test.images.shape == (2, 3, 4, 4)
    both = ImageData(torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels]), 256, 2)
    for img, label in zip(both.images, both.labels):
        assert (img == img[0, 0, 0]).all() and int(img[0, 0, 0] >= 100) == label.item()
    grey, _ = load_dataset(str(tmp_path), 4, 16, 1, test_fraction=0.2)
    assert grey.images.shape[1] == 1 and grey.images.max() < 16
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(str(tmp_path / "empty"), 4, 16)


def test_split_errors():
    data = ImageData(torch.zeros(1, 1, 2, 2, dtype=torch.long), None, 2)
    with pytest.raises(ValueError, match="too few"):
        split(data, 0.5)
    with pytest.raises(ValueError, match="test_fraction"):
        split(data, 1.0)


def test_save_grid(tmp_path):
    images = torch.arange(5 * 3 * 2 * 2).view(5, 3, 2, 2) % 4
    path = tmp_path / "sub" / "grid.png"
    save_grid(images, 4, str(path), ncol=3, scale=2, gap=1)
    png = np.asarray(Image.open(path))
    assert png.shape == (2 * 5 + 1, 3 * 5 + 1, 3)  # 2 rows, 3 columns of 4x4 cells + gaps
    # Image 4 sits in row 1, column 1; its levels map to 0, 85, 170, 255.
    cell = png[1 + 5:1 + 5 + 4, 1 + 5:1 + 5 + 4]
    expected = (images[4].permute(1, 2, 0).repeat_interleave(2, 0).repeat_interleave(2, 1) * 85).numpy()
    assert np.array_equal(cell, expected)
    assert (png[0] == 128).all()  # gaps are grey
