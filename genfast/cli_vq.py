"""`genfast train vqvae`: trains a VQ-VAE (or a two-level VQ-VAE-2 with --levels 2)
on scikit-learn's embedded 8x8 digits, resized, with a progress bar; writes an
atomic checkpoint after every epoch (--resume continues exactly), a PNG of test
images above their reconstructions, and reports codebook usage.

`genfast train prior` encodes the digits with a trained VQ-VAE once and fits a
class-conditional Gated PixelCNN over its code maps with genfast.train (for a VQ-VAE-2,
in one run, the top prior and then the bottom prior, which also sees the top codes);
`genfast sample vqvae` draws codes from the prior(s) and decodes them into a PNG grid.
"""
from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn.functional as F

from genfast.cli_models import _device, _user_errors


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

    p = train.add_parser("prior", help="fit class-conditional Gated PixelCNN priors over the codes "
                                       "of a trained VQ-VAE (one per level: top, then bottom)")
    p.add_argument("--vqvae", required=True, help="a checkpoint of `genfast train vqvae`")
    p.add_argument("--out", default="runs/prior", help="folder of the prior-<level>.pt checkpoints")
    p.add_argument("--steps", type=int, default=1000, help="training steps per level (default 1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=64, help="channels per gated layer (default 64)")
    p.add_argument("--layers", type=int, default=6, help="gated layers (default 6)")
    p.add_argument("--kernel-size", type=int, default=5, help="odd, 3..11 (default 5)")
    p.add_argument("--embedding-dim", type=int, default=16, help="learned code embedding size")
    p.add_argument("--val-every", type=int, default=200, help="validate and checkpoint every N steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=train_prior)

    s = sample.add_parser("vqvae", help="sample codes from the prior(s), decode them with the VQ-VAE "
                                        "into a PNG grid")
    s.add_argument("--vqvae", required=True, help="a checkpoint of `genfast train vqvae`")
    s.add_argument("--prior", required=True, help="the --out folder of `genfast train prior`")
    s.add_argument("--n", type=int, default=40, help="images (default 40)")
    s.add_argument("--labels", default=",".join(map(str, range(NUM_CLASSES))),
                   help="digits cycled over the images, e.g. 3,7 (default 0,...,9)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    s.add_argument("--out", default="samples.png", help="PNG path (default samples.png)")
    s.set_defaults(func=sample_vqvae)


def load_digits(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The digits' fixed [train, test] split (genfast.data): (images as float32 in
    [-1, 1], labels) each."""
    from genfast.data import load_digits as digits

    return [(part.images.float() * (2 / 255) - 1, part.labels) for part in digits(size, levels=256)]


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
    (train_images, _), (test_images, _) = load_digits(args.size)
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


# -- the prior over codes: `genfast train prior`, `genfast sample vqvae` -------------
# One class-conditional Gated PixelCNN per code level, checkpointed in the prior folder
# as prior-<level>.pt (levels as in `quantizers`: "codes", or "top" then "bottom"). The
# bottom prior also sees the top codes: their code vectors, upsampled to the bottom grid.
PRIOR_FILE = "prior-{}.pt"
NUM_CLASSES = 10  # the digits
SAMPLE_COLUMNS = 10  # of the PNG grid: with the default labels, one per digit


def load_vqvae(path: str, device: torch.device):
    """The model of a `genfast train vqvae` checkpoint, in eval mode, and its config."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--vqvae: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # not a torch file, or a torn one
        raise ValueError(f"--vqvae: cannot read {path} as a checkpoint ({exc})") from None
    if not isinstance(state, dict) or not set(MODEL_ARGS) <= set(state.get("config", {})):
        raise ValueError(f"--vqvae: {path} is not a checkpoint of `genfast train vqvae`")
    model = build_model(argparse.Namespace(**state["config"])).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state["config"]


def top_condition(vqvae, top: torch.Tensor) -> torch.Tensor:
    """The bottom prior's conditioning map: the top codes (N, h, w) as code vectors,
    upsampled (nearest) to the bottom grid (N, code_dim, 2h, 2w)."""
    return F.interpolate(vqvae.quantizer_top.codes_to_vectors(top), scale_factor=2, mode="nearest")


@torch.no_grad()
def code_data(vqvae, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> dict:
    """Per level, the code maps of `images` as ImageData (N, 1, h, w) with the labels."""
    from genfast.data import ImageData

    names = list(quantizers(vqvae))
    parts = [vqvae.encode(batch) for batch in images.split(batch_size)]
    parts = [part if isinstance(part, tuple) else (part,) for part in parts]
    data = {name: ImageData(torch.cat([p[k] for p in parts])[:, None], labels,
                            quantizers(vqvae)[name].num_codes, NUM_CLASSES)
            for k, name in enumerate(names)}
    if "bottom" in data:
        data["bottom"].cond = top_condition(vqvae, data["top"].images[:, 0])
    return data


def build_prior(vqvae, name: str, grid: tuple[int, int], args):
    from genfast.models import GatedPixelCNN

    return GatedPixelCNN(levels=quantizers(vqvae)[name].num_codes, hidden=args.hidden,
                         num_layers=args.layers, kernel_size=args.kernel_size,
                         num_classes=NUM_CLASSES, embedding_dim=args.embedding_dim, image_size=grid,
                         cond_channels=vqvae.quantizer_top.dim if name == "bottom" else 0)


@_user_errors
def train_prior(args) -> int:
    from genfast.train import evaluate, train

    device = _device(args.device)
    vqvae, config = load_vqvae(args.vqvae, device)
    (train_images, train_labels), (test_images, test_labels) = load_digits(config["size"])
    train_codes = code_data(vqvae, train_images.to(device), train_labels)
    test_codes = code_data(vqvae, test_images.to(device), test_labels)
    first = os.path.join(args.out, PRIOR_FILE.format(next(iter(train_codes))))
    if args.resume and not os.path.exists(first):
        raise FileNotFoundError(f"--resume: no checkpoint at {first}")
    for name, data in train_codes.items():
        grid = tuple(data.images.shape[2:])
        torch.manual_seed(args.seed)
        prior = build_prior(vqvae, name, grid, args).to(device)
        checkpoint = os.path.join(args.out, PRIOR_FILE.format(name))
        print(f"prior over the {name} ({grid[0]}x{grid[1]} grid, {data.levels} codes): "
              f"{sum(p.numel() for p in prior.parameters()):,} parameters")
        train(prior, data, val_data=test_codes[name], steps=args.steps, batch_size=args.batch_size,
              lr=args.lr, val_every=args.val_every, checkpoint=checkpoint, seed=args.seed,
              device=device, progress=not args.no_progress, resume=args.resume, desc=f"prior {name}")
        bits = evaluate(prior, test_codes[name], device=device)
        print(f"test {name}: {bits:.4f} bits per code ({bits * math.log(2):.4f} nats), "
              f"{bits * grid[0] * grid[1]:.1f} bits per image; wrote {checkpoint}")
    return 0


def load_priors(folder: str, vqvae, size: int, device: torch.device) -> dict:
    """The priors of `genfast train prior` in `folder`, checked against the VQ-VAE's
    code levels, sizes and grids."""
    from genfast.models import GatedPixelCNN, load_model

    grids = code_data(vqvae, torch.zeros(1, vqvae.in_channels, size, size, device=device),
                      torch.zeros(1, dtype=torch.long))
    priors = {}
    for name, codes in grids.items():
        path = os.path.join(folder, PRIOR_FILE.format(name))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--prior: no {path}; train it with `genfast train prior "
                                    f"--vqvae ... --out {folder}`")
        try:
            prior = load_model(path, map_location=device).to(device)
        except Exception as exc:
            raise ValueError(f"--prior: {path} is not a checkpoint of `genfast train prior` ({exc})") from None
        want = dict(levels=codes.levels, image_size=tuple(codes.images.shape[2:]),
                    num_classes=NUM_CLASSES, cond_channels=codes.cond.shape[1] if name == "bottom" else 0)
        got = {key: getattr(prior, key) for key in want}
        if not isinstance(prior, GatedPixelCNN) or got != want:
            raise ValueError(f"--prior: {path} models {got}, but this VQ-VAE's {name} need {want}; "
                             f"was it trained on another VQ-VAE?")
        priors[name] = prior
    return priors


@torch.no_grad()
def sample_codes(vqvae, priors: dict, labels: torch.Tensor, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Code maps (n, h, w) per level drawn from the priors, the top ones first; decode
    them with vqvae.decode_codes(*codes)."""
    codes = []
    for name, prior in priors.items():
        cond = top_condition(vqvae, codes[0]) if name == "bottom" else None
        codes.append(prior.sample(len(labels), labels=labels, cond=cond, temperature=temperature,
                                  generator=generator)[:, 0])
    return codes


def parse_labels(text: str) -> list[int]:
    try:
        labels = [int(part) for part in text.split(",")]
    except ValueError:
        labels = []
    if not labels or not all(0 <= label < NUM_CLASSES for label in labels):
        raise ValueError(f"--labels: expected digits 0-{NUM_CLASSES - 1} separated by commas, got {text!r}")
    return labels


@_user_errors
def sample_vqvae(args) -> int:
    import time


    if args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    device = _device(args.device)
    vqvae, config = load_vqvae(args.vqvae, device)
    priors = load_priors(args.prior, vqvae, config["size"], device)
    cycle = parse_labels(args.labels)
    labels = torch.tensor([cycle[i % len(cycle)] for i in range(args.n)], device=device)
    generator = torch.Generator(device).manual_seed(args.seed)
    start = time.perf_counter()
    codes = sample_codes(vqvae, priors, labels, args.temperature, generator)
    sample_seconds = time.perf_counter() - start
    with torch.no_grad():
        images = vqvae.decode_codes(*codes)
    decode_seconds = time.perf_counter() - start - sample_seconds
    save_images(args.out, list(images.split(SAMPLE_COLUMNS)))
    grids = ", ".join(f"{name} {c.shape[1]}x{c.shape[2]}" for name, c in zip(priors, codes))
    print(f"{args.n} samples: codes ({grids}) drawn in {sample_seconds:.2f} s, decoded in "
          f"{decode_seconds:.2f} s on {device}; wrote {args.out}")
    return 0
