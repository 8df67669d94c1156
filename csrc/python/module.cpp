// The Python module genfast._C: loading it registers the ops (csrc/schemas.cpp and
// the kernels); pybind11 serves only what is not a tensor op, the build facts.
#include <torch/extension.h>

#include "../build_info.h"
#include "../gated_pixelcnn_row.h"

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

// For tests: the shared memory the CUDA gated_pixelcnn_row kernel is launched with, from
// the same host function (computable without a GPU).
py::tuple gated_row_shared_memory(int64_t channels, int64_t hidden, int64_t layers,
                                  int64_t element_size) {
  genfast::GatedRowShape s{};
  s.channels = channels;
  s.hidden = hidden;
  s.layers = layers;
  const genfast::GatedRowSharedMemory m =
      genfast::gated_row_shared_memory(s, static_cast<size_t>(element_size));
  return py::make_tuple(m.dynamic_bytes, m.static_bytes, m.needs_opt_in());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "genfast compiled kernels";
  m.def("build_info", &build_info,
        "Facts of this build: torch version, whether CUDA kernels are compiled, CUDA version "
        "and architectures.");
  m.def("_gated_row_shared_memory", &gated_row_shared_memory,
        "(dynamic bytes, static bytes, needs the opt-in attribute) of one block of the CUDA "
        "gated_pixelcnn_row kernel for (channels, hidden, layers, element size); for tests.");
}
