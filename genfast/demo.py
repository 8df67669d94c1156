"""`genfast demo`, the main job: a class-conditional Gated PixelCNN trained on the
embedded digits, then digits sampled (cached and naive, the same images) and test
digits' bottom halves completed, saved as PNGs."""
from __future__ import annotations

import dataclasses
import os
import time

import torch

# A model small enough to train and sample naively in about a minute on 2 cores.
DEMO_SIZE, DEMO_LEVELS = 16, 16
DEMO_MODEL = dict(hidden_channels=32, num_layers=5, kernel_size=5)
DEMO_TRAIN = dict(batch_size=16, lr=5e-3)
DEMO_SAMPLES_PER_CLASS = 6
DEMO_COMPLETIONS = 4


def demo_threads(requested: int | None) -> str:
    """Sets torch's CPU threads for the demo; returns what was chosen and why. On a
    machine whose load already fills its cores, threads that wait for each other at
    every parallel region cost far more than they bring, so the demo then uses one."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be positive, got {requested}")
        torch.set_num_threads(requested)
        return f"{requested} CPU thread(s)"
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if cores > 1 and load >= cores:
        torch.set_num_threads(1)
        return f"1 CPU thread (the machine is busy: load {load:.1f} on {cores} cores; --threads to override)"
    return f"{torch.get_num_threads()} CPU thread(s)"


@dataclasses.dataclass
class DemoResult:
    test_bpd: float
    levels: int
    train_seconds: float
    sample_seconds: dict  # method -> seconds
    num_samples: int
    identical: int  # digits equal under both samplers
    num_completions: int
    complete_seconds: float
    samples_png: str
    completions_png: str
    checkpoint: str


def run_demo(*, steps: int = 800, out: str = "demo-out", device="cpu", seed: int = 0,
             progress: bool = True) -> DemoResult:
    """Trains the demo model for `steps` steps, samples and completes digits, and writes
    OUT/samples.png, OUT/completions.png and OUT/demo.pt."""
    from genfast.data import load_digits, save_grid
    from genfast.models import GatedPixelCNN
    from genfast.training.autoregressive import evaluate, train

    device = torch.device(device)
    size, levels = DEMO_SIZE, DEMO_LEVELS
    train_data, test_data = load_digits(size, levels)
    torch.manual_seed(seed)
    model = GatedPixelCNN(levels=levels, num_classes=10, image_size=size, **DEMO_MODEL).to(device)
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    checkpoint = os.path.join(out, "demo.pt")
    train(model, train_data, val_data=test_data, steps=steps, **DEMO_TRAIN,
          val_every=max(1, steps // 4), checkpoint=checkpoint, seed=seed, device=device,
          progress=progress, resume=False, desc="demo")
    train_seconds = time.perf_counter() - start
    test_bpd = evaluate(model, test_data, device=device)

    labels = torch.arange(10, device=device).repeat_interleave(DEMO_SAMPLES_PER_CLASS)
    sample_seconds = {}
    for method in ("naive", "cached"):  # the same uniforms: the same digits up to float rounding
        generator = torch.Generator(device).manual_seed(seed)
        start = time.perf_counter()
        samples = model.sample(labels.numel(), labels=labels, generator=generator, method=method)
        sample_seconds[method] = time.perf_counter() - start
        if method == "naive":
            naive_samples = samples
    same = int((samples == naive_samples).flatten(1).all(1).sum())
    samples_png = os.path.join(out, "samples.png")
    save_grid(samples, levels, samples_png, ncol=DEMO_SAMPLES_PER_CLASS)

    # One test digit per class: its top half given, the bottom half completed.
    picks = torch.stack([torch.nonzero(test_data.labels == c)[0, 0] for c in range(10)])
    originals, digit_labels = test_data.images[picks].to(device), test_data.labels[picks].to(device)
    half = size // 2
    prefix = originals[:, :, :half].repeat_interleave(DEMO_COMPLETIONS, 0)
    start = time.perf_counter()
    completions = model.sample(prefix.shape[0], labels=digit_labels.repeat_interleave(DEMO_COMPLETIONS),
                               prefix=prefix, generator=generator)
    complete_seconds = time.perf_counter() - start
    given = originals.clone()
    given[:, :, half:] = levels // 2  # grey: the unknown half
    rows = torch.cat([originals[:, None], given[:, None],
                      completions.view(10, DEMO_COMPLETIONS, 1, size, size)], 1)
    completions_png = os.path.join(out, "completions.png")
    save_grid(rows.flatten(0, 1), levels, completions_png, ncol=DEMO_COMPLETIONS + 2)
    return DemoResult(test_bpd, levels, train_seconds, sample_seconds, samples.shape[0], same,
                      prefix.shape[0], complete_seconds, samples_png, completions_png, checkpoint)
