"""The autoregressive image models' trainer (genfast.training.autoregressive, also
`genfast.train`): exact resume, atomic checkpoints, DDP with 2 gloo processes, evaluation."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import requires_cuda

import genfast.training.autoregressive as gtrain
from genfast.data import ImageData
from genfast.metrics import bits_per_dim
from genfast.models import GatedPixelCNN, PixelCNN, load_model


def tiny_data(n=24, seed=0, size=6, levels=5):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, levels, (n, 1, size, size), generator=gen)
    images[:, :, :, :2] = 0  # some structure to learn
    labels = torch.randint(0, 3, (n,), generator=gen)
    return ImageData(images, labels, levels, num_classes=3)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GatedPixelCNN(levels=5, hidden_channels=6, num_layers=2, kernel_size=3, num_classes=3, image_size=6)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


class Interrupt(Exception):
    pass


def test_resume_takes_exactly_the_uninterrupted_steps(tmp_path, monkeypatch):
    data = tiny_data()
    kwargs = dict(steps=7, batch_size=4, lr=3e-3, val_every=3, seed=5, progress=False, val_data=data)
    straight = tiny_model()
    history = gtrain.train(straight, data, **kwargs)

    # Same run, killed after the checkpoint of step 6 ... of step 3 (checkpoint_every=3).
    path = str(tmp_path / "run.pt")
    original = gtrain.batch_indices

    def dying(n, batch_size, seed, step):
        if step == 4:
            raise Interrupt
        return original(n, batch_size, seed, step)

    monkeypatch.setattr(gtrain, "batch_indices", dying)
    with pytest.raises(Interrupt):
        gtrain.train(tiny_model(), data, checkpoint=path, **kwargs)
    monkeypatch.setattr(gtrain, "batch_indices", original)
    assert torch.load(path, weights_only=True)["step"] == 3

    # A fresh process would build the model with another initialisation: resume fixes it.
    resumed = tiny_model(seed=123)
    torch.manual_seed(999)  # the RNG state comes from the checkpoint too
    resumed_history = gtrain.train(resumed, data, checkpoint=path, **kwargs)
    for a, b in zip(params(straight), params(resumed)):
        assert torch.equal(a, b)
    assert resumed_history == history
    assert os.listdir(tmp_path) == ["run.pt"]  # no temporary files left
    # A finished run resumes to nothing, and the checkpoint rebuilds the model.
    again = tiny_model(seed=7)
    gtrain.train(again, data, checkpoint=path, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(params(straight), params(again)))
    loaded = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(params(straight), params(loaded)))
    assert not loaded.training


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    gtrain.save_checkpoint(path, {"step": 1})

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        gtrain.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["c.pt"]


def test_resume_refuses_a_different_run(tmp_path):
    data = tiny_data()
    path = str(tmp_path / "run.pt")
    gtrain.train(tiny_model(), data, steps=2, batch_size=4, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        gtrain.train(tiny_model(), data, steps=3, batch_size=8, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="seed"):
        gtrain.train(tiny_model(), data, steps=3, batch_size=4, seed=1, checkpoint=path, progress=False)
    other = GatedPixelCNN(levels=5, hidden_channels=9, num_layers=2, kernel_size=3, num_classes=3)
    with pytest.raises(ValueError, match="config"):
        gtrain.train(other, data, steps=3, batch_size=4, checkpoint=path, progress=False)
    gtrain.train(other, data, steps=1, batch_size=4, checkpoint=path, progress=False, resume=False)


def test_training_lowers_the_loss_and_evaluate_is_bits_per_dim():
    data = tiny_data(n=32)
    model = tiny_model()
    before = gtrain.evaluate(model, data)
    with torch.no_grad():
        direct = bits_per_dim(model.loss(data.images, data.labels).item())
    assert before == pytest.approx(direct, rel=1e-5)
    history = gtrain.train(model, data, steps=30, batch_size=8, lr=1e-2, val_every=10,
                           val_data=data, progress=False)
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["val_bpd"] < before - 0.1
    assert history[-1]["val_bpd"] == pytest.approx(gtrain.evaluate(model, data), rel=1e-6)


def test_data_order_is_a_function_of_seed_and_epoch():
    seen = torch.cat([gtrain.batch_indices(10, 3, 0, s) for s in range(3)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist()))  # one epoch: no repeats
    assert torch.equal(gtrain.batch_indices(10, 3, 0, 4), gtrain.batch_indices(10, 3, 0, 4))
    assert not torch.equal(gtrain.batch_indices(10, 3, 0, 0), gtrain.batch_indices(10, 3, 1, 0))
    assert gtrain.learning_rate(0, 1000, 1.0) == pytest.approx(0.02)  # warm-up over 50 steps
    assert gtrain.learning_rate(999, 1000, 1.0) == pytest.approx(0.1, abs=1e-4)


def test_bad_arguments():
    data = tiny_data(n=8)
    model = tiny_model()
    with pytest.raises(ValueError, match="steps must be a positive int"):
        gtrain.train(model, data, steps=0, progress=False)
    with pytest.raises(ValueError, match="exceeds the 8 training examples"):
        gtrain.train(model, data, steps=1, batch_size=9, progress=False)
    with pytest.raises(ValueError, match="lr must be"):
        gtrain.train(model, data, steps=1, lr=float("nan"), progress=False)
    bad = ImageData(data.images + 5, data.labels, 10, 3)
    with pytest.raises(ValueError, match=r"data images values must lie in \[0, 5\)"):
        gtrain.train(model, bad, steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="labels are required"):
        gtrain.train(model, ImageData(data.images, None, 5), steps=1, batch_size=4, progress=False)
    diverging = tiny_model()
    with torch.no_grad():
        diverging.output_conv.bias.fill_(float("inf"))
    with pytest.raises(RuntimeError, match="the loss became nan at step 0"):
        gtrain.train(diverging, data, steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="must be an int or a pair"):
        PixelCNN(image_size=(3,))


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tiny_model(seed=rank)  # different on purpose: DDP starts from rank 0's
        gtrain.train(model, tiny_data(), steps=4, batch_size=8, lr=1e-2, val_every=2,
                     val_data=tiny_data(n=10, seed=1), checkpoint=os.path.join(out_dir, "ddp.pt"),
                     progress=False)
        torch.save({"params": params(model),
                    "val": gtrain.evaluate(model, tiny_data(n=10, seed=1))},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_keep_identical_parameters(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    assert r0["val"] == r1["val"]  # validation is shared across the ranks
    # The same global batches in one process: the same training, up to summation order.
    single = tiny_model(seed=0)
    gtrain.train(single, tiny_data(), steps=4, batch_size=8, lr=1e-2, progress=False)
    for a, b in zip(r0["params"], params(single)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch.load(tmp_path / "ddp.pt", weights_only=True)["step"] == 4


@requires_cuda
@pytest.mark.cuda
def test_mixed_precision_on_cuda():
    data = tiny_data(n=32)
    model = tiny_model().cuda()
    history = gtrain.train(model, data, steps=20, batch_size=8, lr=1e-2, val_every=20,
                           val_data=data, device="cuda", progress=False)
    assert history[-1]["val_bpd"] < gtrain.evaluate(tiny_model().cuda(), data, amp=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = model(data.images.cuda(), data.labels.cuda())
    full = model(data.images.cuda(), data.labels.cuda())
    torch.testing.assert_close(mixed.float(), full, rtol=5e-2, atol=5e-2)
