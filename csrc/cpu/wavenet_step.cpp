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

namespace genfast {
namespace {

constexpr int kRows = 4;  // sequences per register block

// The two products of a step: y (rows, cols) = bias + sum over taps of x_tap @ w_tap,
// where x[tap * kRows + r] points at row r's kdim inputs of tap `tap` and tap `tap`'s
// weight is rows [tap * kdim, (tap + 1) * kdim) of w (leading dimension ldw).
// gate: a[i] = wavenet_gate(z[i] + b[i], z[half + i] + b[half + i]), i < half.
template <typename T>
struct MathKernels {
  void (*gemm)(int rows, int taps, const T* const* x, int64_t kdim, const T* w, int64_t ldw,
               int64_t cols, const T* bias, T* y, int64_t ldy);
  void (*gate)(const T* z, const T* bias, int64_t half, T* a);
};

template <typename T>
void gemm_generic(int rows, int taps, const T* const* x, int64_t kdim, const T* w, int64_t ldw,
                  int64_t cols, const T* bias, T* y, int64_t ldy) {
  for (int r = 0; r < rows; ++r) {
    T* __restrict yr = y + r * ldy;
    for (int64_t o = 0; o < cols; ++o) yr[o] = bias != nullptr ? bias[o] : T(0);
    for (int tap = 0; tap < taps; ++tap) {
      const T* xr = x[tap * kRows + r];
      for (int64_t c = 0; c < kdim; ++c) {
        const T v = xr[c];
        const T* __restrict wr = w + (tap * kdim + c) * ldw;
        for (int64_t o = 0; o < cols; ++o) yr[o] += v * wr[o];
      }
    }
  }
}

template <typename T>
void gate_generic(const T* z, const T* bias, int64_t half, T* a) {
  for (int64_t i = 0; i < half; ++i) a[i] = wavenet_gate(z[i] + bias[i], z[half + i] + bias[half + i]);
}

// ---- AVX-512 float32 -------------------------------------------------------------

// A (MR rows) x (16 * NV columns) block; the last vector of columns is masked by `last`.
template <int MR, int NV>
__attribute__((target("avx512f"))) void gemm_block_avx512(int taps, const float* const* x,
                                                          int64_t kdim, const float* w,
                                                          int64_t ldw, __mmask16 last,
                                                          const float* bias, float* y,
                                                          int64_t ldy) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __mmask16 m = v == NV - 1 ? last : __mmask16(0xFFFF);
    const __m512 b = bias != nullptr ? _mm512_maskz_loadu_ps(m, bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][v] = b;
  }
  for (int tap = 0; tap < taps; ++tap) {
    const float* xr[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) xr[r] = x[tap * kRows + r];
    const float* wt = w + tap * kdim * ldw;
    for (int64_t c = 0; c < kdim; ++c) {
      const float* wr = wt + c * ldw;
      __m512 wv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        wv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, wr + 16 * v) : _mm512_loadu_ps(wr + 16 * v);
      }
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const __m512 xb = _mm512_set1_ps(xr[r][c]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      _mm512_mask_storeu_ps(y + r * ldy + 16 * v, v == NV - 1 ? last : __mmask16(0xFFFF), acc[r][v]);
    }
  }
}

// Column blocks of up to 16 * kMaxVectors / MR floats: with one row (batch 1) a block
// covers 256 columns, so each weight row is read in one contiguous sweep.
constexpr int kMaxVectors = 16;

template <int MR, int NV>
__attribute__((target("avx512f"))) void gemm_block_dispatch(int nv, int taps, const float* const* x,
                                                             int64_t kdim, const float* w,
                                                             int64_t ldw, __mmask16 last,
                                                             const float* bias, float* y,
                                                             int64_t ldy) {
  if constexpr (NV > 1) {
    if (nv < NV) {
      gemm_block_dispatch<MR, NV - 1>(nv, taps, x, kdim, w, ldw, last, bias, y, ldy);
      return;
    }
  }
  gemm_block_avx512<MR, NV>(taps, x, kdim, w, ldw, last, bias, y, ldy);
}

template <int MR>
__attribute__((target("avx512f"))) void gemm_rows_avx512(int taps, const float* const* x,
                                                         int64_t kdim, const float* w, int64_t ldw,
                                                         int64_t cols, const float* bias, float* y,
                                                         int64_t ldy) {
  constexpr int kVectors = kMaxVectors / MR;
  for (int64_t o0 = 0; o0 < cols; o0 += 16 * kVectors) {
    const int64_t width = std::min<int64_t>(16 * kVectors, cols - o0);
    const int rem = static_cast<int>(width % 16);
    const __mmask16 last = rem != 0 ? static_cast<__mmask16>((1u << rem) - 1) : __mmask16(0xFFFF);
    gemm_block_dispatch<MR, kVectors>(static_cast<int>((width + 15) / 16), taps, x, kdim, w + o0,
                                      ldw, last, bias != nullptr ? bias + o0 : nullptr, y + o0, ldy);
  }
}

