// wavenet_step on the CPU: the whole step of every layer (taps from the ring
// buffers, gate, residual, skip), the output head and the inverse-CDF draw in one
// op call. Sequences are split over threads in blocks of kRows (each thread runs
// all layers for its blocks, so threads never wait for each other); within a block
// every product is a small register-blocked GEMM over the packed weights. Float32 on
// AVX-512 CPUs runs AVX-512 micro-kernels and a vectorised gate; other cases run
// plain loops that the compiler vectorises.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include "../wavenet_step.h"
#include "step_kernels.h"

namespace genfast {
namespace {

// ---- the step ----------------------------------------------------------------------

template <typename T>
struct StepArgs {
  const WaveNetStepShape* shape;
  int64_t* samples;
  T* cache;
  const double* uniforms;
  int64_t step, known_steps;
  double temperature;
  WaveNetStepPointers<T> w;
  T* logits;
};

// Runs the step for sequences [b0, b1).
template <typename T>
void step_sequences(const StepArgs<T>& p, const MathKernels<T>& math, int64_t b0, int64_t b1) {
  const WaveNetStepShape& s = *p.shape;
  const int64_t t = p.step, R = s.residual, S = s.skip, G = s.gate, Gh = s.gate_half;
  const int64_t RS = R + S, k = s.kernel_size;
  std::vector<T> z(kRows * G), a(kRows * Gh), y(kRows * RS), head_in(kRows * S),
      hidden(kRows * s.head);
  std::vector<T> skip((b1 - b0) * S, T(0));
  std::vector<double> cdf(s.levels);
  std::vector<const T*> x(k * kRows);
  auto cache_of = [&](int64_t n) { return p.cache + n * s.slots * R; };
  auto current = [&](int64_t n, int64_t l) {  // layer l's input at time t
    return cache_of(n) + (s.offset[l] + wavenet_ring_slot(t, s.ring_length[l])) * R;
  };

  // Input layer: the one-hot causal convolution of the previous samples.
  for (int64_t n = b0; n < b1; ++n) {
    T* h = current(n, 0);
    std::copy(p.w.input_bias, p.w.input_bias + R, h);
    for (int64_t j = 0; j < s.input_kernel_size; ++j) {
      // Tap j reads the input of time t - (k_in - 1 - j), which is sample t - k_in + j.
      const int64_t column = t - s.input_kernel_size + j;
      if (column < 0) continue;
      const int64_t level = p.samples[n * s.length + column];
      // -1: a failed draw (non-finite logits), already reported, adds nothing; so does an
      // out-of-range value, which check_levels rejects unless the caller checked it.
      if (level < 0 || level >= s.levels) continue;
      const T* row = p.w.input_weight + (j * s.levels + level) * R;
      for (int64_t c = 0; c < R; ++c) h[c] += row[c];
    }
  }

  for (int64_t l = 0; l < s.layers; ++l) {
    const bool last = l == s.layers - 1;
    const T* wd = p.w.dilated_weight + l * k * R * G;
    // The last layer's residual output is never used: compute its skip columns only.
    const int64_t col0 = last ? R : 0;
    const T* wo = p.w.out_weight + l * Gh * RS + col0;
    const T* bo = p.w.out_bias + l * RS + col0;
    for (int64_t r0 = b0; r0 < b1; r0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, b1 - r0));
      for (int64_t j = 0; j < k; ++j) {
        const int64_t time = t - (k - 1 - j) * s.dilation[l];
        const int64_t slot = s.offset[l] + wavenet_ring_slot(time, s.ring_length[l]);
        for (int r = 0; r < rows; ++r) x[j * kRows + r] = cache_of(r0 + r) + slot * R;
      }
      math.gemm(rows, static_cast<int>(k), x.data(), R, wd, G, G, nullptr, z.data(), G);
      for (int r = 0; r < rows; ++r) {
        const T* gb = p.w.gate_bias + ((s.gate_bias_per_sequence ? r0 + r : 0) * s.layers + l) * G;
        math.gate(z.data() + r * G, gb, Gh, a.data() + r * Gh);
        x[r] = a.data() + r * Gh;
      }
      math.gemm(rows, 1, x.data(), Gh, wo, RS, RS - col0, bo, y.data(), RS);
      for (int r = 0; r < rows; ++r) {
        const int64_t n = r0 + r;
        const T* yr = y.data() + r * RS;
        if (!last) {
          const T* h = current(n, l);
          T* next = current(n, l + 1);
          for (int64_t c = 0; c < R; ++c) next[c] = h[c] + yr[c];
        }
        const T* ys = yr + (R - col0);
        T* acc = skip.data() + (n - b0) * S;
        for (int64_t c = 0; c < S; ++c) acc[c] += ys[c];
      }
    }
  }

