"""VectorQuantizer: the vector-quantisation bottleneck of VQ-VAE / VQGAN, on the fused
nearest_code and code_statistics ops (no N x K distance matrix, no one-hot).

Features: straight-through estimator or the rotation trick (Fifty et al. 2024);
commitment loss with weight beta in taming's corrected or legacy form; a learned
codebook or an EMA codebook (decay and Laplace smoothing as in VQ-VAE-2); k-means
initialisation from the first training batch; dead-code restart; cosine-similarity
codebooks; channels-first images (B, D, H, W) or channels-last (..., D) inputs.

Distributed training (torch.distributed initialised, world size > 1): the EMA
statistics, the k-means initialisation and the dead-code restarts are synchronised
so every rank keeps an identical codebook, equal (to float rounding) to a single
process that sees the concatenated batches. Every rank runs the same collectives in
the same order whatever its data (even an empty batch): the only branches that
decide collectives depend on state that is itself the result of a collective.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genfast.ops.code_statistics import code_statistics
from genfast.ops.nearest_code import nearest_code


class VQOutput(NamedTuple):
    quantized: torch.Tensor   # like the input; gradients reach the input (straight-through or rotation)
    indices: torch.Tensor     # int64, the input's shape without the feature dimension
    loss: torch.Tensor        # scalar: commitment (+ codebook) loss
    perplexity: torch.Tensor  # scalar: exp(entropy) of this batch's code usage
    usage: torch.Tensor       # scalar: fraction of the codes this batch uses


def _distributed_world(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def rotate_to(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The rotation trick: a tensor equal to q whose gradient with respect to z is
    (|q| / |z|) R^T g, with R the rotation taking z's direction to q's that acts as
    the identity orthogonally to both (R = I - 2 w w^T + 2 v u^T, u = z/|z|,
    v = q/|q|, w = (u + v)/|u + v|). R and the scale are constants for autograd.
    Rows with z = 0 pass gradients straight through. z, q: (N, D)."""
    with torch.no_grad():
        z_norm = z.norm(dim=1, keepdim=True)
        q_norm = q.norm(dim=1, keepdim=True)
        live = z_norm > 0
        u = torch.where(live, z / z_norm.clamp_min(torch.finfo(z.dtype).tiny), 0)
        v = torch.where(live & (q_norm > 0), q / q_norm.clamp_min(torch.finfo(q.dtype).tiny), 0)
        w = u + v
        w = w / w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)  # u = -v: w = 0
        scale = torch.where(live, q_norm / z_norm.clamp_min(torch.finfo(z.dtype).tiny), 1)
    rotated = scale * (z - 2 * w * (w * z).sum(1, keepdim=True) + 2 * v * (u * z).sum(1, keepdim=True))
    return q.detach() + (rotated - rotated.detach())  # the forward value is exactly q


