// The Python module genfast._C: loading it registers the ops (csrc/schemas.cpp and
// the kernels); pybind11 serves only what is not a tensor op, the build facts.
#include <torch/extension.h>

#include "../build_info.h"

namespace {

py::dict build_info() {
  py::dict info;
  // torch/extension.h brings the version macros in every supported torch.
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                          std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
#ifdef GENFAST_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_version"] = genfast::cuda_compiled_version();
  info["cuda_archs"] = genfast::cuda_compiled_archs();
#else
  info["with_cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = py::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "genfast compiled kernels";
  m.def("build_info", &build_info,
        "Facts of this build: torch version, whether CUDA kernels are compiled, CUDA version "
        "and architectures.");
}