  // Output head relu -> 1x1 -> relu -> 1x1, then the draw.
  for (int64_t r0 = b0; r0 < b1; r0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, b1 - r0));
    for (int r = 0; r < rows; ++r) {
      const T* acc = skip.data() + (r0 + r - b0) * S;
      T* in = head_in.data() + r * S;
      for (int64_t c = 0; c < S; ++c) in[c] = relu_value(acc[c]);
      x[r] = in;
    }
    math.gemm(rows, 1, x.data(), S, p.w.head_weight1, s.head, s.head, p.w.head_bias1, hidden.data(),
              s.head);
    for (int r = 0; r < rows; ++r) {
      T* h = hidden.data() + r * s.head;
      for (int64_t c = 0; c < s.head; ++c) h[c] = relu_value(h[c]);
      x[r] = h;
    }
    T* logits = p.logits + r0 * s.levels;
    math.gemm(rows, 1, x.data(), s.head, p.w.head_weight2, s.levels, s.levels, p.w.head_bias2, logits,
              s.levels);
    for (int r = 0; r < rows; ++r) {
      const int64_t n = r0 + r;
      if (t < p.known_steps) continue;
      p.samples[n * s.length + t] = draw(logits + r * s.levels, s.levels,
                                         p.uniforms[t * s.batch + n], p.temperature, cdf.data());
    }
  }
}

at::Tensor wavenet_step_cpu(at::Tensor& samples, at::Tensor& cache, const at::Tensor& uniforms,
                            int64_t step, int64_t known_steps, double temperature,
                            at::TensorList weights, at::IntArrayRef dilations, bool check_levels) {
  const char* op = "wavenet_step";
  const WaveNetStepWeights w = unpack_weights<WaveNetStepWeights>(op, weights);
  const WaveNetStepShape shape = check_wavenet_step(samples, cache, uniforms, step, known_steps,
                                                    temperature, w, dilations, check_levels);
  check_cpu(op, cache, "cache");
  // The kernel works in place on contiguous memory; strided state is copied back.
  at::Tensor samples_c = samples.contiguous(), cache_c = cache.contiguous();
  const WaveNetStepWeights wc = contiguous_weights(w);
  const at::Tensor uniforms_c = uniforms.contiguous();
  at::Tensor logits = at::empty({shape.batch, shape.levels}, cache.options());
  AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "wavenet_step_cpu", [&] {
    StepArgs<scalar_t> p{};
    p.shape = &shape;
    p.samples = samples_c.mutable_data_ptr<int64_t>();
    p.cache = cache_c.mutable_data_ptr<scalar_t>();
    p.uniforms = uniforms_c.const_data_ptr<double>();
    p.step = step;
    p.known_steps = known_steps;
    p.temperature = temperature;
    p.w.set(wc);
    p.logits = logits.mutable_data_ptr<scalar_t>();
    const MathKernels<scalar_t> math = math_kernels<scalar_t>();
    parallel_over_batch(shape.batch, [&](int64_t b0, int64_t b1) { step_sequences(p, math, b0, b1); });
  });
  if (!samples_c.is_same(samples)) samples.copy_(samples_c);
  if (!cache_c.is_same(cache)) cache.copy_(cache_c);
  return logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("wavenet_step", &wavenet_step_cpu);
}

}  // namespace genfast
