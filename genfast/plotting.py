"""Everything genfast draws, in one place: PNG grids of integer images (PIL), and the
matplotlib figures of the trainers (WGAN-GP samples and losses, WaveNet waveforms),
plus WAV files of waveforms. matplotlib is imported on first use, with the Agg
backend (no display needed).
"""
from __future__ import annotations

import math
import os
import wave

import numpy as np
import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(images: torch.Tensor, levels: int, path: str, ncol: int, scale: int = 4,
              gap: int = 1) -> None:
    """Saves integer images (N, C, H, W) as one PNG: rows of ncol cells, each pixel
    scaled up `scale` times, `gap` grey pixels between cells."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = -(-n // ncol)
    values = (images.detach().cpu().float() * (255.0 / (levels - 1))).round().to(torch.uint8)
    cell_h, cell_w = h * scale + gap, w * scale + gap
    canvas = torch.full((c, nrow * cell_h + gap, ncol * cell_w + gap), 128, dtype=torch.uint8)
    big = values.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = gap + r * cell_h, gap + q * cell_w
        canvas[:, y:y + h * scale, x:x + w * scale] = big[k]
    array = canvas.permute(1, 2, 0).numpy()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(array[..., 0] if c == 1 else array).save(path)


def save_unit_rows(path: str, rows: list[torch.Tensor], scale: int = 2) -> None:
    """Rows of as many images (N, 1, H, W) with values in [-1, 1] as one PNG grid."""
    images = torch.cat(rows).detach().cpu()
    levels = torch.round((images.clamp(-1, 1) + 1) * 127.5).long()
    save_grid(levels, 256, path, ncol=rows[0].shape[0], scale=scale)


def plot_points(path: str, fake: torch.Tensor, real: torch.Tensor, title: str) -> None:
    """A scatter plot of 2-D samples (generated in blue over real in orange) on [-2, 2]^2."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(real[:, 0], real[:, 1], s=4, c="tab:orange", label="real")
    ax.scatter(fake[:, 0], fake[:, 1], s=4, c="tab:blue", alpha=0.5, label="generated")
    ax.set(xlim=(-2, 2), ylim=(-2, 2), aspect="equal", title=title)
    ax.legend(loc="upper right")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_image_grid(path: str, images: torch.Tensor, title: str) -> None:
    """A near-square grid of 16x16 images (N, 1, 16, 16) in [-1, 1], as a figure."""
    plt = _pyplot()
    cols = int(math.ceil(math.sqrt(len(images))))
    rows = int(math.ceil(len(images) / cols))
    grid = torch.ones(rows * 17 + 1, cols * 17 + 1)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * 17:1 + r * 17 + 16, 1 + c * 17:1 + c * 17 + 16] = (image[0] + 1) / 2
    fig, ax = plt.subplots(figsize=(6, 6 * rows / cols))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_gan_losses(history: list[dict], path: str) -> None:
    """WGAN-GP's curves per generator step: the Wasserstein estimate and critic loss,
    the penalty and mean gradient norm, the generator loss."""
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(steps, [h["wasserstein"] for h in history], label="E[D(real)] - E[D(fake)]")
    axes[0].plot(steps, [h["critic_loss"] for h in history], label="critic loss (with penalty)")
    axes[1].plot(steps, [h["gp"] for h in history], label="gradient penalty")
    axes[1].plot(steps, [h["grad_norm"] for h in history], label="mean ||grad D(x_hat)||")
    axes[2].plot(steps, [h["generator_loss"] for h in history], label="generator loss")
    for ax in axes:
        ax.set_xlabel("generator step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_waveforms(path: str, waves: np.ndarray, sample_rate: int, title: str,
                   reference: np.ndarray | None = None) -> None:
    """One row per waveform of `waves` (n, T) in [-1, 1], and `reference` (a stretch
    of training signal, in orange) below them when given."""
    plt = _pyplot()
    rows = len(waves) + (reference is not None)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.6 * rows), sharex=True, squeeze=False)
    t = np.arange(waves.shape[1]) / sample_rate
    for i, w in enumerate(waves):
        axes[i, 0].plot(t, w, lw=0.4)
        axes[i, 0].set_ylabel(f"sample {i}")
    if reference is not None:
        axes[-1, 0].plot(t[: len(reference)], reference, lw=0.4, color="tab:orange")
        axes[-1, 0].set_ylabel("training")
    for ax in axes[:, 0]:
        ax.set_ylim(-1, 1)
    axes[-1, 0].set_xlabel("seconds")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_wav(path: str, waveform: np.ndarray, sample_rate: int) -> None:
    """A mono 16-bit PCM WAV file of a waveform in [-1, 1]."""
    pcm = (np.clip(waveform, -1, 1) * 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
