// What the compiled library was built with; read by genfast.backend_info().
#pragma once

#include <string>

namespace genfast {

// Empty strings when the CUDA kernels were not compiled in.
std::string cuda_compiled_version();  // e.g. "13.0"
std::string cuda_compiled_archs();    // e.g. "80,90" (nvcc's __CUDA_ARCH_LIST__)

}  // namespace genfast
