"""PixelCNN and Gated PixelCNN: a training step (forward + backward) with genfast's
masked layers against the same model whose masked layers run F.conv2d(weight * mask)
(impl="reference", what public PixelCNNs do; the baseline), and naive sampling time
per batch (the baseline a cached sampler has to beat)."""
import pytest
import torch
from conftest import record, synced

from genfast.models import GatedPixelCNN, PixelCNN

# (model, channels, side, config, batch): grey digits-sized and CIFAR-sized RGB models.
TRAIN_CASES = [
    ("pixelcnn", 1, 28, dict(hidden=64, num_blocks=6), 16),
    ("gated-pixelcnn", 1, 28, dict(hidden=64, num_layers=8, kernel_size=5), 16),
    ("pixelcnn", 3, 32, dict(hidden=96, num_blocks=6), 8),
    ("gated-pixelcnn", 3, 32, dict(hidden=96, num_layers=8, kernel_size=5), 8),
]
QUICK_TRAIN_CASES = TRAIN_CASES[:2]
# The demo's model (genfast demo), sampled naively.
SAMPLE_CASES = [("gated-pixelcnn", 16, dict(hidden=32, num_layers=5, kernel_size=5), 16),
                ("pixelcnn", 16, dict(hidden=32, num_blocks=4), 16)]
IMPLS = {"genfast": "ext", "F.conv2d(weight*mask)": "reference"}
MODELS = {"pixelcnn": PixelCNN, "gated-pixelcnn": GatedPixelCNN}


def case_id(case):
    return f"{case[0]}-{case[1]}x{case[2]}"


def build(name, channels, side, config, levels, impl, device, num_classes=None):
    torch.manual_seed(0)
    model = MODELS[name](channels=channels, levels=levels, image_size=side, impl=impl,
                         num_classes=num_classes, **config)
    return model.to(device)


def describe(name, config):
    depth = config.get("num_layers", config.get("num_blocks"))
    return f"{name} h{config['hidden']}x{depth}"


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", TRAIN_CASES, ids=case_id)
def test_train_step(benchmark, bench_device, quick, impl, case):
    if quick and case not in QUICK_TRAIN_CASES:
        pytest.skip("not in --quick")
    name, channels, side, config, batch = case
    model = build(name, channels, side, config, 256, IMPLS[impl], bench_device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (batch, channels, side, side), generator=gen).to(bench_device)

    def step():
        model.zero_grad(set_to_none=True)
        model.loss(x).backward()

    group = (f"train step (fwd+bwd) {describe(name, config)} b{batch} {channels}x{side}x{side} "
             f"256 levels fp32 {bench_device}")
    record(benchmark, group, impl, baseline=impl == "F.conv2d(weight*mask)")
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    rounds = 10 if bench_device == "cuda" else (2 if quick else 3)
    benchmark.pedantic(synced(step, bench_device), rounds=rounds, warmup_rounds=1)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", SAMPLE_CASES, ids=lambda c: c[0])
def test_naive_sampling(benchmark, bench_device, quick, impl, case):
    name, side, config, n = case
    if quick:
        side, n = 8, 4
    model = build(name, 1, side, config, 16, IMPLS[impl], bench_device, num_classes=10).eval()
    labels = torch.arange(n, device=bench_device) % 10

    def run():
        model.sample(n, labels=labels, generator=torch.Generator(bench_device).manual_seed(0))

    group = f"naive sampling {describe(name, config)} b{n} 1x{side}x{side} 16 levels {bench_device}"
    record(benchmark, group, f"naive, {impl} layers", baseline=impl == "genfast")
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    benchmark.pedantic(synced(run, bench_device), rounds=1 if bench_device == "cpu" else 2,
                       warmup_rounds=0 if bench_device == "cpu" else 1)
