// code_statistics on the CPU: a stable counting sort of the rows by code, then
// each code's rows summed in their original order, piece by piece as
// csrc/code_statistics.h defines (parallel over codes), so the result does not
// depend on the number of threads and equals the CUDA kernel's.
#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../code_statistics.h"

namespace genfast {
namespace {

std::tuple<at::Tensor, at::Tensor> code_statistics_cpu(const at::Tensor& x_in,
                                                       const at::Tensor& indices_in,
                                                       int64_t num_codes) {
  check_code_statistics(x_in, indices_in, num_codes);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), "code_statistics: x must be a CPU tensor, got ",
              x_in.device());
  const auto x = x_in.contiguous();
  const auto indices = indices_in.contiguous();
  const int64_t n = x.size(0), dim = x.size(1);
  auto counts = at::zeros({num_codes}, indices.options());
  auto sums = at::empty({num_codes, dim}, x.options().dtype(code_statistics_sum_dtype(x)));

  const int64_t* idx = indices.const_data_ptr<int64_t>();
  int64_t* count = counts.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < num_codes, "code_statistics: indices must be in [0, ",
                num_codes, "), got ", idx[i], " at position ", i);
    ++count[idx[i]];
  }
  // start[k]: where code k's rows begin in `order`, the rows sorted stably by code.
  std::vector<int64_t> start(num_codes + 1, 0);
  for (int64_t k = 0; k < num_codes; ++k) start[k + 1] = start[k] + count[k];
  std::vector<int64_t> order(n);
  {
    std::vector<int64_t> cursor(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[cursor[idx[i]]++] = i;
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "code_statistics_cpu", [&] {
    using sum_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* rows = x.const_data_ptr<scalar_t>();
    sum_t* out = sums.mutable_data_ptr<sum_t>();
    // Threads only for enough work (~2^18 additions) to pay for waking them.
    const int64_t grain = n * dim < (int64_t(1) << 18) ? num_codes : 16;
    at::parallel_for(0, num_codes, grain, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(dim), piece(dim);
      for (int64_t k = begin; k < end; ++k) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = start[k]; j < start[k + 1];) {
          const int64_t piece_end = std::min(start[k + 1], (j / kSumPieceRows + 1) * kSumPieceRows);
          std::fill(piece.begin(), piece.end(), 0.0);
          for (; j < piece_end; ++j) {
            const scalar_t* row = rows + order[j] * dim;
            for (int64_t d = 0; d < dim; ++d) piece[d] += static_cast<double>(row[d]);
          }
          for (int64_t d = 0; d < dim; ++d) acc[d] += piece[d];
        }
        for (int64_t d = 0; d < dim; ++d) out[k * dim + d] = static_cast<sum_t>(acc[d]);
      }
    });
  });
  return {counts, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) { m.impl("code_statistics", &code_statistics_cpu); }

}  // namespace genfast
