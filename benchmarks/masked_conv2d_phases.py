"""masked_conv2d per phase (forward, input gradient, weight gradient): each of genfast's
algorithms (live_tap, decomposed, dense) timed alone on the benchmark layers of
test_bench_masked_conv2d.py, float32, CPU — where the live-tap kernel wins or loses
against the decomposition (the same live taps run by oneDNN), phase by phase. The
algorithms run in interleaved rounds (a burst of load from other processes hits them
alike); the minimum per algorithm is printed, with the ratio decomposed / live_tap.

    python benchmarks/masked_conv2d_phases.py [--extra] [--channels-last] [--first N]
                                              [forward] [grad_input] [grad_weight]

--channels-last runs every layer on channels-last tensors; --first N only the first N
layers; --extra adds small-K layers (1x3 'B', a 1-channel 7x7 'A' first layer, a colour-masked
1x1 'B'). Print the machine's CPU model string with the figures (docs/masked-conv-algorithms.md).
"""
import importlib
import sys
import time

import torch
from conftest import cpu_model

mc = importlib.import_module("genfast.ops.masked_conv2d")

# (batch, in_channels, out_channels, kernel, mask, colour groups), 32x32 images.
CASES = [(16, 128, 128, (7, 7), "A", 1), (16, 128, 128, (3, 3), "B", 1), (16, 3, 128, (7, 7), "A", 1),
         (32, 64, 64, (7, 7), "A", 1), (64, 256, 256, (3, 3), "B", 1)]
EXTRA = [(16, 64, 64, (1, 3), "B", 1), (16, 1, 64, (7, 7), "A", 1), (16, 96, 96, (1, 1), "B", 3)]
PHASES = ("forward", "grad_input", "grad_weight")


def thunks(phase, x, w, g, mask_type, groups):
    if phase == "forward":
        return {a: (lambda a=a: mc._forward(a, x, w, None, (1, 1), mask_type, groups)) for a in mc.ALGORITHMS}
    if phase == "grad_input":
        return {a: (lambda a=a: mc._grad_input(a, g, x.shape, w, (1, 1), mask_type, groups))
                for a in mc.ALGORITHMS}
    return {a: (lambda a=a: mc._grad_weight(a, g, x, w.shape, (1, 1), mask_type, groups)) for a in mc.ALGORITHMS}


def main() -> None:
    args = sys.argv[1:]
    phases = [p for p in PHASES if p in args] or list(PHASES)
    cases = CASES + (EXTRA if "--extra" in args else [])
    if "--first" in args:
        cases = cases[:int(args[args.index("--first") + 1])]
    layout = torch.channels_last if "--channels-last" in args else torch.contiguous_format
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'channels-last' if layout == torch.channels_last else 'NCHW'}; ms (min of interleaved rounds)")
    gen = torch.Generator().manual_seed(0)
    for batch, cin, cout, (kh, kw), mask_type, groups in cases:
        x = torch.randn(batch, cin, 32, 32, generator=gen).contiguous(memory_format=layout)
        w = torch.randn(cout, cin, kh, kw, generator=gen) / (cin * kh * kw) ** 0.5
        g = torch.randn(batch, cout, 32, 32, generator=gen).contiguous(memory_format=layout)
        rounds = 3 if batch * cin * cout > 16 * 128 * 128 else 7
        cells = []
        for phase in phases:
            runs = thunks(phase, x, w, g, mask_type, groups)
            best = dict.fromkeys(runs, float("inf"))
            for run in runs.values():
                run()  # warm-up: oneDNN primitives, first-touch allocations
            for _ in range(rounds):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
            cells.append(f"{phase}: " + " ".join(f"{a} {best[a]:.1f}" for a in mc.ALGORITHMS)
                         + f" (decomposed/live_tap {best['decomposed'] / best['live_tap']:.2f}x)")
        print(f"b{batch} {cin}->{cout} {kh}x{kw}{mask_type} groups{groups}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
