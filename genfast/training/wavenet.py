"""The WaveNet trainer of `genfast train wavenet`: a small WaveNet trained end to
end on an embedded synthetic signal (genfast.data.synthesize_signal) — notes of 1 to 3 harmonics and linear chirps
with attack/decay envelopes and a little noise, synthesised with numpy from a fixed
seed at 4 kHz and mu-law quantised to 256 levels (the last 10% held out).

Training takes random crops of receptive_field + segment samples and scores the last
`segment` of each (the positions that see a full receptive field). Writes to the
run's folder: checkpoint.pt (written atomically; resume=True continues a run exactly), history.json,
and per sampling round samples_<step>.npy (the decoded waveforms), .wav and .png
(the waveforms next to a stretch of the training signal), sampled with the cached
sampler (genfast.ops.wavenet_step).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from genfast.data import SAMPLE_RATE, load_signal
from genfast.models._compat import upgrade_config
from genfast.models.wavenet import WaveNet, dilation_cycles, mu_law_decode
from genfast.plotting import plot_waveforms, write_wav
from genfast.training.checkpoint import load_checkpoint, restoring, resume_run, save_checkpoint

CHECKPOINT_KIND = "wavenet"
CHECKPOINT_KEYS = ("config", "model_config", "model", "optimizer", "rng", "step", "history")


@dataclasses.dataclass
class WaveNetTrainConfig:
    steps: int = 200
    batch_size: int = 8
    segment: int = 128  # scored samples per crop
    residual_channels: int = 32
    kernel_size: int = 2
    cycles: int = 2
    cycle_length: int = 6  # dilations 1 .. 32 per cycle: a receptive field of 127 samples
    lr: float = 1e-2
    seconds: float = 60.0  # length of the synthetic signal
    seed: int = 0

    def check(self) -> None:
        for name in ("steps", "batch_size", "segment", "residual_channels", "kernel_size", "cycles",
                     "cycle_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"wavenet: {name} must be positive, got {getattr(self, name)}")
        if not (self.lr > 0 and self.seconds > 0):
            raise ValueError("wavenet: needs lr > 0 and seconds > 0")


# ------------------------------------------------------------------------- trainer

class WaveNetTrainer:
    """Model, optimiser, the random generator of the crops, step and history."""

    def __init__(self, config: WaveNetTrainConfig, device: str = "cpu", impl: str = "auto"):
        config.check()
        self.config, self.device = config, torch.device(device)
        torch.manual_seed(config.seed)
        r = config.residual_channels
        self.model = WaveNet(residual_channels=r, kernel_size=config.kernel_size,
                             dilations=dilation_cycles(config.cycles, config.cycle_length),
                             impl=impl).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.gen = torch.Generator().manual_seed(config.seed + 1)
        self.train_signal, self.val_signal = load_signal(config.seconds, config.seed)
        self.crop = self.model.receptive_field + config.segment
        if len(self.val_signal) < self.crop:
            raise ValueError(f"wavenet: the held-out signal ({len(self.val_signal)} samples) is shorter "
                             f"than a crop ({self.crop}); use more --seconds")
        self.step = 0
        self.history: list[dict] = []
        self.last_sampling_seconds: float | None = None  # of the last sampling round

    def crops(self, signal: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        start = torch.randint(0, len(signal) - self.crop + 1, (n,), generator=gen)
        return torch.stack([signal[s: s + self.crop] for s in start.tolist()]).to(self.device)

    def scored_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean NLL (nats) of the last `segment` samples of each crop."""
        rf = self.model.receptive_field
        return F.cross_entropy(self.model(x)[:, :, rf:], x[:, rf:])

    def train_step(self) -> dict:
        self.model.train()
        loss = self.scored_loss(self.crops(self.train_signal, self.config.batch_size, self.gen))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        record = {"step": self.step, "bits": loss.item() / math.log(2)}
        self.history.append(record)
        return record

    @torch.no_grad()
    def validation_bits(self) -> float:
        """Bits per sample on 16 fixed crops of the held-out signal."""
        self.model.eval()
        x = self.crops(self.val_signal, 16, torch.Generator().manual_seed(1234))
        return self.scored_loss(x).item() / math.log(2)

    def state_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "model_config": self.model.config,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.gen.get_state(), "step": self.step, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["rng"])
        self.step, self.history = state["step"], list(state["history"])


