"""masked_conv2d against the peers a PixelCNN user would otherwise run:
F.conv2d with weight * mask (every public PixelCNN; the baseline) and PixelCNN++-style
shifted dense convolutions (the masked kernel split into dense sub-kernels), and
genfast's own algorithms one by one (live_tap, decomposed, dense) next to
algorithm="auto", which should be within a few percent of the fastest of them. Each
genfast row records in extra_info["algorithms"] what ran per phase (for "auto": what the
autotuner chose on this machine). Each layer runs on NCHW and on channels-last
activations (every peer in the same layout; PixelCNN runs channels-last on the CPU)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import record, synced

from genfast.ops import masked_conv2d, masked_conv2d_reference
from genfast.ops.masked_conv2d import chosen_algorithms

# (batch, in_channels, out_channels, kernel, mask): layers of real models at 32x32.
CASES = [
    (16, 128, 128, 7, "A"),
    (16, 128, 128, 3, "B"),
    (16, 3, 128, 7, "A"),
    (32, 64, 64, 7, "A"),
    (64, 256, 256, 3, "B"),
]
QUICK_CASES = CASES[:2]


def shifted_dense_conv2d(x, weight, bias, mask_type):
    """The rows above the centre as one dense conv, the live part of the centre row
    as another (one colour group, dilation 1)."""
    kh, kw = weight.shape[2:]
    ch, cw = kh // 2, kw // 2
    h, w = x.shape[2:]
    width = cw + (mask_type == "B")
    out = None
    if ch > 0:
        out = F.conv2d(F.pad(x, (cw, cw, ch, 0)), weight[:, :, :ch, :])[:, :, :h, :]
    if width > 0:
        row = F.conv2d(F.pad(x, (cw, 0, 0, 0)), weight[:, :, ch:ch + 1, :width])[:, :, :, :w]
        out = row if out is None else out + row
    return out + bias.view(1, -1, 1, 1)


def genfast(algorithm):
    return lambda x, w, b, m: masked_conv2d(x, w, b, mask_type=m, algorithm=algorithm)


IMPLS = {
    "genfast auto": genfast("auto"),
    "genfast live_tap": genfast("live_tap"),
    "genfast decomposed": genfast("decomposed"),
    "genfast dense": genfast("dense"),
    "F.conv2d(weight*mask)": lambda x, w, b, m: masked_conv2d_reference(x, w, b, mask_type=m),
    "shifted dense convs (PixelCNN++)": shifted_dense_conv2d,
}


def dtypes(device):
    return [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-{}to{}-{}x{}{}".format(c[0], c[1], c[2], c[3], c[3], c[4]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_masked_conv2d(benchmark, bench_device, quick, impl, mode, case, dtype, layout):
    if quick and case not in QUICK_CASES:
        pytest.skip("not in --quick")
    if dtype not in dtypes(bench_device):
        pytest.skip(f"{dtype} is benchmarked on CUDA only")
    batch, cin, cout, k, mask_type = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, 32, 32, generator=gen).to(bench_device, dtype)
    w = (torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5).to(bench_device, dtype)
    b = torch.randn(cout, generator=gen).to(bench_device, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    fn = IMPLS[impl]
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(x, w, b, mask_type)
    else:
        x.requires_grad_(), w.requires_grad_(), b.requires_grad_()

        def step():
            out = fn(x, w, b, mask_type)
            torch.autograd.grad(out, (x, w, b), torch.ones_like(out))
    torch.testing.assert_close(fn(x, w, b, mask_type), masked_conv2d_reference(x, w, b, mask_type=mask_type),
                               rtol=2e-2, atol=2e-2)  # every peer computes the same layer
    group = (f"masked_conv2d {mode} b{batch} {cin}->{cout} {k}x{k}{mask_type} 32x32 {str(dtype)[6:]} "
             f"{layout} {bench_device}")
    record(benchmark, group, impl, baseline=impl == "F.conv2d(weight*mask)")
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    if impl.startswith("genfast"):
        algorithm = impl.removeprefix("genfast ")
        ran = (chosen_algorithms(x, w, mask_type=mask_type) if algorithm == "auto"
               else dict.fromkeys(("forward", "grad_input", "grad_weight"), algorithm))
        if mode == "fwd":
            ran = {"forward": ran["forward"]}
        benchmark.extra_info["algorithms"] = ran
    rounds = 20 if bench_device == "cuda" else (3 if quick else 5)
    benchmark.pedantic(synced(step, bench_device), rounds=rounds, warmup_rounds=1)
