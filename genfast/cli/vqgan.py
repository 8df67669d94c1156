"""`genfast train vqgan` (the trainer: genfast.training.vqgan)."""
from __future__ import annotations

from genfast.cli.common import device as pick_device
from genfast.cli.common import one_line_error, user_errors

NO_WEIGHTS_HINT = ("; or train without them: --perceptual off (no perceptual term) or --perceptual random "
                   "(random VGG weights: not a perceptual loss). See docs/vqgan.md")


def add_commands(commands, train, sample) -> None:
    from genfast.training.vqgan import DATASETS, DEFAULT_SIZE, PERCEPTUAL, VQGANConfig

    d = VQGANConfig()
    p = train.add_parser("vqgan", help="train a VQGAN tokenizer (VQ-VAE + LPIPS + patch GAN) on the digits "
                                       "or Fashion-MNIST")
    p.add_argument("--data", choices=DATASETS, default="digits",
                   help="digits (embedded) or fashion-mnist (the dataset-fashion-mnist package)")
    p.add_argument("--size", type=int, default=None,
                   help=f"image size, a multiple of 4 (default: {DEFAULT_SIZE['digits']} digits, "
                        f"{DEFAULT_SIZE['fashion-mnist']} fashion-mnist)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="Adam's learning rate of both networks")
    p.add_argument("--betas", type=float, nargs=2, default=(d.beta1, d.beta2))
    p.add_argument("--channels", type=int, default=d.channels, help="hidden channels of the tokenizer")
    p.add_argument("--num-codes", type=int, default=d.num_codes)
    p.add_argument("--code-dim", type=int, default=d.code_dim)
    p.add_argument("--no-kmeans-init", dest="kmeans_init", action="store_false",
                   help="random codebook instead of k-means on the first batch")
    p.add_argument("--dead-code-threshold", type=float, default=d.dead_code_threshold)
    p.add_argument("--perceptual", choices=PERCEPTUAL, default=d.perceptual,
                   help="lpips: LPIPS with pretrained weights (an error when missing); random: random VGG "
                        "weights (a warning; not a perceptual loss); off: none")
    p.add_argument("--perceptual-weight", type=float, default=d.perceptual_weight)
    p.add_argument("--vgg-weights", default=None, metavar="PATH",
                   help="torchvision's vgg16-397923af.pth (default: $TORCH_HOME/hub/checkpoints/)")
    p.add_argument("--lpips-weights", default=None, metavar="PATH",
                   help="lpips's weights/v0.1/vgg.pth (default: that of the installed lpips package)")
    p.add_argument("--disc-start", type=int, default=d.disc_start,
                   help="the step at which the discriminator and the GAN term start")
    p.add_argument("--disc-weight", type=float, default=d.disc_weight,
                   help="factor on the adaptive weight of the GAN term")
    p.add_argument("--disc-channels", type=int, default=d.disc_channels)
    p.add_argument("--disc-layers", type=int, default=d.disc_layers,
                   help="stride-2 layers of the PatchDiscriminator (3 needs images of at least 24x24)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--out", default="runs/vqgan", help="output folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=train_vqgan)


@user_errors
def train_vqgan(args) -> int:
    from genfast.training.vqgan import DEFAULT_SIZE, VQGANConfig, train

    config = VQGANConfig(
        data=args.data, size=args.size or DEFAULT_SIZE[args.data], steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, beta1=args.betas[0], beta2=args.betas[1], channels=args.channels, num_codes=args.num_codes,
        code_dim=args.code_dim, kmeans_init=args.kmeans_init, dead_code_threshold=args.dead_code_threshold,
        perceptual=args.perceptual, perceptual_weight=args.perceptual_weight, disc_start=args.disc_start,
        disc_weight=args.disc_weight, disc_channels=args.disc_channels, disc_layers=args.disc_layers,
        limit=args.limit, seed=args.seed)
    device = pick_device(args.device)
    try:  # --perceptual random warns (stderr) before training starts
        run = train(config, args.out, device=device, resume=args.resume, checkpoint_every=args.checkpoint_every,
                    progress=not args.no_progress, vgg_weights=args.vgg_weights, lpips_weights=args.lpips_weights)
    except FileNotFoundError as exc:
        if "PerceptualLoss" not in str(exc):
            raise
        raise SystemExit(one_line_error(exc) + NO_WEIGHTS_HINT) from None
    before, after = run.initial, run.final
    print(f"{run.trainer.step} steps ({run.seconds:.1f} s this run on {device}); test reconstruction "
          f"(images in [-1, 1]): L1 {before['l1']:.4f} -> {after['l1']:.4f}, MSE {before['mse']:.4f} -> "
          f"{after['mse']:.4f}" + (f", LPIPS {before['lpips']:.4f} -> {after['lpips']:.4f}"
                                   if "lpips" in after else ""))
    print(f"wrote {run.reconstructions} (top: test images, bottom: reconstructions) and {run.checkpoint}")
    return 0
