"""genfast ops. Each op `name` lives in genfast/ops/name.py with its registry entry
(genfast.ops._registry), its reference twin `name_reference`, its fake kernels and
autograd registration; its schema is in csrc/schemas.cpp, its kernels in
csrc/cpu/name.cpp and csrc/cuda/name.cu, its tests in tests/test_name.py and its
benchmark in benchmarks/test_bench_name.py.
gradient_penalty_interpolate shares the files of gradient_penalty, dmol_sample those of
dmol_loss (genfast/ops/dmol.py, csrc/dmol.h, tests/test_dmol.py)."""
from genfast.ops._draw import draw_from_logits
from genfast.ops.code_statistics import code_statistics, code_statistics_reference
from genfast.ops.concat_elu import concat_elu, concat_elu_reference
from genfast.ops.dmol import (dmol_loss, dmol_loss_reference, dmol_num_params, dmol_sample,
                              dmol_sample_reference)
from genfast.ops.gated_activation import gated_activation, gated_activation_reference
from genfast.ops.gated_pixelcnn_row import (GatedRowWeights, gated_pixelcnn_row,
                                            gated_pixelcnn_row_reference)
from genfast.ops.gradient_penalty import (gradient_penalty, gradient_penalty_interpolate,
                                          gradient_penalty_interpolate_reference,
                                          gradient_penalty_reference)
from genfast.ops.masked_conv2d import masked_conv2d, masked_conv2d_mask, masked_conv2d_reference
from genfast.ops.nearest_code import nearest_code, nearest_code_reference
from genfast.ops.pixelcnn_row import PixelCNNRowWeights, pixelcnn_row, pixelcnn_row_reference
from genfast.ops.pixelcnnpp_row import PixelCNNppRowWeights, pixelcnnpp_row, pixelcnnpp_row_reference
from genfast.ops.softmax_cross_entropy import (softmax_cross_entropy,
                                               softmax_cross_entropy_reference)
from genfast.ops.transformer_decode_step import (TransformerWeights, transformer_decode_step,
                                                 transformer_decode_step_reference)
from genfast.ops.wavenet_step import (WaveNetWeights, wavenet_step,
                                      wavenet_step_reference, wavenet_stepper)

from genfast.ops._registry import register_op, registered_ops

# The public ops (each takes impl="auto" | "ext" | "reference"), in registration order:
# each module registers its ops (register_op, with the torch.ops.genfast ops its wrapper
# calls) when it is imported above.
OPS = tuple(entry.name for entry in registered_ops())

__all__ = ["OPS", "register_op", "registered_ops", "dmol_loss", "dmol_loss_reference", "dmol_num_params", "dmol_sample",
           "dmol_sample_reference", "GatedRowWeights", "WaveNetWeights", "code_statistics",
           "code_statistics_reference", "concat_elu", "concat_elu_reference",
           "gated_activation", "gated_activation_reference",
           "gated_pixelcnn_row", "gated_pixelcnn_row_reference",
           "draw_from_logits", "gradient_penalty", "gradient_penalty_interpolate",
           "gradient_penalty_interpolate_reference", "gradient_penalty_reference", "masked_conv2d",
           "masked_conv2d_mask", "masked_conv2d_reference", "nearest_code", "nearest_code_reference",
           "PixelCNNRowWeights", "pixelcnn_row", "pixelcnn_row_reference",
           "PixelCNNppRowWeights", "pixelcnnpp_row", "pixelcnnpp_row_reference",
           "softmax_cross_entropy", "softmax_cross_entropy_reference",
           "wavenet_step", "wavenet_step_reference", "wavenet_stepper",
           "TransformerWeights", "transformer_decode_step", "transformer_decode_step_reference"]
