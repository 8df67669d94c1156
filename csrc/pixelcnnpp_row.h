// pixelcnnpp_row: one image row of PixelCNN++'s cached sampler
// (genfast.models.pixelcnnpp_cache) — what the CPU and CUDA kernels share: the layout
// of the arguments, the schedule of the layers at the three resolutions, and the
// argument checks (the draw is dmol.h's).
//
// N images, C colours, W columns (a multiple of 4), F filters, nr = nr_resnet,
// resolutions s = 0, 1, 2 of width W_s = W >> s; image row `row` updates resolution
// s's row q = row >> s when row % 2^s == 0. Two streams, as in the network: `u` (rows
// strictly above; 2 x 3 down-shifted kernels) depends only on earlier image rows, so
// the call first computes its updated rows layer by layer over whole rows; `ul` (above
// and to the left; 2 x 2 down-right-shifted kernels) then runs column by column, its
// resolution-s layers at the columns j with j % 2^s == 0, each column ending with the
// output layer and the pixel's draw.
//
// State of resolution s, state_s (N, 2, W_s, D_s), updated in place: two rows, row q in
// slot q % 2 (row -1 reads as zeros). Per pixel, D_s values: the ul stream's part, the u
// stream's part (same layout, at pp_stream_offset), then at s = 0 the image's C + 1
// input features (levels scaled to [-1, 1], then 1). A stream's part:
//   [m * 3F, (m + 1) * 3F)   F-map m, m < M_s: its F values, then concat_elu of them
//                            (elu(x), elu(-x): what the next layers read)
//   then K_s c1 maps of 2F   block k's concat_elu(first convolution's output)
// F-maps: 0 the first map (the initial layer at s = 0, the stride-2 convolution's
// output at s > 0); 1..nr the up-pass blocks' outputs; s < 2: nr + 1 the transposed
// convolution's output, nr + 2.. the down-pass blocks' outputs (M_s = 2 nr + 3); s = 2:
// the down pass starts from map nr, blocks' outputs nr + 1.. (M_2 = 2 nr + 1). c1 maps:
// up blocks 0..nr-1, down blocks nr.. (K_s = 2 nr + (s < 2)).
//
// Blocks of each stream, in the schedule's order (b: index into its block weights): up
// blocks of resolutions 0, 1, 2 (nr each), down blocks of resolutions 2 (nr), 1
// (nr + 1), 0 (nr + 1): 6 nr + 2 in all. Block b at pixel (q, c), reading F-map
// `source` and writing F-map `out` and c1 map k of its stream:
//   ul: t = block_in_bias[b] + [ce(source)(q-1, c-1), (q-1, c), (q, c-1), (q, c),
//           ce(u's F-map `out`)(q, c), (down blocks) ce(ul's F-map skip)(q, c)] @ block_in[b]
//       z = block_out_bias[0, b, n] + [c1(q-1, c-1), (q-1, c), (q, c-1), (q, c)] @ block_out[b]
//   u:  t = u_block_in_bias[b] + [ce(source)(q-1, c-1..c+1), (q, c-1..c+1),
//           (down blocks) ce(u's F-map skip)(q, c)] @ u_block_in[b]
//       z = block_out_bias[1, b, n] + [c1(q-1, c-1..c+1), (q, c-1..c+1)] @ u_block_out[b]
//   both: c1(q, c) = concat_elu(t); out(q, c) = source(q, c) + z[:F] * sigmoid(z[F:])
// (taps of 2F rows; ce = the concat_elu half of an F-map). Other layers:
//   ul_init at (row, j): [features(row-1, j-1..j+1)] @ init_above + bias (row > 0)
//     + [features(row-1, j-1), (row, j-1)] @ init_left + bias (j > 0);
//   u_init at (row, c): [features(row-2, c-1..c+1), (row-1, c-1..c+1)] @ u_init + bias
//     (row > 0; the network's down-shift);
//   stride-2 convolution into s: F-map nr of s - 1 at rows 2q-1, 2q; ul: columns 2c-1,
//     2c @ down[s-1] (4 taps of F); u: columns 2c-1..2c+1 @ u_down[s-1] (6 taps); + bias;
//   transposed convolution into s < 2 from the last F-map of s + 1, row q/2: ul: column
//     c/2 @ up[s, 2 (q%2) + c%2]; u: (cropped 2 x 3 kernel) column c/2 @ u_up[s, q%2, 0]
//     for even c, columns (c+1)/2 @ u_up[s, q%2, 1] + (c-1)/2 @ u_up[s, q%2, 2] for odd
//     c (kernel columns 1, 0, 2 in that order); + bias;
//   head: elu(last ul F-map of s = 0)(row, j) @ head + head_bias: the DMOL parameters,
//     drawn with dmol_pixel_sample (dmol.h) and uniforms[j, :, n] unless known[n, j].
// Columns outside [0, W_s) read zeros. Weights (Tensor[] in the order of
// GENFAST_PIXELCNNPP_ROW_WEIGHTS, the fields of genfast.ops.PixelCNNppRowWeights),
// every matrix (inputs, outputs), tap-major rows (tap * inputs + channel):
//   init_above (3 (C+1), F), init_above_bias (F), init_left (2 (C+1), F),
//   init_left_bias (F), block_in (B, 12 F, F) (up blocks use the first 10 F rows),
//   block_in_bias (B, F), block_out (B, 8 F, 2 F), down (2, 4 F, F), down_bias (2, F),
//   up (2, 4, F, F), up_bias (2, F), head (F, P), head_bias (P),
//   u_init (6 (C+1), F), u_init_bias (F), u_block_in (B, 14 F, F) (up blocks: the first
//   12 F rows), u_block_in_bias (B, F), u_block_out (B, 12 F, 2 F), u_down (2, 6 F, F),
//   u_down_bias (2, F), u_up (2, 2, 3, F, F), u_up_bias (2, F)
// plus block_out_bias (2, B, N, 2F): each block's second bias + class embedding per
// image, ul blocks then u blocks.
// values (N, C, W) int64, known (N, W) bool, uniforms (W, C + 1, N) float64.
// Returns values (N, C, W) (-1 where a drawn pixel's parameters are not finite: it
// feeds zero features onwards) and params (N, W, P).
#pragma once

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "common.h"
#include "dmol.h"
#include "sampling_math.h"

