"""Classical density models of the lecture's opening: the closed-form Gaussian and the
mixture of Gaussians fitted by EM, on CPU and CUDA tensors.

- fit_gaussian(x, covariance="full" | "diag"): the maximum-likelihood mean and
  covariance (divisor N), computed in float64.
- GaussianMixture: a scikit-learn-like mixture (fit, fit_predict, predict,
  predict_proba, score_samples, score, sample; attributes weights_, means_,
  covariances_, precisions_cholesky_, converged_, n_iter_, lower_bound_). Its
  parameters follow sklearn.mixture.GaussianMixture's definitions (reg_covar on the
  diagonal, 10 * eps added to the component masses, convergence on the change of the
  mean log-likelihood), so the same initial parameters give the same fit.

How EM is computed: one pass over the data per iteration, in chunks of rows. For each
chunk the E-step evaluates every component's log-density through its inverse Cholesky
factor P_k (cov_k^-1 = P_k P_k^T; the P_k come from a batched triangular solve per
iteration, in float64): one GEMM of the chunk with [P_1 ... P_K], a squared norm, and a
log-sum-exp over components; the same pass accumulates the M-step's sufficient
statistics (sum r, sum r x, and sum r x x^T as one GEMM of the responsibilities with the
chunk's outer products). Per-chunk arithmetic runs in the
data's dtype (float32 for float32 data: GEMM speed), the statistics and the
log-likelihood accumulate in float64 across chunks, around the data's mean (a fixed
shift, so sum r x x^T does not cancel catastrophically). Extra memory is
O(K * D^2 + chunk * K * D), independent of N.
"""
from __future__ import annotations

import math

import torch

from genfast.ops import nearest_code

COVARIANCE_TYPES = ("full", "diag")
INIT_PARAMS = ("k-means++", "kmeans", "random")
# Elements of the chunk's (rows x K x D) E-step intermediate.
_CHUNK_ELEMENTS = 1 << 24  # few, large chunks: per-op overheads stay small on a loaded machine
_EPS64 = torch.finfo(torch.float64).eps


