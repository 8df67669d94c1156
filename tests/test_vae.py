import math

import pytest
import torch
import torch.nn.functional as F

from genfast.metrics import importance_weighted_nll
from genfast.models import AE, VAE, ELBOTerms
from genfast.models.vae import discretized_gaussian_nll


def small_vae(**kwargs):
    torch.manual_seed(0)
    config = dict(image_channels=1, hidden_channels=8, latent_dim=3, kernel_size=3, image_size=(8, 12),
                  levels=16)
    config.update(kwargs)
    return VAE(**config)


def images(model, n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.levels, (n, model.image_channels, *model.image_size), generator=gen)


# -- the discretised Gaussian -----------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 16, 256])
def test_discretized_gaussian_is_a_distribution_over_the_levels(levels):
    gen = torch.Generator().manual_seed(0)
    mean = torch.rand(50, 1, dtype=torch.float64, generator=gen) * 1.4 - 0.2
    log_std = torch.cat([torch.full((10, 1), v, dtype=torch.float64) for v in (-9.0, -6.0, -3.0, -1.0, 2.0)])
    values = torch.arange(levels)[None, :].expand(50, levels)
    p = torch.exp(-discretized_gaussian_nll(values, mean, log_std, levels))
    torch.testing.assert_close(p.sum(1), torch.ones(50, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_discretized_gaussian_matches_cdf_differences():
    gen = torch.Generator().manual_seed(1)
    levels = 16
    x = torch.randint(0, levels, (400,), generator=gen)
    mean = torch.rand(400, dtype=torch.float64, generator=gen)
    std = torch.rand(400, dtype=torch.float64, generator=gen) * 0.3 + 0.02
    normal = torch.distributions.Normal(mean, std)
    c, h = x.double() / (levels - 1), 0.5 / (levels - 1)
    upper = torch.where(x == levels - 1, torch.ones_like(c), normal.cdf(c + h))
    lower = torch.where(x == 0, torch.zeros_like(c), normal.cdf(c - h))
    ref = -torch.log(upper - lower)
    got = discretized_gaussian_nll(x, mean, std.log(), levels)
    assert torch.isfinite(got).all()
    fine = ref < 10  # where the CDF difference still has its digits in float64
    assert fine.sum() > 150
    torch.testing.assert_close(got[fine], ref[fine], rtol=1e-9, atol=1e-9)


def test_discretized_gaussian_tails_and_gradients_stay_finite():
    levels = 256
    x = torch.tensor([0, 5, 128, 250, 255, 128, 128])
    mean = torch.tensor([0.9, -3.0, 4.0, 0.1, 0.0, 0.5, 128 / 255], requires_grad=True)
    log_std = torch.tensor([-9.0, -9.0, -9.0, -9.0, -9.0, 5.0, -9.0], requires_grad=True)
    nll = discretized_gaussian_nll(x, mean, log_std, levels)
    assert torch.isfinite(nll).all()
    nll.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_std.grad).all()
    # a wide Gaussian spreads its mass: about the bin's share of the density
    nll = nll.detach()
    assert abs(float(nll[5]) - (math.log(2 * math.pi) / 2 + 5.0 + math.log(levels - 1))) < 1e-3
    # exactly on a bin centre with a tiny std: probability ~1
    assert float(nll[6]) < 1e-6


# -- the VAE ----------------------------------------------------------------------------
def test_loss_terms():
    model = small_vae()
    x = images(model)
    torch.manual_seed(5)
    terms = model.loss(x)
    assert isinstance(terms, ELBOTerms) and terms.loss.shape == (6,)
    torch.testing.assert_close(terms.loss, terms.reconstruction + terms.kl)
    mu, logvar = model.encode(x)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(terms.kl, torch.distributions.kl_divergence(q, p).sum(1))
    # the reconstruction term is -log p(x | z) at the same reparameterised draw
    torch.manual_seed(5)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    torch.testing.assert_close(terms.reconstruction, model.reconstruction_nll(model.decode(z), x))
    terms.loss.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bernoulli_reconstruction_is_the_binary_cross_entropy():
    model = small_vae(levels=2, likelihood="bernoulli")
    x = images(model)
    out = model.decode(torch.randn(6, 3))
    assert out.shape == (6, 1, 8, 12)
    ref = F.binary_cross_entropy_with_logits(out, x.float(), reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(model.reconstruction_nll(out, x), ref)


def test_fixed_variance_and_three_channels():
    model = small_vae(image_channels=3, gaussian_std=0.1, image_size=12)
    x = images(model, n=3)
    out = model.decode(torch.randn(3, 3))
    assert out.shape == (3, 3, 12, 12)  # means only
    mean = out.clamp(-10, 10)
    ref = discretized_gaussian_nll(x, mean, torch.full_like(mean, math.log(0.1)), 16).sum((1, 2, 3))
    torch.testing.assert_close(model.reconstruction_nll(out, x), ref)
    assert model.loss(x).loss.shape == (3,)


def test_sample_reconstruct_encode():
    model = small_vae()
    x = images(model)
    gen = torch.Generator().manual_seed(0)
    s = model.sample(4, generator=gen)
    assert s.shape == (4, 1, 8, 12) and s.dtype == torch.long and 0 <= s.min() and s.max() < 16
    assert torch.equal(s, model.sample(4, generator=torch.Generator().manual_seed(0)))
    s = model.sample(4, mode="sample", generator=gen)
    assert 0 <= s.min() and s.max() < 16
    r = model.reconstruct(x)
    assert r.shape == x.shape and r.dtype == torch.long
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (6, 3)


def test_autoencoder():
    torch.manual_seed(0)
    model = AE(image_channels=1, hidden_channels=8, latent_dim=2, kernel_size=5, image_size=8, levels=16)
    x = images(model, n=20)
    terms = model.loss(x)
    assert torch.equal(terms.kl, torch.zeros(20)) and torch.equal(terms.loss, terms.reconstruction)
    assert model.encode(x).shape == (20, 2)
    model.fit_prior(x)
    codes = model.encode(x).double()
    torch.testing.assert_close(model.prior_mean.double(), codes.mean(0), rtol=1e-5, atol=1e-5)
    assert model.sample(5, generator=torch.Generator().manual_seed(1)).shape == (5, 1, 8, 8)
    with pytest.raises(TypeError, match="importance_log_weights"):
        importance_weighted_nll(model, x, k=2)


def test_bad_input():
    with pytest.raises(ValueError, match="image_channels must be 1 or 3"):
        VAE(image_channels=2)
    with pytest.raises(ValueError, match="multiples of 4"):
        VAE(image_size=10)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        VAE(kernel_size=4)
    with pytest.raises(ValueError, match="levels must be 2"):
        VAE(likelihood="bernoulli", levels=256)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE(likelihood="poisson")
    with pytest.raises(ValueError, match="gaussian_std"):
        VAE(gaussian_std=-1.0)
    model = small_vae()
    with pytest.raises(ValueError, match=r"x must be images \(N, 1, 8, 12\)"):
        model.loss(torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer levels"):
        model.loss(torch.zeros(2, 1, 8, 12))
    with pytest.raises(ValueError, match=r"lie in \[0, 16\)"):
        model.loss(torch.full((2, 1, 8, 12), 16))


# -- importance-weighted NLL -----------------------------------------------------------
def test_log_weights_are_the_importance_ratio():
    model = small_vae().double()
    x = images(model, n=4)
    gen = torch.Generator().manual_seed(3)
    log_w = model.importance_log_weights(x, 5, generator=gen)
    assert log_w.shape == (5, 4)
    gen = torch.Generator().manual_seed(3)
    mu, logvar = model.encode(x)
    std = (0.5 * logvar).exp()
    for j in range(5):
        z = mu + std * torch.randn(4, 3, generator=gen, dtype=torch.float64)
        q = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
        p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
        rec = model.reconstruction_nll(model.decode(z), x)
        torch.testing.assert_close(log_w[j].double(), -rec + p - q, rtol=1e-5, atol=1e-4)


def test_k1_is_the_elbo():
    model = small_vae()
    x = images(model, n=2)
    gen = torch.Generator().manual_seed(0)
    one = importance_weighted_nll(model, x, k=1, generator=gen).per_image
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(one, -model.importance_log_weights(x, 1, generator=gen)[0].double())
    # in expectation: the mean over many single draws is the ELBO (analytic KL)
    many = x.repeat(2000, 1, 1, 1)
    est = importance_weighted_nll(model, many, k=1, batch_size=1000,
                                  generator=torch.Generator().manual_seed(1)).per_image.view(2000, 2)
    with torch.no_grad():
        torch.manual_seed(2)
        elbo = model.loss(many).loss.view(2000, 2).double()
    spread = ((est.var(0) + elbo.var(0)) / 2000).sqrt()
    assert ((est.mean(0) - elbo.mean(0)).abs() < 5 * spread + 1e-3).all()


def test_chunked_equals_unchunked():
    model = small_vae()
    x = images(model, n=5)
    results = [importance_weighted_nll(model, x, k=12, chunk=c, batch_size=b,
                                       generator=torch.Generator().manual_seed(0))
               for c, b in ((12, None), (5, None), (1, None))]
    for r in results[1:]:
        torch.testing.assert_close(r.per_image, results[0].per_image, rtol=1e-6, atol=1e-6)
    r = results[0]
    assert r.nats == pytest.approx(float(r.per_image.mean()))
    assert r.bits_per_dim == pytest.approx(r.nats / (96 * math.log(2)))


class ToyLinearGaussian:
    """z ~ N(0, 1), x | z ~ N(z, s^2): p(x) = N(0, 1 + s^2) exactly; q(z | x) = N(a x, b^2)
    deliberately off the true posterior. Records the largest draw count requested."""

    dims = 1

    def __init__(self, s=0.5, a=0.5, b=0.8):
        self.s, self.a, self.b, self.largest = s, a, b, 0

    def importance_log_weights(self, x, k, generator=None):
        self.largest = max(self.largest, k)
        eps = torch.stack([torch.randn(x.shape[0], generator=generator, dtype=torch.float64)
                           for _ in range(k)])
        z = self.a * x + self.b * eps
        normal = lambda v, m, sd: torch.distributions.Normal(m, sd).log_prob(v)
        return normal(x, z, self.s) + normal(z, 0.0, 1.0) - normal(z, self.a * x, self.b)

    def true_nll(self, x):
        return -torch.distributions.Normal(0.0, math.sqrt(1 + self.s ** 2)).log_prob(x)


def test_bound_tightens_with_k_towards_the_true_nll():
    toy = ToyLinearGaussian()
    x = torch.linspace(-2, 2, 200, dtype=torch.float64)
    truth = float(toy.true_nll(x).mean())
    values = [importance_weighted_nll(toy, x, k=k, chunk=50,
                                      generator=torch.Generator().manual_seed(k)).nats
              for k in (1, 10, 100, 1000)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] >= truth - 1e-3
    assert values[-1] - truth < 0.1 * (values[0] - truth)
    assert toy.largest == 50  # the draws came 50 at a time whatever k


def test_importance_weighted_nll_bad_input():
    model = small_vae()
    x = images(model, n=2)
    with pytest.raises(ValueError, match="k must be a positive int"):
        importance_weighted_nll(model, x, k=0)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        importance_weighted_nll(model, x, k=3, chunk=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        importance_weighted_nll(model, x[:0], k=3)


def test_logistic_mixture_likelihood():
    """The decoder's mixture parameters go through genfast.ops.dmol_loss: the reconstruction
    NLL equals the composite formula, the probabilities over the levels sum to one, and
    the ELBO, IWAE, sampling and the mean image work for grey and RGB."""
    from genfast.ops import dmol_loss_reference

    for channels in (1, 3):
        torch.manual_seed(channels)
        model = VAE(image_channels=channels, hidden_channels=4, latent_dim=3, image_size=4, levels=8,
                    likelihood="logistic-mixture", num_mixtures=2).double()
        x = torch.randint(0, 8, (3, channels, 4, 4))
        out = model.decode(torch.randn(3, 3, dtype=torch.float64))
        want = dmol_loss_reference(out, x, num_mixtures=2, levels=8, reduction="none").flatten(1).sum(1)
        torch.testing.assert_close(model.reconstruction_nll(out, x), want, rtol=1e-9, atol=1e-9)
        terms = model.loss(x)
        assert torch.isfinite(terms.loss).all() and (terms.reconstruction > 0).all()
        terms.loss.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        nll = importance_weighted_nll(model, x, k=4, chunk=2, generator=torch.Generator().manual_seed(0))
        assert math.isfinite(nll.nats)
        images = model.sample(2, generator=torch.Generator().manual_seed(0), mode="sample")
        assert images.shape == (2, channels, 4, 4) and images.min() >= 0 and images.max() < 8
        mean = model.reconstruct(x)
        assert mean.shape == x.shape and mean.min() >= 0 and mean.max() < 8
    # One grey pixel: exp(-NLL) over all 8 levels sums to one.
    model = VAE(image_channels=1, hidden_channels=2, latent_dim=2, image_size=4, levels=8,
                likelihood="logistic-mixture", num_mixtures=3).double()
    out = model.decode(torch.randn(1, 2, dtype=torch.float64)).expand(8, -1, -1, -1)
    levels = torch.arange(8).view(8, 1, 1, 1).expand(8, 1, 4, 4)
    per_pixel = dmol_loss_reference(out, levels, num_mixtures=3, levels=8, reduction="none")
    torch.testing.assert_close((-per_pixel).exp().sum(0), torch.ones(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_mixtures must be a positive int"):
        VAE(likelihood="logistic-mixture", num_mixtures=0)
