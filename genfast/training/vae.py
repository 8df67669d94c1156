"""Training of the VAE family (genfast.models.VAE / AE) in four variants:

- "vae": the negative ELBO, reconstruction NLL + KL (Kingma & Welling 2014).
- "ae": the autoencoder's reconstruction NLL.
- "perceptual": the VAE with a feature-space reconstruction term added:
  perceptual_weight * sum ||F(x) - F(x_hat)||^2 over the feature maps of a frozen feature
  network F (any module returning a tensor or a list of tensors; by default a fixed,
  randomly initialised two-layer conv net, a stand-in until an LPIPS network is in
  genfast), x_hat the decoded mean.
- "vae-gan" (Larsen et al. 2016): a discriminator D is trained with
  genfast.losses.gan_loss on real images against reconstructions and prior samples;
  the VAE gets KL + feature_weight * ||Dis_l(x) - Dis_l(x_hat)||^2 (D's last hidden
  layer as the reconstruction space) + gan_weight * the generator's GAN loss on both.
  Simplification: encoder and decoder share one optimiser and one loss (the paper
  routes Dis_l to both, the GAN term to the decoder only).
In every variant the pixel reconstruction NLL is kept with weight pixel_weight
(default 1), so the decoder's likelihood stays trained and the importance-weighted
NLL stays meaningful; pixel_weight=0 gives the pure feature-space losses.

Checkpoints (genfast.training.checkpoint: atomic, kind "vae") hold the models, optimisers, step,
RNG state and history; data order is genfast.train.batch_indices(seed, step), so a
resumed run takes exactly the steps of an uninterrupted one.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genfast.data import ImageData
from genfast.losses import gan_loss
from genfast.metrics import bits_per_dim
from genfast.models.vae import AE, VAE
from genfast.training.autoregressive import batch_indices, check_finite_loss, learning_rate
from genfast.training.checkpoint import (CheckpointError, check_config, load_checkpoint, restoring,
                                         save_checkpoint)

VARIANTS = ("vae", "ae", "perceptual", "vae-gan")
CHECKPOINT_FORMAT = "genfast-vae-1"


class RandomFeatures(nn.Module):
    """A frozen conv net with fixed random weights (seeded): the default feature space
    of the perceptual variant. Returns its two ReLU feature maps."""

    def __init__(self, image_channels: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(image_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        for conv in (self.conv1, self.conv2):
            fan_in = conv.weight[0].numel()
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2 / fan_in))
                conv.bias.zero_()
        self.requires_grad_(False)

    def forward(self, x):
        a = F.relu(self.conv1(x))
        return [a, F.relu(self.conv2(a))]


class Discriminator(nn.Module):
    """DCGAN-style critic; features(x) is Dis_l, the last hidden layer (VAE-GAN's
    reconstruction space)."""

    def __init__(self, image_channels: int, image_size: tuple[int, int], hidden_channels: int = 32):
        super().__init__()
        h, w = image_size
        self.body = nn.Sequential(
            nn.Conv2d(image_channels, hidden_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden_channels, 2 * hidden_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.head = nn.Linear(2 * hidden_channels * (h // 4) * (w // 4), 1)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))[:, 0]


def _feature_distance(features, a, b) -> torch.Tensor:
    """sum over feature maps of ||F(a) - F(b)||^2 per image (N,)."""
    fa, fb = features(a), features(b)
    if isinstance(fa, torch.Tensor):
        fa, fb = [fa], [fb]
    return sum((p - q).square().flatten(1).sum(1) for p, q in zip(fa, fb))


def build_model(variant: str, **config) -> VAE | AE:
    if variant not in VARIANTS:
        raise ValueError(f"train_vae: variant must be one of {VARIANTS}, got {variant!r}")
    return (AE if variant == "ae" else VAE)(**config)


def _config_key(model) -> dict:
    return dict(model.config)


@torch.no_grad()
def evaluate(model, data: ImageData, *, batch_size: int = 256, device=None) -> dict:
    """Mean negative ELBO (AE: reconstruction NLL) per image in nats, its parts, and the
    bound in bits/dim, over all of `data` (one posterior sample per image)."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        terms = model.loss(data.images[start:start + batch_size].to(device))
        sums += torch.stack([t.sum().double().cpu() for t in terms])
    model.train(was)
    loss, rec, kl = (sums / len(data)).tolist()
    return {"loss": loss, "reconstruction": rec, "kl": kl, "bpd": bits_per_dim(loss, model.dims)}