def _as_data(x, name: str, op: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # noqa: BLE001 - reported with the argument's name
            raise TypeError(f"{op}: {name} must be a tensor or array (N, D), got "
                            f"{type(x).__name__}") from exc
    if x.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.shape[1] == 0:
        raise ValueError(f"{op}: {name} must have at least one feature, got D = 0")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{op}: {name} contains NaN or infinity")
    return x.detach()


def fit_gaussian(x, *, covariance: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """The maximum-likelihood Gaussian of the rows of x (N, D): (mean (D,), covariance
    (D, D) for "full" or its diagonal (D,) for "diag"), float64, on x's device.

    Closed form, in float64: mean = sum(x) / N, covariance = (x - mean)^T (x - mean) / N
    (the MLE divides by N, not N - 1)."""
    op = "fit_gaussian"
    if covariance not in COVARIANCE_TYPES:
        raise ValueError(f"{op}: covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}")
    x = _as_data(x, "x", op)
    if x.shape[0] == 0:
        raise ValueError(f"{op}: x must have at least one row")
    x64 = x.to(torch.float64)
    n = x64.shape[0]
    mean = x64.sum(0) / n
    centred = x64 - mean
    if covariance == "diag":
        return mean, (centred * centred).sum(0) / n
    return mean, (centred.T @ centred) / n


def gaussian_log_prob(x, mean: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """log N(x_i; mean, covariance) of each row (float64), covariance full (D, D) or
    diagonal (D,)."""
    x = _as_data(x, "x", "gaussian_log_prob").to(torch.float64)
    mean, covariance = mean.to(x), covariance.to(x)
    d = x.shape[1]
    if covariance.dim() == 1:
        y = (x - mean) / covariance.sqrt()
        log_det = covariance.log().sum()
    else:
        chol = torch.linalg.cholesky(covariance)
        y = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False).T
        log_det = 2 * chol.diagonal().log().sum()
    return -0.5 * (d * math.log(2 * math.pi) + (y * y).sum(1) + log_det)


def _precision_cholesky(covariances: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """P with cov^-1 = P P^T (upper triangular P = L^-T, L = chol(cov)) per component,
    or 1 / sqrt(var) for diagonal covariances; float64."""
    if covariance_type == "diag":
        if bool((covariances <= 0).any()):
            raise ValueError("GaussianMixture: a component's variance is not positive; "
                             "increase reg_covar or use fewer components")
        return covariances.rsqrt()
    chol, info = torch.linalg.cholesky_ex(covariances)
    if bool((info != 0).any()):
        k = int((info != 0).nonzero()[0, 0])
        raise ValueError(f"GaussianMixture: the covariance of component {k} is not positive "
                         "definite; increase reg_covar or use fewer components")
    eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
    inverse = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    return inverse.transpose(-1, -2)


class GaussianMixture:
    """A mixture of K Gaussians fitted by EM (scikit-learn's GaussianMixture API).

    n_components: K. covariance_type: "full" or "diag". tol: EM stops when the mean
    log-likelihood changes by less than tol (tol=0 runs max_iter iterations).
    reg_covar: added to the covariances' diagonals. init_params: "k-means++" (seeding,
    then kmeans_iter Lloyd iterations through genfast.ops.nearest_code; the
    responsibilities of the nearest centres give the initial parameters), "kmeans"
    (the same), "random" (random responsibilities); weights_init, means_init,
    precisions_init override the initial parameters (precisions: inverse covariances,
    (K, D, D) or (K, D)). seed: the initialisation's and sample's default generator seed.
    chunk_size: rows per chunk (default: about 4M elements of rows x K x D).

    Fitted parameters are float64 tensors on the data's device; the data's own dtype
    (float32, or float64) is the arithmetic's (see the module docstring).
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, init_params: str = "k-means++",
                 kmeans_iter: int = 10, weights_init=None, means_init=None, precisions_init=None,
                 seed: int = 0, chunk_size: int | None = None):
        op = "GaussianMixture"
        if not isinstance(n_components, int) or isinstance(n_components, bool) or n_components < 1:
            raise ValueError(f"{op}: n_components must be a positive int, got {n_components!r}")
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"{op}: covariance_type must be one of {COVARIANCE_TYPES}, got "
                             f"{covariance_type!r}")
        if init_params not in INIT_PARAMS:
            raise ValueError(f"{op}: init_params must be one of {INIT_PARAMS}, got {init_params!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"{op}: max_iter must be a positive int, got {max_iter!r}")
        if not isinstance(kmeans_iter, int) or kmeans_iter < 0:
            raise ValueError(f"{op}: kmeans_iter must be an int >= 0, got {kmeans_iter!r}")
        if not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"{op}: tol must be a number >= 0, got {tol!r}")
        if not (isinstance(reg_covar, (int, float)) and reg_covar >= 0):
            raise ValueError(f"{op}: reg_covar must be a number >= 0, got {reg_covar!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"{op}: chunk_size must be a positive int or None, got {chunk_size!r}")
        self.n_components, self.covariance_type = n_components, covariance_type
        self.tol, self.reg_covar, self.max_iter = float(tol), float(reg_covar), max_iter
        self.init_params, self.kmeans_iter, self.seed = init_params, kmeans_iter, seed
        self.weights_init, self.means_init, self.precisions_init = weights_init, means_init, precisions_init
        self.chunk_size = chunk_size

    # -- helpers ---------------------------------------------------------------------
    def _chunk(self, d: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return max(64, _CHUNK_ELEMENTS // (self.n_components * d))

    def _column_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The float64 mean of the rows, chunk by chunk (a float64 sum of the whole of x
        would first make a float64 copy of it)."""
        total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        chunk = self._chunk(x.shape[1])
        for start in range(0, x.shape[0], chunk):
            total += x[start:start + chunk].sum(0, dtype=torch.float64)
        return total / x.shape[0]

    def _check_fitted(self, op: str) -> None:
        if not hasattr(self, "means_"):
            raise RuntimeError(f"GaussianMixture.{op}: call fit first")

    def _data(self, x, op: str) -> torch.Tensor:
        x = _as_data(x, "X", f"GaussianMixture.{op}")
        if hasattr(self, "means_") and x.shape[1] != self.means_.shape[1]:
            raise ValueError(f"GaussianMixture.{op}: X has {x.shape[1]} features, the mixture "
                             f"{self.means_.shape[1]}")
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return x

    def _set_parameters(self, weights, means, covariances) -> None:
        self.weights_, self.means_, self.covariances_ = weights, means, covariances
        self.precisions_cholesky_ = _precision_cholesky(covariances, self.covariance_type)
        if self.covariance_type == "full":
            self.precisions_ = self.precisions_cholesky_ @ self.precisions_cholesky_.transpose(-1, -2)
        else:
            self.precisions_ = self.precisions_cholesky_ ** 2

    def _pass(self, x: torch.Tensor, shift: torch.Tensor, *, statistics: bool, out=None):
        """One pass over x in chunks: the per-row log-likelihood's float64 sum, and
        (statistics) the float64 sums (r, r (x - shift), r (x - shift)(x - shift)^T)
        over rows, or (out) each row's log-responsibilities / log-likelihoods written
        through out(start, log_resp, log_norm)."""
        k, d = self.means_.shape
        dtype = x.dtype
        full = self.covariance_type == "full"
        shift_c = shift.to(dtype)
        prec = self.precisions_cholesky_.to(dtype)                      # (K, D, D) or (K, D)
        centred_means = (self.means_ - shift).to(dtype)                 # (K, D)
        if full:
            stacked = prec.permute(1, 0, 2).reshape(d, k * d)           # [P_1 ... P_K]
            offsets = torch.einsum("kd,kde->ke", self.means_ - shift, self.precisions_cholesky_)
            offsets = offsets.to(dtype).reshape(1, k * d)
            log_det = self.precisions_cholesky_.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        else:
            log_det = self.precisions_cholesky_.log().sum(-1)
        constant = (torch.log(self.weights_) + log_det - 0.5 * d * math.log(2 * math.pi)).to(dtype)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        if statistics:
            s0 = torch.zeros(k, dtype=torch.float64, device=x.device)
            s1 = torch.zeros(k, d, dtype=torch.float64, device=x.device)
            s2 = torch.zeros(k, d * d if full else d, dtype=torch.float64, device=x.device)
        chunk = self._chunk(d)
        for start in range(0, x.shape[0], chunk):
            xc = x[start:start + chunk] - shift_c
            if full:
                y = torch.addmm(offsets, xc, stacked, alpha=1, beta=-1)   # xc P_k - mu_k P_k
                sq = y.square_().view(-1, k, d).sum(-1)
            else:
                y = (xc[:, None, :] - centred_means) * prec
                sq = y.square_().sum(-1)
            weighted = sq.mul_(-0.5).add_(constant)                       # (rows, K)
            log_norm = torch.logsumexp(weighted, 1)
            total += log_norm.sum(dtype=torch.float64)
            log_resp = weighted.sub_(log_norm[:, None])
            if out is not None:
                out(start, log_resp, log_norm)
            if statistics:
                _accumulate((s0, s1, s2), log_resp.exp_(), xc, full)
        if statistics:
            return total, (s0, s1, s2)
        return total, None

    def _m_step(self, stats, n: int, shift: torch.Tensor) -> None:
        s0, s1, s2 = stats
        k, d = s1.shape
        nk = s0 + 10 * _EPS64                               # as scikit-learn: no empty component
        centred_means = s1 / nk[:, None]
        if self.covariance_type == "full":
            second = (s2 / nk[:, None]).view(k, d, d)
            second = 0.5 * (second + second.transpose(-1, -2))   # exactly symmetric
            cov = second - centred_means[:, :, None] * centred_means[:, None, :]
            cov.diagonal(dim1=-2, dim2=-1).add_(self.reg_covar)
        else:
            cov = s2 / nk[:, None] - centred_means ** 2 + self.reg_covar
        self._set_parameters(nk / n, centred_means + shift, cov)

    def _initial_statistics(self, x: torch.Tensor, shift: torch.Tensor, generator: torch.Generator):
        """The M-step statistics of the initial responsibilities: random ones (drawn chunk
        by chunk), or the nearest k-means centre's (one-hot), accumulated in chunks."""
        (n, d), k = x.shape, self.n_components
        labels = None
        if self.init_params != "random":
            centres = kmeans_plusplus(x, k, generator=generator)
            chunk = self._chunk(d)
            for _ in range(self.kmeans_iter):
                labels = _nearest(x, centres)
                sums = torch.zeros(k, d, dtype=torch.float64, device=x.device)
                for start in range(0, n, chunk):
                    sums.index_add_(0, labels[start:start + chunk], x[start:start + chunk].double())
                counts = torch.bincount(labels, minlength=k).double()
                keep = counts > 0                                  # empty clusters keep their centre
                centres = torch.where(keep[:, None], sums / counts.clamp_min(1)[:, None],
                                      centres.double()).to(x.dtype)
            labels = _nearest(x, centres)
        full = self.covariance_type == "full"
        stats = (torch.zeros(k, dtype=torch.float64, device=x.device),
                 torch.zeros(k, d, dtype=torch.float64, device=x.device),
                 torch.zeros(k, d * d if full else d, dtype=torch.float64, device=x.device))
        chunk = self._chunk(d)
        for start in range(0, n, chunk):
            xc = x[start:start + chunk] - shift.to(x.dtype)
            if labels is None:
                resp = torch.rand(xc.shape[0], k, generator=generator, dtype=torch.float64)
                resp = (resp / resp.sum(1, keepdim=True)).to(device=x.device, dtype=x.dtype)
            else:
                resp = torch.nn.functional.one_hot(labels[start:start + chunk], k).to(x.dtype)
            _accumulate(stats, resp, xc, full)
        return stats

    def _initialize(self, x: torch.Tensor, shift: torch.Tensor) -> None:
        n, d = x.shape
        k = self.n_components
        given = [self.weights_init, self.means_init, self.precisions_init]
        to64 = lambda t: torch.as_tensor(t).to(device=x.device, dtype=torch.float64)
        if all(t is not None for t in given):
            weights, means = to64(self.weights_init), to64(self.means_init)
            covariances = None
        else:
            generator = torch.Generator().manual_seed(self.seed)
            self._m_step(self._initial_statistics(x, shift, generator), n, shift)
            weights, means, covariances = self.weights_, self.means_, self.covariances_
            if self.weights_init is not None:
                weights = to64(self.weights_init)
            if self.means_init is not None:
                means = to64(self.means_init)
        shape = (k, d, d) if self.covariance_type == "full" else (k, d)
        if weights.shape != (k,) or means.shape != (k, d):
            raise ValueError(f"GaussianMixture: weights_init must have shape ({k},) and means_init "
                             f"({k}, {d}), got {tuple(weights.shape)} and {tuple(means.shape)}")
        if bool((weights <= 0).any()) or abs(float(weights.sum()) - 1) > 1e-6:
            raise ValueError("GaussianMixture: weights_init must be positive and sum to 1")
        if self.precisions_init is not None:
            precisions = to64(self.precisions_init)
            if precisions.shape != shape:
                raise ValueError(f"GaussianMixture: precisions_init must have shape {shape}, got "
                                 f"{tuple(precisions.shape)}")
            covariances = (torch.linalg.inv(precisions) if self.covariance_type == "full"
                           else 1 / precisions)
        self._set_parameters(weights, means, covariances)

    # -- public API ------------------------------------------------------------------
    def fit(self, X, y=None) -> "GaussianMixture":
        """EM from the initial parameters for at most max_iter iterations. Sets
        lower_bound_ (the mean log-likelihood of the parameters before the last M-step,
        as scikit-learn), history_ (that value at every iteration: never decreasing),
        n_iter_ and converged_."""
        x = self._data(X, "fit")
        n = x.shape[0]
        if n < self.n_components:
            raise ValueError(f"GaussianMixture.fit: {n} rows are fewer than n_components "
                             f"({self.n_components})")
        shift = self._column_mean(x)
        self._initialize(x, shift)
        self.converged_, self.history_ = False, []
        lower_bound = -math.inf
        for iteration in range(1, self.max_iter + 1):
            total, stats = self._pass(x, shift, statistics=True)
            self._m_step(stats, n, shift)
            previous, lower_bound = lower_bound, float(total) / n
            self.history_.append(lower_bound)
            self.n_iter_ = iteration
            if abs(lower_bound - previous) < self.tol:
                self.converged_ = True
                break
        self.lower_bound_ = lower_bound
        return self

    def _log_resp(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        log_resp = torch.empty(n, self.n_components, dtype=x.dtype, device=x.device)
        log_norm = torch.empty(n, dtype=x.dtype, device=x.device)

        def out(start, lr, ln):
            log_resp[start:start + lr.shape[0]] = lr
            log_norm[start:start + ln.shape[0]] = ln

        self._pass(x, self._column_mean(x) if n else self.means_.mean(0), statistics=False, out=out)
        return log_resp, log_norm

    def score_samples(self, X) -> torch.Tensor:
        """The log-likelihood log p(x) of each row (N,), in X's dtype."""
        self._check_fitted("score_samples")
        return self._log_resp(self._data(X, "score_samples"))[1]

    def score(self, X, y=None) -> float:
        """The mean log-likelihood per row (accumulated in float64)."""
        self._check_fitted("score")
        x = self._data(X, "score")
        if x.shape[0] == 0:
            raise ValueError("GaussianMixture.score: X has no rows")
        total, _ = self._pass(x, self._column_mean(x), statistics=False)
        return float(total) / x.shape[0]

    def predict_proba(self, X) -> torch.Tensor:
        """The posterior responsibilities (N, K)."""
        self._check_fitted("predict_proba")
        return self._log_resp(self._data(X, "predict_proba"))[0].exp()

    def predict(self, X) -> torch.Tensor:
        """The most likely component of each row (N,) int64."""
        self._check_fitted("predict")
        return self._log_resp(self._data(X, "predict"))[0].argmax(1)

    def fit_predict(self, X, y=None) -> torch.Tensor:
        return self.fit(X).predict(X)

    def sample(self, n_samples: int = 1, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(X (n_samples, D) float64, component labels (n_samples,)), drawn on the CPU
        with `generator` (default: seeded with seed) and moved to the mixture's device."""
        self._check_fitted("sample")
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"GaussianMixture.sample: n_samples must be a positive int, got {n_samples!r}")
        generator = generator or torch.Generator().manual_seed(self.seed)
        weights = self.weights_.cpu()
        labels = torch.multinomial(weights / weights.sum(), n_samples, replacement=True,
                                   generator=generator)
        noise = torch.randn(n_samples, self.means_.shape[1], dtype=torch.float64, generator=generator)
        means, covariances = self.means_.cpu(), self.covariances_.cpu()
        if self.covariance_type == "full":
            chol = torch.linalg.cholesky(covariances)
            x = means[labels] + (chol[labels] @ noise[:, :, None])[:, :, 0]
        else:
            x = means[labels] + covariances[labels].sqrt() * noise
        device = self.means_.device
        return x.to(device), labels.to(device)


def _accumulate(stats, resp: torch.Tensor, xc: torch.Tensor, full: bool) -> None:
    """Adds a chunk's (sum r, sum r x, sum r x x^T (full) or sum r x^2 (diag)) to the
    float64 stats; the chunk's sums run in its dtype, sum r x x^T for all components as
    one GEMM of the responsibilities with the rows' outer products."""
    s0, s1, s2 = stats
    d = xc.shape[1]
    s0 += resp.sum(0, dtype=torch.float64)
    s1 += (resp.T @ xc).double()
    outer = (xc[:, :, None] * xc[:, None, :]).view(-1, d * d) if full else xc * xc
    s2 += (resp.T @ outer).double()


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return nearest_code(x, centres.to(x.dtype))[0]


def kmeans_plusplus(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre uniformly, each
    next one with probability proportional to the squared distance to the nearest
    centre so far (kept up to date with genfast.ops.nearest_code against the new
    centre). Returns (k, D) rows of x. generator: a CPU generator."""
    x = _as_data(x, "x", "kmeans_plusplus")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    n = x.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"kmeans_plusplus: k must be an int in [1, {n}], got {k!r}")
    generator = generator or torch.Generator().manual_seed(0)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    best = nearest_code(x, x[chosen[0]][None])[1].double()
    for _ in range(1, k):
        total = float(best.sum())
        if total <= 0:     # every row sits on a centre: any remaining row will do
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            u = float(torch.rand((), dtype=torch.float64, generator=generator)) * total
            pick = int(torch.searchsorted(best.cumsum(0), torch.tensor([u], dtype=torch.float64,
                                                                       device=best.device)).clamp(max=n - 1))
        chosen.append(pick)
        best = torch.minimum(best, nearest_code(x, x[pick][None])[1].double())
    return x[torch.tensor(chosen, device=x.device)]


__all__ = ["COVARIANCE_TYPES", "GaussianMixture", "fit_gaussian", "gaussian_log_prob", "kmeans_plusplus"]