void gemm_avx512(int rows, int taps, const float* const* x, int64_t kdim, const float* w,
                 int64_t ldw, int64_t cols, const float* bias, float* y, int64_t ldy) {
  switch (rows) {
    case 1: gemm_rows_avx512<1>(taps, x, kdim, w, ldw, cols, bias, y, ldy); break;
    case 2: gemm_rows_avx512<2>(taps, x, kdim, w, ldw, cols, bias, y, ldy); break;
    case 3: gemm_rows_avx512<3>(taps, x, kdim, w, ldw, cols, bias, y, ldy); break;
    default: gemm_rows_avx512<4>(taps, x, kdim, w, ldw, cols, bias, y, ldy); break;
  }
}

// e^x for float32 lanes: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two parts so
// that n ln2 is exact), e^r by its degree-7 Taylor polynomial (error below 1 ulp),
// then scaled by 2^n. Inputs are clamped to [-87, 88], where e^x is a normal float.
__attribute__((target("avx512f"))) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// tanh(t) = 2 / (1 + e^-2t) - 1 and sigmoid(s) = 1 / (1 + e^-s): absolute error ~1e-7.
__attribute__((target("avx512f"))) void gate_avx512(const float* z, const float* bias,
                                                    int64_t half, float* a) {
  const __m512 one = _mm512_set1_ps(1.f), two = _mm512_set1_ps(2.f);
  for (int64_t i = 0; i < half; i += 16) {
    const int64_t left = half - i;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    const __m512 t = _mm512_add_ps(_mm512_maskz_loadu_ps(m, z + i), _mm512_maskz_loadu_ps(m, bias + i));
    const __m512 s = _mm512_add_ps(_mm512_maskz_loadu_ps(m, z + half + i),
                                   _mm512_maskz_loadu_ps(m, bias + half + i));
    const __m512 th = _mm512_sub_ps(
        _mm512_div_ps(two, _mm512_add_ps(one, exp_avx512(_mm512_mul_ps(t, _mm512_set1_ps(-2.f))))), one);
    const __m512 sg =
        _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), s))));
    _mm512_mask_storeu_ps(a + i, m, _mm512_mul_ps(th, sg));
  }
}

bool has_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
}

template <typename T>
MathKernels<T> math_kernels() {
  return {&gemm_generic<T>, &gate_generic<T>};
}

template <>
MathKernels<float> math_kernels<float>() {
  if (has_avx512()) return {&gemm_avx512, &gate_avx512};
  return {&gemm_generic<float>, &gate_generic<float>};
}

// ---- the step ----------------------------------------------------------------------

template <typename T>
struct StepArgs {
  const WaveNetStepShape* shape;
  int64_t* samples;
  T* cache;
  const double* uniforms;
  int64_t step, known_steps;
  double temperature;
  const T *input_weight, *input_bias, *dilated_weight, *gate_bias, *out_weight, *out_bias;
  const T *head_weight1, *head_bias1, *head_weight2, *head_bias2;
  T* logits;
};

