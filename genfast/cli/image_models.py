"""Commands of the autoregressive image models: `genfast train pixelcnn|gated-pixelcnn|pixelcnnpp`,
`genfast sample pixelcnn|gated-pixelcnn|pixelcnnpp` and `genfast demo`, the main job."""
from __future__ import annotations

import argparse
import os
import time

import torch

from genfast.cli.common import device as pick_device
from genfast.cli.common import user_errors


def add_data_args(p: argparse.ArgumentParser, size: int, levels: int) -> None:
    p.add_argument("--data", default="digits",
                   help="'digits' (embedded, no download), 'fashion-mnist' (the Debian package "
                        "dataset-fashion-mnist), a folder of images (subfolders = classes) or a "
                        ".npy array (N, H, W[, C]) (default: digits)")
    p.add_argument("--labels-npy", help="labels of a .npy data set, a .npy of N integers")
    p.add_argument("--size", type=int, default=size, help=f"image side (default {size})")
    p.add_argument("--levels", type=int, default=levels,
                   help=f"values per sub-pixel (default {levels})")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 grey, 3 RGB")


def add_train_args(p: argparse.ArgumentParser, steps: int, batch_size: int, lr: float) -> None:
    p.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"global batch size (default {batch_size})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak AdamW learning rate (default {lr})")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_commands(commands, train, sample) -> None:
    from genfast.models import MODELS

    for name in MODELS:
        p = train.add_parser(name, help=f"train a {name} (AdamW; DDP under torchrun)")
        add_data_args(p, size=28, levels=256)
        add_train_args(p, steps=2000, batch_size=32, lr=1e-3)
        if name == "pixelcnnpp":
            p.add_argument("--nr-resnet", type=int, default=2,
                           help="gated ResNet blocks per stream and resolution (default 2; the paper: 5)")
            p.add_argument("--nr-filters", type=int, default=64,
                           help="channels of every block (default 64; the paper: 160)")
            p.add_argument("--num-mixtures", type=int, default=10,
                           help="logistic mixture components (default 10)")
            p.add_argument("--dropout", type=float, default=0.5,
                           help="dropout inside the blocks (default 0.5, the paper's)")
        else:
            p.add_argument("--hidden", type=int, default=64, help="channels per layer (default 64)")
        if name == "gated-pixelcnn":
            p.add_argument("--layers", type=int, default=8, help="gated layers (default 8)")
            p.add_argument("--kernel-size", type=int, default=5, help="odd, 3..11 (default 5)")
        elif name == "pixelcnn":
            p.add_argument("--blocks", type=int, default=6, help="residual blocks (default 6)")
        p.add_argument("--unconditional", action="store_true",
                       help="ignore the labels (default: class-conditional when the data has labels)")
        p.add_argument("--val-every", type=int, default=200, help="validate every N steps")
        p.add_argument("--checkpoint", default=None,
                       help=f"checkpoint path (default runs/{name}.pt); resumed when it exists")
        p.add_argument("--no-resume", action="store_true", help="start afresh over an existing checkpoint")
        p.add_argument("--impl", default="auto", choices=["auto", "ext", "reference"],
                       help=("dmol_loss / dmol_sample: genfast kernels or the composite reference"
                             if name == "pixelcnnpp" else
                             "masked layers: genfast kernels or the F.conv2d(weight*mask) reference"))
        p.set_defaults(func=_train)

        s = sample.add_parser(name, help=f"sample a trained {name} into a PNG")
        s.add_argument("--checkpoint", required=True, help="a checkpoint of `genfast train`")
        s.add_argument("--n", type=int, default=8,
                       help="images (per class when class-conditional; default 8)")
        s.add_argument("--temperature", type=float, default=1.0)
        s.add_argument("--method", choices=["cached", "naive"], default="cached",
                       help="cached (default) or naive sampling: the same images, naive is slower")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device", default=None)
        s.add_argument("--out", default="samples.png", help="PNG path (default samples.png)")
        s.set_defaults(func=_sample)

    d = commands.add_parser("demo", help="the main job: train a class-conditional Gated PixelCNN on "
                                         "the embedded digits, sample digits and completions")
    d.add_argument("--steps", type=int, default=800, help="training steps (default 800)")
    d.add_argument("--out", default="demo-out", help="folder for the PNGs (default demo-out)")
    d.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: all cores, or 1 when the machine is already busy)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo)


def backend_line(device: torch.device, model: str = "pixelcnn") -> str:
    """Which implementation impl="auto" picks for the model's genfast ops."""
    from genfast import _backend

    if model == "pixelcnnpp":
        return f"dmol_loss on {device.type}: {_backend.describe('dmol_loss', device.type)}"
    return f"masked layers on {device.type}: {_backend.describe('masked_conv2d', device.type)}"


