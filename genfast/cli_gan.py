"""`genfast train wgan-gp` and `genfast sample wgan-gp`: WGAN-GP (Gulrajani et al. 2017)
on the paper's 8-Gaussians toy in 2-D (--data ring8) or on scikit-learn's embedded
8x8 digits upsampled to 16x16 (--data digits, a DCGAN-style generator and critic).

The paper's defaults: lambda = 10, 5 critic steps per generator step, Adam with
lr 1e-4 and betas (0, 0.9) -- except the step sizes of ring8, where those settings
keep the generator circling for thousands of steps with this small MLP (0-3 of 8
modes after 1500 steps, three runs); ring8 defaults to two time-scales instead
(critic lr 1e-3, generator lr 3e-4, betas (0.5, 0.9)), which covers all 8 modes
by step ~250 (seeds 0-2). `--lr 1e-4 --critic-lr 1e-4 --betas 0 0.9` restores the
paper's. The critic has no batch norm (the penalty is per sample). Writes to
--out: samples_<step>.png, losses.png, history.json and checkpoint.pt (written
atomically; --resume continues a run exactly).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from genfast import losses
from genfast.train import save_checkpoint

DATASETS = ("ring8", "digits")
# Per-dataset defaults of the command line (WGANGPConfig's own are the paper's).
DATA_DEFAULTS = {
    "ring8": {"steps": 1000, "batch_size": 256, "hidden": 128, "z_dim": 2, "lr": 3e-4, "critic_lr": 1e-3,
              "betas": (0.5, 0.9)},
    "digits": {"steps": 600, "batch_size": 64, "hidden": 32, "z_dim": 32, "lr": 1e-4, "critic_lr": None,
               "betas": (0.0, 0.9)},
}
RING_MODES = 8
RING_RADIUS = 2.0 / 1.414  # the toy code's 8 Gaussians: radius 2, std 0.02, all divided by 1.414
RING_STD = 0.02 / 1.414
# Coverage: a mode counts as covered when at least 1% of the samples lie within
# this distance of its centre (neighbouring centres are 1.08 apart).
MODE_RADIUS = 0.25
MODE_MIN_FRACTION = 0.01


@dataclasses.dataclass
class WGANGPConfig:
    data: str = "ring8"
    steps: int = 1000  # generator steps
    batch_size: int = 256
    n_critic: int = 5
    gp_weight: float = 10.0
    lr: float = 1e-4
    critic_lr: float | None = None  # None: lr (the paper); a larger one is TTUR (Heusel et al. 2017)
    beta1: float = 0.0
    beta2: float = 0.9
    hidden: int = 128  # ring8: MLP width; digits: channels of the first conv
    z_dim: int = 2
    seed: int = 0

    def check(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"wgan-gp: data must be one of {DATASETS}, got {self.data!r}")
        for name in ("steps", "batch_size", "n_critic", "hidden", "z_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"wgan-gp: {name} must be positive, got {getattr(self, name)}")
        critic_lr = self.lr if self.critic_lr is None else self.critic_lr
        if not (self.lr > 0 and critic_lr > 0 and self.gp_weight >= 0 and 0 <= self.beta1 < 1
                and 0 <= self.beta2 < 1):
            raise ValueError("wgan-gp: needs lr > 0, critic_lr > 0, gp_weight >= 0 and betas in [0, 1)")


# ---------------------------------------------------------------------------- data

def ring8_centers() -> torch.Tensor:
    angles = torch.arange(RING_MODES, dtype=torch.float64) * (2 * math.pi / RING_MODES)
    return (RING_RADIUS * torch.stack([angles.cos(), angles.sin()], 1)).float()


def mode_coverage(samples: torch.Tensor) -> tuple[int, float]:
    """(modes covered, fraction of samples within MODE_RADIUS of some mode) for 2-D
    samples of the 8-Gaussians ring."""
    dist = torch.cdist(samples.float().cpu(), ring8_centers())
    nearest, mode = dist.min(1)
    close = nearest < MODE_RADIUS
    counts = torch.bincount(mode[close], minlength=RING_MODES)
    covered = int((counts >= MODE_MIN_FRACTION * len(samples)).sum())
    return covered, float(close.float().mean())


def load_digits16() -> torch.Tensor:
    """scikit-learn's 1797 8x8 digits (shipped with the package), bilinearly
    upsampled to 16x16 and scaled to [-1, 1]: (1797, 1, 16, 16)."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1


class RealData:
    """Batches of real samples, drawn with the trainer's generator (so runs resume exactly)."""

    def __init__(self, data: str):
        self.data = data
        self.images = load_digits16() if data == "digits" else None

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if self.data == "ring8":
            mode = torch.randint(RING_MODES, (n,), generator=gen)
            return ring8_centers()[mode] + RING_STD * torch.randn(n, 2, generator=gen)
        return self.images[torch.randint(len(self.images), (n,), generator=gen)]


# -------------------------------------------------------------------------- models

