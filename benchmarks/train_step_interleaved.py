"""The training steps of test_bench_models.py (PixelCNN / Gated PixelCNN, genfast vs the
same model with weight*mask layers, NCHW and channels-last) and of test_bench_pixelcnnpp.py
(PixelCNN++, genfast vs the same network in plain PyTorch) timed in interleaved rounds:
every variant runs one step per round, in rotating order, so drift and bursts of load on
a shared machine hit all of them alike (pytest-benchmark times one variant after
another). Prints per variant the median and minimum step time, the speed-up of the
medians over the baseline (NCHW weight*mask; the NCHW plain-PyTorch PixelCNN++) and the
step's peak memory above what exists before it (the profiler's allocation events), with
the CPU model string.

    python benchmarks/train_step_interleaved.py [--rounds N] [case ...]

cases: pixelcnn-1x28, gated-pixelcnn-1x28, pixelcnn-3x32, gated-pixelcnn-3x32,
pixelcnnpp-1x28, pixelcnnpp-3x32 (default: all).
"""
import argparse
import statistics
import time

import torch
from conftest import cpu_model, peak_memory_mb, training_step
from test_bench_models import IMPLS, TRAIN_CASES, build, case_id, describe
from test_bench_pixelcnnpp import CASES as PP_CASES, TRAIN_IMPLS as PP_IMPLS

from genfast.models import PixelCNNpp


def warm_step(model, x):
    step = training_step(model, x)
    step()  # autotuning and warm-up
    step()
    return step


def masked_cases(wanted):
    """(case, title, {variant: step}, baseline) per wanted test_bench_models training case."""
    for case in TRAIN_CASES:
        if not wanted(case_id(case)):
            continue
        name, channels, side, config, batch = case
        x = torch.randint(0, 256, (batch, channels, side, side), generator=torch.Generator().manual_seed(1))
        steps = {impl: warm_step(build(name, channels, side, config, 256, *variant, "cpu"), x)
                 for impl, variant in IMPLS.items()}
        yield case_id(case), f"{describe(name, config)} b{batch} {channels}x{side}x{side}", steps, \
            "F.conv2d(weight*mask)"


def pixelcnnpp_cases(wanted):
    """The same for test_bench_pixelcnnpp's training step (batch 16, dropout 0.5)."""
    for config in PP_CASES.values():
        c, side = config["image_channels"], config["image_size"]
        if not wanted(f"pixelcnnpp-{c}x{side}"):
            continue
        steps = {}
        for impl, (layer_impl, memory_format) in PP_IMPLS.items():
            torch.manual_seed(0)
            model = PixelCNNpp(impl=layer_impl, memory_format=memory_format, **dict(config, dropout=0.5)).train()
            x = torch.randint(0, 256, (16, model.image_channels, *model.image_size),
                              generator=torch.Generator().manual_seed(1))
            steps[impl] = warm_step(model, x)
        yield f"pixelcnnpp-{c}x{side}", f"PixelCNN++ r{config['nr_resnet']} f{config['nr_filters']} b16 {c}x{side}x{side}", \
            steps, "plain PyTorch port (NCHW)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("cases", nargs="*")
    args = parser.parse_args()
    print(f"Machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    wanted = lambda case: not args.cases or case in args.cases  # noqa: E731
    for cases in (masked_cases, pixelcnnpp_cases):
        for _, title, steps, baseline in cases(wanted):
            times = {impl: [] for impl in steps}
            order = list(steps)
            for r in range(args.rounds):
                for impl in order[r % len(order):] + order[:r % len(order)]:
                    start = time.perf_counter()
                    steps[impl]()
                    times[impl].append(time.perf_counter() - start)
            base = statistics.median(times[baseline])
            print(f"\n{title}, {args.rounds} interleaved rounds")
            print("| implementation | median ms | min ms | speed-up (medians) | peak MiB |\n|---|---:|---:|---:|---:|")
            for impl, ts in times.items():
                med = statistics.median(ts)
                peak = peak_memory_mb(steps[impl], "cpu")
                print(f"| {impl} | {med * 1e3:.1f} | {min(ts) * 1e3:.1f} | {base / med:.2f}x | {peak:.1f} |")


if __name__ == "__main__":
    main()
