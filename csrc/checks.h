// Argument checks shared by the ops' C++ entry points (direct torch.ops.genfast.* calls
// and C++ callers). They raise the exception types of the Python wrappers' checks:
// TORCH_CHECK_TYPE (TypeError) for dtypes, TORCH_CHECK_VALUE (ValueError) for the rest.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace genfast {

// The Python name of a dtype ("int64", "float32"), as the wrappers' messages say it.
const char* dtype_name(at::ScalarType dtype);

inline void check_shape(const char* op, const at::Tensor& t, const char* name,
                        at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ",
                    t.sizes());
}

inline void check_dtype(const char* op, const at::Tensor& t, const char* name,
                        at::ScalarType expected) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, op, ": ", name, " must be ", dtype_name(expected),
                   ", got ", dtype_name(t.scalar_type()));
}

inline void check_float_dtype(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", dtype_name(t.scalar_type()));
}

// t has the dtype of `like` (named like_name).
inline void check_same_dtype(const char* op, const at::Tensor& t, const char* name,
                             const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have ", like_name,
                   "'s dtype ", dtype_name(like.scalar_type()), ", got ",
                   dtype_name(t.scalar_type()));
}

inline void check_same_device(const char* op, const at::Tensor& t, const char* name,
                              const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " must be on ", like_name,
                    "'s device ", like.device(), ", got ", t.device());
}

// The backend's own check: the dispatcher sends a tensor here by its device, but a C++
// caller can call the kernel function's registration directly.
inline void check_cpu(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

inline void check_cuda(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

inline void check_temperature(const char* op, double temperature) {
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, op,
                    ": temperature must be a finite number > 0, got ", temperature);
}

// Raises ValueError naming the first element (in memory order) of `values` (int64) that
// lies outside [low, levels) where `where` (bool, same shape; undefined: everywhere) is
// true; `column_offset` is added to the last index (for a slice of a larger tensor). A
// device->host synchronisation on a GPU: callers that checked once may skip it.
void check_levels_in_range(const char* op, const char* name, const at::Tensor& values,
                           const at::Tensor& where, int64_t low, int64_t levels,
                           const char* rule, int64_t column_offset = 0);

// ---- a sampling op's weights: one Tensor[] argument, unpacked by name -------------
// An op lists its weights once, as an X-macro (e.g. GENFAST_GATED_ROW_WEIGHTS(X) =
// X(feature_table) X(first_weight) ...) in the order of its Python NamedTuple; these
// macros make from it the struct of tensors (GENFAST_WEIGHT_TENSORS) and the struct of
// a kernel's pointers (GENFAST_WEIGHT_POINTERS), so that no code indexes the list by
// position and a reorder cannot go unnoticed.
#define GENFAST_WEIGHT_TENSOR_FIELD(name) at::Tensor name;
#define GENFAST_WEIGHT_NAME(name) #name,
#define GENFAST_WEIGHT_ADDRESS(name) &name,
#define GENFAST_WEIGHT_POINTER_FIELD(name) const T* name;
#define GENFAST_WEIGHT_POINTER_SET(name) name = w.name.template const_data_ptr<T>();

// struct Name { at::Tensor a, b, ...; kNames; kCount; fields() } for LIST.
#define GENFAST_WEIGHT_TENSORS(Name, LIST)                                                 \
  struct Name {                                                                            \
    LIST(GENFAST_WEIGHT_TENSOR_FIELD)                                                      \
    static constexpr const char* kNames[] = {LIST(GENFAST_WEIGHT_NAME)};                   \
    static constexpr size_t kCount = sizeof(kNames) / sizeof(kNames[0]);                   \
    std::array<at::Tensor*, kCount> fields() { return {LIST(GENFAST_WEIGHT_ADDRESS)}; }    \
    std::array<const at::Tensor*, kCount> fields() const {                                 \
      return {LIST(GENFAST_WEIGHT_ADDRESS)};                                               \
    }                                                                                      \
  };

// template <typename T> struct Name { const T* a, b, ...; } filled from the tensors' struct
// (contiguous, dtype T) by set(); trivially copyable, so a CUDA kernel takes it by value.
#define GENFAST_WEIGHT_POINTERS(Name, Tensors, LIST)                                       \
  template <typename T>                                                                    \
  struct Name {                                                                            \
    LIST(GENFAST_WEIGHT_POINTER_FIELD)                                                     \
    void set(const Tensors& w) { LIST(GENFAST_WEIGHT_POINTER_SET) }                         \
  };

// The weights argument unpacked into W (a GENFAST_WEIGHT_TENSORS struct); ValueError
// when it does not hold W::kCount tensors.
template <typename W>
W unpack_weights(const char* op, at::TensorList weights) {
  TORCH_CHECK_VALUE(weights.size() == W::kCount, op, ": weights must hold ", W::kCount,
                    " tensors (", W::kNames[0], ", ..., ", W::kNames[W::kCount - 1], "), got ",
                    weights.size());
  W w;
  const auto fields = w.fields();
  for (size_t i = 0; i < W::kCount; ++i) *fields[i] = weights[i];
  return w;
}

// Every weight on `like`'s device with its dtype (named like_name in the messages).
template <typename W>
void check_weights_like(const char* op, const W& w, const at::Tensor& like, const char* like_name) {
  const auto fields = w.fields();
  for (size_t i = 0; i < W::kCount; ++i) {
    check_same_device(op, *fields[i], W::kNames[i], like, like_name);
    check_same_dtype(op, *fields[i], W::kNames[i], like, like_name);
  }
}

template <typename W>
W contiguous_weights(const W& w) {
  W out;
  const auto from = w.fields();
  const auto to = out.fields();
  for (size_t i = 0; i < W::kCount; ++i) *to[i] = from[i]->contiguous();
  return out;
}

}  // namespace genfast
