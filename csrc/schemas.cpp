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
  // One cached sampling step of a WaveNet (layout in csrc/wavenet_step.h): reads the
  // previous samples, updates the per-layer ring buffers in `cache`, returns the
  // step's logits (N, levels) and writes the drawn samples into column `step`.
  m.def("wavenet_step(Tensor(a!) samples, Tensor(b!) cache, Tensor uniforms, int step, "
        "int known_steps, float temperature, Tensor input_weight, Tensor input_bias, "
        "Tensor dilated_weight, Tensor gate_bias, Tensor out_weight, Tensor out_bias, "
        "Tensor head_weight1, Tensor head_bias1, Tensor head_weight2, Tensor head_bias2, "
        "int[] dilations) -> Tensor");
}
