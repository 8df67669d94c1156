"""genfast.nn.CausalConv1d: a drop-in for nn.Conv1d with left (causal) padding."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genfast.nn import CausalConv1d


def test_attributes_and_state_dict_match_conv1d():
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 12, 3, dilation=4)
    layer = CausalConv1d(6, 12, 3, dilation=4)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(layer, name) == getattr(conv, name), name
    assert layer.state_dict().keys() == conv.state_dict().keys()
    layer.load_state_dict(conv.state_dict())
    assert layer.causal_padding == 8 and "causal_padding=8" in repr(layer)
    assert CausalConv1d(2, 2, 2, bias=False).bias is None


@pytest.mark.parametrize("kernel_size,dilation,groups", [(1, 1, 1), (2, 1, 1), (2, 8, 1), (3, 3, 2), (5, 2, 1)])
def test_output_is_conv1d_of_left_padded_input(kernel_size, dilation, groups):
    torch.manual_seed(1)
    layer = CausalConv1d(4, 6, kernel_size, dilation=dilation, groups=groups).double()
    x = torch.randn(3, 4, 17, dtype=torch.float64)
    pad = (kernel_size - 1) * dilation
    want = F.conv1d(F.pad(x, (pad, 0)), layer.weight, layer.bias, dilation=dilation, groups=groups)
    out = layer(x)
    assert out.shape == (3, 6, 17)
    torch.testing.assert_close(out, want)
    # Unbatched input, as nn.Conv1d takes.
    torch.testing.assert_close(layer(x[0]), want[0])


@pytest.mark.parametrize("kernel_size,dilation", [(2, 1), (3, 4), (4, 2)])
def test_output_sees_only_the_past(kernel_size, dilation):
    torch.manual_seed(2)
    layer = CausalConv1d(2, 3, kernel_size, dilation=dilation).double()
    x = torch.randn(1, 2, 20, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    for t in [0, 5, 19]:
        (g,) = torch.autograd.grad(out[0, :, t].sum(), x, retain_graph=True)
        seen = (g[0].abs().sum(0) != 0).nonzero().flatten().tolist()
        assert seen == [t - (kernel_size - 1 - j) * dilation for j in range(kernel_size)
                        if t - (kernel_size - 1 - j) * dilation >= 0]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(stride=2), ValueError, "stride"),
    (dict(padding=1), ValueError, "padding must be 'causal'"),
    (dict(padding="same"), ValueError, "padding must be 'causal'"),
    (dict(padding_mode="reflect"), ValueError, "padding_mode"),
    (dict(kernel_size=0), ValueError, "kernel_size must be positive"),
    (dict(dilation=0), ValueError, "dilation must be positive"),
    (dict(kernel_size=(2, 2)), TypeError, "kernel_size must be an int"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    args = dict(in_channels=4, out_channels=4, kernel_size=2) | kwargs
    with pytest.raises(error, match=match):
        CausalConv1d(**args)


def test_bad_input_rank():
    with pytest.raises(ValueError, match="input must be"):
        CausalConv1d(2, 2, 2)(torch.randn(1, 1, 2, 5))
