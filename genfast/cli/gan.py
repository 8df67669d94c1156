"""`genfast train wgan-gp` and `genfast sample wgan-gp` (the trainer:
genfast.training.wgan_gp)."""
from __future__ import annotations

import os
import time

import torch

from genfast.cli.common import default_device, user_errors


def _config_from_args(args):
    from genfast.training.wgan_gp import DATA_DEFAULTS, WGANGPConfig

    defaults = DATA_DEFAULTS[args.data]
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]
    betas = pick("betas")
    critic_lr = pick("critic_lr") if args.lr is None else args.critic_lr  # --lr alone sets both
    return WGANGPConfig(data=args.data, steps=pick("steps"), batch_size=pick("batch_size"),
                        n_critic=args.n_critic, gp_weight=args.gp_weight, lr=pick("lr"), critic_lr=critic_lr,
                        beta1=betas[0], beta2=betas[1], hidden=pick("hidden"), z_dim=pick("z_dim"),
                        seed=args.seed)


@user_errors
def _train_command(args) -> int:
    from genfast.metrics import MODE_RADIUS, mode_coverage
    from genfast.training.wgan_gp import train

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = _config_from_args(args)
    out = args.out or os.path.join("runs", f"wgan-gp-{config.data}")
    start = time.perf_counter()
    trainer = train(config, out, device=args.device, impl=args.impl, resume=args.resume,
                    sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
                    progress=not args.quiet)
    last = trainer.history[-1] if trainer.history else {}
    print(f"wgan-gp {config.data}: {trainer.step} generator steps in {time.perf_counter() - start:.1f} s "
          f"on {args.device}; last W estimate {last.get('wasserstein', float('nan')):.4f}, "
          f"penalty {last.get('gp', float('nan')):.4f}")
    if config.data == "ring8":
        covered, close = mode_coverage(trainer.samples(2000))
        print(f"modes covered: {covered}/8; {close:.1%} of 2000 samples within {MODE_RADIUS} of a mode")
    print(f"wrote {out}/samples_*.png, losses.png, history.json, checkpoint.pt")
    return 0


@user_errors
def _sample_command(args) -> int:
    from genfast.training.wgan_gp import load_trainer, plot_samples

    trainer = load_trainer(args.checkpoint, device=args.device)
    gen = torch.Generator().manual_seed(args.seed)
    plot_samples(trainer, args.out, n=args.num, gen=gen)
    print(f"wrote samples of step {trainer.step} to {args.out}")
    return 0


def add_commands(commands, train_commands, sample_commands) -> None:
    from genfast.training import wgan_gp

    p = train_commands.add_parser("wgan-gp", help="WGAN-GP on 8 Gaussians (ring8) or 16x16 digits",
                                  description=wgan_gp.__doc__)
    p.add_argument("--data", choices=wgan_gp.DATASETS, default="ring8")
    p.add_argument("--steps", type=int, help="generator steps (default: 1000 (ring8), 600 (digits))")
    p.add_argument("--batch-size", type=int, help="default: 256 (ring8), 64 (digits)")
    p.add_argument("--n-critic", type=int, default=5, help="critic steps per generator step")
    p.add_argument("--gp-weight", type=float, default=10.0, help="lambda of the gradient penalty")
    p.add_argument("--lr", type=float, help="Adam's learning rate of the generator, and of the critic unless "
                   "--critic-lr (default: 1e-4, the paper's; ring8: 3e-4 with --critic-lr 1e-3)")
    p.add_argument("--critic-lr", type=float, help="the critic's learning rate (default: --lr)")
    p.add_argument("--betas", type=float, nargs=2, help="Adam's betas (default: 0 0.9; ring8: 0.5 0.9)")
    p.add_argument("--hidden", type=int, help="width: 128 (ring8 MLP; the paper's toy: 512), 32 (digits first conv)")
    p.add_argument("--z-dim", type=int, help="noise dimension: 2 (ring8), 32 (digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=default_device())
    p.add_argument("--impl", choices=("auto", "ext", "reference"), default="auto",
                   help="the penalty ops' implementation")
    p.add_argument("--out", help="output folder (default: runs/wgan-gp-<data>)")
    p.add_argument("--sample-every", type=int, default=250)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 is fastest for ring8's small "
                   "MLPs on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_command)

    s = sample_commands.add_parser("wgan-gp", help="plot samples of a WGAN-GP checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", default="samples.png")
    s.add_argument("--num", type=int, default=None, help="default: 1000 points (ring8), 64 images (digits)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_sample_command)
