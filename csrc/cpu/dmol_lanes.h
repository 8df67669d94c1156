// The vectorised float32 path of dmol_loss on the CPU (csrc/cpu/dmol_lanes.cpp).
// Work is cut into tasks: task = b * dmol_strips(hw) + strip, a strip being kLanes
// consecutive pixels of image b; each call does the tasks [begin, end).
#pragma once

#include <cstdint>

namespace genfast {

constexpr int kLanes = 16;

inline int64_t dmol_strips(int64_t hw) { return (hw + kLanes - 1) / kLanes; }

// nll (B, H, W) from params (B, P, H, W) and levels x (B, C, H, W).
void dmol_loss_lanes(const float* params, const int64_t* x, int64_t p, int64_t hw, int64_t channels,
                     int64_t mixtures, int64_t levels, float* nll, int64_t begin, int64_t end);

// grad (B, P, H, W) = grad_nll * d nll / d params, given the forward's nll.
void dmol_loss_backward_lanes(const float* grad_nll, const float* params, const int64_t* x, const float* nll,
                              int64_t p, int64_t hw, int64_t channels, int64_t mixtures, int64_t levels,
                              float* grad, int64_t begin, int64_t end);

}  // namespace genfast
