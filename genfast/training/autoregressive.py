"""The training loop of genfast's autoregressive image models (PixelCNN, Gated
PixelCNN, PixelCNN++, the VQ-VAE priors); `genfast.train` is this module.

AdamW with a short warm-up and cosine decay, a tqdm progress bar showing loss and
bits/dim, periodic validation, checkpoints written atomically (temporary file +
os.replace) that resume exactly, mixed precision on CUDA, and data parallelism across
processes when torch.distributed is initialised (DDP; e.g. under torchrun).

Exact resume: the data order is a function of (seed, epoch) alone (epoch e shuffles
with torch.Generator().manual_seed(seed * 1_000_003 + e), drop-last batches), and a
checkpoint holds the model, optimiser, gradient scaler, step, torch's CPU and CUDA RNG
states and the history; resuming from step s therefore takes exactly the steps an
uninterrupted run takes from s.
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from genfast.data import ImageData
from genfast.metrics import bits_per_dim
from genfast.models import AutoregressiveImageModel, model_name
from genfast.models._compat import upgrade_config
from genfast.training.checkpoint import (CheckpointError, check_config, load_checkpoint,
                                         restoring, save_checkpoint)

CHECKPOINT_FORMAT = "genfast-train-1"
CHECKPOINT_KIND = "image-model"
# What every checkpoint of this trainer holds (those written before "kind" was
# recorded are recognised by these keys).
CHECKPOINT_KEYS = ("format", "model_name", "model_config", "model", "optimizer", "scaler",
                   "step", "seed", "batch_size", "history", "rng")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_finite_loss(trainer: str, value: float, step: int, lr: float) -> None:
    """A diverged run stops with the step and the learning rate instead of training on NaN."""
    if not math.isfinite(value):
        raise RuntimeError(f"{trainer}: the loss became {value} at step {step}; lower lr "
                           f"(now {lr}) or check the data")


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The example indices of global batch `step` (see the module docstring)."""
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]


