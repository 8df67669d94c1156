// pixelcnn_row: one row of PixelCNN's cached sampler — what the CPU and CUDA kernels
// share: the layout of the arguments and the argument checks (the per-element math,
// relu and the inverse-CDF draw, is in sampling_math.h).
//
// Row i of N images with C colours, W columns, L levels; F input features per colour
// (Cin = C * F, group-major), p = input_kernel / 2, R = 2 * hidden, Hd = hidden, B blocks.
// Every matrix is (inputs, outputs) with its outputs group-major: colour group c owns
// outputs [c * R / C, (c + 1) * R / C) (or Hd / C, or L for the logits), and group c's
// outputs see a prefix of the inputs at the position itself.
//   values         (N, C, W) int64    the row's levels; read where known
//   known          (N, C, W) bool     kept (true) or drawn (false)
//   uniforms       (W, C, N) float64  the uniform of each sub-pixel
//   input_bias     (N, W, R)          input conv bias + class embedding + its rows above
//   block_bias     (B, N, W, Hd)      each block's 3x3 bias + its row above
//   feature_table  (L, F)             the input features of each level
//   input_weight   ((p + 1) * Cin, R) the input conv's centre-row taps j-p..j; row
//                                     tap * Cin + channel; at the centre tap (mask 'A')
//                                     group c reads the first c * F channels
//   reduce_weight  (B, R, Hd), reduce_bias (B, Hd)        1x1, group c reads (c+1) R/C
//   conv_weight    (B, 2 * Hd, Hd)    the 3x3's centre-row taps j-1, j (row tap * Hd +
//                                     channel); group c reads Hd + (c + 1) Hd / C rows
//   expand_weight  (B, Hd, R), expand_bias (B, R)         1x1, group c reads (c+1) Hd/C
//   hidden_weight  (R, R), hidden_bias (R)                1x1, group c reads (c+1) R/C
//   output_weight  (R, C * L), output_bias (C * L)        1x1, group c reads (c+1) R/C
// Outputs: values (N, C, W) int64 (-1: a drawn sub-pixel with non-finite logits, which
// feeds zero features onwards), logits (N, C, W, L), reduce_rows (B, N, W, Hd): each
// block's relu'd reduce output on the row (the next row's 3x3 reads it).
//
// A sub-step (column j, colour c) of an image, per layer, computes group c's outputs
// only; relu'd layer inputs are kept so that products read them directly:
//   h_0 = input_bias[j] + feats[j-p..j] @ input_weight      (feats: the row's features)
//   block b: red_b[j] = relu(relu(h_b) @ reduce_weight[b] + reduce_bias[b])   (row buffer)
//            t_b = relu(block_bias[b, j] + red_b[j-1..j] @ conv_weight[b])
//            h_{b+1} = h_b + t_b @ expand_weight[b] + expand_bias[b]
//   o = relu(relu(h_B) @ hidden_weight + hidden_bias); logits = o @ output_weight + bias
// then the level of (j, c) is drawn (or kept) and its features enter feats[j].
// The weights come as one Tensor[] in the order of GENFAST_PIXELCNN_ROW_WEIGHTS below
// (the fields of genfast.ops.PixelCNNRowWeights). check_levels: check on the host that
// the known values are levels (a device->host synchronisation on a GPU; the sampler
// checks its images once per sample() call and skips it); unchecked, an out-of-range
// known value reads as -1 (known_level in sampling_math.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "common.h"
#include "sampling_math.h"

namespace genfast {

#define GENFAST_PIXELCNN_ROW_WEIGHTS(X)                                                    \
  X(feature_table) X(input_weight) X(reduce_weight) X(reduce_bias) X(conv_weight)          \
  X(expand_weight) X(expand_bias) X(hidden_weight) X(hidden_bias) X(output_weight)         \
  X(output_bias)

GENFAST_WEIGHT_TENSORS(PixelCNNRowWeights, GENFAST_PIXELCNN_ROW_WEIGHTS)
GENFAST_WEIGHT_POINTERS(PixelCNNRowPointers, PixelCNNRowWeights, GENFAST_PIXELCNN_ROW_WEIGHTS)

struct PixelCNNRowShape {
  int64_t batch, channels, width, levels, features, in_channels, pad, wide, hidden, blocks;
};

// Checks every argument (shapes, dtypes, devices, and with check_levels the known
// values) the same way on every backend and returns the sizes.
PixelCNNRowShape check_pixelcnn_row(const at::Tensor& values, const at::Tensor& known,
                                    const at::Tensor& uniforms, double temperature,
                                    const at::Tensor& input_bias, const at::Tensor& block_bias,
                                    const PixelCNNRowWeights& w, bool check_levels);

}  // namespace genfast
