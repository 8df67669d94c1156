// dmol_loss, dmol_loss_backward and dmol_sample on the CPU: one pass over the
// pixels, split over threads; each pixel is independent (csrc/dmol.h), so results
// do not depend on the thread count. The backward pass recomputes the per-mixture
// terms from params and the saved per-pixel nll: nothing of size B x H x W x C x M
// is ever stored.
//
// float32 takes the vectorised path of csrc/cpu/dmol_lanes.cpp (16 pixels of a row
// at a time); float64 takes csrc/dmol.h per pixel (the precision the tests compare
// with the composite formula at), as does dmol_sample.
//
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../dmol.h"
#include "dmol_lanes.h"

namespace genfast {
namespace {

void check_cpu(const char* op, const at::Tensor& params) {
  TORCH_CHECK_VALUE(params.device().is_cpu(), op, ": params must be a CPU tensor, got ", params.device());
}

// Calls body(b, hw) for every pixel; ~2K pixels per task (each costs ~M * C
// transcendental functions), so small images stay on one thread.
template <typename Body>
void for_each_pixel(int64_t batch, int64_t hw, const Body& body) {
  at::parallel_for(0, batch * hw, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i / hw, i % hw);
  });
}

at::Tensor dmol_loss_cpu(const at::Tensor& params_in, const at::Tensor& x_in, int64_t num_mixtures,
                         int64_t levels) {
  check_dmol_loss("dmol_loss", params_in, x_in, num_mixtures, levels);
  check_cpu("dmol_loss", params_in);
  const auto params = params_in.contiguous();
  const auto x = x_in.contiguous();
  const int64_t batch = params.size(0), p = params.size(1), hw = params.size(2) * params.size(3);
  const int64_t channels = x.size(1);
  auto nll = at::empty({batch, params.size(2), params.size(3)}, params.options());
  if (params.scalar_type() == at::kFloat) {
    const float* pp = params.const_data_ptr<float>();
    const int64_t* xp = x.const_data_ptr<int64_t>();
    float* out = nll.mutable_data_ptr<float>();
    at::parallel_for(0, batch * dmol_strips(hw), 16, [&](int64_t begin, int64_t end) {
      dmol_loss_lanes(pp, xp, p, hw, channels, num_mixtures, levels, out, begin, end);
    });
    return nll;
  }
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "dmol_loss_cpu", [&] {
    const scalar_t* pp = params.const_data_ptr<scalar_t>();
    const int64_t* xp = x.const_data_ptr<int64_t>();
    scalar_t* out = nll.mutable_data_ptr<scalar_t>();
    for_each_pixel(batch, hw, [&](int64_t b, int64_t j) {
      int64_t level[3];
      for (int64_t c = 0; c < channels; ++c) level[c] = xp[(b * channels + c) * hw + j];
      out[b * hw + j] = scalar_t(dmol_pixel_nll<scalar_t>(PixelView<const scalar_t>{pp + b * p * hw + j, hw},
                                                          level, channels, num_mixtures, levels));
    });
  });
  return nll;
}

at::Tensor dmol_loss_backward_cpu(const at::Tensor& grad_nll_in, const at::Tensor& params_in,
                                  const at::Tensor& x_in, const at::Tensor& nll_in, int64_t num_mixtures,
                                  int64_t levels) {
  check_dmol_loss_backward(grad_nll_in, params_in, x_in, nll_in, num_mixtures, levels);
  check_cpu("dmol_loss_backward", params_in);
  const auto params = params_in.contiguous();
  const auto x = x_in.contiguous();
  const auto grad_nll = grad_nll_in.contiguous();
  const auto nll = nll_in.contiguous();
  const int64_t batch = params.size(0), p = params.size(1), hw = params.size(2) * params.size(3);
  const int64_t channels = x.size(1);
  auto grad = at::empty_like(params);
  if (params.scalar_type() == at::kFloat) {
    const float* gn = grad_nll.const_data_ptr<float>();
    const float* pp = params.const_data_ptr<float>();
    const int64_t* xp = x.const_data_ptr<int64_t>();
    const float* np = nll.const_data_ptr<float>();
    float* out = grad.mutable_data_ptr<float>();
    at::parallel_for(0, batch * dmol_strips(hw), 16, [&](int64_t begin, int64_t end) {
      dmol_loss_backward_lanes(gn, pp, xp, np, p, hw, channels, num_mixtures, levels, out, begin, end);
    });
    return grad;
  }
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "dmol_loss_backward_cpu", [&] {
    const scalar_t* pp = params.const_data_ptr<scalar_t>();
    const int64_t* xp = x.const_data_ptr<int64_t>();
    const scalar_t* gn = grad_nll.const_data_ptr<scalar_t>();
    const scalar_t* np = nll.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    for_each_pixel(batch, hw, [&](int64_t b, int64_t j) {
      int64_t level[3];
      for (int64_t c = 0; c < channels; ++c) level[c] = xp[(b * channels + c) * hw + j];
      dmol_pixel_backward<scalar_t>(PixelView<const scalar_t>{pp + b * p * hw + j, hw}, level, channels,
                                    num_mixtures, levels, gn[b * hw + j], np[b * hw + j],
                                    PixelView<scalar_t>{gp + b * p * hw + j, hw});
    });
  });
  return grad;
}

at::Tensor dmol_sample_cpu(const at::Tensor& params_in, const at::Tensor& u_in, int64_t num_mixtures,
                           int64_t levels, double temperature) {
  check_dmol_sample(params_in, u_in, num_mixtures, levels, temperature);
  check_cpu("dmol_sample", params_in);
  const auto params = params_in.contiguous();
  const auto u = u_in.contiguous();
  const int64_t batch = params.size(0), p = params.size(1), hw = params.size(2) * params.size(3);
  const int64_t channels = u.size(1) - 1;
  auto out = at::empty({batch, channels, params.size(2), params.size(3)}, params.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "dmol_sample_cpu", [&] {
    const scalar_t* pp = params.const_data_ptr<scalar_t>();
    const double* up = u.const_data_ptr<double>();
    int64_t* op = out.mutable_data_ptr<int64_t>();
    for_each_pixel(batch, hw, [&](int64_t b, int64_t j) {
      dmol_pixel_sample<scalar_t>(PixelView<const scalar_t>{pp + b * p * hw + j, hw},
                                  PixelView<const double>{up + b * (channels + 1) * hw + j, hw}, channels,
                                  num_mixtures, levels, temperature,
                                  PixelView<int64_t>{op + b * channels * hw + j, hw});
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("dmol_loss", &dmol_loss_cpu);
  m.impl("dmol_loss_backward", &dmol_loss_backward_cpu);
  m.impl("dmol_sample", &dmol_sample_cpu);
}

}  // namespace genfast
