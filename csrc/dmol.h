// dmol_loss and dmol_sample: the discretized mixture of logistics of PixelCNN++
// (Salimans et al. 2017). The per-pixel math shared by the CPU and CUDA kernels.
//
// Layout (openai/pixel-cnn's, channel-first): params (B, P, H, W) hold, per pixel,
//   [0, M)                        the mixture logits,
//   then per colour c in 0..C-1 a block of S values at M + c * S:
//     [0, M)   the means mu_{c,k}     (in [-1, 1] image space)
//     [M, 2M)  the log-scales s_{c,k} (clamped below at kMinLogScale, as the paper)
//     [2M, 3M) RGB only: raw coupling coefficients, tanh'ed: block c holds
//              alpha (c=0: R->G), beta (c=1: R->B), gamma (c=2: G->B)
//   with S = 2M, P = 3M for grey and S = 3M, P = 10M for RGB.
// A level v in [0, levels) sits at x = 2 v / (levels - 1) - 1; the bin is
// [x - h, x + h] with h = 1 / (levels - 1), open-ended at the edge levels. The
// effective means are mu_R, mu_G + alpha x_R, mu_B + beta x_R + gamma x_G.
//
// log P(bin) is computed without cancellation (the composite formula takes the
// difference of two sigmoids, which loses everything in the tails in float32):
//   log(sig(p) - sig(m)) = log sig(p) + log sig(-m) + log(1 - exp(-(p - m)))
// with p = (x + h - mean) / scale, m = (x - h - mean) / scale. Where that
// probability is below kTinyProbability the paper's mid-bin density
// approximation log pdf(x) + log(2h) is used instead (same branch rule as the
// composite formula).
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace at {
class Tensor;  // the checks take tensors; the math includes no ATen header
}

