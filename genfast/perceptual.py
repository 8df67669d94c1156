"""PerceptualLoss: LPIPS (Zhang et al. 2018, "lin" version on VGG16), the perceptual
term of VQGAN's tokenizer loss; also genfast.losses.PerceptualLoss.

    d(x, y) = sum_l mean_hw  w_l . (n(F_l(s(x))) - n(F_l(s(y))))^2

s: the scaling layer (images in [-1, 1] to ImageNet-normalised ones; grey images are
repeated to 3 channels); F_l: VGG16's relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
activations; n: division by the channel-wise L2 norm at every pixel; w_l: the learned
non-negative 1x1 "lin" heads. One distance per image, (N,).

Weights are read from files, never downloaded:
- the VGG16 backbone: torchvision's ImageNet checkpoint vgg16-397923af.pth, by default
  from torchvision's own cache, torch.hub.get_dir()/checkpoints/ ($TORCH_HOME/hub/
  checkpoints, by default ~/.cache/torch/hub/checkpoints), or a given file; any state
  dict with torchvision's keys `features.N.weight` / `features.N.bias` loads.
- the heads: weights/v0.1/vgg.pth inside the installed `lpips` package (found
  without importing it, so torchvision need not be installed), or a given file
  (lpips's keys `linK.model.1.weight` or genfast's `heads.K.weight`).
pretrained=False builds random weights instead: for tests only, meaningless as a
perceptual distance.

Small images: VGG16 pools by 2 before each of stages 2-5, so stage k sees
floor(H / 2^(k-1)); 16x16 and 28x28 inputs keep all five stages (relu5_3 at 1x1).
Below 16 pixels a side the deepest stages would be empty: those stages are left out
of the sum (the distance is over the stages that have pixels). `resize=S` instead
upsamples both images bilinearly to S x S first, which gives the deep stages more
than one pixel at a cost of (S / H)^2 in compute.
"""
from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import nn

# VGG16 (configuration "D"): channels per 3x3 convolution, "M" a 2x2 max-pool. Built
# in torchvision's order, so layer i of `features` is torchvision's features[i].
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# The indices in `features` of the ReLUs LPIPS taps: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAPS = (3, 8, 15, 22, 29)
STAGE_CHANNELS = (64, 128, 256, 512, 512)
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1 weights
LPIPS_HEADS_FILE = os.path.join("weights", "v0.1", "vgg.pth")  # inside the lpips package
# ImageNet's per-channel statistics of [0, 1] images, in the [-1, 1] range: 2 mean - 1, 2 std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NORM_EPS = 1e-10  # LPIPS's guard of the channel-norm division


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional stack up to relu5_3 (torchvision's features[0:30])."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG16_LAYOUT:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU()]
            channels = entry
    return nn.Sequential(*layers)


def default_backbone_path() -> str:
    """Where torchvision caches vgg16-397923af.pth (honours $TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE)


def default_heads_path() -> str | None:
    """weights/v0.1/vgg.pth of the installed lpips package, or None. The package is
    located, not imported (importing it needs torchvision)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, LPIPS_HEADS_FILE)
        if os.path.isfile(path):
            return path
    return None


def _read_state(path: str, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's messages span lines
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"PerceptualLoss: cannot read the {what} weights {path}: "
                         f"{type(exc).__name__}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"PerceptualLoss: {path} does not hold a state dict (the {what} weights), "
                         f"but a {type(state).__name__}")
    return state


