"""genfast's data sets, all embedded or synthesised (no download).

Images for the autoregressive models: integer levels (N, channels, H, W) in
[0, levels), optional labels, a fixed train/test split. Sources: the embedded default
"digits" (scikit-learn's 1 797 handwritten digits, 8x8 with 17 grey levels, shipped
inside the scikit-learn package), a folder of images (one subfolder per class gives
labels), or a .npy array. Also: the digits as floats in [-1, 1] for the VQ-VAE
(`digits_unit_interval`) and the GAN (`load_digits16`), the 8-Gaussians ring of
WGAN-GP (`ring8_centers`, `sample_ring8`), and the synthetic tone/chirp signal of
WaveNet (`synthesize_signal`, `load_signal`). PNG grids: genfast.plotting.save_grid
(also importable from here).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genfast.plotting import save_grid

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The fixed split: a permutation drawn with this seed; the test set is its head.
SPLIT_SEED = 0


@dataclass
class ImageData:
    """images (N, channels, H, W) int64 in [0, levels); labels (N,) int64 in
    [0, num_classes) or None; cond (N, C, H, W) float conditioning maps or None."""

    images: torch.Tensor
    labels: torch.Tensor | None
    levels: int
    num_classes: int | None = None
    cond: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ImageData":
        pick = lambda t: None if t is None else t[index]
        return ImageData(self.images[index], pick(self.labels), self.levels, self.num_classes,
                         pick(self.cond))


def quantize(values: torch.Tensor, levels: int) -> torch.Tensor:
    """Intensities in [0, 1] -> integer levels round(v * (levels - 1)) in [0, levels)."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"quantize: levels must be an int >= 2, got {levels!r}")
    return torch.round(values.clamp(0, 1) * (levels - 1)).long()


def resize(values: torch.Tensor, size: int) -> torch.Tensor:
    """Float images (N, C, H, W) -> (N, C, size, size), bilinear (antialiased when shrinking)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"the image size must be a positive int, got {size!r}")
    if values.shape[-2:] == (size, size):
        return values
    return F.interpolate(values, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def split(data: ImageData, test_fraction: float) -> tuple[ImageData, ImageData]:
    """The fixed train/test split: a permutation seeded with SPLIT_SEED, test set first."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"split: test_fraction must lie in (0, 1), got {test_fraction!r}")
    n = len(data)
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        raise ValueError(f"split: {n} images are too few for a train and a test set")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return data.subset(perm[n_test:]), data.subset(perm[:n_test])


