// What a libtorch program gets from genfast: dispatcher ops with CPU (and CUDA) kernels,
// forward and backward as separate ops. Autograd formulas are registered from Python
// only, so C++ code calls the backward ops itself: this example trains nothing, it
// checks the forward and both gradients against libtorch's own autograd through a
// convolution with the masked weight. Built by CMakeLists.txt.
#include <iostream>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

namespace {

c10::OperatorHandle find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

double max_error(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

}  // namespace

int main() {
  const auto forward = find("genfast::masked_conv2d")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                             const std::optional<at::Tensor>&, at::IntArrayRef,
                                             c10::string_view, int64_t)>();
  const auto grad_input = find("genfast::masked_conv2d_grad_input")
                              .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                at::IntArrayRef, c10::string_view, int64_t)>();
  const auto grad_weight = find("genfast::masked_conv2d_grad_weight")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                 at::IntArrayRef, at::IntArrayRef,
                                                 c10::string_view, int64_t)>();
  torch::manual_seed(0);
  const auto x = torch::randn({2, 3, 8, 8});
  const auto w = torch::randn({6, 3, 3, 3});
  const auto y = forward.call(x, w, std::nullopt, {1, 1}, "A", 1);
  const auto dy = torch::randn_like(y);
  const auto dx = grad_input.call(dy, w, {1, 1}, "A", 1);
  const auto dw = grad_weight.call(dy, x, {3, 3}, {1, 1}, "A", 1);

  // libtorch's autograd through conv2d(x, w * mask): the peer genfast replaces.
  auto mask = torch::zeros({3, 3});
  mask.index_put_({0}, 1);
  mask.index_put_({1, 0}, 1);  // mask 'A': the row above and the tap left of the centre
  const auto xr = x.clone().requires_grad_(true);
  const auto wr = w.clone().requires_grad_(true);
  const auto yr = torch::conv2d(xr, wr * mask, {}, 1, 1);
  yr.backward(dy);

  const double errors[] = {max_error(y, yr.detach()), max_error(dx, xr.grad()),
                           max_error(dw, wr.grad())};
  std::cout << "genfast::masked_conv2d from C++: output " << y.sizes()
            << ", max error forward " << errors[0] << ", grad_input " << errors[1]
            << ", grad_weight " << errors[2] << std::endl;
  for (double e : errors) {
    if (!(e < 1e-4)) return 1;
  }
  return 0;
}
