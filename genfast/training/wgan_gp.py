"""The WGAN-GP trainer (Gulrajani et al. 2017) of `genfast train wgan-gp`,
on the paper's 8-Gaussians toy in 2-D (--data ring8) or on scikit-learn's embedded
8x8 digits upsampled to 16x16 (--data digits, a DCGAN-style generator and critic).

The paper's defaults: lambda = 10, 5 critic steps per generator step, Adam with
lr 1e-4 and betas (0, 0.9) -- except the step sizes of ring8, where those settings
keep the generator circling for thousands of steps with this small MLP (0-3 of 8
modes after 1500 steps, three runs); ring8 defaults to two time-scales instead
(critic lr 1e-3, generator lr 3e-4, betas (0.5, 0.9)), which covers all 8 modes
by step ~250 (seeds 0-2). `--lr 1e-4 --critic-lr 1e-4 --betas 0 0.9` restores the
paper's. The critic has no batch norm (the penalty is per sample). Writes to
the run's folder: samples_<step>.png, losses.png, history.json and checkpoint.pt
(written atomically; resume=True continues a run exactly).
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch
import torch.nn as nn

from genfast import losses
from genfast.data import load_digits16, sample_ring8
from genfast.metrics import mode_coverage
from genfast.plotting import plot_gan_losses, plot_image_grid, plot_points
from genfast.training.checkpoint import load_checkpoint, restoring, resume_run, save_checkpoint

CHECKPOINT_KIND = "wgan-gp"
CHECKPOINT_KEYS = ("config", "step", "history", "generator", "critic", "opt_g", "opt_d", "rng")

DATASETS = ("ring8", "digits")
# Per-dataset defaults of the command line (WGANGPConfig's own are the paper's).
DATA_DEFAULTS = {
    "ring8": {"steps": 1000, "batch_size": 256, "hidden": 128, "z_dim": 2, "lr": 3e-4, "critic_lr": 1e-3,
              "betas": (0.5, 0.9)},
    "digits": {"steps": 600, "batch_size": 64, "hidden": 32, "z_dim": 32, "lr": 1e-4, "critic_lr": None,
               "betas": (0.0, 0.9)},
}


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

class RealData:
    """Batches of real samples, drawn with the trainer's generator (so runs resume exactly)."""

    def __init__(self, data: str):
        self.data = data
        self.images = load_digits16() if data == "digits" else None

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if self.data == "ring8":
            return sample_ring8(n, gen)
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
            gp, norms = losses.critic_gradient_penalty(self.critic, real, fake, kind="wgan-gp", weight=c.gp_weight,
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


def read_checkpoint(path: str, device: str = "cpu") -> dict:
    """The state of a WGAN-GP checkpoint (a one-line CheckpointError when unusable)."""
    return load_checkpoint(path, kind=CHECKPOINT_KIND, required=CHECKPOINT_KEYS, map_location=device)


def load_trainer(path: str, device: str = "cpu", impl: str = "auto") -> WGANGPTrainer:
    """The trainer of a checkpoint, ready to sample or train on."""
    state = read_checkpoint(path, device)
    with restoring(path):
        trainer = WGANGPTrainer(WGANGPConfig(**state["config"]), device=device, impl=impl)
        trainer.load_state_dict(state)
    return trainer


# --------------------------------------------------------------------------- plots

def plot_samples(trainer: WGANGPTrainer, path: str, n: int | None = None,
                 gen: torch.Generator | None = None) -> None:
    """ring8: a scatter plot of n (default 1000) samples over real ones, titled with
    the modes covered; digits: a grid of n (default 64) samples."""
    if trainer.config.data == "ring8":
        fake = trainer.samples(n or 1000, gen)
        real = trainer.data.sample(1000, torch.Generator().manual_seed(0))
        covered, close = mode_coverage(fake)
        plot_points(path, fake, real, f"step {trainer.step}: {covered}/8 modes, {close:.0%} near a mode")
    else:
        plot_image_grid(path, trainer.samples(n or 64, gen), f"step {trainer.step}")


# ------------------------------------------------------------------------- training run


def train(config: WGANGPConfig, out: str, *, device: str = "cpu", impl: str = "auto", resume: bool = False,
          sample_every: int = 250, checkpoint_every: int = 250, progress: bool = True) -> WGANGPTrainer:
    """Trains (or, with resume, continues) a run in folder `out`; returns the trainer."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "checkpoint.pt")
    trainer = WGANGPTrainer(config, device=device, impl=impl)
    if resume:
        resume_run(trainer, path, config, kind=CHECKPOINT_KIND, required=CHECKPOINT_KEYS,
                   device=device, name="wgan-gp")

    def checkpoint():
        save_checkpoint(path, trainer.state_dict(), kind=CHECKPOINT_KIND)
        with open(os.path.join(out, "history.json"), "w") as f:
            json.dump(trainer.history, f)
        plot_gan_losses(trainer.history, os.path.join(out, "losses.png"))

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
