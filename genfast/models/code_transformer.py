"""CodeTransformer: a decoder-only (GPT-style) transformer over code indices, the prior
of VQGAN's second stage and of VQ-VAE / VQ-VAE-2 codes (docs/code-transformer.md).

A code map (N, 1, H, W) of integer codes in [0, levels) is read in raster order as a
sequence of H * W codes. The transformer sees, in this order: one start token (the
class label's token when the model has num_classes, else a learned start token), the
`prefix_length` given codes of the prefix (VQ-VAE-2's bottom prior given the top codes;
their own embeddings, `prefix_levels` of them), then the codes; the output at the
position before code i predicts code i. So the sequence has T = prefix_length + H * W
positions. Blocks are pre-LayerNorm: x += attn(LN(x)); x += MLP(LN(x)), causal
multi-head self-attention with a fused QKV projection, a GELU MLP, learned positions,
a final LayerNorm and a linear head.

The token ids, one embedding table: code c -> c, prefix code c -> levels + c, start /
class k -> levels + prefix_levels + k.

Sampling (`sample`): method="cached" (default) runs genfast.ops.transformer_decode_step
once per position, with key/value caches preallocated for all T positions
(B, layers, heads, T, head_dim each, written in place); method="naive" reruns the
full forward on the whole sequence so far for every code. Both draw code i of sample b
with the uniform u[i, b] of one sampling_uniforms(n, 1, H, W) call through the shared
inverse-CDF draw with temperature, top-k and top-p (genfast.ops._draw.filtered_draw),
so they give the same codes from the same generator (up to the rounding of the logits).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genfast.models.autoregressive_image import (check_labels, check_range, check_sample_args, is_integer_tensor,
                                                 positive_int)
from genfast.models.sampling import sampling_uniforms
from genfast.ops._draw import filtered_draw
from genfast.ops.softmax_cross_entropy import softmax_cross_entropy
from genfast.ops.transformer_decode_step import LAYER_NORM_EPS, TransformerWeights, transformer_decode_step


class TransformerBlock(nn.Module):
    """One pre-LayerNorm block: causal multi-head self-attention, then a GELU MLP."""

    def __init__(self, width: int, num_heads: int, mlp_channels: int):
        super().__init__()
        self.num_heads = num_heads
        self.ln1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(width, 3 * width)  # fused: q, k, v, each head-major
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp1 = nn.Linear(width, mlp_channels)
        self.mlp2 = nn.Linear(mlp_channels, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // heads))  # (n, heads, t, t)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)  # j > i: the future
        scores = scores.masked_fill(causal, float("-inf"))
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, t, d)
        x = x + self.out(context)
        return x + self.mlp2(F.gelu(self.mlp1(self.ln2(x))))


class CodeTransformer(nn.Module):
    """Decoder-only transformer prior over code maps (module docstring).

    levels: codes per position; image_size: the code grid (H, W) (an int: square);
    hidden_channels: the width D; num_layers; num_heads (dividing D); mlp_channels: the
    MLP's inner width (default 4 D); num_classes: class-conditional (labels (N,)) or
    None; prefix_length: given codes before the sequence (0: none); prefix_levels: the
    prefix codes' range (default levels); impl: "auto" | "ext" | "reference" for the
    genfast ops (the loss and the cached sampler's step).
    """

    def __init__(self, *, levels: int, image_size, hidden_channels: int = 256, num_layers: int = 8,
                 num_heads: int = 8, mlp_channels: int | None = None, num_classes: int | None = None,
                 prefix_length: int = 0, prefix_levels: int | None = None, impl: str = "auto"):
        super().__init__()
        name = type(self).__name__
        self.levels = positive_int(levels, "levels", name)
        if levels < 2:
            raise ValueError(f"{name}: levels must be at least 2, got {levels}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in image_size)):
            raise ValueError(f"{name}: image_size must be an int or a pair of positive ints, got {image_size!r}")
        self.image_size = tuple(image_size)
        self.hidden_channels = positive_int(hidden_channels, "hidden_channels", name)
        self.num_layers = positive_int(num_layers, "num_layers", name)
        self.num_heads = positive_int(num_heads, "num_heads", name)
        if hidden_channels % num_heads:
            raise ValueError(f"{name}: num_heads ({num_heads}) must divide hidden_channels ({hidden_channels})")
        self.mlp_channels = positive_int(4 * hidden_channels if mlp_channels is None else mlp_channels,
                                         "mlp_channels", name)
        if num_classes is not None:
            positive_int(num_classes, "num_classes", name)
        self.num_classes = num_classes
        if not isinstance(prefix_length, int) or isinstance(prefix_length, bool) or prefix_length < 0:
            raise ValueError(f"{name}: prefix_length must be an int >= 0, got {prefix_length!r}")
        self.prefix_length = prefix_length
        self.prefix_levels = levels if prefix_levels is None else positive_int(prefix_levels, "prefix_levels", name)
        if impl not in ("auto", "ext", "reference"):
            raise ValueError(f"{name}: impl must be 'auto', 'ext' or 'reference', got {impl!r}")
        self.impl = impl
        self.image_channels = 1  # the layout of genfast.train's code maps
        self.cond_channels = 0
        self.sequence_length = image_size[0] * image_size[1]
        self.positions = prefix_length + self.sequence_length  # T: the start token + prefix + codes - 1
        self.vocabulary = levels + self.prefix_levels + (num_classes or 1)
        d = hidden_channels
        self.token_embedding = nn.Embedding(self.vocabulary, d)
        self.position_embedding = nn.Parameter(torch.zeros(self.positions, d))
        self.blocks = nn.ModuleList(TransformerBlock(d, num_heads, self.mlp_channels) for _ in range(num_layers))
        self.final_ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(d, levels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights and embeddings, zero biases, the
        residual projections scaled by 1 / sqrt(2 * layers)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for layer in (block.out, block.mlp2):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * self.num_layers))
        nn.init.normal_(self.position_embedding, std=0.02)

    @property
    def config(self) -> dict:
        """The constructor arguments: CodeTransformer(**model.config) rebuilds the model."""
        return dict(levels=self.levels, image_size=self.image_size, hidden_channels=self.hidden_channels,
                    num_layers=self.num_layers, num_heads=self.num_heads, mlp_channels=self.mlp_channels,
                    num_classes=self.num_classes, prefix_length=self.prefix_length,
                    prefix_levels=self.prefix_levels, impl=self.impl)

    def set_impl(self, impl: str) -> "CodeTransformer":
        self.impl = impl
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_channels // self.num_heads

    # -- checks -----------------------------------------------------------------------
    def check_images(self, x, name: str = "x") -> None:
        """x: integer code maps (N, 1, H, W) of the model's image_size, in [0, levels)."""
        model = type(self).__name__
        if not is_integer_tensor(x):
            raise TypeError(f"{model}: {name} must be an integer tensor of codes in [0, {self.levels}), "
                            f"got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.image_size or x.shape[0] == 0:
            raise ValueError(f"{model}: {name} must be shaped (N, 1, {self.image_size[0]}, {self.image_size[1]}), "
                             f"got {tuple(x.shape)}")
        check_range(model, f"{name} values", x, self.levels)

    def check_conditioning(self, n: int, height: int, width: int, labels, prefix) -> None:  # noqa: ARG002
        """labels (n,) when num_classes is set; prefix: n codes maps (any shape (n, ...))
        of prefix_length codes in [0, prefix_levels) when prefix_length > 0."""
        model = type(self).__name__
        check_labels(labels, n, self.num_classes, model)
        if self.prefix_length == 0:
            if prefix is not None:
                raise ValueError(f"{model}: prefix given but the model has prefix_length=0")
            return
        if not is_integer_tensor(prefix):
            raise TypeError(f"{model}: prefix must be an integer tensor of {self.prefix_length} codes per "
                            f"sample, got {getattr(prefix, 'dtype', type(prefix).__name__)}")
        if prefix.dim() < 1 or prefix.shape[0] != n or prefix[0].numel() != self.prefix_length:
            raise ValueError(f"{model}: prefix must be shaped ({n}, ...) with {self.prefix_length} codes per "
                             f"sample, got {tuple(prefix.shape)}")
        check_range(model, "prefix codes", prefix, self.prefix_levels)

    # -- the sequence ------------------------------------------------------------------
    def _start_ids(self, n: int, labels, device) -> torch.Tensor:
        first = self.levels + self.prefix_levels
        if labels is None:
            return torch.full((n,), first, dtype=torch.long, device=device)
        return labels.to(device=device, dtype=torch.long) + first

    def _context_ids(self, n: int, labels, prefix, device) -> torch.Tensor:
        """The start token and the prefix's ids, (n, 1 + prefix_length)."""
        ids = [self._start_ids(n, labels, device).unsqueeze(1)]
        if self.prefix_length:
            ids.append(prefix.reshape(n, -1).to(device=device, dtype=torch.long) + self.levels)
        return torch.cat(ids, dim=1)

    def sequence_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The network on token ids (n, t), t <= positions: logits (n, t, levels) of the
        code after each position (no argument checks)."""
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_ln(x))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, levels, 1, H, W) of the code maps x (N, 1, H, W) (teacher forcing)."""
        self.check_images(x)
        n = x.shape[0]
        self.check_conditioning(n, *self.image_size, labels, prefix)
        codes = x.reshape(n, -1).long()
        ids = torch.cat([self._context_ids(n, labels, prefix, x.device), codes[:, :-1]], dim=1)
        logits = self.sequence_logits(ids)[:, self.prefix_length:]  # (n, H*W, levels)
        return logits.transpose(1, 2).reshape(n, self.levels, 1, *self.image_size)

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None,
             prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood per code, in nats."""
        return self.output_nll(self(x, labels, prefix), x)

    def output_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean NLL per code in nats of x under forward's logits (what genfast.train minimises)."""
        return softmax_cross_entropy(logits, x, impl=self.impl)

    def bits_per_code(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                      prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood per code, in bits."""
        return self.loss(x, labels, prefix) / math.log(2)

    # -- the cached sampler's pieces ------------------------------------------------------
    def pack_weights(self, dtype: torch.dtype, device) -> TransformerWeights:
        """The weights as transformer_decode_step takes them (matrices K x out)."""
        def stack(get):
            return torch.stack([get(block).detach() for block in self.blocks]).to(device=device, dtype=dtype)

        def plain(t):
            return t.detach().to(device=device, dtype=dtype)

        return TransformerWeights(
            plain(self.token_embedding.weight), plain(self.position_embedding),
            stack(lambda b: b.ln1.weight), stack(lambda b: b.ln1.bias),
            stack(lambda b: b.qkv.weight.t()), stack(lambda b: b.qkv.bias),
            stack(lambda b: b.out.weight.t()), stack(lambda b: b.out.bias),
            stack(lambda b: b.ln2.weight), stack(lambda b: b.ln2.bias),
            stack(lambda b: b.mlp1.weight.t()), stack(lambda b: b.mlp1.bias),
            stack(lambda b: b.mlp2.weight.t()), stack(lambda b: b.mlp2.bias),
            plain(self.final_ln.weight), plain(self.final_ln.bias),
            plain(self.head.weight.t()).contiguous(), plain(self.head.bias))

    def new_cache(self, batch: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed key and value caches for all positions, (batch, layers, heads, T, head_dim) each."""
        shape = (batch, self.num_layers, self.num_heads, self.positions, self.head_dim)
        return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)

    def cache_bytes_per_token_per_layer(self, dtype: torch.dtype = torch.float32) -> int:
        """The caches' memory per sequence, per position, per layer: a key and a value of
        width D each, 2 * hidden_channels elements."""
        return 2 * self.hidden_channels * torch.empty((), dtype=dtype).element_size()

    def cache_bytes(self, batch: int, dtype: torch.dtype = torch.float32) -> int:
        """Memory of new_cache(batch, dtype): batch * layers * T * 2 D elements."""
        return batch * self.num_layers * self.positions * self.cache_bytes_per_token_per_layer(dtype)

    def _decode(self, context: torch.Tensor, codes: torch.Tensor, u: torch.Tensor | None, temperature: float,
                top_k: int, top_p: float, impl: str, keep_logits: bool = False) -> torch.Tensor | None:
        """Runs the decode-step op over every position. context: (n, 1 + P) ids; codes
        (n, H*W) int64: with u (H*W, n) the codes are drawn into it, with u None they
        are read (teacher forcing). Returns the logits (n, H*W, levels) with keep_logits."""
        n = context.shape[0]
        device = context.device
        dtype = next(self.parameters()).dtype
        weights = self.pack_weights(dtype, device)
        keys, values = self.new_cache(n, dtype, device)
        no_draw = torch.zeros(n, dtype=torch.float64, device=device)
        kept = torch.empty(n, self.sequence_length, self.levels, dtype=dtype, device=device) if keep_logits else None
        p = self.prefix_length
        ids = context[:, 0]
        for position in range(self.positions):
            i = position - p  # the code this position predicts (< 0: a prefix code)
            uniforms = u[i] if (u is not None and i >= 0) else no_draw
            drawn, logits = transformer_decode_step(ids, keys, values, uniforms, position, weights,
                                                    temperature=temperature, top_k=top_k, top_p=top_p,
                                                    impl=impl, check_levels=False)
            if i < 0:
                ids = context[:, position + 1]
                continue
            if keep_logits:
                kept[:, i] = logits
            if u is not None:
                codes[:, i] = drawn
                ids = drawn
            elif i + 1 < self.sequence_length:
                ids = codes[:, i]
        return kept

    # -- sampling --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, labels=None, prefix: torch.Tensor | None = None, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
               method: str = "cached", device=None, impl: str | None = None) -> torch.Tensor:
        """Draws n code maps (n, 1, H, W) int64.

        labels: an int or an integer tensor (n,) when the model has num_classes; prefix:
        the given codes (n, ...) with prefix_length codes each when prefix_length > 0.
        temperature > 0 divides the logits; top_k (an int >= 1) keeps the k most likely
        codes; top_p in (0, 1] keeps the smallest set of most likely codes whose mass
        reaches top_p (the exact rule, ties included: genfast.ops._draw).
        method: "cached" (default; one transformer_decode_step per position, key/value
        caches preallocated) or "naive" (the full forward over the sequence so far for
        every code). impl: the step op's "auto" | "ext" | "reference" (default the
        model's).
        Randomness: exactly one call sampling_uniforms(n, 1, H, W, generator, device);
        code i (raster order) of sample b takes u[i, b]. Both methods give the same codes.
        """
        model = type(self).__name__
        impl = check_sample_args(self, n, temperature, method, impl, generator)
        if top_k is not None and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
            raise ValueError(f"{model}.sample: top_k must be None or an int >= 1, got {top_k!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"{model}.sample: top_p must be None or a number in (0, 1], got {top_p!r}")
        device = torch.device(device) if device is not None else next(self.parameters()).device
        if isinstance(labels, int) and not isinstance(labels, bool):
            labels = torch.full((n,), labels, dtype=torch.long)
        if isinstance(labels, torch.Tensor):
            labels = labels.to(device)
        self.check_conditioning(n, *self.image_size, labels, prefix)
        top_k, top_p = top_k or 0, 1.0 if top_p is None else float(top_p)
        height, width = self.image_size
        u = sampling_uniforms(n, 1, height, width, generator, device).reshape(height * width, n)
        context = self._context_ids(n, labels, prefix, device)
        codes = torch.zeros(n, self.sequence_length, dtype=torch.long, device=device)
        was_training = self.training
        self.eval()
        try:
            if method == "cached":
                self._decode(context, codes, u, temperature, top_k, top_p, impl)
                failed = (codes < 0).any(dim=0).nonzero()
                if failed.numel():
                    raise RuntimeError(f"{model}.sample: the network produced non-finite logits at code "
                                       f"{failed[0].item()} (raster order)")
            else:
                for i in range(self.sequence_length):
                    ids = torch.cat([context, codes[:, :i]], dim=1)
                    logits = self.sequence_logits(ids)[:, -1]
                    if not torch.isfinite(logits).all():
                        raise RuntimeError(f"{model}.sample: the network produced non-finite logits at code "
                                           f"{i} (raster order)")
                    codes[:, i] = filtered_draw(logits, u[i], temperature, top_k, top_p)
        finally:
            self.train(was_training)
        return codes.view(n, 1, height, width)

    @torch.no_grad()
    def cached_logits(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                      prefix: torch.Tensor | None = None, *, impl: str | None = None) -> torch.Tensor:
        """The logits (N, levels, 1, H, W) of the code maps x computed the way the cached
        sampler computes them (teacher forcing through the decode-step op): equal to
        self(x) up to float rounding. For tests and debugging."""
        self.check_images(x)
        n = x.shape[0]
        self.check_conditioning(n, *self.image_size, labels, prefix)
        context = self._context_ids(n, labels, prefix, x.device)
        was_training = self.training
        self.eval()
        try:
            logits = self._decode(context, x.reshape(n, -1).long(), None, 1.0, 0, 1.0,
                                  self.impl if impl is None else impl, keep_logits=True)
        finally:
            self.train(was_training)
        return logits.transpose(1, 2).reshape(n, self.levels, 1, *self.image_size)
