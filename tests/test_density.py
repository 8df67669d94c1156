import math
import warnings

import numpy as np
import pytest
import torch

from genfast.density import GaussianMixture, fit_gaussian, gaussian_log_prob, kmeans_plusplus


def blobs(n=2000, d=3, k=4, seed=0, dtype=torch.float64, offset=5.0):
    gen = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(k, d, generator=gen)
    mixing = 0.6 * torch.randn(k, d, d, generator=gen) + torch.eye(d)
    labels = torch.randint(k, (n,), generator=gen)
    x = centres[labels] + (mixing[labels] @ torch.randn(n, d, 1, generator=gen))[:, :, 0]
    return (x + offset).to(dtype)


def initial(x, k, covariance_type):
    d = x.shape[1]
    gen = torch.Generator().manual_seed(1)
    weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
    weights /= weights.sum()
    means = x[torch.randperm(x.shape[0], generator=gen)[:k]].double()
    if covariance_type == "full":
        a = torch.randn(k, d, d, generator=gen, dtype=torch.float64)
        precisions = a @ a.transpose(-1, -2) * 0.1 + torch.eye(d, dtype=torch.float64)
    else:
        precisions = torch.rand(k, d, generator=gen, dtype=torch.float64) + 0.5
    return weights, means, precisions


# -- fit_gaussian -----------------------------------------------------------------------
def formula(x64):
    mean = x64.sum(0) / x64.shape[0]
    c = x64 - mean
    return mean, (c.T @ c) / x64.shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_gaussian_is_the_float64_formula(dtype):
    x = blobs(dtype=dtype)
    mean, cov = fit_gaussian(x)
    ref_mean, ref_cov = formula(x.double())
    assert mean.dtype == cov.dtype == torch.float64
    assert torch.equal(mean, ref_mean) and torch.equal(cov, ref_cov)
    mean_d, var = fit_gaussian(x, covariance="diag")
    assert torch.equal(mean_d, ref_mean)
    torch.testing.assert_close(var, ref_cov.diagonal(), rtol=1e-14, atol=0)
    # numpy's float64 MLE (divisor N) agrees to rounding
    np_cov = np.cov(x.double().numpy(), rowvar=False, bias=True)
    np.testing.assert_allclose(cov.numpy(), np_cov, rtol=1e-12, atol=1e-12)


def test_fit_gaussian_exact_on_representable_data():
    # Small integers, N = 64: every intermediate is exact in float64, so any correct
    # float64 evaluation of the MLE gives these numbers bit for bit.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-8, 9, (64, 5), generator=gen).float()
    mean, cov = fit_gaussian(x)
    a = x.double().numpy()
    m = a.sum(0) / 64
    assert np.array_equal(mean.numpy(), m)
    assert np.array_equal(cov.numpy(), np.cov(a, rowvar=False, bias=True))
    assert np.array_equal(fit_gaussian(x, covariance="diag")[1].numpy(), ((a - m) ** 2).sum(0) / 64)


def test_gaussian_log_prob_matches_torch_distributions():
    x = blobs(200)
    mean, cov = fit_gaussian(x)
    ref = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mean, cov), ref, rtol=1e-12, atol=1e-12)
    mean, var = fit_gaussian(x, covariance="diag")
    ref = torch.distributions.Normal(mean, var.sqrt()).log_prob(x).sum(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, var), ref, rtol=1e-12, atol=1e-12)


def test_fit_gaussian_bad_input():
    with pytest.raises(ValueError, match="covariance must be one of"):
        fit_gaussian(torch.randn(5, 2), covariance="spherical")
    with pytest.raises(ValueError, match="2-D"):
        fit_gaussian(torch.randn(5))
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian(torch.tensor([[1.0, math.nan]]))
    with pytest.raises(ValueError, match="at least one row"):
        fit_gaussian(torch.empty(0, 3))


