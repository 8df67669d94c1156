"""`genfast train vae` (the trainer: genfast.training.vae)."""
from __future__ import annotations

import argparse
import json
import os

import torch

from genfast.cli.common import user_errors
from genfast.metrics import importance_weighted_nll
from genfast.models.vae import AE, LIKELIHOODS, VAE
from genfast.training.vae import (VARIANTS, binarise, build_model, load_data, save_latent_space,
                                  train_vae)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `genfast train vae` (run(args) executes them)."""
    p = parser
    p.add_argument("--variant", choices=VARIANTS, default="vae")
    p.add_argument("--data", default="digits",
                   help="'digits' (embedded), 'fashion-mnist' (the Debian package dataset-fashion-mnist), "
                        "a folder of images or an .npy file (default digits)")
    p.add_argument("--size", type=int, default=28, help="image side, a multiple of 4 (default 28)")
    p.add_argument("--levels", type=int, default=256,
                   help="grey levels of the data (default 256; the Bernoulli likelihood binarises)")
    p.add_argument("--likelihood", choices=LIKELIHOODS, default="gaussian",
                   help="gaussian: discretised Gaussian over the levels; bernoulli: binarised data; "
                        "logistic-mixture: PixelCNN++'s discretised mixture of logistics")
    p.add_argument("--gaussian-std", type=float, default=None,
                   help="a fixed decoder standard deviation (intensity units; default learned)")
    p.add_argument("--num-mixtures", type=int, default=5,
                   help="components of the logistic-mixture likelihood (default 5)")
    p.add_argument("--hidden-channels", type=int, default=32)
    p.add_argument("--latent-dim", type=int, default=16, help="2 also writes latent.png")
    p.add_argument("--kernel-size", type=int, default=3)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1.0, help="beta on the KL (1: the ELBO)")
    p.add_argument("--pixel-weight", type=float, default=1.0)
    p.add_argument("--perceptual-weight", type=float, default=1.0)
    p.add_argument("--feature-weight", type=float, default=1.0, help="VAE-GAN's Dis_l term")
    p.add_argument("--gan-weight", type=float, default=0.1)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--iwae-k", type=int, default=1000,
                   help="importance samples of the final test NLL (0: skip; default 1000)")
    p.add_argument("--out", default="runs/vae", help="output folder (checkpoint.pt, PNGs, metrics.json)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh over OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")


def run(args, data_loader=None) -> int:
    """Executes `genfast train vae` from parsed arguments; data_loader(size=, levels=)
    -> (train, test) ImageData replaces --data."""
    from genfast.data import save_grid

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_data, test_data = load_data(args.data, args.size, args.levels, data_loader)
    if args.likelihood == "bernoulli":
        train_data, test_data = binarise(train_data), binarise(test_data)
    torch.manual_seed(args.seed)
    model = build_model(args.variant, image_channels=train_data.images.shape[1],
                        hidden_channels=args.hidden_channels, latent_dim=args.latent_dim,
                        kernel_size=args.kernel_size, image_size=args.size,
                        levels=train_data.levels, likelihood=args.likelihood,
                        gaussian_std=args.gaussian_std, num_mixtures=args.num_mixtures)
    os.makedirs(args.out, exist_ok=True)
    history = train_vae(model, train_data, variant=args.variant, steps=args.steps,
                        val_data=test_data, batch_size=args.batch_size, lr=args.lr,
                        kl_weight=args.kl_weight, pixel_weight=args.pixel_weight,
                        perceptual_weight=args.perceptual_weight,
                        feature_weight=args.feature_weight, gan_weight=args.gan_weight,
                        val_every=args.val_every, checkpoint=os.path.join(args.out, "checkpoint.pt"),
                        seed=args.seed, device=device, progress=not args.no_progress,
                        resume=not args.no_resume)
    model.eval()
    x = test_data.images[:10].to(device)
    save_grid(torch.cat([x, model.reconstruct(x)]).cpu(), model.levels,
              os.path.join(args.out, "reconstructions.png"), ncol=10, scale=3)
    if isinstance(model, AE):
        model.fit_prior(train_data.images.to(device))
    gen = torch.Generator().manual_seed(args.seed)
    save_grid(model.sample(40, generator=gen).cpu(), model.levels, os.path.join(args.out, "samples.png"),
              ncol=10, scale=3)
    metrics = {"variant": args.variant, "history": history}
    if model.latent_dim == 2:
        save_latent_space(model, test_data, os.path.join(args.out, "latent.png"))
    if args.iwae_k and isinstance(model, VAE):
        result = importance_weighted_nll(model, test_data.images.to(device), k=args.iwae_k,
                                         chunk=min(100, args.iwae_k), batch_size=64,
                                         generator=torch.Generator().manual_seed(args.seed))
        metrics["test_iwae"] = {"k": args.iwae_k, "nats": result.nats, "bits_per_dim": result.bits_per_dim}
        print(f"test NLL (IWAE, k={args.iwae_k}): {result.nats:.2f} nats/image, "
              f"{result.bits_per_dim:.4f} bits/dim at {model.levels} levels")
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"wrote {args.out}/checkpoint.pt, reconstructions.png, samples.png"
          + (", latent.png" if model.latent_dim == 2 else "") + ", metrics.json")
    return 0



def add_commands(commands, train_commands, sample_commands) -> None:
    from genfast.training import vae

    p = train_commands.add_parser("vae", help="a VAE or AE (variants: vae|ae|perceptual|vae-gan)",
                                  description=vae.__doc__)
    add_arguments(p)
    p.set_defaults(func=user_errors(run))