def train_vae(model: VAE | AE, train_data: ImageData, *, variant: str = "vae", steps: int,
              val_data: ImageData | None = None, batch_size: int = 64, lr: float = 1e-3,
              kl_weight: float = 1.0, pixel_weight: float = 1.0, perceptual_weight: float = 1.0,
              feature_weight: float = 1.0, gan_weight: float = 0.1, disc_lr: float | None = None,
              feature_network: nn.Module | None = None, grad_clip: float | None = 1.0,
              val_every: int = 200, checkpoint: str | None = None, seed: int = 0, device=None,
              progress: bool = True, resume: bool = True, desc: str | None = None) -> list[dict]:
    """Trains `model` for `steps` steps of `batch_size` images and returns the history,
    one dict per validation: {"step", "train_loss" (the variant's objective, mean per
    image since the previous entry), and with val_data "val_loss", "val_reconstruction",
    "val_kl" (nats per image) and "val_bpd" (the negative ELBO in bits/dim)}.

    kl_weight: beta on the KL term (1: the ELBO). See the module docstring for the
    variants' weights. checkpoint: written every val_every steps and at the end; with
    resume an existing one is continued (same variant, configuration, seed, batch size).
    """
    if variant not in VARIANTS:
        raise ValueError(f"train_vae: variant must be one of {VARIANTS}, got {variant!r}")
    if (variant == "ae") != isinstance(model, AE):
        raise ValueError(f"train_vae: variant {variant!r} needs "
                         f"{'an AE' if variant == 'ae' else 'a VAE'}, got {type(model).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("val_every", val_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"train_vae: {name} must be a positive int, got {value!r}")
    for name, value in (("lr", lr), ("kl_weight", kl_weight), ("pixel_weight", pixel_weight),
                        ("perceptual_weight", perceptual_weight), ("feature_weight", feature_weight),
                        ("gan_weight", gan_weight)):
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"train_vae: {name} must be a finite number >= 0, got {value!r}")
    if lr <= 0:
        raise ValueError(f"train_vae: lr must be > 0, got {lr!r}")
    if len(train_data) < batch_size:
        raise ValueError(f"train_vae: batch_size ({batch_size}) exceeds the {len(train_data)} "
                         f"training images")
    for data, name in ((train_data, "train_data"), (val_data, "val_data")):
        if data is not None:
            if data.levels != model.levels:
                raise ValueError(f"train_vae: {name} has {data.levels} levels, the model {model.levels}")
            model.check_images(data.images[:1], f"{name} images")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    disc = disc_optimizer = None
    if variant == "vae-gan":
        torch.manual_seed(seed)
        disc = Discriminator(model.image_channels, model.image_size, model.hidden_channels).to(device)
        disc_optimizer = torch.optim.Adam(disc.parameters(), lr=disc_lr or lr, betas=(0.5, 0.999))
    if variant == "perceptual":
        feature_network = (feature_network or RandomFeatures(model.image_channels, seed)).to(device)
        feature_network.requires_grad_(False).eval()

    start, history = 0, []
    if checkpoint and resume and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, kind="vae", map_location=device,
                                required=("format", "model_config", "model", "optimizer", "step"))
        if state["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{checkpoint} is not a checkpoint of genfast's VAE trainer "
                                  f"(format {state['format']!r})")
        mine = {"variant": variant, "model_config": _config_key(model), "seed": seed,
                "batch_size": batch_size}
        check_config(checkpoint, {key: state.get(key) for key in mine}, mine)
        with restoring(checkpoint):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if disc is not None:
                disc.load_state_dict(state["disc"])
                disc_optimizer.load_state_dict(state["disc_optimizer"])
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if state["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        start, history = state["step"], list(state["history"])

    def snapshot(step):
        return {"format": CHECKPOINT_FORMAT, "variant": variant, "model_config": _config_key(model),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "disc": disc.state_dict() if disc is not None else None,
                "disc_optimizer": disc_optimizer.state_dict() if disc is not None else None,
                "step": step, "seed": seed, "batch_size": batch_size, "history": history,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    bar = tqdm(total=steps, initial=start, desc=desc or f"train {variant}", disable=not progress,
               dynamic_ncols=True)
    since, count = 0.0, 0
    for step in range(start, steps):
        x = train_data.images[batch_indices(len(train_data), batch_size, seed, step)].to(device)
        rate = learning_rate(step, steps, lr)
        for group in optimizer.param_groups:
            group["lr"] = rate
        terms, out = model.loss(x, return_output=True)
        objective = pixel_weight * terms.reconstruction + kl_weight * terms.kl
        if variant == "perceptual":
            objective = objective + perceptual_weight * _feature_distance(
                feature_network, model._inputs(x), model.feature_images(out))
        if variant == "vae-gan":
            real = model._inputs(x)
            recon = model.feature_images(out)
            z = torch.randn(x.shape[0], model.latent_dim, device=device)
            prior = model.feature_images(model.decode(z))
            objective = objective + feature_weight * _feature_distance(disc.features, real, recon)
            fake_logits = disc(torch.cat([recon, prior]))
            loss = objective.mean() + gan_weight * gan_loss(None, fake_logits, target="g")
        else:
            loss = objective.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if variant == "vae-gan":
            for group in disc_optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, disc_lr or lr)
            d_loss = gan_loss(disc(real), disc(torch.cat([recon, prior]).detach()), target="d")
            disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_optimizer.step()
        value = loss.item()
        check_finite_loss("train_vae", value, step, lr)
        since, count = since + value, count + 1
        bar.set_postfix(loss=f"{value:.2f}", refresh=False)
        bar.update(1)
        done = step + 1
        if done % val_every == 0 or done == steps:
            entry = {"step": done, "train_loss": since / count}
            if val_data is not None:
                val = evaluate(model, val_data, device=device)
                entry.update({f"val_{key}": value for key, value in val.items()})
                bar.write(f"step {done}: validation -ELBO {val['loss']:.2f} nats/image "
                          f"({val['bpd']:.4f} bits/dim), KL {val['kl']:.2f}")
            history.append(entry)
            since, count = 0.0, 0
            if checkpoint:
                save_checkpoint(checkpoint, snapshot(done), kind="vae")
    bar.close()
    return history


def load_vae(path: str, map_location="cpu") -> VAE | AE:
    """The model of a train_vae checkpoint, in eval mode."""
    state = load_checkpoint(path, kind="vae", map_location=map_location,
                            required=("format", "variant", "model_config", "model"))
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of genfast's VAE trainer "
                              f"(format {state['format']!r})")
    with restoring(path):
        config = dict(state["model_config"])
        config["image_size"] = tuple(config["image_size"])
        model = build_model(state["variant"], **config)
        model.load_state_dict(state["model"])
    return model.eval()


