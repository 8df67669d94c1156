"""The VQ-VAE trainer of `genfast train vqvae` and the prior trainer of `genfast train
prior`, with the two-stage sampling of `genfast sample vqvae`.

train_vqvae fits a VQ-VAE (or a two-level VQ-VAE-2 with levels=2) on scikit-learn's
embedded 8x8 digits, resized, with a progress bar; it writes an atomic checkpoint
after every epoch (resume=True continues exactly), a PNG of test images above their
reconstructions, and measures codebook usage.

train_priors encodes the digits with a trained VQ-VAE once and fits a
class-conditional prior over its code maps with genfast.train -- a Gated PixelCNN or a
CodeTransformer (for a VQ-VAE-2, in one run, the top prior and then the bottom prior,
which also sees the top codes: upsampled code vectors for the Gated PixelCNN, the codes
as a prefix for the transformer); sample_images draws codes from the prior(s) and
decodes them.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable

import torch
import torch.nn.functional as F

from genfast.data import ImageData, digits_unit_interval
from genfast.plotting import save_unit_rows
from genfast.training.checkpoint import (CheckpointError, check_config, load_checkpoint, restoring,
                                         save_checkpoint)

CHECKPOINT_KIND = "vqvae"
# The settings a VQ-VAE checkpoint records as its "config": the command line's names
# (channels: the model's hidden_channels).
MODEL_ARGS = ("levels", "size", "channels", "num_codes", "code_dim", "learned_codebook", "kmeans_init",
              "dead_code_threshold")
CHECKPOINT_KEYS = ("config", "model", "optimizer", "epoch", "shuffle_rng", "torch_rng")

Log = Callable[[str], None] | None


def _log(log: Log, message: str) -> None:
    if log is not None:
        log(message)


# -- the VQ-VAE ---------------------------------------------------------------------
def build_vqvae(config: dict):
    """The VQVAE (levels 1) or VQVAE2 (levels 2) of a config with the MODEL_ARGS keys."""
    from genfast.models import VQVAE, VQVAE2

    options = dict(hidden_channels=config["channels"], num_codes=config["num_codes"],
                   code_dim=config["code_dim"], ema=not config["learned_codebook"],
                   kmeans_init=config["kmeans_init"], dead_code_threshold=config["dead_code_threshold"])
    if config["levels"] == 1:
        return VQVAE(image_channels=1, downsample=2, **options)
    if config["size"] % 8:
        raise ValueError(f"--levels 2 needs --size divisible by 8, got {config['size']}")
    return VQVAE2(image_channels=1, **options)


def quantizers(model) -> dict:
    """The model's quantizers by level name: "codes", or "top" and "bottom"."""
    if hasattr(model, "quantizer"):
        return {"codes": model.quantizer}
    return {"top": model.quantizer_top, "bottom": model.quantizer_bottom}


def level_outputs(out) -> dict:
    return {"codes": out.vq} if hasattr(out, "vq") else {"top": out.top, "bottom": out.bottom}


@torch.no_grad()
def evaluate(model, images: torch.Tensor, batch_size: int) -> tuple[float, dict]:
    """Test MSE, and per level: codes used, their share and the perplexity of usage."""
    model.eval()
    counts = {name: torch.zeros(q.num_codes, dtype=torch.long) for name, q in quantizers(model).items()}
    squared_error = 0.0
    for batch in images.split(batch_size):
        out = model(batch)
        squared_error += F.mse_loss(out.reconstruction, batch, reduction="sum").item()
        for name, vq in level_outputs(out).items():
            counts[name] += torch.bincount(vq.indices.flatten().cpu(), minlength=len(counts[name]))
    usage = {}
    for name, c in counts.items():
        p = c.double() / c.sum()
        perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        usage[name] = (int((c > 0).sum()), len(c), perplexity)
    model.train()
    return squared_error / images.numel(), usage


