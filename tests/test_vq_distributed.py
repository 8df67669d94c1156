"""VectorQuantizer under torch.distributed (gloo, CPU): 3 processes run the layers
over the whole world and, at the same time, over a process group of ranks 0 and 1.
Ranks that start from different codebooks and see batches of different sizes (one
of them empty at a step) end with identical codebooks, equal to a single process
that sees the concatenated batches; nothing hangs (a collective timeout would fail)."""
import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import requires_ext

from genfast.nn import VectorQuantizer

pytestmark = [requires_ext, pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")]

STEPS = 4
DIM = 4


def make_layers(group=None):
    """A: EMA + k-means (compared with one process); B: cosine EMA + k-means + dead-code
    restarts; C: learned codebook + restarts (B and C: identical across ranks)."""
    common = dict(channels_first=False, impl="ext", process_group=group)
    return [
        VectorQuantizer(16, DIM, kmeans_init=True, kmeans_iters=3, decay=0.8, **common),
        VectorQuantizer(16, DIM, kmeans_init=True, kmeans_iters=2, cosine=True, dead_code_threshold=0.9, decay=0.8, **common),
        VectorQuantizer(16, DIM, ema=False, dead_code_threshold=0.9, decay=0.5, **common),
    ]


def global_batches(world):
    """Per step: the concatenated batch and each rank's share of it."""
    gen = torch.Generator().manual_seed(123)
    centres = 5 * torch.randn(6, DIM, generator=gen)
    steps = []
    for step in range(STEPS):
        sizes = [int(s) for s in torch.randint(3, 40, (world,), generator=gen)]
        if step == 2:
            sizes[1] = 0  # one rank without data
        labels = torch.randint(6, (sum(sizes),), generator=gen)
        data = centres[labels] + 0.3 * torch.randn(sum(sizes), DIM, generator=gen)
        steps.append((data, sizes))
    return steps


def run_layers(rank, world, group, path):
    torch.manual_seed(rank)  # different initial codebooks: the first step must sync them
    layers = [layer.train() for layer in make_layers(group)]
    restarted = [0] * len(layers)  # codes restarted per layer, counted around the method

    def counting(i, layer):
        restart = layer._restart_dead_codes

        def wrapped(flat):
            restarted[i] += int((layer.cluster_size < layer.dead_code_threshold).sum())
            restart(flat)
        return wrapped

    for i, layer in enumerate(layers):
        layer._restart_dead_codes = counting(i, layer)
    for data, sizes in global_batches(world):
        share = data.split(sizes)[rank]
        for layer in layers:
            layer(share)
    torch.save(([layer.state_dict() for layer in layers], restarted), path)


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=3,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    pair = dist.new_group([0, 1])  # every rank takes part in creating it
    run_layers(rank, 3, None, os.path.join(out_dir, f"world3_rank{rank}.pt"))
    if rank < 2:
        run_layers(rank, 2, pair, os.path.join(out_dir, f"world2_rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def single_process(world):
    torch.manual_seed(0)  # rank 0's seed: rank 0's k-means picks are the ones kept
    layer = make_layers()[0].train()
    for data, _ in global_batches(world):
        layer(data)
    return layer.state_dict()


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vq_distributed")
    mp.spawn(worker, args=(str(out / "init"), str(out)), nprocs=3, join=True)
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_codebooks_identical_and_equal_to_one_process(world, distributed_run):
    runs = [torch.load(distributed_run / f"world{world}_rank{r}.pt") for r in range(world)]
    states = [state for state, _ in runs]
    for layer_states in zip(*states):
        for name in layer_states[0]:
            for other in layer_states[1:]:
                assert torch.equal(layer_states[0][name], other[name]), name
    assert all(bool(s["initialized"]) for s in states[0])
    reference = single_process(world)
    for name, value in reference.items():
        torch.testing.assert_close(states[0][0][name], value, rtol=1e-5, atol=1e-5)
    # The restarting layers did restart codes (16 codes for 6 clusters).
    restarted = runs[0][1]
    assert restarted[0] == 0 and restarted[1] > 0 and restarted[2] > 0
