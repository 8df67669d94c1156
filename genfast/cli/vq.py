"""`genfast train vqvae`, `genfast train prior` and `genfast sample vqvae` (the
trainers: genfast.training.vqvae)."""
from __future__ import annotations

from genfast.cli.common import device as pick_device
from genfast.cli.common import user_errors
from genfast.training.vqvae import NUM_CLASSES

SAMPLE_COLUMNS = 10  # of the PNG grid: with the default labels, one per digit


def add_commands(commands, train, sample) -> None:
    p = train.add_parser("vqvae", help="train a VQ-VAE / VQ-VAE-2 on the embedded digits")
    p.add_argument("--levels", type=int, choices=[1, 2], default=1, help="1: VQ-VAE, 2: VQ-VAE-2")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=32, help="image size (a multiple of 8 for --levels 2)")
    p.add_argument("--channels", type=int, default=32, help="hidden channels of the encoders/decoders")
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

    p = train.add_parser("prior", help="fit class-conditional priors (Gated PixelCNN or transformer) over "
                                       "the codes of a trained VQ-VAE (one per level: top, then bottom)")
    p.add_argument("--prior", choices=["gated-pixelcnn", "transformer"], default="gated-pixelcnn",
                   help="the prior's kind (default gated-pixelcnn); its checkpoints record it")
    p.add_argument("--vqvae", required=True, help="a checkpoint of `genfast train vqvae` or `genfast train vqgan`")
    p.add_argument("--out", default="runs/prior", help="folder of the prior-<level>.pt checkpoints")
    p.add_argument("--steps", type=int, default=1000, help="training steps per level (default 1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=64,
                   help="channels per gated layer, or the transformer's width (default 64)")
    p.add_argument("--layers", type=int, default=6, help="gated layers or transformer blocks (default 6)")
    p.add_argument("--heads", type=int, default=4, help="transformer: attention heads (default 4)")
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
    s.add_argument("--vqvae", required=True, help="a checkpoint of `genfast train vqvae` or `genfast train vqgan`")
    s.add_argument("--prior", required=True, help="the --out folder of `genfast train prior`")
    s.add_argument("--n", type=int, default=40, help="images (default 40)")
    s.add_argument("--labels", default=",".join(map(str, range(NUM_CLASSES))),
                   help="digits cycled over the images, e.g. 3,7 (default 0,...,9)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None, help="transformer priors: keep the k likeliest codes")
    s.add_argument("--top-p", type=float, default=None,
                   help="transformer priors: nucleus sampling, keep the likeliest codes of mass p")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    s.add_argument("--out", default="samples.png", help="PNG path (default samples.png)")
    s.set_defaults(func=sample_vqvae)


@user_errors
def train_vqvae(args) -> int:
    from genfast.training import vqvae

    config = {name: getattr(args, name) for name in vqvae.MODEL_ARGS}
    run = vqvae.train_vqvae(config, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            limit=args.limit, device=pick_device(args.device), seed=args.seed,
                            resume=args.resume, log=print)
    print(f"test reconstruction MSE {run.mse:.4f} (images in [-1, 1])")
    for name, (used, total, perplexity) in run.usage.items():
        print(f"codebook usage ({name}): {used}/{total} codes used on the test set "
              f"({100 * used / total:.0f}%), perplexity {perplexity:.1f}")
    print(f"wrote {run.reconstructions} (top: test images, bottom: reconstructions) and {run.checkpoint}")
    return 0


@user_errors
def train_prior(args) -> int:
    from genfast.training.vqvae import train_priors

    train_priors(args.vqvae, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                 prior=args.prior, hidden=args.hidden, layers=args.layers, heads=args.heads,
                 kernel_size=args.kernel_size,
                 embedding_dim=args.embedding_dim, val_every=args.val_every,
                 device=pick_device(args.device), seed=args.seed, resume=args.resume,
                 progress=not args.no_progress, log=print)
    return 0


def parse_labels(text: str) -> list[int]:
    try:
        labels = [int(part) for part in text.split(",")]
    except ValueError:
        labels = []
    if not labels or not all(0 <= label < NUM_CLASSES for label in labels):
        raise ValueError(f"--labels: expected digits 0-{NUM_CLASSES - 1} separated by commas, got {text!r}")
    return labels


@user_errors
def sample_vqvae(args) -> int:
    from genfast.plotting import save_unit_rows
    from genfast.training.vqvae import sample_images

    if args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    device = pick_device(args.device)
    cycle = parse_labels(args.labels)
    labels = [cycle[i % len(cycle)] for i in range(args.n)]
    result = sample_images(args.vqvae, args.prior, labels, temperature=args.temperature, seed=args.seed,
                           device=device, top_k=args.top_k, top_p=args.top_p)
    save_unit_rows(args.out, list(result.images.split(SAMPLE_COLUMNS)))
    grids = ", ".join(f"{name} {c.shape[1]}x{c.shape[2]}" for name, c in result.codes.items())
    print(f"{args.n} samples: codes ({grids}) drawn in {result.sample_seconds:.2f} s, decoded in "
          f"{result.decode_seconds:.2f} s on {device}; wrote {args.out}")
    return 0
