"""One vocabulary (docs/vocabulary.md): keyword-only model arguments under one set of
names, the deprecated aliases kept for names the README documented, checkpoints of
the old names, masked_conv2d_mask's (in, out) order, `import genfast` reaching the
subpackages, and genfast.nn.MaskedConv2d loading state dicts that carry a stored mask."""
import warnings

import pytest
import torch
from torch import nn

import genfast
from genfast.models import VQVAE, VQVAE2, GatedPixelCNN, PixelCNN, WaveNet, load_model
from genfast.nn import MaskedConv2d
from genfast.ops import masked_conv2d_mask
from genfast.training.checkpoint import save_checkpoint


def test_import_genfast_reaches_the_subpackages():
    assert genfast.models.VQVAE2 is VQVAE2
    assert genfast.nn.MaskedConv2d is MaskedConv2d
    assert callable(genfast.losses.critic_gradient_penalty) and callable(genfast.ops.gradient_penalty)
    model = genfast.models.VQVAE2(image_channels=3, num_codes=16, code_dim=4, hidden_channels=8,
                                  block_channels=4, num_blocks=1)
    assert model(torch.randn(1, 3, 16, 16)).reconstruction.shape == (1, 3, 16, 16)


def test_genfast_train_is_the_autoregressive_trainer():
    import genfast.train
    import genfast.training.autoregressive as trainer
    from genfast.train import train

    assert genfast.train is trainer and train is trainer.train


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN, VQVAE, VQVAE2, WaveNet])
def test_keyword_only(cls):
    with pytest.raises(TypeError):
        cls(1)


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_image_model_names(cls):
    model = cls(image_channels=3, hidden_channels=6, levels=4, image_size=5)
    assert (model.image_channels, model.hidden_channels) == (3, 6)
    assert {"image_channels", "hidden_channels", "levels"} <= set(model.config)
    assert not {"channels", "hidden", "input_kernel"} & set(model.config)
    rebuilt = cls(**model.config)
    assert rebuilt.config == model.config
    with pytest.raises(TypeError, match="unexpected keyword argument 'channels'"):
        cls(channels=3)


def test_pixelcnn_input_kernel_size():
    model = PixelCNN(input_kernel_size=5, hidden_channels=4, num_blocks=1)
    assert model.input_kernel_size == 5 and model.input_conv.kernel_size == (5, 5)


@pytest.mark.parametrize("cls,old,new,value", [
    (PixelCNN, "hidden", "hidden_channels", 6),
    (GatedPixelCNN, "hidden", "hidden_channels", 6),
    (VQVAE, "in_channels", "image_channels", 3),
    (VQVAE2, "in_channels", "image_channels", 3),
])
def test_documented_names_are_deprecated_aliases(cls, old, new, value):
    with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated; use '{new}'"):
        model = cls(**{old: value})
    assert getattr(model, new) == value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(cls(**{new: value}), new) == value


def test_vqvae_names():
    model = VQVAE(image_channels=2, hidden_channels=8, block_channels=4, num_blocks=1, num_codes=8,
                  code_dim=4, downsample=1, ema=False)
    assert model.image_channels == 2 and model.encoder[0].out_channels == 8
    assert isinstance(model.quantizer.codebook, torch.nn.Parameter)  # ema=False reached the quantizer
    for old in ("channels", "res_channels", "res_blocks"):  # not documented: no alias
        with pytest.raises(TypeError):
            VQVAE(**{old: 4})


def test_wavenet_class_embedding_dim():
    model = WaveNet(residual_channels=4, dilations=[1], num_classes=3, class_embedding_dim=5)
    assert model.class_embedding_dim == 5 and model.label_embedding.embedding_dim == 5
    assert WaveNet(residual_channels=4, dilations=[1], num_classes=3).class_embedding_dim == 32
    assert WaveNet(residual_channels=4, dilations=[1]).class_embedding_dim is None
    assert model.config["class_embedding_dim"] == 5 and "cond_channels" not in model.config