// The drawn level of one sequence (-1 when a logit is not finite).
template <typename T>
int64_t draw(const T* logits, int64_t levels, double u, double temperature, double* cdf) {
  double z_max = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < levels; ++i) {
    if (!std::isfinite(static_cast<double>(logits[i]))) return -1;
    cdf[i] = wavenet_tempered_logit(static_cast<double>(logits[i]), temperature);
    z_max = std::max(z_max, cdf[i]);
  }
  double sum = 0;
  for (int64_t i = 0; i < levels; ++i) {
    sum += std::exp(cdf[i] - z_max);
    cdf[i] = sum;
  }
  const double threshold = u * sum;
  int64_t count = 0;
  while (count < levels && cdf[count] <= threshold) ++count;
  return wavenet_clamp_level(count, levels);
}

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
    std::copy(p.input_bias, p.input_bias + R, h);
    for (int64_t j = 0; j < s.input_kernel_size; ++j) {
      // Tap j reads the input of time t - (k_in - 1 - j), which is sample t - k_in + j.
      const int64_t column = t - s.input_kernel_size + j;
      if (column < 0) continue;
      const int64_t level = p.samples[n * s.length + column];
      TORCH_CHECK(level >= -1 && level < s.levels, "wavenet_step: samples[", n, ", ", column,
                  "] = ", level, " is not a level in [0, ", s.levels, ")");
      if (level < 0) continue;  // a failed draw (non-finite logits), already reported as -1
      const T* row = p.input_weight + (j * s.levels + level) * R;
      for (int64_t c = 0; c < R; ++c) h[c] += row[c];
    }
  }

  for (int64_t l = 0; l < s.layers; ++l) {
    const bool last = l == s.layers - 1;
    const T* wd = p.dilated_weight + l * k * R * G;
    // The last layer's residual output is never used: compute its skip columns only.
    const int64_t col0 = last ? R : 0;
    const T* wo = p.out_weight + l * Gh * RS + col0;
    const T* bo = p.out_bias + l * RS + col0;
    for (int64_t r0 = b0; r0 < b1; r0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, b1 - r0));
      for (int64_t j = 0; j < k; ++j) {
        const int64_t time = t - (k - 1 - j) * s.dilation[l];
        const int64_t slot = s.offset[l] + wavenet_ring_slot(time, s.ring_length[l]);
        for (int r = 0; r < rows; ++r) x[j * kRows + r] = cache_of(r0 + r) + slot * R;
      }
      math.gemm(rows, static_cast<int>(k), x.data(), R, wd, G, G, nullptr, z.data(), G);
      for (int r = 0; r < rows; ++r) {
        const T* gb = p.gate_bias + ((s.gate_bias_per_sequence ? r0 + r : 0) * s.layers + l) * G;
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
      for (int64_t c = 0; c < S; ++c) in[c] = wavenet_relu(acc[c]);
      x[r] = in;
    }
    math.gemm(rows, 1, x.data(), S, p.head_weight1, s.head, s.head, p.head_bias1, hidden.data(),
              s.head);
    for (int r = 0; r < rows; ++r) {
      T* h = hidden.data() + r * s.head;
      for (int64_t c = 0; c < s.head; ++c) h[c] = wavenet_relu(h[c]);
      x[r] = h;
    }
    T* logits = p.logits + r0 * s.levels;
    math.gemm(rows, 1, x.data(), s.head, p.head_weight2, s.levels, s.levels, p.head_bias2, logits,
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
                            const at::Tensor& input_weight, const at::Tensor& input_bias,
                            const at::Tensor& dilated_weight, const at::Tensor& gate_bias,
                            const at::Tensor& out_weight, const at::Tensor& out_bias,
                            const at::Tensor& head_weight1, const at::Tensor& head_bias1,
                            const at::Tensor& head_weight2, const at::Tensor& head_bias2,
                            at::IntArrayRef dilations) {
  const WaveNetStepShape shape = check_wavenet_step(
      samples, cache, uniforms, step, known_steps, temperature, input_weight, input_bias,
      dilated_weight, gate_bias, out_weight, out_bias, head_weight1, head_bias1, head_weight2,
      head_bias2, dilations);
  TORCH_CHECK(cache.device().is_cpu(), "wavenet_step: cache must be a CPU tensor, got ",
              cache.device());
  // The kernel works in place on contiguous memory; strided state is copied back.
  at::Tensor samples_c = samples.contiguous(), cache_c = cache.contiguous();
  const at::Tensor weights[] = {input_weight.contiguous(), input_bias.contiguous(),
                                dilated_weight.contiguous(), gate_bias.contiguous(),
                                out_weight.contiguous(), out_bias.contiguous(),
                                head_weight1.contiguous(), head_bias1.contiguous(),
                                head_weight2.contiguous(), head_bias2.contiguous()};
  const at::Tensor uniforms_c = uniforms.contiguous();
  at::Tensor logits = at::empty({shape.batch, shape.levels}, cache.options());
  AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "wavenet_step_cpu", [&] {
    StepArgs<scalar_t> p{&shape,
                         samples_c.mutable_data_ptr<int64_t>(),
                         cache_c.mutable_data_ptr<scalar_t>(),
                         uniforms_c.const_data_ptr<double>(),
                         step,
                         known_steps,
                         temperature,
                         weights[0].const_data_ptr<scalar_t>(),
                         weights[1].const_data_ptr<scalar_t>(),
                         weights[2].const_data_ptr<scalar_t>(),
                         weights[3].const_data_ptr<scalar_t>(),
                         weights[4].const_data_ptr<scalar_t>(),
                         weights[5].const_data_ptr<scalar_t>(),
                         weights[6].const_data_ptr<scalar_t>(),
                         weights[7].const_data_ptr<scalar_t>(),
                         weights[8].const_data_ptr<scalar_t>(),
                         weights[9].const_data_ptr<scalar_t>(),
                         logits.mutable_data_ptr<scalar_t>()};
    const MathKernels<scalar_t> math = math_kernels<scalar_t>();
    // At least 8 sequences per thread: below that a step takes a fraction of a millisecond
    // and waiting for a second thread costs more than it saves.
    const int64_t blocks = (shape.batch + kRows - 1) / kRows;
    at::parallel_for(0, blocks, 8 / kRows, [&](int64_t begin, int64_t end) {
      step_sequences(p, math, begin * kRows, std::min(end * kRows, shape.batch));
    });
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