@dataclasses.dataclass
class VQVAERun:
    """What train_vqvae returns: the model, the test MSE, codebook usage per level
    (codes used, codebook size, perplexity) and the files written."""

    model: torch.nn.Module
    mse: float
    usage: dict
    checkpoint: str
    reconstructions: str


def train_vqvae(config: dict, out: str, *, epochs: int, batch_size: int = 64, lr: float = 2e-3,
                limit: int | None = None, device="cpu", seed: int = 0, resume: bool = False,
                progress: bool = True, log: Log = None) -> VQVAERun:
    """Trains (or, with resume, continues from OUT/checkpoint.pt) a VQ-VAE described by
    `config` (the MODEL_ARGS) on the digits at config["size"]."""
    from tqdm import tqdm

    missing = [name for name in MODEL_ARGS if name not in config]
    if missing:
        raise ValueError(f"train_vqvae: config lacks {missing}")
    config = {name: config[name] for name in MODEL_ARGS}
    size = config["size"]
    if epochs < 1 or batch_size < 1 or size < 4 or size % 4:
        raise ValueError("need --epochs >= 1, --batch-size >= 1 and --size a positive multiple of 4")
    checkpoint_path = os.path.join(out, "checkpoint.pt")
    device = torch.device(device)
    state = None
    if resume:  # read (and check) before anything is written
        if not os.path.exists(checkpoint_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
        state = load_checkpoint(checkpoint_path, kind=CHECKPOINT_KIND, required=CHECKPOINT_KEYS,
                                map_location=device)
        check_config(checkpoint_path, state["config"], config)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    (train_images, _), (test_images, _) = digits_unit_interval(size)
    if limit is not None:
        train_images = train_images[:limit]
    train_images, test_images = train_images.to(device), test_images.to(device)
    model = build_vqvae(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    first_epoch = 0
    if state is not None:
        with restoring(checkpoint_path):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            shuffle.set_state(state["shuffle_rng"])
            torch.set_rng_state(state["torch_rng"].cpu())
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            first_epoch = int(state["epoch"]) + 1
        _log(log, f"resumed from {checkpoint_path} after epoch {first_epoch}")
    steps = (len(train_images) + batch_size - 1) // batch_size
    model.train()
    for epoch in range(first_epoch, epochs):
        order = torch.randperm(len(train_images), generator=shuffle).to(device)
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not progress)
        for step in bar:
            batch = train_images[order[step * batch_size:(step + 1) * batch_size]]
            loss, outputs = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            perplexity = {f"{name} ppl": f"{vq.perplexity.item():.1f}" for name, vq in level_outputs(outputs).items()}
            bar.set_postfix(loss=f"{loss.item():.4f}", **perplexity)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "config": config, "shuffle_rng": shuffle.get_state(), "torch_rng": torch.get_rng_state()}
        if device.type == "cuda":  # dead-code restarts draw on the device's generator
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        save_checkpoint(checkpoint_path, state, kind=CHECKPOINT_KIND)
    mse, usage = evaluate(model, test_images, batch_size)
    model.eval()
    with torch.no_grad():
        shown = test_images[:12]
        reconstruction = model(shown).reconstruction
    png = os.path.join(out, "reconstructions.png")
    save_unit_rows(png, [shown, reconstruction])
    return VQVAERun(model, mse, usage, checkpoint_path, png)


def load_vqvae(path: str, device: torch.device):
    """The model of a `genfast train vqvae` checkpoint, in eval mode, and its config."""
    state = load_checkpoint(path, kind=CHECKPOINT_KIND, required=("config", "model"),
                            map_location=device)
    if not isinstance(state["config"], dict) or not set(MODEL_ARGS) <= set(state["config"]):
        raise CheckpointError(f"{path} is not a checkpoint of `genfast train vqvae`: its config "
                              f"lacks some of {', '.join(MODEL_ARGS)}")
    with restoring(path):
        model = build_vqvae(state["config"]).to(device)
        model.load_state_dict(state["model"])
    return model.eval(), state["config"]


