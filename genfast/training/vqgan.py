"""The VQGAN tokenizer trainer (stage 1 of Esser et al. 2021) of `genfast train vqgan`,
on scikit-learn's embedded digits or Fashion-MNIST (genfast.data.load_dataset).

The tokenizer is genfast's one-level VQVAE (EMA codebook, k-means initialisation,
dead-code restarts; genfast.training.vqvae.build_vqvae). Each step:

    nll      = |x - x_hat|_1 + perceptual_weight * LPIPS(x, x_hat)      (means over the batch)
    gen_loss = nll + lambda * hinge_g(D(x_hat)) + vq_loss
    lambda   = disc_weight * ||grad_L nll|| / (||grad_L hinge_g|| + 1e-4)   (genfast.losses.adaptive_weight,
               L the decoder's last weight)
    D loss   = hinge_d(D(x), D(x_hat))    (genfast.losses.gan_loss "hinge", without taming's factor 1/2)

where D is a genfast.models.PatchDiscriminator and the GAN terms start at step
disc_start (before it: no discriminator, no adversarial term, as taming's
disc_factor = 0). Adam with betas (0.5, 0.9) for both, as taming.

perceptual: "lpips" (genfast.losses.PerceptualLoss with pretrained weights; missing
files are an error that says where to put them), "random" (random VGG weights, with a
warning: a fixed random feature distance, not a perceptual loss; for tests and
machines without the weights) or "off" (L1 only).

Exact resume: batches are genfast.training.autoregressive.batch_indices(seed, step), a
function of the step; the checkpoint (atomic, genfast.training.checkpoint, kind
"vqgan") holds both models, both optimisers, the step, the history and the global
generator's state (k-means and dead-code restarts draw on it), so a resumed run takes
exactly the steps of an uninterrupted one. The run's folder gets checkpoint.pt and,
at the end, reconstructions.png (test images above their reconstructions).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings

import torch

from genfast.losses import PerceptualLoss, gan_loss
from genfast.models import PatchDiscriminator
from genfast.plotting import save_unit_rows
from genfast.training.autoregressive import batch_indices, check_finite_loss
from genfast.training.checkpoint import load_checkpoint, restoring, resume_run, save_checkpoint
from genfast.training.vqvae import build_vqvae

CHECKPOINT_KIND = "vqgan"
# genfast.losses.adaptive_weight's defaults (delta, max_weight), which the step reproduces.
ADAPTIVE_DELTA, ADAPTIVE_MAX = 1e-4, 1e4
CHECKPOINT_KEYS = ("config", "step", "history", "initial", "model", "discriminator", "opt_g", "opt_d",
                   "torch_rng")
DATASETS = ("digits", "fashion-mnist")
# LPIPS is reported on this many test images (a VGG16 pass over Fashion-MNIST's 10 000
# twice per run would take minutes on a CPU); L1 and MSE use the whole test set.
LPIPS_EVAL_IMAGES = 1000
PERCEPTUAL = ("lpips", "random", "off")
# The image side per data set when none is given: the digits are 8x8 at heart (16 is the
# size of genfast's other digits GANs), Fashion-MNIST's own is 28.
DEFAULT_SIZE = {"digits": 16, "fashion-mnist": 28}


@dataclasses.dataclass
class VQGANConfig:
    data: str = "digits"
    size: int = 16  # a multiple of 4 (the tokenizer downsamples by 4)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.9
    channels: int = 32  # the tokenizer's hidden_channels
    num_codes: int = 64
    code_dim: int = 16
    kmeans_init: bool = True
    dead_code_threshold: float = 1.0
    perceptual: str = "lpips"
    perceptual_weight: float = 1.0
    disc_start: int = 500  # the first step with the discriminator and the adversarial term
    disc_weight: float = 0.8  # taming's configs' discriminator_weight
    disc_channels: int = 32
    disc_layers: int = 2  # 3 (pix2pix) leaves no patch map at 16x16
    limit: int | None = None  # train on the first `limit` training images only
    seed: int = 0

    def check(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"vqgan: data must be one of {DATASETS}, got {self.data!r}")
        if self.perceptual not in PERCEPTUAL:
            raise ValueError(f"vqgan: perceptual must be one of {PERCEPTUAL}, got {self.perceptual!r}")
        for name in ("steps", "batch_size", "channels", "num_codes", "code_dim", "disc_channels", "disc_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"vqgan: {name} must be a positive int, got {value!r}")
        if self.size < 4 or self.size % 4:
            raise ValueError(f"vqgan: size must be a positive multiple of 4, got {self.size}")
        if self.disc_start < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError("vqgan: disc_start must be >= 0 and limit positive (or None)")
        for name in ("perceptual_weight", "disc_weight", "dead_code_threshold"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"vqgan: {name} must be a finite number >= 0, got {value!r}")
        if not (self.lr > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("vqgan: needs lr > 0 and betas in [0, 1)")
        fits = PatchDiscriminator.max_layers(self.size, self.size)
        if self.disc_layers > fits:  # an empty patch map: say so in the run's terms
            raise ValueError(f"vqgan: disc_layers={self.disc_layers} leaves the PatchDiscriminator an empty "
                             f"patch map at {self.size}x{self.size}; use disc_layers <= {fits}")


def load_images(data: str, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) images of a data set as float32 in [-1, 1], (N, 1, size, size)."""
    from genfast.data import load_dataset

    train, test = load_dataset(data, size, 256)
    unit = lambda part: part.images.float() * (2 / 255) - 1
    train_images = unit(train)
    return (train_images[:limit] if limit is not None else train_images), unit(test)


