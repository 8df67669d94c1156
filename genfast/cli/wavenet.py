"""`genfast train wavenet` and `genfast sample wavenet` (the trainer:
genfast.training.wavenet)."""
from __future__ import annotations

import os
import time

from genfast.cli.common import default_device, user_errors
from genfast.data import SAMPLE_RATE


@user_errors
def _train_command(args) -> int:
    from genfast.training.wavenet import WaveNetTrainConfig, train

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


@user_errors
def _sample_command(args) -> int:
    from genfast.training.wavenet import draw_samples, load_model, save_samples

    model, step = load_model(args.checkpoint, device=args.device)
    samples, seconds = draw_samples(model, args.num, args.length, args.seed, args.method, args.temperature)
    prefix = args.out[:-4] if args.out.endswith(".npy") else args.out
    save_samples(samples, prefix, f"WaveNet step {step}: {args.method} sampling, {seconds:.1f} s")
    print(f"{args.method}: {args.num} x {args.length} samples in {seconds:.2f} s "
          f"({args.num * args.length / seconds:.0f} samples/s); wrote {prefix}.npy, .wav, .png")
    return 0


def add_commands(commands, train_commands, sample_commands) -> None:
    from genfast.training import wavenet

    d = wavenet.WaveNetTrainConfig()
    p = train_commands.add_parser("wavenet", help="a small WaveNet on a synthetic tone/chirp signal",
                                  description=wavenet.__doc__)
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
    p.add_argument("--device", default=default_device())
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
    s.add_argument("--device", default=default_device())
    s.set_defaults(func=_sample_command)
