// Calls genfast::masked_conv2d from C++ through the PyTorch dispatcher and checks it
// against a convolution with the masked weight. Built by CMakeLists.txt.
#include <iostream>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("genfast::masked_conv2d", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                  const std::optional<at::Tensor>&, at::IntArrayRef,
                                  c10::string_view, int64_t)>();
  torch::manual_seed(0);
  const auto x = torch::randn({2, 3, 8, 8});
  const auto w = torch::randn({6, 3, 3, 3});
  const auto y = op.call(x, w, std::nullopt, {1, 1}, "A", 1);

  auto mask = torch::zeros({3, 3});
  mask.index_put_({0}, 1);
  mask.index_put_({1, 0}, 1);  // mask 'A': the row above and the tap left of the centre
  const auto expected = torch::conv2d(x, w * mask, {}, 1, 1);
  const double err = (y - expected).abs().max().item<double>();
  std::cout << "genfast::masked_conv2d from C++: output " << y.sizes() << ", max error " << err
            << std::endl;
  return err < 1e-4 ? 0 : 1;
}