namespace genfast {

// The paper's floor on log-scales: at and below it the gradient is 0 (torch.clamp's rule).
constexpr double kMinLogScale = -7.0;
// Bins with probability below this use the mid-bin density approximation.
constexpr double kTinyProbability = 1e-5;
constexpr double kLogTinyProbability = -11.512925464970229;  // log(1e-5)
// Sampling clamps the logistic's uniform into [kSampleEps, 1 - kSampleEps]
// (openai/pixel-cnn draws it from that interval), so draws stay finite.
constexpr double kSampleEps = 1e-5;

GENFAST_HOST_DEVICE inline int64_t dmol_block(int64_t channels, int64_t mixtures) {
  return (channels == 3 ? 3 : 2) * mixtures;
}
GENFAST_HOST_DEVICE inline int64_t dmol_params(int64_t channels, int64_t mixtures) {
  return mixtures + channels * dmol_block(channels, mixtures);
}

template <typename T>
GENFAST_HOST_DEVICE inline T dmol_softplus(T t) {  // log(1 + e^t), no overflow
  using std::exp;
  using std::log1p;
  return (t > T(0) ? t : T(0)) + log1p(exp(-(t > T(0) ? t : -t)));
}

template <typename T>
GENFAST_HOST_DEVICE inline T dmol_sigmoid(T t) {
  using std::exp;
  const T e = exp(-(t > T(0) ? t : -t));
  return t >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// log P(bin of `level`) under a logistic (mean, log_scale) with the log-scale
// already clamped, and its partial derivatives with respect to the mean and the
// log-scale (only when Grad).
template <typename T>
struct BinLogProb {
  T value, d_mean, d_log_scale;
};

template <typename T>
GENFAST_HOST_DEVICE inline T dmol_relu(T t) {
  return t > T(0) ? t : T(0);
}

template <bool Grad, typename T>
GENFAST_HOST_DEVICE inline BinLogProb<T> bin_log_prob(int64_t level, T mean, T log_scale, int64_t levels) {
  using std::exp;
  using std::expm1;
  using std::log;
  using std::log1p;
  const T h = T(1) / T(levels - 1);
  const T centered = (T(2 * level) * h - T(1)) - mean;
  const T inv = exp(-log_scale);
  BinLogProb<T> out{T(0), T(0), T(0)};
  // Each sigmoid and softplus below shares one e^-|t|:
  //   log sig(t) = -(relu(-t) + log1p(e)),  sig(t) = 1/(1+e) (t >= 0) or e/(1+e).
  if (level == 0) {  // P = sig(p): the bin reaches -infinity
    const T p = inv * (centered + h), ep = exp(-(p > T(0) ? p : -p));
    out.value = -(dmol_relu(-p) + log1p(ep));
    if (Grad) {
      const T sp = (p >= T(0) ? ep : T(1)) / (T(1) + ep);  // sig(-p)
      out.d_mean = -inv * sp;
      out.d_log_scale = -p * sp;
    }
    return out;
  }
  if (level == levels - 1) {  // P = 1 - sig(m) = sig(-m): the bin reaches +infinity
    const T m = inv * (centered - h), em = exp(-(m > T(0) ? m : -m));
    out.value = -(dmol_relu(m) + log1p(em));
    if (Grad) {
      const T sm = (m >= T(0) ? T(1) : em) / (T(1) + em);  // sig(m)
      out.d_mean = inv * sm;
      out.d_log_scale = m * sm;
    }
    return out;
  }
  const T p = inv * (centered + h), m = inv * (centered - h), width = T(2) * h * inv;
  const T ep = exp(-(p > T(0) ? p : -p)), em = exp(-(m > T(0) ? m : -m));
  // log sig(p) + log sig(-m) + log(1 - e^-width), with one log for the three terms'
  // bounded parts ((1 + ep)(1 + em) lies in [1, 4]).
  const T q = -expm1(-width);  // 1 - e^-width
  const T log_prob = -(dmol_relu(-p) + dmol_relu(m)) + log(q / ((T(1) + ep) * (T(1) + em)));
  if (log_prob > T(kLogTinyProbability)) {
    out.value = log_prob;
    if (Grad) {
      const T sp = (p >= T(0) ? ep : T(1)) / (T(1) + ep), sm = (m >= T(0) ? T(1) : em) / (T(1) + em);
      out.d_mean = -inv * (sp - sm);
      // d/dw log(1 - e^-w) = e^-w / (1 - e^-w); w = 2h/scale shrinks as s grows.
      out.d_log_scale = -p * sp + m * sm - width * (T(1) - q) / q;
    }
    return out;
  }
  // Mid-bin density: log pdf(x) + log(2h), pdf of the logistic at the centre.
  const T mid = inv * centered;
  out.value = mid - log_scale - T(2) * dmol_softplus(mid) - log(T(levels - 1) / T(2));
  if (Grad) {
    const T slope = T(1) - T(2) * dmol_sigmoid(mid);
    out.d_mean = -inv * slope;
    out.d_log_scale = -mid * slope - T(1);
  }
  return out;
}

// Strided views of one pixel: element j of the pixel is ptr[j * stride].
template <typename T>
struct PixelView {
  T* ptr;
  int64_t stride;
  GENFAST_HOST_DEVICE T& operator[](int64_t j) const { return ptr[j * stride]; }
};

GENFAST_HOST_DEVICE inline double level_position(int64_t level, int64_t levels) {
  return 2.0 * double(level) / double(levels - 1) - 1.0;
}

// log sum_k exp(logit_k): two passes over the M logits (max, then sum).
template <typename acc_t, typename scalar_t>
GENFAST_HOST_DEVICE inline acc_t logits_lse(PixelView<const scalar_t> params, int64_t mixtures) {
  using std::exp;
  using std::log;
  acc_t top = acc_t(params[0]);
  for (int64_t k = 1; k < mixtures; ++k) top = acc_t(params[k]) > top ? acc_t(params[k]) : top;
  acc_t sum = 0;
  for (int64_t k = 0; k < mixtures; ++k) sum += exp(acc_t(params[k]) - top);
  return top + log(sum);
}

// a_k = sum_c log P_c(x_c | k) for mixture k, its derivatives (when Grad) written
// to d_mean[c], d_log_scale[c] (with respect to the clamped log-scale) and the
// effective means' inputs needed for the coupling gradients.
template <bool Grad, typename acc_t, typename scalar_t>
GENFAST_HOST_DEVICE inline acc_t mixture_log_prob(PixelView<const scalar_t> params, const int64_t* level,
                                                  const acc_t* position, int64_t channels, int64_t mixtures,
                                                  int64_t k, int64_t levels, acc_t* d_mean,
                                                  acc_t* d_log_scale, acc_t* coeff) {
  using std::tanh;
  const int64_t block = dmol_block(channels, mixtures);
  acc_t total = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t base = mixtures + c * block;
    acc_t mean = acc_t(params[base + k]);
    if (channels == 3) coeff[c] = tanh(acc_t(params[base + 2 * mixtures + k]));
    if (c == 1) mean += coeff[0] * position[0];
    if (c == 2) mean += coeff[1] * position[0] + coeff[2] * position[1];
    const acc_t raw_scale = acc_t(params[base + mixtures + k]);
    const acc_t log_scale = raw_scale < acc_t(kMinLogScale) ? acc_t(kMinLogScale) : raw_scale;
    const auto bin = bin_log_prob<Grad>(level[c], mean, log_scale, levels);
    total += bin.value;
    if (Grad) {
      d_mean[c] = bin.d_mean;
      // torch.clamp's convention: the gradient passes at the boundary itself.
      d_log_scale[c] = raw_scale > acc_t(kMinLogScale) ? bin.d_log_scale : acc_t(0);
    }
  }
  return total;
}

// The pixel's negative log-likelihood -log sum_k softmax(logits)_k exp(a_k),
// one online log-sum-exp pass over the mixtures.
template <typename acc_t, typename scalar_t>
GENFAST_HOST_DEVICE inline acc_t dmol_pixel_nll(PixelView<const scalar_t> params, const int64_t* level,
                                                int64_t channels, int64_t mixtures, int64_t levels) {
  using std::exp;
  using std::log;
  acc_t position[3];
  for (int64_t c = 0; c < channels; ++c) position[c] = acc_t(level_position(level[c], levels));
  acc_t coeff[3] = {0, 0, 0};
  acc_t top = -INFINITY, sum = 0;
  for (int64_t k = 0; k < mixtures; ++k) {
    const acc_t a = acc_t(params[k]) + mixture_log_prob<false, acc_t>(params, level, position, channels,
                                                                      mixtures, k, levels, nullptr, nullptr,
                                                                      coeff);
    if (a == -INFINITY) continue;  // an impossible mixture adds nothing
    if (a > top) {
      sum = sum * exp(top - a) + acc_t(1);
      top = a;
    } else {
      sum += exp(a - top);
    }
  }
  return logits_lse<acc_t>(params, mixtures) - (top + log(sum));
}

// grad[j] = grad_nll * d nll / d params[j] for the pixel, given its nll from the
// forward pass: the posterior r_k = exp(logit_k - lse + a_k + nll) weighs each
// mixture's derivatives; the logits get grad_nll * (softmax_k - r_k).
template <typename acc_t, typename scalar_t>
GENFAST_HOST_DEVICE inline void dmol_pixel_backward(PixelView<const scalar_t> params, const int64_t* level,
                                                    int64_t channels, int64_t mixtures, int64_t levels,
                                                    acc_t grad_nll, acc_t nll, PixelView<scalar_t> grad) {
  using std::exp;
  acc_t position[3];
  for (int64_t c = 0; c < channels; ++c) position[c] = acc_t(level_position(level[c], levels));
  const acc_t lse = logits_lse<acc_t>(params, mixtures);
  const int64_t block = dmol_block(channels, mixtures);
  acc_t coeff[3] = {0, 0, 0}, d_mean[3], d_log_scale[3];
  for (int64_t k = 0; k < mixtures; ++k) {
    const acc_t log_weight = acc_t(params[k]) - lse;
    const acc_t a = mixture_log_prob<true, acc_t>(params, level, position, channels, mixtures, k, levels,
                                                  d_mean, d_log_scale, coeff);
    const acc_t posterior = exp(log_weight + a + nll);
    grad[k] = scalar_t(grad_nll * (exp(log_weight) - posterior));
    const acc_t scale = -grad_nll * posterior;
    acc_t g_mean[3];
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = mixtures + c * block;
      g_mean[c] = scale * d_mean[c];
      grad[base + k] = scalar_t(g_mean[c]);
      grad[base + mixtures + k] = scalar_t(scale * d_log_scale[c]);
    }
    if (channels == 3) {  // d tanh(r) / dr = 1 - tanh^2
      grad[mixtures + 2 * mixtures + k] = scalar_t(g_mean[1] * position[0] * (acc_t(1) - coeff[0] * coeff[0]));
      grad[mixtures + block + 2 * mixtures + k] =
          scalar_t(g_mean[2] * position[0] * (acc_t(1) - coeff[1] * coeff[1]));
      grad[mixtures + 2 * block + 2 * mixtures + k] =
          scalar_t(g_mean[2] * position[1] * (acc_t(1) - coeff[2] * coeff[2]));
    }
  }
}