namespace genfast {

#define GENFAST_PIXELCNNPP_ROW_WEIGHTS(X)                                                  \
  X(init_above) X(init_above_bias) X(init_left) X(init_left_bias) X(block_in)              \
  X(block_in_bias) X(block_out) X(down) X(down_bias) X(up) X(up_bias) X(head) X(head_bias) \
  X(u_init) X(u_init_bias) X(u_block_in) X(u_block_in_bias) X(u_block_out) X(u_down)       \
  X(u_down_bias) X(u_up) X(u_up_bias)

GENFAST_WEIGHT_TENSORS(PixelCNNppRowWeights, GENFAST_PIXELCNNPP_ROW_WEIGHTS)
GENFAST_WEIGHT_POINTERS(PixelCNNppRowPointers, PixelCNNppRowWeights, GENFAST_PIXELCNNPP_ROW_WEIGHTS)

// ---- layout ---------------------------------------------------------------------
GENFAST_HOST_DEVICE inline int64_t pp_fmaps(int s, int64_t nr) { return s < 2 ? 2 * nr + 3 : 2 * nr + 1; }
GENFAST_HOST_DEVICE inline int64_t pp_c1_offset(int s, int64_t nr, int64_t f) { return pp_fmaps(s, nr) * 3 * f; }
GENFAST_HOST_DEVICE inline int64_t pp_c1_maps(int s, int64_t nr) { return 2 * nr + (s < 2); }
// Values per pixel of one stream's part; the u stream's starts there.
GENFAST_HOST_DEVICE inline int64_t pp_stream_offset(int s, int64_t nr, int64_t f) {
  return pp_c1_offset(s, nr, f) + pp_c1_maps(s, nr) * 2 * f;
}
GENFAST_HOST_DEVICE inline int64_t pp_image_offset(int s, int64_t nr, int64_t f) {
  return 2 * pp_stream_offset(s, nr, f);
}
GENFAST_HOST_DEVICE inline int64_t pp_depth(int s, int64_t nr, int64_t f, int64_t channels) {
  return pp_image_offset(s, nr, f) + (s == 0 ? channels + 1 : 0);
}
GENFAST_HOST_DEVICE inline int64_t pp_blocks(int64_t nr) { return 6 * nr + 2; }

struct PPBlock {
  int64_t index;      // into the block weights
  int64_t source;     // F-map read (and added to the output)
  int64_t out;        // F-map written
  int64_t c1;         // c1 map written
  int64_t skip;       // F-map whose concat_elu is the last tap (down blocks), else -1
  bool down;          // a down-pass block (one more tap: its skip)
};

// Block k of resolution s's up (down = false) or down pass.
GENFAST_HOST_DEVICE inline PPBlock pp_block(int s, bool down, int64_t k, int64_t nr) {
  PPBlock b{};
  if (!down) {
    b.index = s * nr + k;
    b.source = k;
    b.out = k + 1;
    b.c1 = k;
    b.skip = -1;
    b.down = false;
    return b;
  }
  b.index = s == 2 ? 3 * nr + k : (s == 1 ? 4 * nr + k : 5 * nr + 1 + k);
  const int64_t first = s == 2 ? nr : nr + 1;  // the down pass's first map
  b.source = first + k;
  b.out = first + k + 1;
  b.c1 = nr + k;
  // The matching up-pass map, in reverse order (genfast.models.PixelCNNpp.params).
  b.skip = s == 2 ? nr - 1 - k : nr - k;
  b.down = true;
  return b;
}

// The u stream's rows of image row `row`, layer by layer, in order: the calls a
// kernel's step object receives (u_init(); u_block(s, spec, q); u_down(s, q): the
// stride-2 convolution into resolution s; u_up(s, q): the transposed one), each over
// the whole row q of its resolution.
template <typename Step>
GENFAST_HOST_DEVICE void pixelcnnpp_u_rows(Step& step, int64_t row, int64_t nr) {
  step.u_init();
  for (int64_t k = 0; k < nr; ++k) step.u_block(0, pp_block(0, false, k, nr), row);
  if (row % 2 == 0) {
    step.u_down(1, row / 2);
    for (int64_t k = 0; k < nr; ++k) step.u_block(1, pp_block(1, false, k, nr), row / 2);
  }
  if (row % 4 == 0) {
    step.u_down(2, row / 4);
    for (int64_t k = 0; k < nr; ++k) step.u_block(2, pp_block(2, false, k, nr), row / 4);
    for (int64_t k = 0; k < nr; ++k) step.u_block(2, pp_block(2, true, k, nr), row / 4);
  }
  if (row % 2 == 0) {
    step.u_up(1, row / 2);
    for (int64_t k = 0; k <= nr; ++k) step.u_block(1, pp_block(1, true, k, nr), row / 2);
  }
  step.u_up(0, row);
  for (int64_t k = 0; k <= nr; ++k) step.u_block(0, pp_block(0, true, k, nr), row);
}

// The ul stream's layers of column j of image row `row`, in order (init(j); block(s,
// spec, q, c); down(s, q, c); up(s, q, c); head(j)), after pixelcnnpp_u_rows.
template <typename Step>
GENFAST_HOST_DEVICE void pixelcnnpp_column(Step& step, int64_t row, int64_t j, int64_t nr) {
  step.init(j);
  for (int64_t k = 0; k < nr; ++k) step.block(0, pp_block(0, false, k, nr), row, j);
  if (row % 2 == 0 && j % 2 == 0) {
    const int64_t q1 = row / 2, c1 = j / 2;
    step.down(1, q1, c1);
    for (int64_t k = 0; k < nr; ++k) step.block(1, pp_block(1, false, k, nr), q1, c1);
    if (row % 4 == 0 && j % 4 == 0) {
      const int64_t q2 = row / 4, c2 = j / 4;
      step.down(2, q2, c2);
      for (int64_t k = 0; k < nr; ++k) step.block(2, pp_block(2, false, k, nr), q2, c2);
      for (int64_t k = 0; k < nr; ++k) step.block(2, pp_block(2, true, k, nr), q2, c2);
    }
    step.up(1, q1, c1);
    for (int64_t k = 0; k <= nr; ++k) step.block(1, pp_block(1, true, k, nr), q1, c1);
  }
  step.up(0, row, j);
  for (int64_t k = 0; k <= nr; ++k) step.block(0, pp_block(0, true, k, nr), row, j);
  step.head(j);
}

// Pixel j's end of the column, for one image: its levels (the known ones, or a draw
// with dmol_pixel_sample from params (P values) and its uniforms u, or -1 per colour when
// a drawn pixel's params are not finite) into level_out[c * out_stride], and its input
// features (level scaled to [-1, 1], 0 for -1; then 1) into feature[0..C].
template <typename T>
GENFAST_HOST_DEVICE inline void pp_finish_pixel(const T* params, int64_t P, bool known, const int64_t* given,
                                                int64_t given_stride, PixelView<const double> u, int64_t C,
                                                int64_t mixtures, int64_t L, double temperature,
                                                int64_t* level_out, int64_t out_stride, T* feature) {
  int64_t level[3];
  if (known) {
    for (int64_t c = 0; c < C; ++c) level[c] = known_level(given[c * given_stride], L);
  } else {
    bool finite = true;
    for (int64_t i = 0; i < P; ++i) finite = finite && params[i] - params[i] == T(0);  // false for inf, NaN
    if (finite) {
      dmol_pixel_sample<T>({params, 1}, u, C, mixtures, L, temperature, {level, 1});
    } else {
      for (int64_t c = 0; c < C; ++c) level[c] = -1;
    }
  }
  const T scale = static_cast<T>(2.0 / double(L - 1));  // as the sampler's float scale
  for (int64_t c = 0; c < C; ++c) {
    level_out[c * out_stride] = level[c];
    feature[c] = level[c] >= 0 ? T(level[c]) * scale - T(1) : T(0);
  }
  feature[C] = T(1);
}

struct PixelCNNppRowShape {
  int64_t batch, channels, width, filters, nr, params, mixtures, levels, row;
  int64_t widths[3], depths[3];
};

// Checks every argument (shapes, dtypes, devices, contiguous states, row, and with
// check_levels the known values) the same way on every backend and returns the sizes.
PixelCNNppRowShape check_pixelcnnpp_row(const at::Tensor* states, const at::Tensor& values,
                                        const at::Tensor& known, const at::Tensor& uniforms,
                                        double temperature, const at::Tensor& block_out_bias, int64_t row,
                                        int64_t levels, const PixelCNNppRowWeights& w, bool check_levels);

// One call, checked, its inputs made contiguous and its outputs (values (N, C, W), params
// (N, W, P)) allocated: what both backends' entry points start from.
struct PixelCNNppRowCall {
  PixelCNNppRowShape shape;
  PixelCNNppRowWeights weights;
  at::Tensor states[3], values, known, uniforms, block_out_bias, values_out, params;
  double temperature;
};
PixelCNNppRowCall prepare_pixelcnnpp_row(const at::Tensor& state0, const at::Tensor& state1,
                                         const at::Tensor& state2, const at::Tensor& values,
                                         const at::Tensor& known, const at::Tensor& uniforms,
                                         double temperature, const at::Tensor& block_out_bias, int64_t row,
                                         int64_t levels, at::TensorList weights, bool check_levels);

// The kernels' pointers into a call's tensors (trivially copyable: a CUDA kernel takes
// it by value).
template <typename T>
struct PixelCNNppRowArgs {
  T* state[3];
  const int64_t* values;
  const bool* known;
  const double* uniforms;
  double temperature;
  const T* block_out_bias;
  PixelCNNppRowPointers<T> w;
  int64_t* values_out;
  T* params;

  void set(const PixelCNNppRowCall& call) {
    for (int s = 0; s < 3; ++s) state[s] = call.states[s].template mutable_data_ptr<T>();
    values = call.values.const_data_ptr<int64_t>();
    known = call.known.const_data_ptr<bool>();
    uniforms = call.uniforms.const_data_ptr<double>();
    temperature = call.temperature;
    block_out_bias = call.block_out_bias.template const_data_ptr<T>();
    w.set(call.weights);
    values_out = call.values_out.mutable_data_ptr<int64_t>();
    params = call.params.template mutable_data_ptr<T>();
  }
};

}  // namespace genfast
