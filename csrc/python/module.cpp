// The Python module genfast._C: loading it registers the ops (csrc/schemas.cpp and
// the kernels); pybind11 serves only what is not a tensor op, the build facts.
#include <torch/extension.h>

#include "../build_info.h"
#include "../gated_pixelcnn_row.h"
#include "../transformer_decode_schedule.h"
#include "../transformer_decode_step.h"

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

// For tests: the batched CUDA kernel's tiles of every phase of a sub-pixel, as lists of
// (kind, layer, image0, column0, writer), from the same host/device functions the
// kernel uses (csrc/gated_row_tiles.h), and its work buffer's size for `grid` blocks.
py::tuple gated_row_tiles(int64_t batch, int64_t channels, int64_t hidden, int64_t levels,
                          int64_t layers, int64_t grid) {
  genfast::GatedRowShape s{};
  s.batch = batch;
  s.channels = channels;
  s.hidden = hidden;
  s.levels = levels;
  s.layers = layers;
  const genfast::GatedRowTiling tiling = genfast::gated_row_tiling(s);
  py::list phases;
  for (int phase = 0; phase < tiling.phases(); ++phase) {
    py::list tiles;
    for (int t = 0; t < tiling.tiles(phase); ++t) {
      const genfast::RowTile tile = tiling.tile(phase, t);
      tiles.append(py::make_tuple(tile.kind, tile.layer, tile.image0, tile.column0, tile.writer));
    }
    phases.append(tiles);
  }
  return py::make_tuple(phases, tiling.max_tiles(), genfast::gated_row_work_elements(s, grid));
}

// For tests: (column, colour, phase) of step q of a row (genfast::row_step).
py::tuple gated_row_step(int64_t q, int64_t phases, int64_t channels) {
  const genfast::RowStep step =
      genfast::row_step(q, static_cast<int>(phases), static_cast<int>(channels));
  return py::make_tuple(step.column, step.colour, step.phase);
}

// For tests: the kernel GENFAST_GATED_ROW_KERNEL=value selects (ValueError when invalid).
std::string gated_row_kernel_choice(const std::string& value) {
  switch (genfast::gated_row_kernel_choice(value.c_str())) {
    case genfast::GatedRowKernel::kBatched: return "batched";
    case genfast::GatedRowKernel::kPhases: return "phases";
    case genfast::GatedRowKernel::kPerImage: return "per_image";
    default: return "auto";
  }
}

// For tests: the phases of transformer_decode_step's grid CUDA kernel as lists of
// (kind, layer, seq0, column0, writer), from the same host/device functions the
// kernel uses (csrc/transformer_decode_schedule.h), and its shared memory in elements.
py::tuple decode_schedule(int64_t batch, int64_t layers, int64_t heads, int64_t head_dim, int64_t mlp,
                          int64_t levels, int64_t max_positions) {
  TORCH_CHECK_VALUE(batch >= 1 && layers >= 1 && heads >= 1 && head_dim >= 1 && mlp >= 1 && levels >= 1 &&
                        batch * heads <= genfast::kMaxIndex32 && 3 * heads * head_dim <= genfast::kMaxIndex32,
                    "_decode_schedule: sizes must be positive and fit in int");
  const genfast::DecodeSchedule s{static_cast<int>(batch), static_cast<int>(layers), static_cast<int>(heads),
                                  static_cast<int>(heads * head_dim), static_cast<int>(mlp),
                                  static_cast<int>(levels)};
  py::list phases;
  for (int phase = 0; phase < s.phases(); ++phase) {
    py::list items;
    for (int i = 0; i < s.items(phase); ++i) {
      const genfast::DecodeItem it = s.item(phase, i);
      items.append(py::make_tuple(it.kind, it.layer, it.seq0, it.column0, it.writer));
    }
    phases.append(items);
  }
  return py::make_tuple(phases, s.max_items(),
                        genfast::decode_grid_shared_elements(heads * head_dim, mlp, head_dim, max_positions));
}

// For tests: the kernel GENFAST_DECODE_KERNEL=value selects, and the grid limit
// GENFAST_DECODE_GRID=grid sets (ValueError when invalid).
py::tuple decode_kernel_choice(const std::string& kernel, const std::string& grid) {
  const char* names[] = {"auto", "grid", "block"};
  return py::make_tuple(names[static_cast<int>(genfast::decode_kernel_choice(kernel.c_str()))],
                        genfast::decode_grid_limit(grid.c_str()));
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
  m.def("_gated_row_tiles", &gated_row_tiles,
        "(tiles of each phase as (kind, layer, image0, column0, writer), max tiles, work "
        "elements for `grid` blocks) of the batched CUDA gated_pixelcnn_row kernel for "
        "(batch, channels, hidden, levels, layers, grid); for tests.");
  m.def("_gated_row_step", &gated_row_step,
        "(column, colour, phase) of step q of a row for (q, phases, channels); for tests.");
  m.def("_gated_row_kernel_choice", &gated_row_kernel_choice,
        "The CUDA gated_pixelcnn_row kernel a GENFAST_GATED_ROW_KERNEL value selects; for tests.");
  m.def("_decode_schedule", &decode_schedule,
        "(items of each phase as (kind, layer, seq0, column0, writer), max items, shared "
        "elements) of the grid CUDA transformer_decode_step kernel for (batch, layers, heads, "
        "head_dim, mlp, levels, max_positions); for tests.");
  m.def("_decode_kernel_choice", &decode_kernel_choice,
        "(kernel, grid limit) that GENFAST_DECODE_KERNEL and GENFAST_DECODE_GRID values select; "
        "for tests.");
}