def build_models(config: WGANGPConfig) -> tuple[nn.Module, nn.Module]:
    """(generator, critic). ring8: the toy code's 3-hidden-layer ReLU MLPs; digits:
    DCGAN-style transposed convolutions (with batch norm) and a strided-conv critic
    with LeakyReLU (without)."""
    h, z = config.hidden, config.z_dim
    if config.data == "ring8":
        def mlp(n_in, n_out):
            return nn.Sequential(nn.Linear(n_in, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                 nn.Linear(h, h), nn.ReLU(), nn.Linear(h, n_out))
        return mlp(z, 2), mlp(2, 1)
    generator = nn.Sequential(
        nn.Linear(z, 2 * h * 4 * 4), nn.Unflatten(1, (2 * h, 4, 4)), nn.BatchNorm2d(2 * h), nn.ReLU(),
        nn.ConvTranspose2d(2 * h, h, 4, 2, 1), nn.BatchNorm2d(h), nn.ReLU(),  # 8x8
        nn.ConvTranspose2d(h, 1, 4, 2, 1), nn.Tanh())  # 16x16
    critic = nn.Sequential(
        nn.Conv2d(1, h, 4, 2, 1), nn.LeakyReLU(0.2),  # 8x8
        nn.Conv2d(h, 2 * h, 4, 2, 1), nn.LeakyReLU(0.2),  # 4x4
        nn.Flatten(), nn.Linear(2 * h * 4 * 4, 1))
    return generator, critic


# ------------------------------------------------------------------------- trainer

class WGANGPTrainer:
    """WGAN-GP training state (models, optimisers, random generator, history)."""

    def __init__(self, config: WGANGPConfig, device: str = "cpu", impl: str = "auto"):
        config.check()
        self.config, self.device, self.impl = config, torch.device(device), impl
        torch.manual_seed(config.seed)
        generator, critic = build_models(config)
        self.generator, self.critic = generator.to(self.device), critic.to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        critic_lr = config.lr if config.critic_lr is None else config.critic_lr
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=critic_lr, betas=betas)
        # All sampling (data, noise, interpolation) runs on this CPU generator.
        self.gen = torch.Generator().manual_seed(config.seed + 1)
        self.data = RealData(config.data)
        self.step = 0
        self.history: list[dict] = []

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.z_dim, generator=self.gen).to(self.device)

    def train_step(self) -> dict:
        """n_critic critic steps with the penalty, then one generator step."""
        c = self.config
        totals = {"critic_loss": 0.0, "wasserstein": 0.0, "gp": 0.0, "grad_norm": 0.0}
        for _ in range(c.n_critic):
            real = self.data.sample(c.batch_size, self.gen).to(self.device)
            with torch.no_grad():
                fake = self.generator(self.noise(c.batch_size))
            real_scores, fake_scores = self.critic(torch.cat([real, fake])).split(c.batch_size)
            eps = torch.rand(c.batch_size, generator=self.gen).to(self.device)
            gp, norms = losses.gradient_penalty(self.critic, real, fake, kind="wgan-gp", weight=c.gp_weight,
                                                eps=eps, return_norms=True, impl=self.impl)
            loss = losses.gan_loss(real_scores, fake_scores, kind="wgan", target="d") + gp
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_d.step()
            totals["critic_loss"] += loss.item()
            totals["wasserstein"] += (real_scores.mean() - fake_scores.mean()).item()
            totals["gp"] += gp.item()
            totals["grad_norm"] += norms.mean().item()
        for p in self.critic.parameters():
            p.requires_grad_(False)
        g_loss = losses.gan_loss(None, self.critic(self.generator(self.noise(c.batch_size))),
                                 kind="wgan", target="g")
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        for p in self.critic.parameters():
            p.requires_grad_(True)
        self.step += 1
        record = {k: v / c.n_critic for k, v in totals.items()}
        record.update(step=self.step, generator_loss=g_loss.item())
        self.history.append(record)
        return record

    @torch.no_grad()
    def samples(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """n samples of the generator (in eval mode), on the CPU."""
        gen = gen if gen is not None else torch.Generator().manual_seed(1234)
        self.generator.eval()
        try:
            z = torch.randn(n, self.config.z_dim, generator=gen).to(self.device)
            return self.generator(z).cpu()
        finally:
            self.generator.train()

    def state_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "step": self.step, "history": self.history,
                "generator": self.generator.state_dict(), "critic": self.critic.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.gen.set_state(state["rng"])
        self.step, self.history = state["step"], list(state["history"])


def load_checkpoint(path: str, device: str = "cpu", impl: str = "auto") -> WGANGPTrainer:
    state = torch.load(path, map_location=device, weights_only=True)
    trainer = WGANGPTrainer(WGANGPConfig(**state["config"]), device=device, impl=impl)
    trainer.load_state_dict(state)
    return trainer


# --------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(trainer: WGANGPTrainer, path: str, n: int | None = None,
                 gen: torch.Generator | None = None) -> None:
    plt = _pyplot()
    if trainer.config.data == "ring8":
        fake = trainer.samples(n or 1000, gen)
        real = trainer.data.sample(1000, torch.Generator().manual_seed(0))
        covered, close = mode_coverage(fake)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(real[:, 0], real[:, 1], s=4, c="tab:orange", label="real")
        ax.scatter(fake[:, 0], fake[:, 1], s=4, c="tab:blue", alpha=0.5, label="generated")
        ax.set(xlim=(-2, 2), ylim=(-2, 2), aspect="equal",
               title=f"step {trainer.step}: {covered}/8 modes, {close:.0%} near a mode")
        ax.legend(loc="upper right")
    else:
        images = trainer.samples(n or 64, gen)
        cols = int(math.ceil(math.sqrt(len(images))))
        rows = int(math.ceil(len(images) / cols))
        grid = torch.ones(rows * 17 + 1, cols * 17 + 1)
        for i, image in enumerate(images):
            r, c = divmod(i, cols)
            grid[1 + r * 17:1 + r * 17 + 16, 1 + c * 17:1 + c * 17 + 16] = (image[0] + 1) / 2
        fig, ax = plt.subplots(figsize=(6, 6 * rows / cols))
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"step {trainer.step}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_losses(history: list[dict], path: str) -> None:
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(steps, [h["wasserstein"] for h in history], label="E[D(real)] - E[D(fake)]")
    axes[0].plot(steps, [h["critic_loss"] for h in history], label="critic loss (with penalty)")
    axes[1].plot(steps, [h["gp"] for h in history], label="gradient penalty")
    axes[1].plot(steps, [h["grad_norm"] for h in history], label="mean ||grad D(x_hat)||")
    axes[2].plot(steps, [h["generator_loss"] for h in history], label="generator loss")
    for ax in axes:
        ax.set_xlabel("generator step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI

def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _config_from_args(args) -> WGANGPConfig:
    defaults = DATA_DEFAULTS[args.data]
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]
    betas = pick("betas")
    critic_lr = pick("critic_lr") if args.lr is None else args.critic_lr  # --lr alone sets both
    return WGANGPConfig(data=args.data, steps=pick("steps"), batch_size=pick("batch_size"),
                        n_critic=args.n_critic, gp_weight=args.gp_weight, lr=pick("lr"), critic_lr=critic_lr,
                        beta1=betas[0], beta2=betas[1], hidden=pick("hidden"), z_dim=pick("z_dim"),
                        seed=args.seed)