def learning_rate(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first min(100, steps // 20) steps, then cosine decay to lr / 10."""
    warmup = min(100, steps // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _amp_dtype(device: torch.device, amp: bool):
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _on(data: ImageData, index: torch.Tensor | None, device) -> tuple:
    part = data if index is None else data.subset(index)
    move = lambda t: None if t is None else t.to(device, non_blocking=True)
    return move(part.images), move(part.labels), move(part.cond)


@torch.no_grad()
def evaluate(model: AutoregressiveImageModel, data: ImageData, *, batch_size: int = 128,
             device=None, amp: bool = True) -> float:
    """Bits/dim of `data` under `model` (all of it; shared across processes under DDP)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = _world()
    amp_dtype = _amp_dtype(device, amp)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # NLL sum, sub-pixel count
    mine = torch.arange(rank, len(data), world)
    for start in range(0, len(mine), batch_size):
        x, labels, cond = _on(data, mine[start:start + batch_size], device)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(x, labels, cond)
        total[0] += model.output_nll(logits, x).double() * x.numel()
        total[1] += x.numel()
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return float(bits_per_dim(total[0] / total[1]))


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"train: {name} must be a positive int, got {value!r}")


def train(model: AutoregressiveImageModel, train_data: ImageData, *, steps: int,
          val_data: ImageData | None = None, batch_size: int = 32, lr: float = 1e-3,
          weight_decay: float = 0.0, grad_clip: float | None = 1.0, val_every: int = 200,
          checkpoint: str | None = None, checkpoint_every: int | None = None, seed: int = 0,
          amp: bool = True, device=None, progress: bool = True, resume: bool = True,
          desc: str = "train") -> list[dict]:
    """Trains `model` for `steps` global steps (batches of `batch_size` examples, split
    evenly across processes under DDP) and returns the history: one dict per validation,
    {"step", "train_bpd" (mean since the previous entry), "val_bpd" (None without
    val_data)}.

    checkpoint: a path written every `checkpoint_every` steps (default: at each
    validation) and at the end, by rank 0; with resume, an existing checkpoint is loaded
    and training continues from its step (same seed and batch size required).
    amp: mixed precision (bfloat16 where supported, else float16 with loss scaling) on
    CUDA; ignored on the CPU. device: default the model's. The learning-rate schedule
    spans `steps`: resuming with another `steps` continues on the new schedule.
    """
    _check_positive("steps", steps)
    _check_positive("batch_size", batch_size)
    _check_positive("val_every", val_every)
    if checkpoint_every is not None:
        _check_positive("checkpoint_every", checkpoint_every)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"train: lr must be a finite number > 0, got {lr!r}")
    rank, world = _world()
    if batch_size % world:
        raise ValueError(f"train: batch_size ({batch_size}) must be a multiple of the number "
                         f"of processes ({world})")
    if len(train_data) < batch_size:
        raise ValueError(f"train: batch_size ({batch_size}) exceeds the {len(train_data)} "
                         f"training examples")
    for data in (train_data, val_data):
        if data is not None:
            model.check_images(data.images, "data images")
            model.check_conditioning(len(data), *data.images.shape[2:], data.labels, data.cond)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    amp_dtype = _amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    checkpoint_every = checkpoint_every or val_every

    start, history = 0, []
    if checkpoint and resume and os.path.exists(checkpoint):
        start, history = _resume(checkpoint, model, optimizer, scaler, seed, batch_size, device)
    wrapped = model
    if world > 1:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    local = batch_size // world

    def state(step):
        return {"format": CHECKPOINT_FORMAT, "kind": CHECKPOINT_KIND, "model_name": model_name(model),
                "model_config": model.config, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "seed": seed, "batch_size": batch_size, "history": history,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress or rank != 0,
               dynamic_ncols=True)
    nats_since, count_since = 0.0, 0
    for step in range(start, steps):
        index = batch_indices(len(train_data), batch_size, seed, step)[rank * local:(rank + 1) * local]
        x, labels, cond = _on(train_data, index, device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            loss = model.output_nll(wrapped(x, labels, cond), x)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        value = loss.item()
        check_finite_loss("train", value, step, lr)
        nats_since, count_since = nats_since + value, count_since + 1
        bar.set_postfix(loss=f"{value:.4f}", bpd=f"{bits_per_dim(value):.4f}", refresh=False)
        bar.update(1)
        done = step + 1
        if done % val_every == 0 or done == steps:
            val = None if val_data is None else evaluate(model, val_data, device=device, amp=amp)
            since = torch.tensor([nats_since, count_since], dtype=torch.float64, device=device)
            if world > 1:  # the mean over all processes' batches
                dist.all_reduce(since)
            history.append({"step": done, "train_bpd": bits_per_dim(float(since[0] / since[1])),
                            "val_bpd": val})
            nats_since, count_since = 0.0, 0
            if val is not None and rank == 0:
                bar.write(f"step {done}: train {history[-1]['train_bpd']:.4f} bits/dim, "
                          f"validation {val:.4f} bits/dim")
        if checkpoint and (done % checkpoint_every == 0 or done == steps):
            if rank == 0:
                save_checkpoint(checkpoint, state(done))
            if world > 1:
                dist.barrier()
    bar.close()
    return history


def init_distributed(device: torch.device) -> tuple[torch.device, bool]:
    """Joins the process group when run under torchrun (WORLD_SIZE > 1): returns this
    process's device and whether it is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


def _architecture(config: dict, model: str) -> dict:
    return {k: v for k, v in upgrade_config(model, config).items() if k != "impl"}


def _resume(path, model, optimizer, scaler, seed, batch_size, device) -> tuple[int, list]:
    state = load_checkpoint(path, kind=CHECKPOINT_KIND, required=CHECKPOINT_KEYS,
                            map_location=device)
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a genfast training checkpoint (format "
                              f"{state['format']!r}, expected {CHECKPOINT_FORMAT!r})")
    cls = type(model).__name__
    saved = {"model": state["model_name"], **_architecture(state["model_config"], cls),
             "seed": state["seed"], "batch_size": state["batch_size"]}
    check_config(path, saved, {"model": model_name(model), **_architecture(model.config, cls),
                               "seed": seed, "batch_size": batch_size})
    with restoring(path):
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        return int(state["step"]), list(state["history"])
