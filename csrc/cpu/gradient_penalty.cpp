// gradient_penalty and gradient_penalty_interpolate on the CPU. Every op is one
// pass over its big tensors: each sample is cut into fixed chunks (csrc/
// gradient_penalty.h) that the threads share; per-chunk partial sums are added in
// chunk order afterwards, so results do not depend on the thread count.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../gradient_penalty.h"

namespace genfast {
namespace {

void check_cpu(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the CPU kernel supports float32 and float64, got ", name, " of ", t.scalar_type());
}

// Calls body(task, sample, begin, end) for every chunk [begin, end) of every sample,
// on all threads; task = sample * chunks + chunk numbers the chunks.
template <typename Body>
void for_each_chunk(int64_t batch, int64_t sample_size, const Body& body) {
  const int64_t chunks = penalty_chunks(sample_size);
  // At least ~64K elements per thread, or threading costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::min(sample_size, kPenaltyChunk));
  at::parallel_for(0, batch * chunks, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t sample = task / chunks, begin = (task % chunks) * kPenaltyChunk;
      body(task, sample, begin, std::min(begin + kPenaltyChunk, sample_size));
    }
  });
}

// sum of a[j] * (b[j] - c[j]) (c may be null: sum of a[j] * b[j]). Independent lanes
// let the compiler vectorise without reassociating a single sum.
template <typename acc_t, typename scalar_t>
acc_t dot(const scalar_t* a, const scalar_t* b, const scalar_t* c, int64_t len) {
  constexpr int kLanes = 16;
  acc_t lane[kLanes] = {};
  int64_t j = 0;
  if (c == nullptr) {
    for (; j + kLanes <= len; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) lane[l] += acc_t(a[j + l]) * acc_t(b[j + l]);
    }
    for (; j < len; ++j) lane[0] += acc_t(a[j]) * acc_t(b[j]);
  } else {
    for (; j + kLanes <= len; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) lane[l] += acc_t(a[j + l]) * (acc_t(b[j + l]) - acc_t(c[j + l]));
    }
    for (; j < len; ++j) lane[0] += acc_t(a[j]) * (acc_t(b[j]) - acc_t(c[j]));
  }
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  }
  return lane[0];
}

// Adds each sample's chunk partials in chunk order.
template <typename acc_t>
std::vector<acc_t> sum_chunks(const std::vector<acc_t>& partial, int64_t batch, int64_t sample_size) {
  const int64_t chunks = penalty_chunks(sample_size);
  std::vector<acc_t> total(batch, acc_t(0));
  for (int64_t i = 0; i < batch; ++i) {
    for (int64_t c = 0; c < chunks; ++c) total[i] += partial[i * chunks + c];
  }
  return total;
}

// (penalty, norms): penalty = weight * mean over samples of phi(||grad_i||).
std::tuple<at::Tensor, at::Tensor> gradient_penalty_cpu(const at::Tensor& grad_in, double weight,
                                                        double center, bool one_sided) {
  const int64_t sample_size = check_gradient_penalty(grad_in, weight, center);
  check_cpu("gradient_penalty", grad_in, "grad");
  const auto grad = grad_in.contiguous();
  const int64_t batch = grad.size(0);
  auto norms = at::empty({batch}, grad.options().dtype(norm_dtype(grad.scalar_type())));
  at::Tensor penalty;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "gradient_penalty_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    std::vector<acc_t> partial(batch * penalty_chunks(sample_size));
    for_each_chunk(batch, sample_size, [&](int64_t task, int64_t i, int64_t begin, int64_t end) {
      const scalar_t* x = g + i * sample_size + begin;
      partial[task] = dot<acc_t>(x, x, static_cast<const scalar_t*>(nullptr), end - begin);
    });
    const auto squares = sum_chunks(partial, batch, sample_size);
    acc_t* norm = norms.mutable_data_ptr<acc_t>();
    acc_t total = 0;
    for (int64_t i = 0; i < batch; ++i) {
      norm[i] = std::sqrt(squares[i]);
      total += penalty_term(norm[i], acc_t(center), one_sided);
    }
    penalty = at::scalar_tensor(static_cast<double>(total * acc_t(weight) / acc_t(batch)), grad.options());
  });
  return {penalty, norms};
}

