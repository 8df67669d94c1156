// Every op's schema, in one place. Kernels register per backend in csrc/cpu and
// csrc/cuda; fake (meta) kernels and autograd live in genfast/ops.
#include <torch/library.h>

TORCH_LIBRARY(genfast, m) {
  // Masked ("causal") 2-D convolution of PixelCNN: stride 1, 'same' padding.
  m.def("masked_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] dilation, "
        "str mask_type, int color_groups) -> Tensor");
  m.def("masked_conv2d_grad_input(Tensor grad_output, Tensor weight, int[2] dilation, "
        "str mask_type, int color_groups) -> Tensor");
  m.def("masked_conv2d_grad_weight(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] dilation, str mask_type, int color_groups) -> Tensor");
  // Gradient penalties of GAN critics (WGAN-GP, R1/R2): per-sample interpolation
  // between real and fake batches, and the penalty given the critic's input gradient.
  m.def("gradient_penalty_interpolate(Tensor real, Tensor fake, Tensor eps) -> Tensor");
  m.def("gradient_penalty_interpolate_backward(Tensor grad_output, Tensor real, Tensor fake, "
        "Tensor eps) -> (Tensor, Tensor, Tensor)");
  m.def("gradient_penalty(Tensor grad, float weight, float center, bool one_sided) "
        "-> (Tensor, Tensor)");
  m.def("gradient_penalty_backward(Tensor grad_penalty, Tensor? grad_norms, Tensor grad, "
        "Tensor norms, float weight, float center, bool one_sided) -> Tensor");
  // Nearest code of each row of x (N, D) in a codebook (K, D): (indices int64 (N),
  // squared distances (N), float32, or float64 for float64 inputs); see nearest_code.h.
  m.def("nearest_code(Tensor x, Tensor codebook, bool cosine) -> (Tensor, Tensor)");
  // Per-code counts (K) int64 and sums (K, D) of the rows of x (N, D) assigned to each
  // code by indices (N), for EMA codebook updates; see code_statistics.h.
  m.def("code_statistics(Tensor x, Tensor indices, int num_codes) -> (Tensor, Tensor)");
  // The sampling ops take their weights as one Tensor[] in the order of the fields of
  // their Python NamedTuple (WaveNetWeights without dilations, GatedRowWeights,
  // PixelCNNRowWeights; the C++ lists are in their headers). check_levels: check on the
  // host that the given levels they read are in range (a device->host sync on a GPU;
  // callers that checked once per sampling call pass false).
  //
  // One cached sampling step of a WaveNet (layout in csrc/wavenet_step.h): reads the
  // previous samples, updates the per-layer ring buffers in `cache`, returns the
  // step's logits (N, levels) and writes the drawn samples into column `step`.
  m.def("wavenet_step(Tensor(a!) samples, Tensor(b!) cache, Tensor uniforms, int step, "
        "int known_steps, float temperature, Tensor[] weights, int[] dilations, "
        "bool check_levels=True) -> Tensor");
  // One image row of cached Gated PixelCNN sampling (layout in csrc/gated_pixelcnn_row.h):
  // walks the row's sub-pixels, returns the drawn values (N, C, W) and logits (N, C, W, V).
  m.def("gated_pixelcnn_row(Tensor prefix, Tensor known, Tensor uniforms, float temperature, "
        "Tensor row_bias, Tensor[] weights, bool check_levels=True) -> (Tensor, Tensor)");
  // One row of PixelCNN's cached sampler (layout in csrc/pixelcnn_row.h): the centre-row
  // taps and per-position layers of every sub-pixel of the row, with the draws; returns
  // (values, logits, reduce_rows).
  m.def("pixelcnn_row(Tensor values, Tensor known, Tensor uniforms, float temperature, "
        "Tensor input_bias, Tensor block_bias, Tensor[] weights, bool check_levels=True) "
        "-> (Tensor, Tensor, Tensor)");
  // One image row of PixelCNN++'s cached sampler (layout in csrc/pixelcnnpp_row.h):
  // both streams' layers on the row at the three resolutions, updating the states in
  // place, and the draws; returns (values, params).
  m.def("pixelcnnpp_row(Tensor(a!) state0, Tensor(b!) state1, Tensor(c!) state2, "
        "Tensor values, Tensor known, Tensor uniforms, "
        "float temperature, Tensor block_out_bias, int row, int levels, Tensor[] weights, "
        "bool check_levels=True) -> (Tensor, Tensor)");
  // One token of key/value-cached decoding of a decoder-only transformer (layout in
  // csrc/transformer_decode_step.h): every layer for position `step` of each sequence,
  // writing that position of the caches in place; returns (values (B,), logits (B, V)).
  m.def("transformer_decode_step(Tensor tokens, Tensor(a!) key_cache, Tensor(b!) value_cache, "
        "Tensor uniforms, int step, float temperature, int top_k, float top_p, Tensor[] weights, "
        "bool check_levels=True) -> (Tensor, Tensor)");
  // Discretized mixture of logistics of PixelCNN++ (layout in csrc/dmol.h): the
  // per-pixel NLL (B, H, W) of integer images x (B, C, H, W) under params (B, P, H, W),
  // its gradient with respect to params, and one draw per pixel from uniforms.
  m.def("dmol_loss(Tensor params, Tensor x, int num_mixtures, int levels) -> Tensor");
  m.def("dmol_loss_backward(Tensor grad_nll, Tensor params, Tensor x, Tensor nll, int num_mixtures, "
        "int levels) -> Tensor");
  m.def("dmol_sample(Tensor params, Tensor u, int num_mixtures, int levels, float temperature) -> Tensor");
  // Gated unit tanh(a) * sigmoid(b) of x (N, 2C, ...) with `groups` channel blocks, each
  // its a half then its b half (layout in csrc/gated_activation.h) -> (N, C, ...).
  m.def("gated_activation(Tensor x, int groups) -> Tensor");
  m.def("gated_activation_backward(Tensor grad_output, Tensor x, int groups) -> Tensor");
  // Cross-entropy of logits (N, L, ...) and int64 targets (N, ...) per position,
  // without a copy of the logits: (loss, max, log_sum) with logsumexp = max + log_sum,
  // see csrc/softmax_cross_entropy.h.
  m.def("softmax_cross_entropy(Tensor logits, Tensor target) -> (Tensor, Tensor, Tensor)");
  m.def("softmax_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor target, "
        "Tensor max, Tensor log_sum) -> Tensor");
  // PixelCNN++'s concat_elu: elu(cat([x, -x], dim)) without the cat (layout in
  // csrc/concat_elu.h); the backward reads only grad_output and x.
  m.def("concat_elu(Tensor x, int dim) -> Tensor");
  m.def("concat_elu_backward(Tensor grad_output, Tensor x, int dim) -> Tensor");
}