def build_perceptual(config: VQGANConfig, vgg_weights: str | None = None,
                     lpips_weights: str | None = None) -> PerceptualLoss | None:
    if config.perceptual == "off":
        return None
    if config.perceptual == "random":
        warnings.warn("vqgan: --perceptual random uses a VGG16 with random weights: a fixed random "
                      "feature distance, not a perceptual loss (see docs/vqgan.md for the weights)",
                      UserWarning, stacklevel=3)
        with torch.random.fork_rng(devices=[]):  # its own seed: the global generator is left alone
            torch.manual_seed(config.seed)
            return PerceptualLoss(pretrained=False)
    return PerceptualLoss(backbone_weights=vgg_weights, head_weights=lpips_weights)


class VQGANTrainer:
    """VQGAN training state: the tokenizer (`model`), the PatchDiscriminator, their
    optimisers, the fixed perceptual network, the step and the history."""

    def __init__(self, config: VQGANConfig, device="cpu", *, vgg_weights: str | None = None,
                 lpips_weights: str | None = None, images: tuple[torch.Tensor, torch.Tensor] | None = None):
        config.check()
        self.config, self.device = config, torch.device(device)
        # Before the data: missing weights should stop the run at once.
        self.perceptual = build_perceptual(config, vgg_weights, lpips_weights)
        self.train_images, self.test_images = (images if images is not None
                                               else load_images(config.data, config.size, config.limit))
        if len(self.train_images) < config.batch_size:
            raise ValueError(f"vqgan: batch_size ({config.batch_size}) exceeds the "
                             f"{len(self.train_images)} training images")
        self.train_images = self.train_images.to(self.device)
        self.test_images = self.test_images.to(self.device)
        torch.manual_seed(config.seed)
        self.model = build_vqvae(dict(levels=1, size=config.size, channels=config.channels,
                                      num_codes=config.num_codes, code_dim=config.code_dim,
                                      learned_codebook=False, kmeans_init=config.kmeans_init,
                                      dead_code_threshold=config.dead_code_threshold)).to(self.device)
        self.discriminator = PatchDiscriminator(image_channels=1, hidden_channels=config.disc_channels,
                                                num_layers=config.disc_layers).to(self.device)
        if self.perceptual is not None:
            self.perceptual.to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=betas)
        self.step = 0
        self.history: list[dict] = []
        self.initial: dict = {}  # the test errors before training

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight, where the adaptive weight compares the gradients."""
        return self.model.decoder[-1].weight

    def train_step(self) -> dict:
        c, model, disc = self.config, self.model, self.discriminator
        model.train()
        disc.train()
        x = self.train_images[batch_indices(len(self.train_images), c.batch_size, c.seed, self.step)
                              .to(self.device)]
        out = model(x)
        recon = out.reconstruction
        l1 = (x - recon).abs().mean()
        distance = self.perceptual(x, recon).mean() if self.perceptual is not None else l1.new_zeros(())
        nll = l1 + c.perceptual_weight * distance
        record = {"step": self.step + 1, "l1": l1.item(), "perceptual": distance.item(),
                  "vq": out.vq.loss.item(), "perplexity": out.vq.perplexity.item()}
        adversarial = self.step >= c.disc_start
        loss = nll + out.vq.loss
        check_finite_loss("vqgan", loss.item(), self.step, c.lr)
        self.opt_g.zero_grad(set_to_none=True)
        if adversarial:
            # The GAN term's gradient first (through D and the tokenizer, not the VGG);
            # then one backward of nll + vq, whose last-layer gradient is nll's alone
            # (the VQ loss does not reach the decoder). lambda is then adaptive_weight's
            # ||grad_L nll|| / (||grad_L g|| + 1e-4), clamped to [0, 1e4], computed
            # without the second backward through the perceptual network that
            # losses.adaptive_weight(nll, g, L) would take (tests check they agree).
            disc.requires_grad_(False)  # the generator's step leaves D's gradients alone
            g_loss = gan_loss(None, disc(recon), kind="hinge", target="g")
            params = [p for p in model.parameters() if p.requires_grad]
            g_grads = torch.autograd.grad(g_loss, params, retain_graph=True, allow_unused=True)
            loss.backward()
            last = next(i for i, p in enumerate(params) if p is self.last_layer)
            weight = c.disc_weight * (torch.linalg.vector_norm(params[last].grad)
                                      / (torch.linalg.vector_norm(g_grads[last]) + ADAPTIVE_DELTA)
                                      ).clamp(0, ADAPTIVE_MAX)
            for p, g in zip(params, g_grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = weight * g
                else:
                    p.grad.add_(weight * g)
            record.update(g=g_loss.item(), weight=weight.item())
        else:
            loss.backward()
        self.opt_g.step()
        if adversarial:
            disc.requires_grad_(True)
            d_loss = gan_loss(disc(x), disc(recon.detach()), kind="hinge", target="d")
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            record["d"] = d_loss.item()
        self.step += 1
        self.history.append(record)
        return record

    @torch.no_grad()
    def evaluate(self, batch_size: int = 256) -> dict:
        """Test-set reconstruction errors (images in [-1, 1]): mean absolute and mean
        squared error per pixel, and with pretrained weights the mean LPIPS distance
        over the first LPIPS_EVAL_IMAGES test images (a random network's distance means
        nothing and is not reported)."""
        self.model.eval()
        lpips = self.perceptual if self.perceptual is not None and self.perceptual.pretrained else None
        sums = {"l1": 0.0, "mse": 0.0, "perceptual": 0.0}
        seen = 0
        for batch in self.test_images.split(batch_size):
            recon = self.model(batch).reconstruction
            sums["l1"] += (recon - batch).abs().sum().item()
            sums["mse"] += (recon - batch).square().sum().item()
            if lpips is not None and seen < LPIPS_EVAL_IMAGES:
                take = min(len(batch), LPIPS_EVAL_IMAGES - seen)
                sums["perceptual"] += lpips(batch[:take], recon[:take]).sum().item()
                seen += take
        self.model.train()
        result = {"l1": sums["l1"] / self.test_images.numel(), "mse": sums["mse"] / self.test_images.numel()}
        if lpips is not None:
            result["lpips"] = sums["perceptual"] / seen
        return result

    @torch.no_grad()
    def reconstructions(self, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        shown = self.test_images[:n]
        recon = self.model(shown).reconstruction
        self.model.train()
        return shown, recon

    def state_dict(self) -> dict:
        state = {"config": dataclasses.asdict(self.config), "step": self.step, "history": self.history,
                 "initial": self.initial, "model": self.model.state_dict(),
                 "discriminator": self.discriminator.state_dict(), "opt_g": self.opt_g.state_dict(),
                 "opt_d": self.opt_d.state_dict(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":  # dead-code restarts draw on the device's generator
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.step, self.history, self.initial = int(state["step"]), list(state["history"]), dict(state["initial"])


def load_tokenizer(path: str, device="cpu"):
    """The VQ tokenizer (a genfast.models.VQVAE, eval mode) of a `genfast train vqgan`
    checkpoint, and the run's config (a dict)."""
    state = load_checkpoint(path, kind=CHECKPOINT_KIND, required=("config", "model"), map_location=device)
    with restoring(path):
        config = VQGANConfig(**state["config"])
        model = build_vqvae(dict(levels=1, size=config.size, channels=config.channels,
                                 num_codes=config.num_codes, code_dim=config.code_dim, learned_codebook=False,
                                 kmeans_init=config.kmeans_init,
                                 dead_code_threshold=config.dead_code_threshold)).to(device)
        model.load_state_dict(state["model"])
    return model.eval(), state["config"]


