"""`genfast train wavenet` and `genfast sample wavenet`: a small WaveNet trained end to
end on an embedded synthetic signal — notes of 1 to 3 harmonics and linear chirps
with attack/decay envelopes and a little noise, synthesised with numpy from a fixed
seed at 4 kHz and mu-law quantised to 256 levels (the last 10% held out).

Training takes random crops of receptive_field + segment samples and scores the last
`segment` of each (the positions that see a full receptive field). Writes to --out:
checkpoint.pt (written atomically; --resume continues a run exactly), history.json,
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
import wave

import numpy as np
import torch
import torch.nn.functional as F

from genfast.models.wavenet import WaveNet, dilation_cycles, mu_law_decode, mu_law_encode
from genfast.train import save_checkpoint

SAMPLE_RATE = 4000


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


# ---------------------------------------------------------------------------- data

def synthesize_signal(seconds: float, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A float32 waveform in [-1, 1]: a sequence of events 0.15 to 0.6 s long, each a
    note (fundamental 110 to 660 Hz with 1 to 3 harmonics) or a linear chirp, under an
    attack/decay envelope, plus white noise at -54 dB. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    total = int(seconds * sample_rate)
    out = np.zeros(total, dtype=np.float64)
    pos = 0
    while pos < total:
        n = int(rng.uniform(0.15, 0.6) * sample_rate)
        t = np.arange(n) / sample_rate
        if rng.random() < 0.7:
            f0 = 110.0 * 2 ** (rng.integers(0, 32) / 12)  # a semitone of A2 .. E5
            event = sum(0.6 ** h * np.sin(2 * np.pi * f0 * (h + 1) * t + rng.uniform(0, 2 * np.pi))
                        for h in range(rng.integers(1, 4)))
        else:
            f0, f1 = rng.uniform(100, 900, size=2)
            event = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
        attack = min(n, int(0.01 * sample_rate))
        envelope = np.exp(-t * rng.uniform(1, 6))
        envelope[:attack] *= np.linspace(0, 1, attack)
        chunk = rng.uniform(0.3, 0.9) * event * envelope
        out[pos: pos + n] += chunk[: total - pos]
        pos += n
    out += 0.002 * rng.standard_normal(total)
    return (0.95 * out / np.abs(out).max()).astype(np.float32)


def load_signal(config: WaveNetTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) mu-law levels, int64 1-D: the first 90% and the last 10%."""
    levels = mu_law_encode(torch.from_numpy(synthesize_signal(config.seconds, seed=config.seed)))
    split = int(0.9 * len(levels))
    return levels[:split], levels[split:]


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
        self.train_signal, self.val_signal = load_signal(config)
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


def load_model(path: str, device: str = "cpu") -> tuple[WaveNet, int]:
    """The model of a checkpoint (eval mode) and its training step."""
    state = torch.load(path, map_location=device, weights_only=True)
    model = WaveNet(**state["model_config"]).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state["step"]


# ---------------------------------------------------------------------------- output

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_wav(path: str, waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """A mono 16-bit PCM WAV file of a waveform in [-1, 1]."""
    pcm = (np.clip(waveform, -1, 1) * 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def save_samples(levels: torch.Tensor, prefix: str, title: str, reference: torch.Tensor | None = None) -> None:
    """prefix.npy (n, T) float32 waveforms, prefix.wav (the sequences one after another)
    and prefix.png (each sequence, and a stretch of `reference` levels for comparison)."""
    waves = mu_law_decode(levels.cpu()).numpy()
    np.save(f"{prefix}.npy", waves)
    write_wav(f"{prefix}.wav", waves.reshape(-1))
    plt = _pyplot()
    rows = len(waves) + (reference is not None)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.6 * rows), sharex=True, squeeze=False)
    t = np.arange(waves.shape[1]) / SAMPLE_RATE
    for i, w in enumerate(waves):
        axes[i, 0].plot(t, w, lw=0.4)
        axes[i, 0].set_ylabel(f"sample {i}")
    if reference is not None:
        ref = mu_law_decode(reference[: waves.shape[1]]).numpy()
        axes[-1, 0].plot(t[: len(ref)], ref, lw=0.4, color="tab:orange")
        axes[-1, 0].set_ylabel("training")
    for ax in axes[:, 0]:
        ax.set_ylim(-1, 1)
    axes[-1, 0].set_xlabel("seconds")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=90)
    plt.close(fig)


def draw_samples(model: WaveNet, n: int, length: int, seed: int, method: str = "cached",
                 temperature: float = 1.0) -> tuple[torch.Tensor, float]:
    """(samples, seconds taken)."""
    start = time.perf_counter()
    samples = model.sample(n, length, generator=torch.Generator().manual_seed(seed), method=method,
                           temperature=temperature)
    return samples, time.perf_counter() - start


# ------------------------------------------------------------------------------ CLI