def load_digits(size: int = 28, levels: int = 256) -> tuple[ImageData, ImageData]:
    """scikit-learn's digits resized to size x size and quantised: (train, test), 1 500
    and 297 images with labels 0..9."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    values = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    images = quantize(resize(values, size), levels)
    data = ImageData(images, torch.from_numpy(digits.target).long(), levels, num_classes=10)
    return split(data, 297 / 1797)


def _to_unit_interval(array: np.ndarray, source: str) -> torch.Tensor:
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"{source}: integer images must lie in [0, 255], got values in "
                             f"[{array.min()}, {array.max()}]")
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise ValueError(f"{source}: float images must be finite and lie in [0, 1]")
        return torch.from_numpy(array.astype(np.float32))
    raise TypeError(f"{source}: images must be integers in [0, 255] or floats in [0, 1], "
                    f"got dtype {array.dtype}")


def load_npy(path: str, size: int, levels: int, labels_path: str | None = None) -> ImageData:
    """A .npy array (N, H, W) grey or (N, H, W, C) channels-last, integers in [0, 255] or
    floats in [0, 1]; labels_path: an optional .npy of N integer labels."""
    array = np.load(path, allow_pickle=False)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[0] == 0 or array.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: expected an array (N, H, W) or (N, H, W, C) with C 1 or 3 "
                         f"and N > 0, got shape {array.shape}")
    values = _to_unit_interval(array, path).permute(0, 3, 1, 2)
    labels = None
    if labels_path is not None:
        raw = np.load(labels_path, allow_pickle=False)
        if raw.shape != (array.shape[0],) or not np.issubdtype(raw.dtype, np.integer) or raw.min() < 0:
            raise ValueError(f"{labels_path}: labels must be {array.shape[0]} integers >= 0, "
                             f"got shape {raw.shape} and dtype {raw.dtype}")
        labels = torch.from_numpy(raw).long()
    return ImageData(quantize(resize(values, size), levels), labels, levels,
                     None if labels is None else int(labels.max()) + 1)


def load_image_folder(path: str, size: int, levels: int, channels: int = 1) -> ImageData:
    """Every image in `path` (or, with one subfolder per class, in its subfolders, which
    give the labels in sorted order), converted to grey (channels=1) or RGB (3)."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"load_image_folder: channels must be 1 or 3, got {channels!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"the image size must be a positive int, got {size!r}")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    entries = [(os.path.join(path, c), i) for i, c in enumerate(classes)] or [(path, None)]
    images, labels = [], []
    for folder, label in entries:
        for name in sorted(os.listdir(folder)):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            with Image.open(os.path.join(folder, name)) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize(
                    (size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(img, dtype=np.uint8).reshape(size, size, channels))
            labels.append(label)
    if not images:
        raise ValueError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    values = _to_unit_interval(np.stack(images), path).permute(0, 3, 1, 2)
    has_labels = bool(classes)
    return ImageData(quantize(values, levels), torch.tensor(labels) if has_labels else None,
                     levels, len(classes) if has_labels else None)


def load_dataset(source: str, size: int, levels: int, channels: int = 1,
                 labels_path: str | None = None, test_fraction: float = 0.1
                 ) -> tuple[ImageData, ImageData]:
    """(train, test) from "digits" or "fashion-mnist" (each its own fixed split), a
    folder of images or a .npy."""
    if source in ("digits", "fashion-mnist"):
        if channels != 1:
            raise ValueError(f"the {source.replace('-', ' ')} are grey: channels must be 1, got "
                             f"{channels}")
        if source == "digits":
            return load_digits(size, levels)
        return (load_fashion_mnist(split="train", size=size, levels=levels),
                load_fashion_mnist(split="test", size=size, levels=levels))
    if os.path.isdir(source):
        data = load_image_folder(source, size, levels, channels)
    elif source.endswith(".npy") and os.path.isfile(source):
        data = load_npy(source, size, levels, labels_path)
        if data.images.shape[1] != channels:
            raise ValueError(f"{source} has {data.images.shape[1]} channels, expected {channels}")
    else:
        raise ValueError(f"data must be 'digits', 'fashion-mnist', a folder of images or a .npy file, "
                         f"got {source!r}")
    return split(data, test_fraction)


def digits_unit_interval(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The digits' fixed [train, test] split (load_digits) at size x size: (images as
    float32 in [-1, 1], labels) each."""
    return [(part.images.float() * (2 / 255) - 1, part.labels) for part in load_digits(size, levels=256)]


def load_digits16() -> torch.Tensor:
    """scikit-learn's 1797 8x8 digits (shipped with the package), bilinearly
    upsampled to 16x16 and scaled to [-1, 1]: (1797, 1, 16, 16)."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = torch.tensor(sklearn_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1


# -- the 8-Gaussians ring of WGAN-GP (Gulrajani et al. 2017's toy code) -----------------
RING_MODES = 8
RING_RADIUS = 2.0 / 1.414  # the toy code's 8 Gaussians: radius 2, std 0.02, all divided by 1.414
RING_STD = 0.02 / 1.414


def ring8_centers() -> torch.Tensor:
    angles = torch.arange(RING_MODES, dtype=torch.float64) * (2 * math.pi / RING_MODES)
    return (RING_RADIUS * torch.stack([angles.cos(), angles.sin()], 1)).float()


def sample_ring8(n: int, gen: torch.Generator) -> torch.Tensor:
    """n points (n, 2) of the ring: a mode drawn uniformly, plus Gaussian noise."""
    mode = torch.randint(RING_MODES, (n,), generator=gen)
    return ring8_centers()[mode] + RING_STD * torch.randn(n, 2, generator=gen)


# -- the synthetic signal of WaveNet ------------------------------------------------------
SAMPLE_RATE = 4000


def synthesize_signal(seconds: float, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A float32 waveform in [-1, 1]: a sequence of events 0.15 to 0.6 s long, each a
    note (fundamental 110 to 660 Hz with 1 to 3 harmonics) or a linear chirp, under an
    attack/decay envelope, plus white noise at -54 dB. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    total = int(seconds * sample_rate)
    out = np.zeros(total, dtype=np.float64)
    pos = 0
    while pos < total:
        n = int(rng.uniform(0.15, 0.6) * sample_rate)
        t = np.arange(n) / sample_rate
        if rng.random() < 0.7:
            f0 = 110.0 * 2 ** (rng.integers(0, 32) / 12)  # a semitone of A2 .. E5
            event = sum(0.6 ** h * np.sin(2 * np.pi * f0 * (h + 1) * t + rng.uniform(0, 2 * np.pi))
                        for h in range(rng.integers(1, 4)))
        else:
            f0, f1 = rng.uniform(100, 900, size=2)
            event = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
        attack = min(n, int(0.01 * sample_rate))
        envelope = np.exp(-t * rng.uniform(1, 6))
        envelope[:attack] *= np.linspace(0, 1, attack)
        chunk = rng.uniform(0.3, 0.9) * event * envelope
        out[pos: pos + n] += chunk[: total - pos]
        pos += n
    out += 0.002 * rng.standard_normal(total)
    return (0.95 * out / np.abs(out).max()).astype(np.float32)


def load_signal(seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic signal mu-law quantised to 256 levels: (train, validation), int64
    1-D, the first 90% and the last 10%."""
    from genfast.models.wavenet import mu_law_encode

    levels = mu_law_encode(torch.from_numpy(synthesize_signal(seconds, seed=seed)))
    cut = int(0.9 * len(levels))
    return levels[:cut], levels[cut:]


# --- Fashion-MNIST (Xiao et al. 2017): the original IDX files -----------------------

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
# Where the Debian/Ubuntu package installs the four gzipped IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or raw (told apart by the gzip magic
    bytes), as a numpy array of its shape and type."""
    import gzip

    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX shape {shape} needs {expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _fashion_mnist_file(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}; install the Debian/Ubuntu package "
        f"{FASHION_MNIST_PACKAGE} (apt-get install {FASHION_MNIST_PACKAGE}, files in {FASHION_MNIST_DIR}) "
        f"or pass root=<folder with the original IDX files>")


def load_fashion_mnist(root: str | None = None, split: str = "train", size: int = 28, levels: int = 256,
                       limit: int | None = None) -> ImageData:
    """Fashion-MNIST's fixed split ("train": 60 000 images, "test": 10 000), 28x28 grey,
    labels 0..9 (FASHION_MNIST_CLASSES), read from the original IDX files (gzipped or
    raw) in `root` (default: where the package dataset-fashion-mnist installs them);
    resized to size x size and quantised like load_digits (levels=256 at 28x28 keeps
    the bytes exactly). limit: only the first `limit` images of the split."""
    if split not in ("train", "test"):
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"load_fashion_mnist: limit must be a positive int or None, got {limit!r}")
    root = FASHION_MNIST_DIR if root is None else root
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Fashion-MNIST folder {root} does not exist; install the Debian/Ubuntu package "
            f"{FASHION_MNIST_PACKAGE} (apt-get install {FASHION_MNIST_PACKAGE}) or pass root=<folder with "
            f"the original IDX files>")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_fashion_mnist_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_fashion_mnist_file(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split} files in {root}: images {images.shape} and labels "
                         f"{labels.shape} do not match (expected (N, H, W) and (N,))")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    values = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) / 255.0
    return ImageData(quantize(resize(values, size), levels), torch.from_numpy(labels.astype(np.int64)), levels,
                     num_classes=10)


__all__ = ["FASHION_MNIST_CLASSES", "IMAGE_EXTENSIONS", "ImageData", "RING_MODES", "RING_RADIUS",
           "RING_STD", "SAMPLE_RATE", "SPLIT_SEED", "digits_unit_interval", "load_dataset",
           "load_digits", "load_digits16", "load_fashion_mnist", "load_image_folder", "load_npy",
           "load_signal", "quantize", "read_idx", "resize", "ring8_centers", "sample_ring8",
           "save_grid", "split", "synthesize_signal"]
