"""Drop-in replacements for torch.nn layers, running genfast ops."""
from genfast.nn.causal_conv import CausalConv1d
from genfast.nn.masked_conv import MaskedConv2d
from genfast.nn.vector_quantizer import VectorQuantizer, VQOutput

__all__ = ["CausalConv1d", "MaskedConv2d", "VectorQuantizer", "VQOutput"]
