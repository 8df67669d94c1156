"""Test-set likelihoods on Fashion-MNIST (28x28, 256 levels) of a VAE (IWAE bound) and a
class-conditional Gated PixelCNN or PixelCNN++ trained for a stated CPU budget, on the
same first `--eval` test images: the figures docs/density-and-vae.md and
docs/pixelcnnpp.md report. Needs the Debian package dataset-fashion-mnist. One model
per run (--model vae | gated | pixelcnnpp), so they can run side by side, one thread
each:

    OMP_NUM_THREADS=1 python benchmarks/fashion_mnist_likelihoods.py --model vae --steps 600
    OMP_NUM_THREADS=1 python benchmarks/fashion_mnist_likelihoods.py --model gated --steps 600
    OMP_NUM_THREADS=1 python benchmarks/fashion_mnist_likelihoods.py --model pixelcnnpp --steps 600

--samples PATH also saves a grid of samples (autoregressive models; 4 per class).
"""
import argparse
import json
import time

import torch

from genfast.data import ImageData, load_fashion_mnist, save_grid
from genfast.metrics import importance_weighted_nll
from genfast.models import VAE, GatedPixelCNN, PixelCNNpp
from genfast.training.autoregressive import evaluate, train
from genfast.training.vae import train_vae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["vae", "gated", "pixelcnnpp"], required=True)
    p.add_argument("--samples", default=None, help="PNG of samples (autoregressive models)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval", type=int, default=1000, help="test images evaluated (default 1000)")
    p.add_argument("--k", type=int, default=100, help="IWAE samples (default 100)")
    args = p.parse_args()
    torch.manual_seed(0)
    train_set = load_fashion_mnist(split="train")
    test_full = load_fashion_mnist(split="test")
    test_set = ImageData(test_full.images[:args.eval], test_full.labels[:args.eval], 256, num_classes=10)
    start = time.process_time()
    if args.model == "vae":
        model = VAE(image_channels=1, hidden_channels=32, latent_dim=16, image_size=28, levels=256)
        train_vae(model, train_set, steps=args.steps, batch_size=64, lr=2e-3, progress=False)
        trained = time.process_time() - start
        result = importance_weighted_nll(model, test_set.images, k=args.k, chunk=min(50, args.k),
                                         batch_size=100, generator=torch.Generator().manual_seed(0))
        figure = {"iwae_bits_per_dim": result.bits_per_dim, "k": args.k}
    else:
        if args.model == "gated":
            model = GatedPixelCNN(image_channels=1, levels=256, hidden_channels=32, num_layers=6,
                                  kernel_size=5, num_classes=10, image_size=28)
        else:
            model = PixelCNNpp(image_channels=1, levels=256, nr_resnet=1, nr_filters=32, num_mixtures=5,
                               dropout=0.0, num_classes=10, image_size=28)
        train(model, train_set, steps=args.steps, batch_size=16, lr=2e-3, progress=False)
        trained = time.process_time() - start
        figure = {"bits_per_dim": evaluate(model, test_set)}
    # The figure first: a failure while sampling must not lose a long training's result.
    print(json.dumps({"model": args.model, "steps": args.steps, "train_cpu_s": round(trained, 1),
                      "eval_images": args.eval, **figure}), flush=True)
    if args.samples and args.model != "vae":
        began = time.perf_counter()
        images = model.eval().sample(40, labels=torch.arange(10).repeat_interleave(4),
                                     generator=torch.Generator().manual_seed(0))
        save_grid(images, 256, args.samples, ncol=4)
        print(json.dumps({"samples": args.samples, "sample_s": round(time.perf_counter() - began, 1)}))


if __name__ == "__main__":
    main()