// One draw per pixel (dmol_sample), in float64 whatever the params' dtype, from the
// uniforms u[0] (mixture: inverse CDF over softmax(logits / temperature), the
// convention of genfast.ops._draw.inverse_cdf) and u[1 + c] (colour c: the
// logistic's inverse CDF mean + temperature * scale * log(u / (1 - u)), u clamped
// into [kSampleEps, 1 - kSampleEps]); RGB coupling on the clamped positions; the
// level floor((x + 1) (levels - 1) / 2 + 1/2) clamped to [0, levels). The
// coupling uses the drawn levels' positions: the values the loss conditions on.
template <typename scalar_t>
GENFAST_HOST_DEVICE inline void dmol_pixel_sample(PixelView<const scalar_t> params, PixelView<const double> u,
                                                  int64_t channels, int64_t mixtures, int64_t levels,
                                                  double temperature, PixelView<int64_t> out) {
  using std::exp;
  using std::floor;
  using std::log;
  using std::tanh;
  double top = double(params[0]) / temperature;
  for (int64_t k = 1; k < mixtures; ++k) {
    const double z = double(params[k]) / temperature;
    top = z > top ? z : top;
  }
  double total = 0;
  for (int64_t k = 0; k < mixtures; ++k) total += exp(double(params[k]) / temperature - top);
  const double target = u[0] * total;
  int64_t pick = 0;
  double running = 0;
  for (int64_t k = 0; k < mixtures; ++k) {
    running += exp(double(params[k]) / temperature - top);
    if (running <= target) pick = k + 1;
  }
  if (pick > mixtures - 1) pick = mixtures - 1;
  const int64_t block = dmol_block(channels, mixtures);
  double position[3];
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t base = mixtures + c * block;
    double mean = double(params[base + pick]);
    if (c == 1) mean += tanh(double(params[mixtures + 2 * mixtures + pick])) * position[0];
    if (c == 2) {
      mean += tanh(double(params[mixtures + block + 2 * mixtures + pick])) * position[0] +
              tanh(double(params[mixtures + 2 * block + 2 * mixtures + pick])) * position[1];
    }
    double log_scale = double(params[base + mixtures + pick]);
    log_scale = log_scale < kMinLogScale ? kMinLogScale : log_scale;
    double v = u[1 + c];
    v = v < kSampleEps ? kSampleEps : (v > 1.0 - kSampleEps ? 1.0 - kSampleEps : v);
    double x = mean + temperature * exp(log_scale) * (log(v) - log(1.0 - v));
    x = x < -1.0 ? -1.0 : (x > 1.0 ? 1.0 : x);
    if (x != x) x = -1.0;  // NaN params: level 0, never an out-of-range level
    int64_t value = int64_t(floor((x + 1.0) * double(levels - 1) / 2.0 + 0.5));
    value = value < 0 ? 0 : (value > levels - 1 ? levels - 1 : value);
    out[c] = value;
    position[c] = level_position(value, levels);
  }
}

// Argument checks, the same on every backend (also the range of x and u, one
// min/max reduction each).
void check_dmol_loss(const char* op, const at::Tensor& params, const at::Tensor& x, int64_t num_mixtures,
                     int64_t levels);
void check_dmol_loss_backward(const at::Tensor& grad_nll, const at::Tensor& params, const at::Tensor& x,
                              const at::Tensor& nll, int64_t num_mixtures, int64_t levels);
void check_dmol_sample(const at::Tensor& params, const at::Tensor& u, int64_t num_mixtures, int64_t levels,
                       double temperature);

}  // namespace genfast
