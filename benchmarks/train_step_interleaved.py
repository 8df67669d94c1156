"""The training steps of test_bench_models.py (PixelCNN / Gated PixelCNN, genfast vs the
same model with weight*mask layers, NCHW and channels-last) timed in interleaved rounds:
every variant runs one step per round, in rotating order, so drift and bursts of load on a
shared machine hit all of them alike (pytest-benchmark times one variant after another).
Prints per variant the median and minimum step time, the speed-up of the medians over
the NCHW weight*mask baseline and the step's peak memory above what exists before it
(the profiler's allocation events), with the CPU model string.

    python benchmarks/train_step_interleaved.py [--rounds N] [case ...]

cases: pixelcnn-1x28, gated-pixelcnn-1x28, pixelcnn-3x32, gated-pixelcnn-3x32 (default: all).
"""
import argparse
import statistics
import time

import torch
from conftest import cpu_model, peak_memory_mb
from test_bench_models import IMPLS, TRAIN_CASES, build, case_id, describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("cases", nargs="*")
    args = parser.parse_args()
    print(f"Machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for case in TRAIN_CASES:
        if args.cases and case_id(case) not in args.cases:
            continue
        name, channels, side, config, batch = case
        gen = torch.Generator().manual_seed(1)
        x = torch.randint(0, 256, (batch, channels, side, side), generator=gen)
        steps = {}
        for impl, (layer_impl, algorithm, memory_format) in IMPLS.items():
            model = build(name, channels, side, config, 256, layer_impl, algorithm, memory_format, "cpu")

            def step(model=model):
                model.zero_grad(set_to_none=True)
                model.loss(x).backward()
            step()  # autotuning and warm-up
            step()
            steps[impl] = step
        times = {impl: [] for impl in steps}
        order = list(steps)
        for r in range(args.rounds):
            for impl in order[r % len(order):] + order[:r % len(order)]:
                start = time.perf_counter()
                steps[impl]()
                times[impl].append(time.perf_counter() - start)
        base = statistics.median(times["F.conv2d(weight*mask)"])
        print(f"\n{describe(name, config)} b{batch} {channels}x{side}x{side}, {args.rounds} interleaved rounds")
        print("| implementation | median ms | min ms | speed-up (medians) | peak MiB |\n|---|---:|---:|---:|---:|")
        for impl, ts in times.items():
            med = statistics.median(ts)
            peak = peak_memory_mb(steps[impl], "cpu")
            print(f"| {impl} | {med * 1e3:.1f} | {min(ts) * 1e3:.1f} | {base / med:.2f}x | {peak:.1f} |")


if __name__ == "__main__":
    main()
