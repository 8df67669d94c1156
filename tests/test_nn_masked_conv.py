"""genfast.nn.MaskedConv2d: a drop-in for nn.Conv2d."""
import pytest
import torch
from conftest import requires_ext
from torch import nn

from genfast.nn import MaskedConv2d
from genfast.ops import masked_conv2d_reference


def test_attributes_and_state_dict_match_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 5, padding=2, dilation=1)
    layer = MaskedConv2d(6, 12, 5, mask_type="A", color_groups=3)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(layer, name) == getattr(conv, name), name
    assert layer.state_dict().keys() == conv.state_dict().keys()
    layer.load_state_dict(conv.state_dict())
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    assert "mask" not in layer.state_dict() and "mask" not in dict(layer.named_parameters())
    assert "mask_type='A'" in repr(layer) and "color_groups=3" in repr(layer)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
def test_forward_and_masked_weights_get_no_gradient(impl):
    torch.manual_seed(1)
    layer = MaskedConv2d(3, 6, (7, 5), mask_type="A", color_groups=3, dilation=2, impl=impl).double()
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)
    out = layer(x)
    ref = masked_conv2d_reference(x, layer.weight, layer.bias, mask_type="A", color_groups=3, dilation=2)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    assert (layer.weight.grad[layer.mask == 0] == 0).all()
    assert (layer.weight.grad[layer.mask == 1] != 0).any()
    assert layer.padding == (6, 4)


def test_padding_argument_accepts_same_only():
    assert MaskedConv2d(4, 4, 3, padding=1).padding == (1, 1)
    assert MaskedConv2d(4, 4, 3, padding="same", dilation=3).padding == (3, 3)
    with pytest.raises(ValueError, match="padding must be 'same'"):
        MaskedConv2d(4, 4, 3, padding=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(stride=2), "stride"),
    (dict(groups=2), "groups"),
    (dict(padding_mode="reflect"), "padding_mode"),
    (dict(mask_type="C"), "mask_type"),
    (dict(color_groups=3), "color_groups"),
    (dict(kernel_size=4), "kernel_size must be odd"),
])
def test_bad_constructor_arguments(kwargs, match):
    args = dict(in_channels=4, out_channels=4, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        MaskedConv2d(**args)


def test_module_moves_with_dtype():
    layer = MaskedConv2d(3, 3, 3, mask_type="B").double()
    assert layer.mask.dtype == torch.float64
    assert layer(torch.randn(1, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64