@dataclasses.dataclass
class VQGANRun:
    """What train returns: the trainer, the test errors before training and now, the
    seconds this call trained, and the files written."""

    trainer: VQGANTrainer
    initial: dict
    final: dict
    seconds: float
    checkpoint: str
    reconstructions: str


def train(config: VQGANConfig, out: str, *, device="cpu", resume: bool = False, checkpoint_every: int = 250,
          progress: bool = True, vgg_weights: str | None = None, lpips_weights: str | None = None,
          images: tuple[torch.Tensor, torch.Tensor] | None = None) -> VQGANRun:
    """Trains (or, with resume, continues from OUT/checkpoint.pt) a VQGAN tokenizer.
    images: (train, test) in [-1, 1] instead of config.data's (tests)."""
    from tqdm import tqdm

    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"vqgan: checkpoint_every must be a positive int, got {checkpoint_every!r}")
    path = os.path.join(out, "checkpoint.pt")
    trainer = VQGANTrainer(config, device, vgg_weights=vgg_weights, lpips_weights=lpips_weights, images=images)
    if resume:
        resume_run(trainer, path, config, kind=CHECKPOINT_KIND, required=CHECKPOINT_KEYS, device=device,
                   name="vqgan")
    else:
        trainer.initial = trainer.evaluate()
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=trainer.step, disable=not progress, unit="step",
               desc=f"vqgan {config.data}")
    while trainer.step < config.steps:
        record = trainer.train_step()
        bar.update(1)
        postfix = {"l1": f"{record['l1']:.3f}", "perc": f"{record['perceptual']:.3f}",
                   "ppl": f"{record['perplexity']:.1f}"}
        if "d" in record:
            postfix.update(lam=f"{record['weight']:.2g}", d=f"{record['d']:.3f}")
        bar.set_postfix(postfix, refresh=False)
        if trainer.step % checkpoint_every == 0 or trainer.step == config.steps:
            save_checkpoint(path, trainer.state_dict(), kind=CHECKPOINT_KIND)
    bar.close()
    seconds = time.perf_counter() - start
    png = os.path.join(out, "reconstructions.png")
    save_unit_rows(png, list(trainer.reconstructions()))
    return VQGANRun(trainer, trainer.initial, trainer.evaluate(), seconds, path, png)