def load_tokenizer(path: str, device: torch.device) -> tuple:
    """The VQ tokenizer of a `genfast train vqvae` or `genfast train vqgan` checkpoint
    (eval mode), its image size and its data set's name: (model, size, data). The
    priors of `genfast train prior` are fitted over either's codes (VQGAN's stage 2)."""
    try:
        model, config = load_vqvae(path, device)
        return model, config["size"], "digits"
    except CheckpointError as error:
        if error.saved_kind != "vqgan":
            raise
    from genfast.training.vqgan import load_tokenizer as load_vqgan_tokenizer

    model, config = load_vqgan_tokenizer(path, device)
    return model, config["size"], config["data"]


def unit_interval_split(data: str, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[train, test] (images in [-1, 1], labels) of a data set at size x size."""
    if data == "digits":
        return digits_unit_interval(size)
    from genfast.data import load_dataset

    return [(part.images.float() * (2 / 255) - 1, part.labels) for part in load_dataset(data, size, 256)]


# -- the prior over codes: `genfast train prior`, `genfast sample vqvae` -------------
# One class-conditional Gated PixelCNN per code level, checkpointed in the prior folder
# as prior-<level>.pt (levels as in `quantizers`: "codes", or "top" then "bottom"). The
# bottom prior also sees the top codes: their code vectors, upsampled to the bottom grid.
PRIOR_FILE = "prior-{}.pt"
NUM_CLASSES = 10  # the digits


def top_condition(vqvae, top: torch.Tensor) -> torch.Tensor:
    """The bottom prior's conditioning map: the top codes (N, h, w) as code vectors,
    upsampled (nearest) to the bottom grid (N, code_dim, 2h, 2w)."""
    return F.interpolate(vqvae.quantizer_top.codes_to_vectors(top), scale_factor=2, mode="nearest")


@torch.no_grad()
def code_data(vqvae, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> dict:
    """Per level, the code maps of `images` as ImageData (N, 1, h, w) with the labels."""
    names = list(quantizers(vqvae))
    parts = [vqvae.encode(batch) for batch in images.split(batch_size)]
    parts = [part if isinstance(part, tuple) else (part,) for part in parts]
    data = {name: ImageData(torch.cat([p[k] for p in parts])[:, None], labels,
                            quantizers(vqvae)[name].num_codes, NUM_CLASSES)
            for k, name in enumerate(names)}
    if "bottom" in data:
        data["bottom"].cond = top_condition(vqvae, data["top"].images[:, 0])
    return data


PRIORS = ("gated-pixelcnn", "transformer")  # `genfast train prior --prior`


def build_prior(vqvae, name: str, grid: tuple[int, int], *, prior: str = "gated-pixelcnn", hidden: int = 64,
                layers: int = 6, kernel_size: int = 5, embedding_dim: int = 16, heads: int = 4):
    """The prior over level `name`'s codes (a grid of that size): a Gated PixelCNN (the
    bottom one conditioned on the upsampled top code vectors) or a CodeTransformer (the
    bottom one given the top codes as its prefix)."""
    from genfast.models import CodeTransformer, GatedPixelCNN

    levels = quantizers(vqvae)[name].num_codes
    if prior == "transformer":
        top = quantizers(vqvae).get("top")
        prefix = dict(prefix_length=(grid[0] // 2) * (grid[1] // 2), prefix_levels=top.num_codes) \
            if name == "bottom" else {}
        return CodeTransformer(levels=levels, image_size=grid, hidden_channels=hidden, num_layers=layers,
                               num_heads=heads, num_classes=NUM_CLASSES, **prefix)
    if prior != "gated-pixelcnn":
        raise ValueError(f"--prior must be one of {PRIORS}, got {prior!r}")
    return GatedPixelCNN(levels=levels, hidden_channels=hidden,
                         num_layers=layers, kernel_size=kernel_size,
                         num_classes=NUM_CLASSES, embedding_dim=embedding_dim, image_size=grid,
                         cond_channels=vqvae.quantizer_top.dim if name == "bottom" else 0)


def _as_prefix(codes: dict) -> None:
    """A transformer's bottom prior is given the top codes themselves (N, 1, h, w), not
    their upsampled vectors."""
    if "bottom" in codes:
        codes["bottom"].cond = codes["top"].images


def train_priors(vqvae_path: str, out: str, *, steps: int = 1000, batch_size: int = 32,
                 lr: float = 2e-3, prior: str = "gated-pixelcnn", hidden: int = 64, layers: int = 6,
                 kernel_size: int = 5, embedding_dim: int = 16, heads: int = 4, val_every: int = 200,
                 device="cpu", seed: int = 0, resume: bool = False, progress: bool = True,
                 log: Log = None) -> dict:
    """Fits one prior per code level of the VQ-VAE (or VQGAN tokenizer) checkpoint at
    vqvae_path, on the data set it was trained on, each
    checkpointed as OUT/prior-<level>.pt (the checkpoint records the prior's kind);
    returns {level: test bits per code}. prior: "gated-pixelcnn" (kernel_size,
    embedding_dim) or "transformer" (heads); hidden, layers: either's width and depth."""
    if prior not in PRIORS:
        raise ValueError(f"--prior must be one of {PRIORS}, got {prior!r}")
    from genfast.training import autoregressive

    device = torch.device(device)
    vqvae, size, data = load_tokenizer(vqvae_path, device)
    (train_images, train_labels), (test_images, test_labels) = unit_interval_split(data, size)
    train_codes = code_data(vqvae, train_images.to(device), train_labels)
    test_codes = code_data(vqvae, test_images.to(device), test_labels)
    if prior == "transformer":
        _as_prefix(train_codes)
        _as_prefix(test_codes)
    first = os.path.join(out, PRIOR_FILE.format(next(iter(train_codes))))
    if resume and not os.path.exists(first):
        raise FileNotFoundError(f"--resume: no checkpoint at {first}")
    bits_per_code = {}
    for name, data in train_codes.items():
        grid = tuple(data.images.shape[2:])
        torch.manual_seed(seed)
        model = build_prior(vqvae, name, grid, prior=prior, hidden=hidden, layers=layers,
                            kernel_size=kernel_size, embedding_dim=embedding_dim, heads=heads).to(device)
        checkpoint = os.path.join(out, PRIOR_FILE.format(name))
        _log(log, f"{prior} prior over the {name} ({grid[0]}x{grid[1]} grid, {data.levels} codes): "
                  f"{sum(p.numel() for p in model.parameters()):,} parameters")
        autoregressive.train(model, data, val_data=test_codes[name], steps=steps, batch_size=batch_size,
                             lr=lr, val_every=val_every, checkpoint=checkpoint, seed=seed,
                             device=device, progress=progress, resume=resume, desc=f"prior {name}")
        bits = autoregressive.evaluate(model, test_codes[name], device=device)
        bits_per_code[name] = bits
        _log(log, f"test {name}: {bits:.4f} bits per code ({bits * math.log(2):.4f} nats), "
                  f"{bits * grid[0] * grid[1]:.1f} bits per image; wrote {checkpoint}")
    return bits_per_code


def load_priors(folder: str, vqvae, size: int, device: torch.device) -> dict:
    """The priors of `genfast train prior` in `folder` (Gated PixelCNNs or
    CodeTransformers, as their checkpoints record), checked against the VQ-VAE's code
    levels, sizes and grids."""
    from genfast.models import CodeTransformer, GatedPixelCNN, load_model

    grids = code_data(vqvae, torch.zeros(1, vqvae.image_channels, size, size, device=device),
                      torch.zeros(1, dtype=torch.long))
    priors = {}
    for name, codes in grids.items():
        path = os.path.join(folder, PRIOR_FILE.format(name))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--prior: no {path}; train it with `genfast train prior "
                                    f"--vqvae ... --out {folder}`")
        prior = load_model(path, map_location=device).to(device)
        want = dict(levels=codes.levels, image_size=tuple(codes.images.shape[2:]), num_classes=NUM_CLASSES)
        if isinstance(prior, CodeTransformer):
            want["prefix_length"] = grids["top"].images[0].numel() if name == "bottom" else 0
        else:
            want["cond_channels"] = codes.cond.shape[1] if name == "bottom" else 0
        got = {key: getattr(prior, key) for key in want}
        if not isinstance(prior, (GatedPixelCNN, CodeTransformer)) or got != want:
            raise CheckpointError(f"--prior: {path} models {got}, but this VQ-VAE's {name} need "
                                  f"{want}; was it trained on another VQ-VAE?")
        priors[name] = prior
    return priors


@torch.no_grad()
def sample_codes(vqvae, priors: dict, labels: torch.Tensor, temperature: float = 1.0,
                 generator: torch.Generator | None = None, top_k: int | None = None,
                 top_p: float | None = None) -> list[torch.Tensor]:
    """Code maps (n, h, w) per level drawn from the priors, the top ones first; decode
    them with vqvae.decode_codes(*codes). top_k, top_p: transformer priors only."""
    from genfast.models import CodeTransformer

    codes = []
    for name, prior in priors.items():
        if isinstance(prior, CodeTransformer):
            prefix = codes[0] if name == "bottom" else None
            codes.append(prior.sample(len(labels), labels=labels, prefix=prefix, temperature=temperature,
                                      top_k=top_k, top_p=top_p, generator=generator)[:, 0])
            continue
        if top_k is not None or top_p is not None:
            raise ValueError("--top-k and --top-p apply to transformer priors only; these priors are "
                             "Gated PixelCNNs")
        cond = top_condition(vqvae, codes[0]) if name == "bottom" else None
        codes.append(prior.sample(len(labels), labels=labels, cond=cond, temperature=temperature,
                                  generator=generator)[:, 0])
    return codes


@dataclasses.dataclass
class VQVAESamples:
    """What sample_images returns: images (n, 1, H, W) in [-1, 1], the code maps per
    level, and the seconds spent drawing codes and decoding them."""

    images: torch.Tensor
    codes: dict
    sample_seconds: float
    decode_seconds: float


def sample_images(vqvae_path: str, prior_folder: str, labels: list[int], *, temperature: float = 1.0,
                  seed: int = 0, device="cpu", top_k: int | None = None,
                  top_p: float | None = None) -> VQVAESamples:
    """Two-stage sampling: codes from the priors in prior_folder (top first), decoded by
    the tokenizer at vqvae_path; one image per entry of `labels` (classes 0-9)."""
    if not labels or not all(isinstance(x, int) and 0 <= x < NUM_CLASSES for x in labels):
        raise ValueError(f"labels must be digits 0-{NUM_CLASSES - 1}, got {labels!r}")
    device = torch.device(device)
    vqvae, size, _ = load_tokenizer(vqvae_path, device)
    priors = load_priors(prior_folder, vqvae, size, device)
    generator = torch.Generator(device).manual_seed(seed)
    start = time.perf_counter()
    codes = sample_codes(vqvae, priors, torch.tensor(labels, device=device), temperature, generator,
                         top_k=top_k, top_p=top_p)
    sample_seconds = time.perf_counter() - start
    with torch.no_grad():
        images = vqvae.decode_codes(*codes)
    decode_seconds = time.perf_counter() - start - sample_seconds
    return VQVAESamples(images, dict(zip(priors, codes)), sample_seconds, decode_seconds)
