"""Drop-in replacements for torch.nn layers, running genfast ops."""
from genfast.nn.masked_conv import MaskedConv2d

__all__ = ["MaskedConv2d"]

# Vector quantisation.
from genfast.nn.vector_quantizer import VectorQuantizer, VQOutput

__all__ += ["VectorQuantizer", "VQOutput"]
