"""PixelCNN and Gated PixelCNN: a training step (forward + backward) with genfast's
masked layers against the same model whose masked layers run F.conv2d(weight * mask)
(impl="reference", what public PixelCNNs do; the baseline). Sampling is measured in
test_bench_gated_pixelcnn_row.py and test_bench_pixelcnn_row.py."""
import pytest
import torch
from conftest import record, synced

from genfast.models import GatedPixelCNN, PixelCNN

# (model, channels, side, config, batch): grey digits-sized and CIFAR-sized RGB models.
TRAIN_CASES = [
    ("pixelcnn", 1, 28, dict(hidden_channels=64, num_blocks=6), 16),
    ("gated-pixelcnn", 1, 28, dict(hidden_channels=64, num_layers=8, kernel_size=5), 16),
    ("pixelcnn", 3, 32, dict(hidden_channels=96, num_blocks=6), 8),
    ("gated-pixelcnn", 3, 32, dict(hidden_channels=96, num_layers=8, kernel_size=5), 8),
]
QUICK_TRAIN_CASES = TRAIN_CASES[:2]
IMPLS = {"genfast": "ext", "F.conv2d(weight*mask)": "reference"}
MODELS = {"pixelcnn": PixelCNN, "gated-pixelcnn": GatedPixelCNN}


def case_id(case):
    return f"{case[0]}-{case[1]}x{case[2]}"


def build(name, channels, side, config, levels, impl, device):
    torch.manual_seed(0)
    model = MODELS[name](image_channels=channels, levels=levels, image_size=side, impl=impl, **config)
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