def _kmeans_plus_plus(data: torch.Tensor, num_codes: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding: each next centre is a row drawn with probability
    proportional to its squared distance to the nearest centre so far (uniformly
    once every row is a centre, which happens when rows repeat or are few)."""
    n = data.shape[0]
    uniform = torch.rand(num_codes, generator=generator, dtype=torch.float64)
    chosen = [min(int(uniform[0] * n), n - 1)]
    sq_dist = (data - data[chosen[0]]).square().sum(1).to(torch.float64)
    for j in range(1, num_codes):
        cumulative = sq_dist.cumsum(0)
        total = cumulative[-1]
        if total > 0:
            pick = int(torch.searchsorted(cumulative, (uniform[j] * total).reshape(1)).clamp(max=n - 1))
        else:
            pick = min(int(uniform[j] * n), n - 1)
        chosen.append(pick)
        sq_dist = torch.minimum(sq_dist, (data - data[pick]).square().sum(1).to(torch.float64))
    return data[torch.tensor(chosen, device=data.device)].clone()


def kmeans(data: torch.Tensor, num_codes: int, iters: int, *, cosine: bool = False,
           generator: torch.Generator | None = None, impl: str = "auto") -> torch.Tensor:
    """k-means: k-means++ seeding, then `iters` rounds of Lloyd's algorithm
    (assignment by nearest_code, means by code_statistics); empty clusters keep
    their centre. Deterministic for a given generator; data (N, D) with N >= 1."""
    centres = _kmeans_plus_plus(data, num_codes, generator)
    for _ in range(iters):
        indices, _ = nearest_code(data, centres, impl=impl)
        counts, sums = code_statistics(data, indices, num_codes, impl=impl)
        means = sums.to(data.dtype) / counts.clamp(min=1).to(data.dtype)[:, None]
        if cosine:
            means = F.normalize(means, dim=1)
        centres = torch.where((counts > 0)[:, None], means, centres)
    return centres


class VectorQuantizer(nn.Module):
    """Vector quantiser with a codebook of `num_codes` vectors of size `dim`.

    forward(z) -> VQOutput(quantized, indices, loss, perplexity, usage). z is
    (B, dim, *spatial) with channels_first=True (images; a 2-D (N, dim) input reads
    the same either way) or (..., dim) with channels_first=False.

    Arguments:
      commitment: beta, the weight of the commitment term ||z - sg[q]||^2.
      legacy_loss: taming's legacy form, which puts beta on the codebook term
        ||sg[z] - q||^2 instead (only with a learned codebook).
      ema: EMA codebook (a buffer, updated in training mode) instead of a learned
        parameter; decay, and eps for Laplace smoothing of the cluster sizes.
      kmeans_init: set the codebook by k-means (k-means++ seeding, kmeans_iters
        rounds) on the first training batch (the batches of all ranks when
        distributed).
      dead_code_threshold: in training, codes whose EMA cluster size falls below it
        are re-seeded from random vectors of the batch (0 disables).
      cosine: compare and quantise L2-normalised vectors (the codebook is normalised
        at use, the inputs before the search and the losses).
      rotation_trick: gradients through the rotation trick instead of straight-through.
      sync: synchronise the codebook statistics across ranks when distributed;
        process_group: the group to synchronise over (default: the world).
      impl: "auto" | "ext" | "reference" for the ops.

    Buffers: cluster_size (EMA of per-code counts, tracked in both modes), embed_avg
    (EMA of per-code sums, EMA mode), initialized; the state_dict holds them and the
    codebook and round-trips exactly.
    """

    def __init__(self, num_codes: int, dim: int, *, commitment: float = 0.25,
                 legacy_loss: bool = False, ema: bool = True, decay: float = 0.99,
                 eps: float = 1e-5, kmeans_init: bool = False, kmeans_iters: int = 10,
                 dead_code_threshold: float = 0.0, cosine: bool = False,
                 rotation_trick: bool = False, channels_first: bool = True, sync: bool = True,
                 process_group=None, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        for name, value in (("num_codes", num_codes), ("dim", dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VectorQuantizer: {name} must be a positive int, got {value!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"VectorQuantizer: decay must be in [0, 1), got {decay!r}")
        if eps <= 0:
            raise ValueError(f"VectorQuantizer: eps must be positive, got {eps!r}")
        if commitment < 0:
            raise ValueError(f"VectorQuantizer: commitment must be non-negative, got {commitment!r}")
        if dead_code_threshold < 0:
            raise ValueError(f"VectorQuantizer: dead_code_threshold must be non-negative, got {dead_code_threshold!r}")
        if not isinstance(kmeans_iters, int) or kmeans_iters < 0:
            raise ValueError(f"VectorQuantizer: kmeans_iters must be a non-negative int, got {kmeans_iters!r}")
        if legacy_loss and ema:
            raise ValueError("VectorQuantizer: legacy_loss weights the codebook term, which an EMA "
                             "codebook does not have; use ema=False")
        self.num_codes, self.dim = num_codes, dim
        self.commitment, self.legacy_loss = commitment, legacy_loss
        self.ema, self.decay, self.eps = ema, decay, eps
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.cosine, self.rotation_trick, self.channels_first = cosine, rotation_trick, channels_first
        self.sync, self.process_group, self.impl = sync, process_group, impl

        factory = {"device": device, "dtype": dtype}
        if ema:
            codebook = torch.randn(num_codes, dim, **factory)
            self.register_buffer("codebook", codebook)
            # Cluster sizes start at one, so an unused code decays towards its sum's
            # EMA divided by its size's: its initial vector, not infinity.
            self.register_buffer("embed_avg", codebook.clone())
        else:
            self.codebook = nn.Parameter(torch.empty(num_codes, dim, **factory).uniform_(-1 / num_codes, 1 / num_codes))
        if cosine:
            with torch.no_grad():
                self.codebook.copy_(F.normalize(self.codebook, dim=1))
                if ema:
                    self.embed_avg.copy_(self.codebook)
        self.register_buffer("cluster_size", torch.ones(num_codes, **factory))
        self.register_buffer("initialized", torch.tensor(False, device=device))

    def extra_repr(self) -> str:
        options = [f"{self.num_codes}, {self.dim}", f"commitment={self.commitment}",
                   f"ema={self.ema}"]
        options += [f"{name}=True" for name in ("legacy_loss", "kmeans_init", "cosine", "rotation_trick")
                    if getattr(self, name)]
        if self.dead_code_threshold:
            options.append(f"dead_code_threshold={self.dead_code_threshold}")
        return ", ".join(options)

    # -- shapes -------------------------------------------------------------------
    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"VectorQuantizer: input must be a floating-point tensor, got "
                            f"{getattr(z, 'dtype', type(z).__name__)}")
        channel = 1 if self.channels_first else -1
        if z.dim() < 2 or z.shape[channel] != self.dim:
            layout = "(B, dim, ...) (channels_first=True)" if self.channels_first else "(..., dim) (channels_first=False)"
            raise ValueError(f"VectorQuantizer: input must be {layout} with dim = {self.dim}, got shape "
                             f"{tuple(z.shape)}")
        return z.movedim(channel, -1).reshape(-1, self.dim)

    def _unflatten(self, flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            shape = (like.shape[0], *like.shape[2:], self.dim)
            return flat.reshape(shape).movedim(-1, 1)
        return flat.reshape(like.shape)

    def _index_shape(self, z: torch.Tensor) -> tuple[int, ...]:
        return (z.shape[0], *z.shape[2:]) if self.channels_first else tuple(z.shape[:-1])

    def codes(self) -> torch.Tensor:
        """The code vectors in use (normalised in cosine mode), (num_codes, dim)."""
        return F.normalize(self.codebook, dim=1) if self.cosine else self.codebook

    def codes_to_vectors(self, indices: torch.Tensor) -> torch.Tensor:
        """The code vectors of `indices`, in the input layout: (B, *S) -> (B, dim, *S)
        with channels_first, else (...) -> (..., dim)."""
        if indices.dtype != torch.long:
            raise TypeError(f"VectorQuantizer.codes_to_vectors: indices must be int64, got {indices.dtype}")
        vectors = F.embedding(indices, self.codes())
        return vectors.movedim(-1, 1) if self.channels_first and indices.dim() >= 1 else vectors

    # -- forward ------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> VQOutput:
        flat = self._flatten(z).to(self.codebook.dtype)
        if self.cosine:
            flat = F.normalize(flat, dim=1)
        if self.training and not bool(self.initialized):
            self._initialise(flat.detach())
        codes = self.codes()
        indices, _ = nearest_code(flat.detach(), codes.detach(), impl=self.impl)
        quantized = F.embedding(indices, codes)
        loss = self._loss(flat, quantized)
        # Either way the output's gradient reaches the input only; a learned codebook
        # learns from the codebook term of the loss.
        if self.rotation_trick:
            out = rotate_to(flat, quantized.detach())
        else:
            out = quantized.detach() + (flat - flat.detach())  # exactly the codes forward
        if self.training:
            counts = self._update(flat.detach(), indices)
        else:  # a static-shape bincount, so that torch.compile keeps one graph
            counts = torch.zeros(self.num_codes, dtype=torch.long, device=indices.device)
            counts.scatter_add_(0, indices, torch.ones_like(indices))
        probs = counts.to(torch.float32) / max(1, indices.numel())
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-30))).sum())
        usage = (counts > 0).to(torch.float32).mean()
        return VQOutput(self._unflatten(out.to(z.dtype), z), indices.reshape(self._index_shape(z)),
                        loss, perplexity, usage)

    def _loss(self, flat: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        if flat.shape[0] == 0:
            return flat.sum() * 0  # an empty batch (e.g. on one rank) contributes nothing
        commit = F.mse_loss(flat, quantized.detach())
        if self.ema:
            return self.commitment * commit
        codebook = F.mse_loss(quantized, flat.detach())
        if self.legacy_loss:
            return commit + self.commitment * codebook
        return self.commitment * commit + codebook

    # -- training-time codebook maintenance (all under no_grad) ------------------------
    def _world(self) -> int:
        return _distributed_world(self.process_group) if self.sync else 1

    @torch.no_grad()
    def _initialise(self, flat: torch.Tensor) -> None:
        """k-means on the first batch (all ranks' batches), then rank 0's codebook and
        buffers everywhere. Collectives: [all_gather sizes, all_gather vectors] with
        kmeans_init, then one broadcast per buffer; the same on every rank."""
        world = self._world()
        if self.kmeans_init:
            data = self._gather_rows(flat) if world > 1 else flat
            if data.shape[0] == 0:
                return  # no rank had data: stay uninitialised everywhere
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
            centres = kmeans(data, self.num_codes, self.kmeans_iters, cosine=self.cosine,
                             generator=generator, impl=self.impl)
            self.codebook.copy_(centres)
            self.cluster_size.fill_(1.0)
            if self.ema:
                self.embed_avg.copy_(centres)
        if world > 1:
            group = self.process_group
            source = 0 if group is None else dist.get_global_rank(group, 0)
            for tensor in self._synced_state():
                dist.broadcast(tensor, src=source, group=group)
        self.initialized.fill_(True)

    def _synced_state(self) -> list[torch.Tensor]:
        state = [self.codebook.data, self.cluster_size]
        return state + [self.embed_avg] if self.ema else state

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """All ranks' rows, in rank order (sizes may differ, even be zero)."""
        world, group = self._world(), self.process_group
        size = torch.tensor([rows.shape[0]], device=rows.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        sizes = [int(s) for s in sizes]
        padded = rows.new_zeros(max(sizes), rows.shape[1])
        padded[:rows.shape[0]] = rows
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        return torch.cat([g[:s] for g, s in zip(gathered, sizes)])

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """EMA statistics (one all_reduce of counts and, in EMA mode, sums), the EMA
        codebook, then dead-code restarts. Returns this rank's counts."""
        k = self.num_codes
        counts, sums = code_statistics(flat, indices, k, impl=self.impl)
        local_counts = counts
        counts = counts.to(self.cluster_size.dtype)
        if self._world() > 1:
            if self.ema:
                stats = torch.cat([counts, sums.to(counts.dtype).flatten()])
                dist.all_reduce(stats, group=self.process_group)
                counts, sums = stats[:k], stats[k:].view(k, self.dim)
            else:
                dist.all_reduce(counts, group=self.process_group)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            self.embed_avg.mul_(self.decay).add_(sums.to(self.embed_avg.dtype), alpha=1 - self.decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total
            self.codebook.copy_(self.embed_avg / smoothed[:, None])
            if self.cosine:
                self.codebook.copy_(F.normalize(self.codebook, dim=1))
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(flat)
        return local_counts

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        """Codes with cluster_size < threshold take random vectors of the batch (of
        the ranks that have any, cycling over them) and cluster_size = threshold.
        The dead set comes from the synchronised cluster_size, so every rank agrees
        on it and on the one all_gather it takes."""
        dead = (self.cluster_size < self.dead_code_threshold).nonzero()[:, 0]
        m = dead.numel()
        if m == 0:
            return
        n = flat.shape[0]
        if n == 0:
            candidates = flat.new_zeros(m, self.dim)
        else:
            rows = torch.randperm(n, device=flat.device)[:m] if n >= m else torch.randint(n, (m,), device=flat.device)
            candidates = flat[rows]
        world = self._world()
        if world > 1:
            # One extra column says whether the rank had vectors to offer.
            mine = torch.cat([candidates, flat.new_full((m, 1), float(n > 0))], 1)
            gathered = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(gathered, mine, group=self.process_group)
            offering = [g for g in gathered if bool(g[0, -1] > 0)]
            if not offering:
                return
            candidates = torch.stack([offering[j % len(offering)][j, :-1] for j in range(m)])
        elif n == 0:
            return
        if self.cosine:
            candidates = F.normalize(candidates, dim=1)
        self.codebook.data[dead] = candidates.to(self.codebook.dtype)
        self.cluster_size[dead] = self.dead_code_threshold
        if self.ema:
            self.embed_avg[dead] = candidates.to(self.embed_avg.dtype) * self.dead_code_threshold
