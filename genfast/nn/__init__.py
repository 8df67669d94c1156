"""Drop-in replacements for torch.nn layers, running genfast ops."""
from genfast.nn.masked_conv import MaskedConv2d
from genfast.nn.causal_conv import CausalConv1d

__all__ = ["MaskedConv2d", "CausalConv1d"]