// d/d grad of (grad_penalty * penalty + sum_i grad_norms_i * norm_i).
at::Tensor gradient_penalty_backward_cpu(const at::Tensor& grad_penalty,
                                         const c10::optional<at::Tensor>& grad_norms,
                                         const at::Tensor& grad_in, const at::Tensor& norms,
                                         double weight, double center, bool one_sided) {
  const int64_t sample_size =
      check_gradient_penalty_backward(grad_penalty, grad_norms, grad_in, norms, weight, center);
  check_cpu("gradient_penalty_backward", grad_in, "grad");
  const auto grad = grad_in.contiguous();
  const int64_t batch = grad.size(0);
  auto out = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "gradient_penalty_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t a = grad_penalty.item().to<acc_t>() * acc_t(weight) / acc_t(batch);
    const auto norms_c = norms.contiguous();
    const auto grad_norms_c = grad_norms.has_value() ? grad_norms->contiguous() : at::Tensor();
    const acc_t* n = norms_c.const_data_ptr<acc_t>();
    const acc_t* b = grad_norms_c.defined() ? grad_norms_c.const_data_ptr<acc_t>() : nullptr;
    std::vector<acc_t> scale(batch);
    for (int64_t i = 0; i < batch; ++i) {
      scale[i] = penalty_backward_scale(a, b != nullptr ? b[i] : acc_t(0), n[i], acc_t(center), one_sided);
    }
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_chunk(batch, sample_size, [&](int64_t, int64_t i, int64_t begin, int64_t end) {
      const acc_t s = scale[i];
      const int64_t offset = i * sample_size;
      for (int64_t j = offset + begin; j < offset + end; ++j) o[j] = static_cast<scalar_t>(s * acc_t(g[j]));
    });
  });
  return out;
}

at::Tensor gradient_penalty_interpolate_cpu(const at::Tensor& real_in, const at::Tensor& fake_in,
                                            const at::Tensor& eps_in) {
  const int64_t sample_size = check_gradient_penalty_interpolate(real_in, fake_in, eps_in);
  check_cpu("gradient_penalty_interpolate", real_in, "real");
  const auto real = real_in.contiguous(), fake = fake_in.contiguous(), eps = eps_in.contiguous();
  auto out = at::empty_like(real);
  AT_DISPATCH_FLOATING_TYPES(real.scalar_type(), "gradient_penalty_interpolate_cpu", [&] {
    const scalar_t* r = real.const_data_ptr<scalar_t>();
    const scalar_t* f = fake.const_data_ptr<scalar_t>();
    const scalar_t* e = eps.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_chunk(real.size(0), sample_size, [&](int64_t, int64_t i, int64_t begin, int64_t end) {
      const scalar_t ei = e[i];
      const int64_t offset = i * sample_size;
      for (int64_t j = offset + begin; j < offset + end; ++j) o[j] = interpolate(r[j], f[j], ei);
    });
  });
  return out;
}

// (grad_real, grad_fake, grad_eps) = (eps * g, (1 - eps) * g, sum over the sample of g * (real - fake)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gradient_penalty_interpolate_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& real_in, const at::Tensor& fake_in,
    const at::Tensor& eps_in) {
  const int64_t sample_size =
      check_gradient_penalty_interpolate_backward(grad_in, real_in, fake_in, eps_in);
  check_cpu("gradient_penalty_interpolate_backward", real_in, "real");
  const auto grad = grad_in.contiguous(), real = real_in.contiguous(), fake = fake_in.contiguous();
  const auto eps = eps_in.contiguous();
  const int64_t batch = real.size(0);
  auto grad_real = at::empty_like(real), grad_fake = at::empty_like(real);
  auto grad_eps = at::empty_like(eps);
  AT_DISPATCH_FLOATING_TYPES(real.scalar_type(), "gradient_penalty_interpolate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* r = real.const_data_ptr<scalar_t>();
    const scalar_t* f = fake.const_data_ptr<scalar_t>();
    const scalar_t* e = eps.const_data_ptr<scalar_t>();
    scalar_t* gr = grad_real.mutable_data_ptr<scalar_t>();
    scalar_t* gf = grad_fake.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> partial(batch * penalty_chunks(sample_size));
    for_each_chunk(batch, sample_size, [&](int64_t task, int64_t i, int64_t begin, int64_t end) {
      const scalar_t ei = e[i], fi = scalar_t(1) - ei;
      const int64_t offset = i * sample_size;
      for (int64_t j = offset + begin; j < offset + end; ++j) {
        gr[j] = ei * g[j];
        gf[j] = fi * g[j];
      }
      partial[task] = dot<acc_t>(g + offset + begin, r + offset + begin, f + offset + begin, end - begin);
    });
    const auto dots = sum_chunks(partial, batch, sample_size);
    scalar_t* ge = grad_eps.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < batch; ++i) ge[i] = static_cast<scalar_t>(dots[i]);
  });
  return {grad_real, grad_fake, grad_eps};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("gradient_penalty", &gradient_penalty_cpu);
  m.impl("gradient_penalty_backward", &gradient_penalty_backward_cpu);
  m.impl("gradient_penalty_interpolate", &gradient_penalty_interpolate_cpu);
  m.impl("gradient_penalty_interpolate_backward", &gradient_penalty_interpolate_backward_cpu);
}

}  // namespace genfast
