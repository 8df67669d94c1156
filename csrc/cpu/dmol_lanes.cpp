// The float32 path of dmol_loss on the CPU (csrc/cpu/dmol.cpp threads it, a task being
// kLanes = 16 consecutive pixels of an image): the formulas of csrc/dmol.h written
// branch-free on GCC vector types of the register's width, with polynomial exp and
// log (dmol_lanes_impl.h). Each (B, P, H, W) channel of a vector of pixels is one
// contiguous unaligned load. Compiled three times: AVX-512 (16 floats), AVX2+FMA (8)
// and the baseline (4); the entry points pick one at run time.
//
// Per bin, one exp each for 1/scale, e^-|p|, e^-|m|, e^-|mid| and e^-w, and a single
// log shared by the exact bin and the mid-bin approximation (the branch is chosen
// from the probability itself, before the log). The next task's channel rows are
// prefetched: a pixel's P channels lie H*W*4 bytes apart, more streams than the
// hardware prefetcher follows. Denormals are flushed to zero while a kernel runs
// (MXCSR FTZ/DAZ, restored on exit): posteriors of far-off mixtures reach e^-87 and
// their products underflow, which otherwise costs a microcode assist per lane;
// values below 1e-38 are 0 for this loss.
#pragma GCC optimize("no-trapping-math", "fp-contract=fast")
#pragma GCC diagnostic ignored "-Wpsabi"  // vector arguments: every such function is inlined

#include "dmol_lanes.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define GENFAST_DMOL_X86 1
#endif

#include "../dmol.h"
#include "fast_math.h"  // exp_reduced: the exp polynomial shared with fast_exp

#define GENFAST_INLINE __attribute__((always_inline)) inline

#define GENFAST_DMOL_WIDTH 4
#define GENFAST_DMOL_NAMESPACE width4
#include "dmol_lanes_impl.h"
#undef GENFAST_DMOL_WIDTH
#undef GENFAST_DMOL_NAMESPACE

#ifdef GENFAST_DMOL_X86
#define GENFAST_DMOL_WIDTH 8
#define GENFAST_DMOL_NAMESPACE width8
#include "dmol_lanes_impl.h"
#undef GENFAST_DMOL_WIDTH
#undef GENFAST_DMOL_NAMESPACE

#define GENFAST_DMOL_WIDTH 16
#define GENFAST_DMOL_NAMESPACE width16
#include "dmol_lanes_impl.h"
#undef GENFAST_DMOL_WIDTH
#undef GENFAST_DMOL_NAMESPACE
#endif

namespace genfast {
namespace {

// Flush-to-zero and denormals-are-zero for the scope (the calling thread's MXCSR).
struct FlushDenormals {
#ifdef GENFAST_DMOL_X86
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

enum class Isa { baseline, avx2, avx512 };

// The widest instruction set this CPU has, or a narrower one named by the environment
// variable GENFAST_DMOL_ISA ("avx2", "baseline"; read at every call, so that the tests
// can run each path on one machine).
Isa isa() {
#ifdef GENFAST_DMOL_X86
  static const Isa best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") ? Isa::avx512
                          : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? Isa::avx2
                                                                                             : Isa::baseline;
  const char* asked = std::getenv("GENFAST_DMOL_ISA");
  if (asked != nullptr && std::strcmp(asked, "baseline") == 0) return Isa::baseline;
  if (asked != nullptr && std::strcmp(asked, "avx2") == 0 && best != Isa::baseline) return Isa::avx2;
  return best;
#else
  return Isa::baseline;
#endif
}

// One entry point per instruction set; no lambdas inside (a lambda is a function of
// its own, compiled for the baseline).
void loss_baseline(const width4::Problem& pr, float* nll, int64_t begin, int64_t end) {
  width4::loss_tasks(pr, nll, begin, end);
}
void backward_baseline(const width4::Problem& pr, const float* grad_nll, const float* nll, float* grad,
                       int64_t begin, int64_t end) {
  width4::backward_tasks(pr, grad_nll, nll, grad, begin, end);
}
#ifdef GENFAST_DMOL_X86
__attribute__((target("avx2,fma"))) void loss_avx2(const width8::Problem& pr, float* nll, int64_t begin,
                                                   int64_t end) {
  width8::loss_tasks(pr, nll, begin, end);
}
__attribute__((target("avx2,fma"))) void backward_avx2(const width8::Problem& pr, const float* grad_nll,
                                                       const float* nll, float* grad, int64_t begin, int64_t end) {
  width8::backward_tasks(pr, grad_nll, nll, grad, begin, end);
}
__attribute__((target("avx512f,fma"))) void loss_avx512(const width16::Problem& pr, float* nll, int64_t begin,
                                                        int64_t end) {
  width16::loss_tasks(pr, nll, begin, end);
}
__attribute__((target("avx512f,fma"))) void backward_avx512(const width16::Problem& pr, const float* grad_nll,
                                                            const float* nll, float* grad, int64_t begin,
                                                            int64_t end) {
  width16::backward_tasks(pr, grad_nll, nll, grad, begin, end);
}
#endif

}  // namespace

void dmol_loss_lanes(const float* params, const int64_t* x, int64_t p, int64_t hw, int64_t channels,
                     int64_t mixtures, int64_t levels, float* nll, int64_t begin, int64_t end) {
  FlushDenormals ftz;
  switch (isa()) {
#ifdef GENFAST_DMOL_X86
    case Isa::avx512:
      return loss_avx512({params, x, p, hw, channels, mixtures, levels}, nll, begin, end);
    case Isa::avx2:
      return loss_avx2({params, x, p, hw, channels, mixtures, levels}, nll, begin, end);
#endif
    default:
      return loss_baseline({params, x, p, hw, channels, mixtures, levels}, nll, begin, end);
  }
}

void dmol_loss_backward_lanes(const float* grad_nll, const float* params, const int64_t* x, const float* nll,
                              int64_t p, int64_t hw, int64_t channels, int64_t mixtures, int64_t levels,
                              float* grad, int64_t begin, int64_t end) {
  FlushDenormals ftz;
  switch (isa()) {
#ifdef GENFAST_DMOL_X86
    case Isa::avx512:
      return backward_avx512({params, x, p, hw, channels, mixtures, levels}, grad_nll, nll, grad, begin, end);
    case Isa::avx2:
      return backward_avx2({params, x, p, hw, channels, mixtures, levels}, grad_nll, nll, grad, begin, end);
#endif
    default:
      return backward_baseline({params, x, p, hw, channels, mixtures, levels}, grad_nll, nll, grad, begin, end);
  }
}

}  // namespace genfast
