#include <cuda_runtime_api.h>

#include "../build_info.h"

#define GENFAST_STRINGIFY_(...) #__VA_ARGS__
#define GENFAST_STRINGIFY(...) GENFAST_STRINGIFY_(__VA_ARGS__)

namespace genfast {

std::string cuda_compiled_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
}

std::string cuda_compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return GENFAST_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

}  // namespace genfast
