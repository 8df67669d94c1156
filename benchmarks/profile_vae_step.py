"""Would a fused reparameterise + KL op pay in a VAE training step? (issue 14, point 5)

Times a full training step of genfast.models.VAE (forward, backward, Adam) and, on the
same shapes, the part a fused op would replace: z = mu + exp(logvar / 2) * eps and the
closed-form KL, forward and backward. The fraction is the most a fused op could save
(if it took no time at all).

    python benchmarks/profile_vae_step.py [--device cuda] [--size 28] [--batch 64]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from genfast.models import VAE


def timer(fn, device, reps):
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    device = args.device
    torch.manual_seed(0)
    model = VAE(hidden_channels=args.hidden, latent_dim=args.latent, image_size=args.size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (args.batch, 1, args.size, args.size), device=device)

    def step():
        loss = model.loss(x).loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    mu = torch.randn(args.batch, args.latent, device=device, requires_grad=True)
    logvar = torch.randn(args.batch, args.latent, device=device, requires_grad=True)
    upstream = torch.randn(args.batch, args.latent, device=device)

    def reparam_kl():
        z = VAE.reparameterize(mu, logvar)
        kl = VAE.kl(mu, logvar)
        torch.autograd.backward([z, kl.sum()], [upstream, None])

    for fn in (step, reparam_kl):
        timer(fn, device, 3)  # warm-up
    full, part = [], []
    for _ in range(3):  # interleaved, so that a changing machine load hits both alike
        full.append(timer(step, device, args.reps))
        part.append(timer(reparam_kl, device, args.reps))
    full, part = statistics.median(full), statistics.median(part)
    print(f"VAE step (batch {args.batch}, {args.size}x{args.size}, hidden {args.hidden}, latent "
          f"{args.latent}) on {device}: {full * 1e3:.2f} ms; reparameterise + KL forward and backward: "
          f"{part * 1e3:.3f} ms = {100 * part / full:.3g}% of the step")


if __name__ == "__main__":
    main()