@user_errors
def _train(args) -> int:
    import torch.distributed as dist

    from genfast.data import load_dataset
    from genfast.models import MODELS
    from genfast.training.autoregressive import evaluate, init_distributed, train

    device, distributed = init_distributed(pick_device(args.device))
    rank = dist.get_rank() if distributed else 0
    try:
        train_data, test_data = load_dataset(args.data, args.size, args.levels, args.channels,
                                             args.labels_npy)
        num_classes = None if args.unconditional else train_data.num_classes
        if num_classes is None:
            train_data.labels = test_data.labels = None
        torch.manual_seed(args.seed)
        config = dict(image_channels=args.channels, levels=args.levels,
                      num_classes=num_classes, image_size=args.size, impl=args.impl)
        if args.model == "pixelcnnpp":
            config.update(nr_resnet=args.nr_resnet, nr_filters=args.nr_filters,
                          num_mixtures=args.num_mixtures, dropout=args.dropout)
        elif args.hidden < 1 or args.hidden % args.channels:
            raise ValueError(f"--hidden must be a positive multiple of --channels "
                             f"({args.channels}), got {args.hidden}")
        else:
            config.update(hidden_channels=args.hidden)
        if args.model == "gated-pixelcnn":
            config.update(num_layers=args.layers, kernel_size=args.kernel_size)
        elif args.model == "pixelcnn":
            config.update(num_blocks=args.blocks)
        model = MODELS[args.model](**config)
        checkpoint = args.checkpoint or os.path.join("runs", f"{args.model}.pt")
        if rank == 0:
            print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters; "
                  f"data {args.data} {args.size}x{args.size}, {args.levels} levels, "
                  f"{len(train_data)} train / {len(test_data)} test images; {backend_line(device, args.model)}")
        history = train(model, train_data, val_data=test_data, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, val_every=args.val_every,
                        checkpoint=checkpoint, seed=args.seed, amp=not args.no_amp, device=device,
                        progress=not args.no_progress, resume=not args.no_resume,
                        desc=args.model)
        test_bpd = evaluate(model, test_data, device=device, amp=not args.no_amp)
        if rank == 0:
            print("step  train bits/dim  test bits/dim")
            for row in history:
                print(f"{row['step']:>5}  {row['train_bpd']:>14.4f}  {row['val_bpd']:>13.4f}")
            print(f"test bits/dim: {test_bpd:.4f}; checkpoint: {checkpoint}")
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


@user_errors
def _sample(args) -> int:
    from genfast.data import save_grid
    from genfast.models import load_model

    device = pick_device(args.device)
    if args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    model = load_model(args.checkpoint, map_location=device)
    labels, ncol, n = None, args.n, args.n
    if model.num_classes is not None:
        labels = torch.arange(model.num_classes, device=device).repeat_interleave(args.n)
        n = labels.numel()
    generator = torch.Generator(device).manual_seed(args.seed)
    start = time.perf_counter()
    images = model.sample(n, labels=labels, temperature=args.temperature, generator=generator,
                          device=device, method=args.method)
    seconds = time.perf_counter() - start
    save_grid(images, model.levels, args.out, ncol=min(ncol, n))
    name = "pixelcnnpp" if type(model).__name__ == "PixelCNNpp" else "pixelcnn"
    print(f"{n} samples ({args.method}) in {seconds:.2f} s ({backend_line(device, name)}); saved {args.out}")
    return 0


@user_errors
def _demo(args) -> int:
    from genfast import demo

    begin = time.perf_counter()
    device = pick_device(args.device)
    threads = demo.demo_threads(args.threads) if device.type == "cpu" else "GPU"
    print(f"genfast demo: a class-conditional Gated PixelCNN on scikit-learn's digits "
          f"({demo.DEMO_SIZE}x{demo.DEMO_SIZE}, {demo.DEMO_LEVELS} grey levels) on {device} "
          f"({threads}); {backend_line(device)}")
    r = demo.run_demo(steps=args.steps, out=args.out, device=device, seed=args.seed,
                      progress=not args.no_progress)
    print(f"test bits/dim: {r.test_bpd:.4f} ({r.levels} levels)")
    print(f"training: {args.steps} steps in {r.train_seconds:.1f} s")
    naive, cached = r.sample_seconds["naive"], r.sample_seconds["cached"]
    print(f"sampling {r.num_samples} digits: cached {cached:.2f} s, naive {naive:.1f} s "
          f"({naive / cached:.0f}x faster; {r.identical}/{r.num_samples} digits identical)")
    print(f"{r.num_completions} half-image completions (cached) in {r.complete_seconds:.2f} s")
    print(f"backend: {backend_line(device)}")
    print(f"saved {r.samples_png} (one row per class 0-9), {r.completions_png} (original, "
          f"given top half, {demo.DEMO_COMPLETIONS} completions), {r.checkpoint}")
    print(f"total {time.perf_counter() - begin:.1f} s")
    return 0
