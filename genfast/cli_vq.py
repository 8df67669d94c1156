"""`genfast train vqvae`: trains a VQ-VAE (or a two-level VQ-VAE-2 with --levels 2)
on scikit-learn's embedded 8x8 digits, resized, with a progress bar; writes an
atomic checkpoint after every epoch (--resume continues exactly), a PNG of test
images above their reconstructions, and reports codebook usage.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F


def add_commands(commands, train, sample) -> None:
    p = train.add_parser("vqvae", help="train a VQ-VAE / VQ-VAE-2 on the embedded digits")
    p.add_argument("--levels", type=int, choices=[1, 2], default=1, help="1: VQ-VAE, 2: VQ-VAE-2")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=32, help="image size (a multiple of 8 for --levels 2)")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--num-codes", type=int, default=64)
    p.add_argument("--code-dim", type=int, default=16)
    p.add_argument("--learned-codebook", action="store_true", help="a learned codebook instead of EMA")
    p.add_argument("--no-kmeans-init", dest="kmeans_init", action="store_false",
                   help="random codebook instead of k-means on the first batch")
    p.add_argument("--dead-code-threshold", type=float, default=1.0,
                   help="restart codes whose EMA count per batch falls below this (0: never)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--out", default="runs/vqvae", help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.set_defaults(func=train_vqvae)


def load_digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits' fixed (train, test) split (genfast.data) as float32 in [-1, 1]."""
    from genfast.data import load_digits as digits

    return tuple(part.images.float() * (2 / 255) - 1 for part in digits(size, levels=256))


def save_images(path: str, rows: list[torch.Tensor]) -> None:
    """Rows of as many images (N, 1, H, W) in [-1, 1] as one PNG."""
    from genfast.data import save_grid

    images = torch.cat(rows).detach().cpu()
    levels = torch.round((images.clamp(-1, 1) + 1) * 127.5).long()
    save_grid(levels, 256, path, ncol=rows[0].shape[0], scale=2)


# -- training ---------------------------------------------------------------------
MODEL_ARGS = ("levels", "size", "channels", "num_codes", "code_dim", "learned_codebook", "kmeans_init",
              "dead_code_threshold")


def build_model(args):
    from genfast.models import VQVAE, VQVAE2

    options = dict(channels=args.channels, num_codes=args.num_codes, code_dim=args.code_dim,
                   ema=not args.learned_codebook, kmeans_init=args.kmeans_init,
                   dead_code_threshold=args.dead_code_threshold)
    if args.levels == 1:
        return VQVAE(in_channels=1, downsample=2, **options)
    if args.size % 8:
        raise SystemExit(f"--levels 2 needs --size divisible by 8, got {args.size}")
    return VQVAE2(in_channels=1, **options)


def quantizers(model) -> dict:
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


def train_vqvae(args) -> int:
    from tqdm import tqdm

    from genfast.train import save_checkpoint

    if args.epochs < 1 or args.batch_size < 1 or args.size < 4 or args.size % 4:
        raise SystemExit("need --epochs >= 1, --batch-size >= 1 and --size a positive multiple of 4")
    os.makedirs(args.out, exist_ok=True)
    checkpoint_path = os.path.join(args.out, "checkpoint.pt")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    train_images, test_images = load_digits(args.size)
    if args.limit is not None:
        train_images = train_images[:args.limit]
    train_images, test_images = train_images.to(device), test_images.to(device)
    model = build_model(args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    shuffle = torch.Generator().manual_seed(args.seed)
    config = {name: getattr(args, name) for name in MODEL_ARGS}
    first_epoch = 0
    if args.resume:
        if not os.path.exists(checkpoint_path):
            raise SystemExit(f"--resume: no checkpoint at {checkpoint_path}")
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["config"] != config:
            raise SystemExit(f"--resume: the checkpoint was trained with {state['config']}, not {config}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        first_epoch = state["epoch"] + 1
        print(f"resumed from {checkpoint_path} after epoch {first_epoch}")
    steps = (len(train_images) + args.batch_size - 1) // args.batch_size
    model.train()
    for epoch in range(first_epoch, args.epochs):
        order = torch.randperm(len(train_images), generator=shuffle).to(device)
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{args.epochs}", unit="step")
        for step in bar:
            batch = train_images[order[step * args.batch_size:(step + 1) * args.batch_size]]
            loss, out = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            perplexity = {f"{name} ppl": f"{vq.perplexity.item():.1f}" for name, vq in level_outputs(out).items()}
            bar.set_postfix(loss=f"{loss.item():.4f}", **perplexity)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "config": config, "shuffle_rng": shuffle.get_state(), "torch_rng": torch.get_rng_state()}
        if device.type == "cuda":  # dead-code restarts draw on the device's generator
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        save_checkpoint(checkpoint_path, state)
    mse, usage = evaluate(model, test_images, args.batch_size)
    print(f"test reconstruction MSE {mse:.4f} (images in [-1, 1])")
    for name, (used, total, perplexity) in usage.items():
        print(f"codebook usage ({name}): {used}/{total} codes used on the test set "
              f"({100 * used / total:.0f}%), perplexity {perplexity:.1f}")
    model.eval()
    with torch.no_grad():
        shown = test_images[:12]
        reconstruction = model(shown).reconstruction
    png = os.path.join(args.out, "reconstructions.png")
    save_images(png, [shown, reconstruction])
    print(f"wrote {png} (top: test images, bottom: reconstructions) and {checkpoint_path}")
    return 0