# -- pictures ---------------------------------------------------------------------
@torch.no_grad()
def save_latent_space(model: VAE | AE, data: ImageData, path: str, *, grid: int = 15,
                      extent: float = 3.0) -> None:
    """The lecture's figure for a 2-D latent space: left, the decoded means over a
    grid x grid lattice of [-extent, extent]^2; right, the posterior means (AE: codes)
    of `data`, coloured by label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if model.latent_dim != 2:
        raise ValueError(f"save_latent_space: the latent space must be 2-D, got latent_dim "
                         f"{model.latent_dim}")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    axis = torch.linspace(-extent, extent, grid)
    zy, zx = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    z = torch.stack([zx.flatten(), zy.flatten()], 1).to(device)
    means = model.decoded_mean(model.decode(z)).cpu()              # (grid^2, C, H, W)
    c, h, w = means.shape[1:]
    canvas = means.view(grid, grid, c, h, w).permute(0, 3, 1, 4, 2).reshape(grid * h, grid * w, c)
    codes = []
    for start in range(0, len(data), 256):
        enc = model.encode(data.images[start:start + 256].to(device))
        codes.append((enc[0] if isinstance(enc, tuple) else enc).cpu())
    codes = torch.cat(codes)
    model.train(was)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 6))
    left.imshow((canvas[..., 0] if c == 1 else canvas).numpy(), cmap="gray" if c == 1 else None,
                extent=(-extent, extent, -extent, extent), vmin=0, vmax=1)
    left.set_title("decoded means over the latent plane")
    left.set_xlabel("z1")
    left.set_ylabel("z2")
    labels = data.labels if data.labels is not None else torch.zeros(len(codes), dtype=torch.long)
    points = right.scatter(codes[:, 0].numpy(), codes[:, 1].numpy(), c=labels.numpy(), cmap="tab10", s=6)
    if data.labels is not None:
        fig.colorbar(points, ax=right, label="label")
    right.set_xlim(-extent, extent)
    right.set_ylim(-extent, extent)
    right.set_title("test codes (posterior means)")
    right.set_xlabel("z1")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- command line -------------------------------------------------------------------
def load_data(source: str, size: int, levels: int, data_loader=None) -> tuple[ImageData, ImageData]:
    """(train, test): data_loader(size=, levels=) when given, else genfast.data.load_dataset's
    source ("digits", "fashion-mnist", a folder of images or a .npy file)."""
    if data_loader is not None:
        return data_loader(size=size, levels=levels)
    from genfast.data import load_dataset

    return load_dataset(source, size, levels)


def binarise(data: ImageData) -> ImageData:
    return ImageData((data.images * 2 >= data.levels).long(), data.labels, 2, data.num_classes, data.cond)


__all__ = ["Discriminator", "RandomFeatures", "VARIANTS", "build_model", "evaluate",
           "binarise", "load_data", "load_vae", "save_latent_space", "train_vae"]
