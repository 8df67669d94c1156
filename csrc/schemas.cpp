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
}