def train(config: WaveNetTrainConfig, out: str, *, device: str = "cpu", impl: str = "auto",
          resume: bool = False, sample_every: int = 0, checkpoint_every: int = 100,
          sample_length: int = SAMPLE_RATE, num_samples: int = 2, progress: bool = True) -> WaveNetTrainer:
    """Trains (or, with resume, continues) a run in folder `out`; draws num_samples
    sequences every `sample_every` steps (0: at the end only) and at the end."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "checkpoint.pt")
    trainer = WaveNetTrainer(config, device=device, impl=impl)
    if resume:
        if not os.path.exists(path):
            raise FileNotFoundError(f"wavenet: --resume but there is no checkpoint at {path}")
        state = torch.load(path, map_location=device, weights_only=True)
        saved = dict(state["config"], steps=config.steps)
        if saved != dataclasses.asdict(config):
            diff = [f"{k} {saved[k]!r} -> {v!r}"
                    for k, v in dataclasses.asdict(config).items() if saved[k] != v]
            raise ValueError(f"wavenet: --resume with settings that differ from {path}: {', '.join(diff)}")
        trainer.load_state_dict(state)

    def checkpoint():
        trainer.history[-1]["validation_bits"] = trainer.validation_bits()
        save_checkpoint(path, trainer.state_dict())
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


def _train_command(args) -> int:
    config = WaveNetTrainConfig(steps=args.steps, batch_size=args.batch_size, segment=args.segment,
                                residual_channels=args.residual_channels, kernel_size=args.kernel_size,
                                cycles=args.cycles, cycle_length=args.cycle_length, lr=args.lr,
                                seconds=args.seconds, seed=args.seed)
    start = time.perf_counter()
    trainer = train(config, args.out, device=args.device, impl=args.impl, resume=args.resume,
                    sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
                    sample_length=args.sample_length, num_samples=args.num_samples,
                    progress=not args.quiet)
    model = trainer.model
    print(f"wavenet: {len(model.dilations)} layers, {model.residual_channels} residual channels, "
          f"receptive field {model.receptive_field} samples; {trainer.step} steps in "
          f"{time.perf_counter() - start:.1f} s on {args.device}")
    last = trainer.history[-1] if trainer.history else {}
    print(f"train {last.get('bits', float('nan')):.3f} bits/sample, held-out "
          f"{last.get('validation_bits', float('nan')):.3f} bits/sample (8 bits: uniform over 256 levels)")
    if trainer.last_sampling_seconds is not None:
        seconds = trainer.last_sampling_seconds
        print(f"sampled {args.num_samples} x {args.sample_length} in {seconds:.2f} s "
              f"({args.num_samples * args.sample_length / seconds:.0f} samples/s, cached)")
    print(f"wrote {args.out}/checkpoint.pt, history.json, samples_*.npy/.wav/.png")
    return 0


def _sample_command(args) -> int:
    model, step = load_model(args.checkpoint, device=args.device)
    samples, seconds = draw_samples(model, args.num, args.length, args.seed, args.method, args.temperature)
    prefix = args.out[:-4] if args.out.endswith(".npy") else args.out
    save_samples(samples, prefix, f"WaveNet step {step}: {args.method} sampling, {seconds:.1f} s")
    print(f"{args.method}: {args.num} x {args.length} samples in {seconds:.2f} s "
          f"({args.num * args.length / seconds:.0f} samples/s); wrote {prefix}.npy, .wav, .png")
    return 0


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_commands(commands, train_commands, sample_commands) -> None:
    d = WaveNetTrainConfig()
    p = train_commands.add_parser("wavenet", help="a small WaveNet on a synthetic tone/chirp signal",
                                  description=__doc__)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--segment", type=int, default=d.segment, help="scored samples per crop")
    p.add_argument("--residual-channels", type=int, default=d.residual_channels)
    p.add_argument("--kernel-size", type=int, default=d.kernel_size)
    p.add_argument("--cycles", type=int, default=d.cycles, help="dilation cycles")
    p.add_argument("--cycle-length", type=int, default=d.cycle_length, help="layers per cycle (1, 2, 4, ...)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of the synthetic signal")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=_default_device())
    p.add_argument("--impl", choices=("auto", "ext", "reference"), default="auto",
                   help="implementation of the sampling step")
    p.add_argument("--out", default=os.path.join("runs", "wavenet"))
    p.add_argument("--sample-every", type=int, default=0, help="0: sample at the end only")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--sample-length", type=int, default=SAMPLE_RATE, help="samples per sequence (4000 = 1 s)")
    p.add_argument("--num-samples", type=int, default=2, help="sequences per sampling round (0: none)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_command)

    s = sample_commands.add_parser("wavenet", help="sample a WaveNet checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", default="wavenet_samples", help="output prefix (.npy, .wav, .png)")
    s.add_argument("--num", type=int, default=2)
    s.add_argument("--length", type=int, default=SAMPLE_RATE)
    s.add_argument("--method", choices=("cached", "naive"), default="cached")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=_default_device())
    s.set_defaults(func=_sample_command)
