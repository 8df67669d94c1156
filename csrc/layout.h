// Memory layouts the ops keep: like ATen's convolutions, an op whose main input is
// channels-last returns channels-last results (genfast/ops/_layout.py applies the same
// rule in the fake kernels).
#pragma once

#include <ATen/core/Tensor.h>

namespace genfast {

// Channels-last 4-D memory that is not also contiguous (one channel, or one pixel, is
// both: such tensors count as contiguous).
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// A result computed on contiguous tensors, in the layout the rule gives for `like`.
inline at::Tensor in_layout_of(const at::Tensor& like, const at::Tensor& result) {
  return is_channels_last(like) ? result.contiguous(at::MemoryFormat::ChannelsLast) : result;
}

}  // namespace genfast
