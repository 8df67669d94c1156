// gated_pixelcnn_row: one image row of cached Gated PixelCNN sampling — what the CPU
// and CUDA kernels share: the layout of the arguments and their checks.
//
// The vertical stack of a row does not depend on the row itself, so the sampler
// (genfast.models.GatedPixelCNN) computes it once per row with batched convolutions
// and hands this op, per layer, everything the horizontal stack adds at each
// position that does not depend on the current row (`row_bias`). The op then walks
// the row: for each column j and colour c it computes colour group c of every
// layer's horizontal stack at (i, j) only — taps j-p..j of the layer's input row —
// the gate, the skip sum, the output head and the inverse-CDF draw.
//
// N images, C colours (= colour groups), W columns, V levels, E features per colour,
// H hidden channels (a multiple of C), P = 2H pre-activation channels, T = p + 1
// taps (columns j-p..j), L layers. Group g owns channel block g of every tensor.
//   prefix        (N, C, W) int64   values of the known sub-pixels (others ignored)
//   known         (N, C, W) bool
//   uniforms      (W, C, N) float64 one per sub-pixel
//   feature_table (V, E)            the input features of each level (the model's
//                                   scaled level or learned embedding)
//   row_bias      (L, N, W, P)      horizontal conv bias + link of the vertical stack
//                                   of the row above + class and spatial conditioning
//   first_weight  (T, C*E, P)       layer 0's horizontal conv, tap-major, K x P,
//                                   mask 'A' applied (zeros)
//   horizontal_weight (L-1, T, H, P) layers 1.. (mask 'B')
//   residual_weight (L, H, H), residual_bias (L, H)   horizontal_out 1x1, K x H
//                                   (the last layer's is unused: it has none)
//   skip_weight (L, H, H), skip_bias (L, H)
//   head_weight1 (H, H), head_bias1 (H), head_weight2 (H, C*V), head_bias2 (C*V)
// The weights come as one Tensor[] in the order of GENFAST_GATED_ROW_WEIGHTS below (the
// fields of genfast.ops.GatedRowWeights). check_levels: check on the host that the
// known prefix values are levels (a device->host synchronisation on a GPU; the sampler
// checks its images once per sample() call and skips it); unchecked, an out-of-range
// known value reads as -1 (see known_level in sampling_math.h).
// Returns values (N, C, W) int64 (-1 where the logits were not finite) and logits
// (N, C, W, V) in the weights' dtype.
#pragma once

#include <cstddef>

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "common.h"
#include "gated_row_tiles.h"
#include "sampling_math.h"

namespace genfast {

#define GENFAST_GATED_ROW_WEIGHTS(X)                                                      \
  X(feature_table) X(first_weight) X(horizontal_weight) X(residual_weight) X(residual_bias) \
  X(skip_weight) X(skip_bias) X(head_weight1) X(head_bias1) X(head_weight2) X(head_bias2)

GENFAST_WEIGHT_TENSORS(GatedRowWeights, GENFAST_GATED_ROW_WEIGHTS)
GENFAST_WEIGHT_POINTERS(GatedRowPointers, GatedRowWeights, GENFAST_GATED_ROW_WEIGHTS)

struct GatedRowShape {
  int64_t batch, channels, width, levels, features, hidden, taps, layers;
  int64_t input_channels() const { return channels * features; }
  int64_t pre() const { return 2 * hidden; }
};

// Checks every argument (names, shapes, dtypes, devices, and with check_levels the
// known values) the same way on every backend and returns the sizes.
GatedRowShape check_gated_pixelcnn_row(const at::Tensor& prefix, const at::Tensor& known,
                                       const at::Tensor& uniforms, double temperature,
                                       const at::Tensor& row_bias, const GatedRowWeights& w,
                                       bool check_levels);

// Shared memory of one block of the per-image CUDA kernel (the fallback): the dynamic part (every layer's gated
// units, the skip sum, the head's input and hidden layer: (L + 3) H values, a group's
// pre-activations and outputs: 3 H / C) and the static part (block_gemv's partial sums,
// kGemvWarps x 32 values). A launch needs their total; above 48 KiB only with the
// kernel's max-dynamic-shared-memory attribute raised.
struct GatedRowSharedMemory {
  size_t dynamic_bytes, static_bytes;
  size_t total() const { return dynamic_bytes + static_bytes; }
  bool needs_opt_in() const { return total() > kDefaultSharedMemoryBytes; }
};
GatedRowSharedMemory gated_row_shared_memory(const GatedRowShape& s, size_t element_size);

// ---- the batched CUDA kernel (csrc/gated_row_tiles.h) -----------------------------
// Its tiling of a row; ValueError when a phase's tile count would not fit an int.
GatedRowTiling gated_row_tiling(const GatedRowShape& s);

// Elements of its work buffer for `grid` blocks: every layer's gated units, the skip
// sum over layers < L - 1, the complete skip sum and the head's hidden layer ((L + 3) N H
// values, zeroed after each column's last colour), then each block's inline slice
// (kRowTileImages x H / C values).
int64_t gated_row_work_elements(const GatedRowShape& s, int64_t grid);

// Which CUDA kernel runs a row, from the environment variable GENFAST_GATED_ROW_KERNEL
// (unset or "" = "auto"): "auto" (the batched kernel in one cooperative launch where
// the device supports it, else the per-image kernel), "batched" (cooperative, or an
// error), "phases" (the batched kernel, one ordinary launch per phase: no grid
// barrier, W C (L + 3) launches per row; for tests and devices without cooperative
// launch) or "per_image" (the one-block-per-image kernel). ValueError otherwise.
enum class GatedRowKernel { kAuto, kBatched, kPhases, kPerImage };
GatedRowKernel gated_row_kernel_choice(const char* value);

}  // namespace genfast
