"""The variational autoencoder (Kingma & Welling 2014) and the plain autoencoder, with
convolutional encoders and decoders for 1- or 3-channel images whose sides are
multiples of 4.

Data convention (the same as the PixelCNN models'): images are integers
(N, C, H, W) in [0, levels). The decoder defines a distribution over those integers,
so -log p(x) is a discrete negative log-likelihood in nats and its bits/dim are on the
PixelCNN's scale (same data, same levels):

- likelihood="gaussian": the discretised Gaussian. Level v stands for the intensity
  c_v = v / (levels - 1) in [0, 1] and owns the bin [c_v - h, c_v + h], h = 1 / (2
  (levels - 1)); P(v) is the Gaussian mass of its bin, the end bins extended to
  -inf and +inf (as PixelCNN++'s discretised logistic). The standard deviation is
  learned per pixel (the decoder's second output; gaussian_std=None) or fixed
  (gaussian_std=a float, in intensity units).
- likelihood="bernoulli": binary images (levels must be 2), P(1) = sigmoid(logit).
- likelihood="logistic-mixture": PixelCNN++'s discretised mixture of `num_mixtures`
  logistics per pixel (RGB with its linear colour coupling), the decoder's output
  being genfast.ops.dmol_loss's parameters; the fused op computes -log p(x | z).

VAE.loss(x) returns ELBOTerms(loss, reconstruction, kl), each (N,) in nats per image:
loss = reconstruction + kl is the negative ELBO, reconstruction = -log p(x | z) at one
reparameterised z ~ q(z | x), kl = KL(q(z | x) || N(0, I)) in closed form. The
importance-weighted bound (genfast.metrics.importance_weighted_nll) uses
importance_log_weights. AE has the same encoder and decoder without the noise and the
KL; its loss is the reconstruction NLL; it samples from a Gaussian fitted to its codes
(fit_prior, through genfast.density.fit_gaussian).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from genfast.ops.dmol import dmol_loss, dmol_num_params, dmol_sample

LIKELIHOODS = ("gaussian", "bernoulli", "logistic-mixture")
_LOG_2PI = math.log(2 * math.pi)
# Bins narrower than this many standard deviations use the density times the width
# (the difference of normal CDFs loses its digits there).
_NARROW_BIN = 1e-3
_MIN_LOG_STD = -9.0


class ELBOTerms(NamedTuple):
    loss: torch.Tensor            # (N,) the negative ELBO (AE: the reconstruction NLL)
    reconstruction: torch.Tensor  # (N,) -log p(x | z)
    kl: torch.Tensor              # (N,) KL(q(z | x) || p(z)); zeros for the AE


def _positive_int(name: str, value, owner: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                             levels: int) -> torch.Tensor:
    """-log P(x) elementwise for integer x in [0, levels) under the discretised Gaussian
    of the module docstring (mean and log_std in intensity units, broadcastable)."""
    centre = x.to(mean.dtype) / (levels - 1)
    half = 0.5 / (levels - 1)
    inv_std = torch.exp(-log_std)
    upper = (centre + half - mean) * inv_std      # bin edges in standard units: finite,
    lower = (centre - half - mean) * inv_std      # so no branch below makes inf * 0 = NaN gradients
    first, last = x == 0, x == levels - 1
    log_first = torch.special.log_ndtr(upper)     # P(X <= upper edge)
    log_last = torch.special.log_ndtr(-lower)     # P(X >= lower edge)
    # Inner bins: Phi(b) - Phi(a), taken on the side away from the upper tail
    # (Phi(u) - Phi(l) = Phi(-l) - Phi(-u)) so that both log-CDFs keep their digits.
    flip = (upper + lower) > 0
    b = torch.where(flip, -lower, upper)
    a = torch.where(flip, -upper, lower)
    log_b = torch.special.log_ndtr(b)
    diff = (torch.special.log_ndtr(a) - log_b).clamp(max=0)
    inner = log_b + torch.log((-torch.expm1(diff)).clamp_min(1e-38))
    # Narrow bins (in standard units): log(phi(midpoint) * width).
    width = upper - lower
    mid = 0.5 * (upper + lower)
    narrow = -0.5 * (mid * mid + _LOG_2PI) + torch.log(width.clamp_min(1e-38))
    inner = torch.where(width < _NARROW_BIN, narrow, inner)
    return -torch.where(first, log_first, torch.where(last, log_last, inner))


class _ConvCoder(nn.Module):
    """Encoder: conv(kernel_size) -> two stride-2 4x4 convs -> linear to `out_features`;
    decoder: linear -> two stride-2 4x4 transposed convs -> conv(kernel_size)."""

    def __init__(self, image_channels: int, hidden_channels: int, kernel_size: int,
                 image_size: tuple[int, int], code_features: int, latent_dim: int, out_channels: int):
        super().__init__()
        h, w = image_size
        hc, pad = hidden_channels, kernel_size // 2
        self.grid = (2 * hc, h // 4, w // 4)
        flat = 2 * hc * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(image_channels, hc, kernel_size, padding=pad), nn.ReLU(),
            nn.Conv2d(hc, hc, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(hc, 2 * hc, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(flat, code_features))
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, flat), nn.ReLU(), nn.Unflatten(1, self.grid),
            nn.ConvTranspose2d(2 * hc, hc, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(hc, hc, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(hc, out_channels, kernel_size, padding=pad))


class _ImageAutoencoder(nn.Module):
    """What VAE and AE share: the configuration, input checks, the likelihood."""

    stochastic = True

    def __init__(self, *, image_channels: int = 1, hidden_channels: int = 32, latent_dim: int = 16,
                 kernel_size: int = 3, image_size=28, levels: int = 256,
                 likelihood: str = "gaussian", gaussian_std: float | None = None,
                 num_mixtures: int = 5):
        super().__init__()
        owner = type(self).__name__
        if image_channels not in (1, 3):
            raise ValueError(f"{owner}: image_channels must be 1 or 3, got {image_channels!r}")
        _positive_int("hidden_channels", hidden_channels, owner)
        _positive_int("latent_dim", latent_dim, owner)
        _positive_int("kernel_size", kernel_size, owner)
        if kernel_size % 2 == 0:
            raise ValueError(f"{owner}: kernel_size must be odd, got {kernel_size}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or any(not isinstance(s, int) or s < 4 or s % 4 for s in size):
            raise ValueError(f"{owner}: image_size must be an int or (H, W) of multiples of 4 "
                             f"(>= 4), got {image_size!r}")
        if not isinstance(levels, int) or levels < 2:
            raise ValueError(f"{owner}: levels must be an int >= 2, got {levels!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"{owner}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if likelihood == "bernoulli" and levels != 2:
            raise ValueError(f"{owner}: the Bernoulli likelihood models binary images: levels must "
                             f"be 2, got {levels} (binarise the data, or use likelihood='gaussian')")
        _positive_int("num_mixtures", num_mixtures, owner)
        if gaussian_std is not None:
            if likelihood != "gaussian":
                raise ValueError(f"{owner}: gaussian_std applies to likelihood='gaussian' only")
            if not (isinstance(gaussian_std, (int, float)) and 0 < gaussian_std < math.inf):
                raise ValueError(f"{owner}: gaussian_std must be a number > 0 or None (learned), "
                                 f"got {gaussian_std!r}")
        self.image_channels, self.hidden_channels = image_channels, hidden_channels
        self.latent_dim, self.kernel_size, self.image_size = latent_dim, kernel_size, size
        self.levels, self.likelihood, self.gaussian_std = levels, likelihood, gaussian_std
        self.num_mixtures = num_mixtures
        self.config = {"image_channels": image_channels, "hidden_channels": hidden_channels,
                       "latent_dim": latent_dim, "kernel_size": kernel_size, "image_size": list(size),
                       "levels": levels, "likelihood": likelihood, "gaussian_std": gaussian_std}
        if likelihood == "logistic-mixture":  # older configs (no key) keep loading
            self.config["num_mixtures"] = num_mixtures
            self.decoder_outputs = dmol_num_params(image_channels, num_mixtures)
        else:
            learned_std = likelihood == "gaussian" and gaussian_std is None
            self.decoder_outputs = image_channels * (2 if learned_std else 1)
        code = 2 * latent_dim if self.stochastic else latent_dim
        coder = _ConvCoder(image_channels, hidden_channels, kernel_size, size, code, latent_dim,
                           self.decoder_outputs)
        self.encoder, self.decoder = coder.encoder, coder.decoder

    @property
    def dims(self) -> int:
        """Sub-pixels per image (for bits/dim)."""
        return self.image_channels * self.image_size[0] * self.image_size[1]

    def check_images(self, x: torch.Tensor, name: str = "x") -> None:
        owner = type(self).__name__
        expected = (self.image_channels, *self.image_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{owner}: {name} must be images (N, {', '.join(map(str, expected))}), "
                             f"got {got}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{owner}: {name} must hold integer levels in [0, {self.levels}), got "
                            f"dtype {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.levels):
            raise ValueError(f"{owner}: {name} must lie in [0, {self.levels}), got values in "
                             f"[{int(x.min())}, {int(x.max())}]")

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels -> the encoder's input in [-1, 1]."""
        dtype = next(self.encoder.parameters()).dtype
        return x.to(dtype) * (2.0 / (self.levels - 1)) - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output (N, decoder_outputs, H, W): Bernoulli logits,
        Gaussian means (then log-stds when learned), or the mixture parameters in
        genfast.ops.dmol_loss's layout."""
        return self.decoder(z)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.image_channels
        mean = out[:, :c]
        if self.gaussian_std is not None:
            return mean, torch.full_like(mean, math.log(self.gaussian_std))
        return mean, out[:, c:].clamp_min(_MIN_LOG_STD)

    def reconstruction_nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per image (N,) in nats, from the decoder's output."""
        if self.likelihood == "bernoulli":
            out = out.to(torch.promote_types(out.dtype, torch.float32))
            nll = F.binary_cross_entropy_with_logits(out, x.to(out.dtype), reduction="none")
        elif self.likelihood == "logistic-mixture":
            out = out.to(torch.promote_types(out.dtype, torch.float32))
            nll = dmol_loss(out, x, num_mixtures=self.num_mixtures, levels=self.levels,
                            reduction="none")  # (N, H, W), summed over the colours
        else:
            mean, log_std = self._split(out.to(torch.promote_types(out.dtype, torch.float32)))
            nll = discretized_gaussian_nll(x, mean, log_std, self.levels)
        return nll.flatten(1).sum(1)

    def decoded_mean(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's expected intensity in [0, 1] (Gaussian: its mean, clamped;
        logistic mixture: the mixture-weighted means, each colour coupled to the
        earlier colours' weighted means, clamped)."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        if self.likelihood == "logistic-mixture":
            return self._mixture_mean(out)
        return out[:, :self.image_channels].clamp(0, 1)

    def _mixture_mean(self, out: torch.Tensor) -> torch.Tensor:
        c, m = self.image_channels, self.num_mixtures
        b, _, h, w = out.shape
        weights = torch.softmax(out[:, :m], dim=1)                        # (B, M, H, W)
        blocks = out[:, m:].reshape(b, c, 3 if c == 3 else 2, m, h, w)
        means = blocks[:, :, 0]                                           # (B, C, M, H, W)
        if c == 3:  # x_G = mu_G + alpha x_R, x_B = mu_B + beta x_R + gamma x_G (tanh'd)
            coeffs = torch.tanh(blocks[:, :, 2])
            red = (weights * means[:, 0]).sum(1, keepdim=True).clamp(-1, 1)
            green = (weights * (means[:, 1] + coeffs[:, 0] * red)).sum(1, keepdim=True).clamp(-1, 1)
            blue = (weights * (means[:, 2] + coeffs[:, 1] * red + coeffs[:, 2] * green)).sum(1, keepdim=True)
            mean = torch.cat([red, green, blue], 1)
        else:
            mean = (weights * means[:, 0]).sum(1, keepdim=True)
        return ((mean + 1) / 2).clamp(0, 1)                               # [-1, 1] -> [0, 1]

    def to_levels(self, out: torch.Tensor, *, mode: str = "mean",
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Integer images from the decoder's output: mode="mean" rounds the mean to the
        nearest level, mode="sample" draws from p(x | z)."""
        if mode == "mean":
            return torch.round(self.decoded_mean(out) * (self.levels - 1)).long()
        if mode != "sample":
            raise ValueError(f"mode must be 'mean' or 'sample', got {mode!r}")
        device = out.device
        draw = lambda shape: torch.rand(shape, generator=generator,
                                        device=generator.device if generator else device).to(device)
        if self.likelihood == "bernoulli":
            return (draw(out.shape) < torch.sigmoid(out)).long()
        if self.likelihood == "logistic-mixture":
            b, _, h, w = out.shape
            u = torch.rand((b, self.image_channels + 1, h, w), generator=generator, dtype=torch.float64,
                           device=generator.device if generator else device).to(device)
            return dmol_sample(out.to(torch.promote_types(out.dtype, torch.float32)), u,
                               num_mixtures=self.num_mixtures, levels=self.levels)
        mean, log_std = self._split(out)
        shape = mean.shape
        value = mean + log_std.exp() * torch.randn(shape, generator=generator,
                                                   device=generator.device if generator else device).to(device)
        return torch.round(value.clamp(0, 1) * (self.levels - 1)).long()

    def feature_images(self, out: torch.Tensor) -> torch.Tensor:
        """The decoded mean as the encoder's input scale [-1, 1] (for feature losses)."""
        return self.decoded_mean(out) * 2 - 1


class VAE(_ImageAutoencoder):
    """Convolutional VAE with a standard normal prior and a diagonal Gaussian posterior.

    Keyword-only: image_channels (1 or 3), hidden_channels, latent_dim, kernel_size
    (odd), image_size (int or (H, W), multiples of 4), levels, likelihood ("gaussian",
    "bernoulli", "logistic-mixture"), gaussian_std (None: learned per pixel),
    num_mixtures (the logistic mixture's components)."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z | x): (mean, log-variance), each (N, latent_dim)."""
        self.check_images(x)
        mu, logvar = self.encoder(self._inputs(x)).chunk(2, dim=1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu, logvar, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn_like(mu)
        return mu + torch.exp(0.5 * logvar) * noise

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, exp(logvar)) || N(0, I)) per row, in closed form."""
        return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's output for one posterior sample of each image."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar))

    def loss(self, x: torch.Tensor, *, return_output: bool = False):
        """ELBOTerms (each (N,) nats per image) for one reparameterised sample per image;
        with return_output also the decoder's output."""
        mu, logvar = self.encode(x)
        out = self.decode(self.reparameterize(mu, logvar))
        rec = self.reconstruction_nll(out, x)
        kl = self.kl(mu.float(), logvar.float())
        terms = ELBOTerms(rec + kl, rec, kl)
        return (terms, out) if return_output else terms

    def importance_log_weights(self, x: torch.Tensor, k: int, *,
                               generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x | z_j) + log p(z_j) - log q(z_j | x) for k draws z_j ~ q(z | x): (k, N).
        Noise is drawn one (N, latent_dim) block per draw, so splitting k into chunks
        draws the same z_j."""
        mu, logvar = self.encode(x)
        n, d = mu.shape
        device = mu.device
        gen_device = generator.device if generator is not None else device
        dtype = torch.promote_types(mu.dtype, torch.float32)
        noise = torch.stack([torch.randn(n, d, generator=generator, device=gen_device, dtype=dtype)
                             for _ in range(k)]).to(device)                # (k, N, D)
        mu, logvar = mu.to(dtype), logvar.to(dtype)
        z = mu + torch.exp(0.5 * logvar) * noise
        log_q = -0.5 * (noise.square() + logvar + _LOG_2PI).sum(-1)         # (k, N)
        log_p = -0.5 * (z.square() + _LOG_2PI).sum(-1)
        out = self.decode(z.reshape(k * n, d).to(next(self.decoder.parameters()).dtype))
        rec = self.reconstruction_nll(out, x.repeat(k, 1, 1, 1)).view(k, n)
        return -rec + log_p - log_q

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, mode: str = "mean",
               temperature: float = 1.0) -> torch.Tensor:
        """n integer images decoded from z ~ N(0, temperature^2 I)."""
        _positive_int("n", n, "VAE.sample")
        device = next(self.parameters()).device
        dtype = next(self.decoder.parameters()).dtype  # a float64 model samples in float64
        z = torch.randn(n, self.latent_dim, generator=generator,
                        device=generator.device if generator is not None else device).to(device, dtype)
        return self.to_levels(self.decode(z * temperature), mode=mode, generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, mode: str = "mean") -> torch.Tensor:
        """Integer images decoded from the posterior means of x."""
        return self.to_levels(self.decode(self.encode(x)[0]), mode=mode)


class AE(_ImageAutoencoder):
    """The deterministic autoencoder: the VAE's encoder and decoder without the noise and
    the KL term; loss is the reconstruction NLL. sample() decodes draws from a
    Gaussian fitted to the codes of some images (fit_prior)."""

    stochastic = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("prior_mean", torch.zeros(self.latent_dim))
        self.register_buffer("prior_scale_tril", torch.eye(self.latent_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code z (N, latent_dim)."""
        self.check_images(x)
        return self.encoder(self._inputs(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, *, return_output: bool = False):
        out = self(x)
        rec = self.reconstruction_nll(out, x)
        terms = ELBOTerms(rec, rec, torch.zeros_like(rec))
        return (terms, out) if return_output else terms

    @torch.no_grad()
    def fit_prior(self, x: torch.Tensor, batch_size: int = 256) -> None:
        """Fits a full-covariance Gaussian (genfast.density.fit_gaussian) to the codes of x."""
        from genfast.density import fit_gaussian

        codes = torch.cat([self.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        mean, cov = fit_gaussian(codes)
        cov = cov + 1e-6 * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        self.prior_mean.copy_(mean.float())
        self.prior_scale_tril.copy_(torch.linalg.cholesky(cov).float())

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, mode: str = "mean") -> torch.Tensor:
        """n integer images decoded from the fitted code Gaussian (standard normal before
        fit_prior)."""
        _positive_int("n", n, "AE.sample")
        device = self.prior_mean.device
        eps = torch.randn(n, self.latent_dim, generator=generator,
                          device=generator.device if generator is not None else device).to(device)
        z = (self.prior_mean + eps.to(self.prior_mean.dtype) @ self.prior_scale_tril.T).to(
            next(self.decoder.parameters()).dtype)
        return self.to_levels(self.decode(z), mode=mode, generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, mode: str = "mean") -> torch.Tensor:
        return self.to_levels(self(x), mode=mode)


__all__ = ["AE", "ELBOTerms", "LIKELIHOODS", "VAE", "discretized_gaussian_nll"]