def test_critic_gradient_penalty_and_its_deprecated_alias():
    critic = nn.Linear(4, 1).double()
    real, fake = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    eps = torch.rand(3, dtype=torch.float64)
    want = genfast.losses.critic_gradient_penalty(critic, real, fake, eps=eps)
    with pytest.warns(DeprecationWarning, match="use genfast.losses.critic_gradient_penalty"):
        got = genfast.losses.gradient_penalty(critic, real, fake, eps=eps)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("cin,cout,groups", [(3, 6, 3), (6, 3, 3), (2, 5, 1)])
def test_masked_conv2d_mask_takes_in_then_out(cin, cout, groups):
    mask = masked_conv2d_mask(cin, cout, (3, 5), "A", groups)
    assert mask.shape == (cout, cin, 3, 5)
    assert torch.equal(masked_conv2d_mask(out_channels=cout, in_channels=cin, kernel_size=(3, 5),
                                          mask_type="A", color_groups=groups), mask)
    assert torch.equal(MaskedConv2d(cin, cout, (3, 5), mask_type="A", color_groups=groups).mask, mask)


def test_legacy_checkpoint_configs_load(tmp_path):
    # A checkpoint of genfast.train written before the rename: model_config with the old keys.
    model = PixelCNN(hidden_channels=4, num_blocks=1, input_kernel_size=3, levels=5, image_size=4)
    old = {"channels": 1, "levels": 5, "hidden": 4, "num_blocks": 1, "input_kernel": 3,
           "num_classes": None, "embedding_dim": None, "image_size": (4, 4), "impl": "auto"}
    path = str(tmp_path / "old.pt")
    save_checkpoint(path, {"format": "genfast-train-1", "model_name": "pixelcnn", "model_config": old,
                           "model": model.state_dict()})
    loaded = load_model(path)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# -- MaskedConv2d and state dicts of the weight*mask classes -------------------------------
class WeightTimesMask(nn.Conv2d):
    """The public PixelCNN layer: nn.Conv2d whose weight is multiplied by a mask buffer."""

    def __init__(self, cin, cout, k, mask_type):
        super().__init__(cin, cout, k, padding=k // 2)
        self.register_buffer("mask", torch.ones_like(self.weight))
        self.mask[:, :, k // 2, k // 2 + (mask_type == "B"):] = 0
        self.mask[:, :, k // 2 + 1:] = 0

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def public_net(first="A"):
    torch.manual_seed(0)
    return nn.Sequential(WeightTimesMask(1, 8, 7, first), nn.ReLU(), WeightTimesMask(8, 8, 3, "B"))


def genfast_net(first="A"):
    return nn.Sequential(MaskedConv2d(1, 8, 7, mask_type=first), nn.ReLU(), MaskedConv2d(8, 8, 3))


def test_state_dict_with_a_matching_mask_loads_strictly():
    public = public_net()
    assert {"0.mask", "2.mask"} <= set(public.state_dict())
    ours = genfast_net()
    ours.load_state_dict(public.state_dict(), strict=True)
    x = torch.randn(2, 1, 9, 9)
    torch.testing.assert_close(ours(x), public(x))
    assert set(ours.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # no mask stored
    # A broadcastable mask (one kernel-shaped pattern) is the same mask.
    state = public.state_dict()
    state["2.mask"] = state["2.mask"][:1, :1]
    ours.load_state_dict(state, strict=True)


def test_state_dict_with_another_mask_is_an_error_naming_the_key():
    public = public_net(first="B")  # the first layer's mask includes the centre tap
    ours = genfast_net(first="A")
    with pytest.raises(RuntimeError, match=r"0\.mask: the stored mask differs from this MaskedConv2d's "
                                           r"mask \(mask_type='A', color_groups=1, shape \(8, 1, 7, 7\)\) "
                                           r"at 8 of 392 entries"):
        ours.load_state_dict(public.state_dict(), strict=True)
    state = public_net().state_dict()
    state["2.mask"] = torch.ones(8, 8, 5, 5)
    with pytest.raises(RuntimeError, match=r"2\.mask: the stored mask has shape \(8, 8, 5, 5\), which "
                                           r"does not fit"):
        genfast_net().load_state_dict(state, strict=True)
    state["2.mask"] = "a mask"
    with pytest.raises(RuntimeError, match=r"2\.mask: expected a tensor"):
        genfast_net().load_state_dict(state, strict=False)