def read_checkpoint(path: str, device: str = "cpu") -> dict:
    """The state of a WaveNet checkpoint (a one-line CheckpointError when unusable)."""
    return load_checkpoint(path, kind=CHECKPOINT_KIND, required=CHECKPOINT_KEYS, map_location=device)


def load_model(path: str, device: str = "cpu") -> tuple[WaveNet, int]:
    """The model of a checkpoint (eval mode) and its training step."""
    state = read_checkpoint(path, device)
    with restoring(path):
        model = WaveNet(**upgrade_config("WaveNet", state["model_config"])).to(device)
        model.load_state_dict(state["model"])
        return model.eval(), int(state["step"])


# ---------------------------------------------------------------------------- output

def save_samples(levels: torch.Tensor, prefix: str, title: str, reference: torch.Tensor | None = None) -> None:
    """prefix.npy (n, T) float32 waveforms, prefix.wav (the sequences one after another)
    and prefix.png (each sequence, and a stretch of `reference` levels for comparison)."""
    waves = mu_law_decode(levels.cpu()).numpy()
    np.save(f"{prefix}.npy", waves)
    write_wav(f"{prefix}.wav", waves.reshape(-1), SAMPLE_RATE)
    ref = None if reference is None else mu_law_decode(reference[: waves.shape[1]]).numpy()
    plot_waveforms(f"{prefix}.png", waves, SAMPLE_RATE, title, ref)


def draw_samples(model: WaveNet, n: int, length: int, seed: int, method: str = "cached",
                 temperature: float = 1.0) -> tuple[torch.Tensor, float]:
    """(samples, seconds taken)."""
    start = time.perf_counter()
    samples = model.sample(n, length, generator=torch.Generator().manual_seed(seed), method=method,
                           temperature=temperature)
    return samples, time.perf_counter() - start


# ------------------------------------------------------------------------- training run

def train(config: WaveNetTrainConfig, out: str, *, device: str = "cpu", impl: str = "auto",
          resume: bool = False, sample_every: int = 0, checkpoint_every: int = 100,
          sample_length: int = SAMPLE_RATE, num_samples: int = 2, progress: bool = True) -> WaveNetTrainer:
    """Trains (or, with resume, continues) a run in folder `out`; draws num_samples
    sequences every `sample_every` steps (0: at the end only) and at the end."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "checkpoint.pt")
    trainer = WaveNetTrainer(config, device=device, impl=impl)
    if resume:
        resume_run(trainer, path, config, kind=CHECKPOINT_KIND, required=CHECKPOINT_KEYS,
                   device=device, name="wavenet")

    def checkpoint():
        trainer.history[-1]["validation_bits"] = trainer.validation_bits()
        save_checkpoint(path, trainer.state_dict(), kind=CHECKPOINT_KIND)
        with open(os.path.join(out, "history.json"), "w") as f:
            json.dump(trainer.history, f)

    def sample():
        samples, seconds = draw_samples(trainer.model, num_samples, sample_length, seed=config.seed)
        title = (f"WaveNet step {trainer.step}: {num_samples} x {sample_length} samples in {seconds:.1f} s "
                 f"(cached sampler, {num_samples * sample_length / seconds:.0f} samples/s)")
        save_samples(samples, os.path.join(out, f"samples_{trainer.step:06d}"), title, trainer.val_signal)
        trainer.last_sampling_seconds = seconds

    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=trainer.step, disable=not progress, unit="step", desc="wavenet")
    while trainer.step < config.steps:
        record = trainer.train_step()
        bar.update(1)
        bar.set_postfix(bits=f"{record['bits']:.3f}")
        done = trainer.step == config.steps
        if done or trainer.step % checkpoint_every == 0:
            checkpoint()
        if num_samples and (done or (sample_every and trainer.step % sample_every == 0)):
            sample()
    bar.close()
    return trainer