# -- GaussianMixture ----------------------------------------------------------------------
def sklearn_mixture(x, k, covariance_type, init, iterations):
    from sklearn.mixture import GaussianMixture as Sklearn

    weights, means, precisions = init
    model = Sklearn(k, covariance_type=covariance_type, tol=0, max_iter=iterations,
                    weights_init=weights.numpy(), means_init=means.numpy(),
                    precisions_init=precisions.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(x.double().numpy())


def rel(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_sklearn_from_the_same_init(covariance_type, dtype):
    pytest.importorskip("sklearn")
    x, k = blobs(3000, d=4, k=5), 5
    init = initial(x, k, covariance_type)
    sk = sklearn_mixture(x, k, covariance_type, init, 25)
    gm = GaussianMixture(k, covariance_type=covariance_type, tol=0, max_iter=25, weights_init=init[0],
                         means_init=init[1], precisions_init=init[2], chunk_size=700).fit(x.to(dtype))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert gm.n_iter_ == sk.n_iter_ == 25
    assert abs(gm.lower_bound_ - sk.lower_bound_) <= tol * abs(sk.lower_bound_)
    assert rel(gm.weights_, sk.weights_) <= tol
    assert rel(gm.means_, sk.means_) <= tol
    assert rel(gm.covariances_, sk.covariances_) <= tol
    assert rel(gm.precisions_cholesky_, sk.precisions_cholesky_) <= 10 * tol
    # the fitted model's per-row quantities agree too (float32 fits: to their parameters' accuracy)
    row_tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert rel(gm.score_samples(x.double()), sk.score_samples(x.numpy())) <= row_tol
    assert rel(gm.predict_proba(x.double()), sk.predict_proba(x.numpy())) <= 100 * row_tol
    same = gm.predict(x.double()) == torch.from_numpy(sk.predict(x.numpy()))
    assert bool(same.all()) if dtype == torch.float64 else float(same.float().mean()) > 0.999
    assert abs(gm.score(x.double()) - sk.score(x.numpy())) <= row_tol * abs(sk.score(x.numpy()))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("init_params", ["k-means++", "random"])
def test_em_log_likelihood_never_decreases(covariance_type, init_params):
    x = blobs(1500, d=3, k=6, seed=3)
    gm = GaussianMixture(6, covariance_type=covariance_type, init_params=init_params, tol=0,
                         max_iter=60, seed=2).fit(x)
    history = torch.tensor(gm.history_)
    assert len(history) == 60
    steps = history[1:] - history[:-1]
    assert bool((steps >= -1e-12 * history.abs().max()).all()), steps.min()
    assert history[-1] > history[0] + 0.01  # EM did improve from the initialisation


def test_chunking_does_not_change_the_fit():
    x = blobs(1000, d=3, k=3)
    fits = [GaussianMixture(3, tol=0, max_iter=10, chunk_size=c).fit(x) for c in (37, 1000)]
    assert abs(fits[0].lower_bound_ - fits[1].lower_bound_) <= 1e-12 * abs(fits[1].lower_bound_)
    torch.testing.assert_close(fits[0].means_, fits[1].means_, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(fits[0].covariances_, fits[1].covariances_, rtol=1e-11, atol=1e-11)


def test_convergence_stops_early_and_recovers_the_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.randint(3, (3000,), generator=gen)
    x = centres[labels] + torch.randn(3000, 2, generator=gen)
    gm = GaussianMixture(3, tol=1e-6, max_iter=200).fit(x)
    assert gm.converged_ and gm.n_iter_ < 200
    predicted = gm.predict(x)
    # the clustering equals the truth up to a permutation of the components
    agreement = max((predicted == perm[labels]).float().mean()
                    for perm in [torch.tensor(p) for p in
                                 ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0])])
    assert agreement > 0.99
    order = gm.means_[:, 0] + 2 * gm.means_[:, 1]
    torch.testing.assert_close(gm.means_[order.argsort()], centres.double(), atol=0.15, rtol=0)
    assert torch.equal(GaussianMixture(3, tol=1e-6, max_iter=200).fit_predict(x), predicted)


def test_sample_follows_the_mixture():
    x = blobs(2000, d=2, k=2, seed=5)
    gm = GaussianMixture(2, tol=0, max_iter=20).fit(x)
    samples, labels = gm.sample(20000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (20000, 2) and labels.shape == (20000,)
    for j in range(2):
        part = samples[labels == j]
        assert abs(len(part) / 20000 - float(gm.weights_[j])) < 0.02
        torch.testing.assert_close(part.mean(0), gm.means_[j], atol=0.1, rtol=0)
        torch.testing.assert_close(fit_gaussian(part)[1], gm.covariances_[j], atol=0.15, rtol=0.05)
    again, _ = gm.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, samples)  # the generator alone decides the draw


def test_kmeans_plusplus_picks_distinct_rows():
    x = blobs(500, d=3, k=4).float()
    centres = kmeans_plusplus(x, 8, generator=torch.Generator().manual_seed(0))
    assert centres.shape == (8, 3)
    rows = {tuple(r.tolist()) for r in x}
    assert all(tuple(c.tolist()) in rows for c in centres)
    assert len({tuple(c.tolist()) for c in centres}) == 8
    with pytest.raises(ValueError, match="k must be an int in"):
        kmeans_plusplus(x, 501)


def test_bad_input():
    x = blobs(100, d=3)
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(0)
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianMixture(2, covariance_type="tied")
    with pytest.raises(ValueError, match="init_params"):
        GaussianMixture(2, init_params="bogus")
    with pytest.raises(RuntimeError, match="call fit first"):
        GaussianMixture(2).predict(x)
    with pytest.raises(ValueError, match="fewer than n_components"):
        GaussianMixture(200).fit(x)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2).fit(torch.full((10, 3), math.nan))
    gm = GaussianMixture(2, max_iter=2).fit(x)
    with pytest.raises(ValueError, match="X has 2 features, the mixture 3"):
        gm.score_samples(x[:, :2])
    with pytest.raises(ValueError, match="means_init"):
        GaussianMixture(2, weights_init=[0.5, 0.5], means_init=torch.zeros(3, 3),
                        precisions_init=torch.eye(3).expand(2, 3, 3)).fit(x)
    with pytest.raises(ValueError, match="not positive definite"):
        GaussianMixture(2, reg_covar=0.0, max_iter=3).fit(torch.zeros(10, 3) + torch.arange(3.0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_cuda_matches_cpu(covariance_type):
    x = blobs(4000, d=4, k=5).float()
    init = initial(x, 5, covariance_type)
    kwargs = dict(covariance_type=covariance_type, tol=0, max_iter=15, weights_init=init[0],
                  means_init=init[1], precisions_init=init[2])
    cpu = GaussianMixture(5, **kwargs).fit(x)
    gpu = GaussianMixture(5, **kwargs).fit(x.cuda())
    assert gpu.means_.is_cuda
    assert abs(gpu.lower_bound_ - cpu.lower_bound_) <= 1e-5 * abs(cpu.lower_bound_)
    assert rel(gpu.means_.cpu(), cpu.means_) <= 1e-4
    assert torch.equal(gpu.predict(x.cuda()).cpu(), cpu.predict(x))
    samples, _ = gpu.sample(10)
    assert samples.is_cuda
    # k-means++ (nearest_code on CUDA) runs too
    assert GaussianMixture(5, max_iter=5).fit(x.cuda()).means_.is_cuda
