"""genfast ops. Each op `name` lives in genfast/ops/name.py with its reference twin
`name_reference`, its fake kernels and autograd registration; its schema is in
csrc/schemas.cpp, its kernels in csrc/cpu/name.cpp and csrc/cuda/name.cu, its tests
in tests/test_name.py and its benchmark in benchmarks/test_bench_name.py."""
from genfast.ops.masked_conv2d import masked_conv2d, masked_conv2d_mask, masked_conv2d_reference
from genfast.ops.wavenet_step import (WaveNetWeights, draw_from_logits, wavenet_step,
                                      wavenet_step_reference, wavenet_stepper)

# The public ops (each takes impl="auto" | "ext" | "reference").
OPS = ("masked_conv2d", "wavenet_step")

__all__ = ["OPS", "masked_conv2d", "masked_conv2d_mask", "masked_conv2d_reference",
           "WaveNetWeights", "draw_from_logits", "wavenet_step", "wavenet_step_reference",
           "wavenet_stepper"]