def train(config: WGANGPConfig, out: str, *, device: str = "cpu", impl: str = "auto", resume: bool = False,
          sample_every: int = 250, checkpoint_every: int = 250, progress: bool = True) -> WGANGPTrainer:
    """Trains (or, with resume, continues) a run in folder `out`; returns the trainer."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "checkpoint.pt")
    trainer = WGANGPTrainer(config, device=device, impl=impl)
    if resume and os.path.exists(path):
        state = torch.load(path, map_location=device, weights_only=True)
        saved = dict(state["config"], steps=config.steps)
        if saved != dataclasses.asdict(config):
            diff = {k: (saved[k], v) for k, v in dataclasses.asdict(config).items() if saved[k] != v}
            raise ValueError(f"wgan-gp: --resume with settings that differ from {path}: "
                             f"{', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in diff.items())}")
        trainer.load_state_dict(state)
    elif resume:
        raise FileNotFoundError(f"wgan-gp: --resume but there is no checkpoint at {path}")

    def checkpoint():
        save_checkpoint(path, trainer.state_dict())
        with open(os.path.join(out, "history.json"), "w") as f:
            json.dump(trainer.history, f)
        plot_losses(trainer.history, os.path.join(out, "losses.png"))

    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=trainer.step, disable=not progress, unit="step",
               desc=f"wgan-gp {config.data}")
    while trainer.step < config.steps:
        record = trainer.train_step()
        bar.update(1)
        bar.set_postfix(W=f"{record['wasserstein']:.3f}", gp=f"{record['gp']:.3f}")
        if trainer.step % sample_every == 0 or trainer.step == config.steps:
            plot_samples(trainer, os.path.join(out, f"samples_{trainer.step:06d}.png"))
        if trainer.step % checkpoint_every == 0 or trainer.step == config.steps:
            checkpoint()
    bar.close()
    return trainer


def _train_command(args) -> int:
    if args.threads is not None:
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


def _sample_command(args) -> int:
    trainer = load_checkpoint(args.checkpoint, device=args.device)
    gen = torch.Generator().manual_seed(args.seed)
    plot_samples(trainer, args.out, n=args.num, gen=gen)
    print(f"wrote samples of step {trainer.step} to {args.out}")
    return 0


def add_commands(commands, train_commands, sample_commands) -> None:
    p = train_commands.add_parser("wgan-gp", help="WGAN-GP on 8 Gaussians (ring8) or 16x16 digits",
                                  description=__doc__)
    p.add_argument("--data", choices=DATASETS, default="ring8")
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
    p.add_argument("--device", default=_default_device())
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