class PerceptualLoss(nn.Module):
    """LPIPS-VGG16 distance between two batches of images in [-1, 1], (N, C, H, W)
    with C 1 or 3; forward(x, y) -> (N,). Frozen (no parameter requires grad) and in
    eval mode; gradients reach the inputs.

    pretrained: load the weights (see the module docstring); backbone_weights /
    head_weights: the files to read instead of the default places. A missing file
    raises FileNotFoundError that says which file to put where. pretrained=False:
    random weights (seeded by the global generator), for tests only.
    resize: upsample both images to resize x resize first (None: as they are)."""

    def __init__(self, *, pretrained: bool = True, backbone_weights: str | None = None,
                 head_weights: str | None = None, resize: int | None = None):
        super().__init__()
        if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < 1):
            raise ValueError(f"PerceptualLoss: resize must be a positive int or None, got {resize!r}")
        self.resize, self.pretrained = resize, pretrained
        self.features = vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in STAGE_CHANNELS)
        if pretrained:
            self._load_pretrained(backbone_weights, head_weights)
        else:
            with torch.no_grad():  # random but valid: non-negative heads, as LPIPS's are
                for head in self.heads:
                    head.weight.uniform_(0, 2 / head.weight.shape[1])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        """Stays in eval mode: the network is a fixed distance (its train() is a no-op)."""
        return super().train(False)

    # -- weights ----------------------------------------------------------------------
    def _load_pretrained(self, backbone_weights: str | None, head_weights: str | None) -> None:
        backbone = backbone_weights or default_backbone_path()
        heads = head_weights or default_heads_path()
        missing = []
        if not os.path.isfile(backbone):
            missing.append(f"the VGG16 backbone: put torchvision's {VGG16_FILE} (ImageNet weights) at "
                           f"{backbone}" + ("" if backbone_weights else
                                            " ($TORCH_HOME/hub/checkpoints; or pass its path)"))
        if heads is None or not os.path.isfile(heads):
            missing.append("the LPIPS heads: " + (f"no file at {heads}" if head_weights else
                           "install the lpips package (pip install lpips; its "
                           f"lpips/{LPIPS_HEADS_FILE.replace(os.sep, '/')} is read, torchvision "
                           f"not needed) or pass the path of that vgg.pth"))
        if missing:
            raise FileNotFoundError("PerceptualLoss needs pretrained weights, which it never downloads; "
                                    "missing " + "; ".join(missing) + ". (pretrained=False gives random "
                                    "weights, for tests only.)")
        self.load_backbone(_read_state(backbone, "VGG16 backbone"), source=backbone)
        self.load_heads(_read_state(heads, "LPIPS head"), source=heads)

    def load_backbone(self, state: dict, *, source: str = "the state dict") -> None:
        """Loads VGG16 weights from a state dict with torchvision's keys
        (`features.N.weight`, `features.N.bias`; others, e.g. the classifier's, are ignored)."""
        wanted = self.features.state_dict()
        picked = {key: state[f"features.{key}"] for key in wanted if f"features.{key}" in state}
        missing = [f"features.{key}" for key in wanted if key not in picked]
        if missing:
            raise ValueError(f"PerceptualLoss: {source} is not a VGG16 state dict with torchvision's "
                             f"keys: it lacks {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
        self._load(self.features, picked, source)

    def load_heads(self, state: dict, *, source: str = "the state dict") -> None:
        """Loads the five 1x1 heads from lpips's keys (`linK.model.1.weight`) or
        genfast's (`heads.K.weight`); their weights must be non-negative."""
        picked = {}
        for k in range(len(self.heads)):
            for key in (f"lin{k}.model.1.weight", f"heads.{k}.weight"):
                if key in state:
                    picked[f"{k}.weight"] = state[key]
                    break
            else:
                raise ValueError(f"PerceptualLoss: {source} is not an LPIPS-VGG head state dict: it has "
                                 f"neither lin{k}.model.1.weight nor heads.{k}.weight")
        if any(isinstance(w, torch.Tensor) and bool((w < 0).any()) for w in picked.values()):
            raise ValueError(f"PerceptualLoss: {source} has negative head weights; LPIPS's are >= 0")
        self._load(self.heads, picked, source)

    @staticmethod
    def _load(module: nn.Module, state: dict, source: str) -> None:
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"PerceptualLoss: {source} does not fit: "
                             f"{' '.join(str(exc).split())[:300]}") from None

    # -- the distance -----------------------------------------------------------------
    def _check(self, x, y) -> None:
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4 \
                    or t.shape[1] not in (1, 3) or t.shape[0] == 0:
                raise ValueError(f"PerceptualLoss: {name} must be floating-point images (N, 1 or 3, H, W), "
                                 f"N > 0, in [-1, 1]; got "
                                 f"{(tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if x.shape != y.shape:
            raise ValueError(f"PerceptualLoss: x and y must have the same shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The channel-normalised relu1_2 ... relu5_3 maps of images in [-1, 1] (only
        the stages whose maps are not empty)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize is not None:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        # The scaling constants are made in the input's dtype (exact in float64).
        shift = torch.tensor([2 * m - 1 for m in IMAGENET_MEAN], dtype=x.dtype, device=x.device)
        scale = torch.tensor([2 * s for s in IMAGENET_STD], dtype=x.dtype, device=x.device)
        h = (x - shift.view(1, 3, 1, 1)) / scale.view(1, 3, 1, 1)
        taps, last = [], 0
        for tap in TAPS:
            for layer in self.features[last:tap + 1]:
                if isinstance(layer, nn.MaxPool2d) and min(h.shape[2:]) < 2:
                    return taps  # the next stages would be empty
                h = layer(h)
            last = tap + 1
            # vector_norm's gradient is 0, not NaN, where a pixel's features are all 0.
            norm = torch.linalg.vector_norm(h, dim=1, keepdim=True)
            taps.append(h / (norm + _NORM_EPS))
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x, y)
        # One pass over both batches: the convolutions see twice the batch.
        stages = self.stage_features(torch.cat([x, y]))
        n = x.shape[0]
        distance = x.new_zeros(n)
        for head, features in zip(self.heads, stages):
            a, b = features[:n], features[n:]
            weights = head.weight.clamp_min(0)  # keep the distance a sum of non-negative terms
            distance = distance + F.conv2d((a - b).square(), weights).mean((1, 2, 3))
        return distance
