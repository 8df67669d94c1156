"""Drop-in replacements for torch.nn layers, running genfast ops."""
from genfast.nn.masked_conv import MaskedConv2d

__all__ = ["MaskedConv2d"]
