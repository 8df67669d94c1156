"""Generative models built from genfast's layers: PixelCNN, Gated PixelCNN and
PixelCNN++ (autoregressive image models), WaveNet (audio), VQ-VAE and VQ-VAE-2,
the VAE and the autoencoder (genfast.models.vae), VQGAN's PatchDiscriminator and
the CodeTransformer prior over codes.

The autoregressive models take integer images (N, channels, H, W) in [0, levels):
model(x) gives logits (N, levels, channels, H, W) (PixelCNNpp: the DMOL parameters
(N, P, H, W)), model.loss(x) the mean NLL per sub-pixel in nats,
model.sample(n, ...) images (naive sampling; see AutoregressiveImageModel.sample for its
exact use of the generator). Checkpoints of genfast.train rebuild with load_model.
"""
from __future__ import annotations

from genfast.models._compat import upgrade_config
from genfast.models.autoregressive_image import AutoregressiveImageModel, nll
from genfast.models.code_transformer import CodeTransformer
from genfast.models.gated_pixelcnn import GatedLayer, GatedPixelCNN
from genfast.models.patch_discriminator import PatchDiscriminator
from genfast.models.pixelcnn import PixelCNN
from genfast.models.pixelcnnpp import PixelCNNpp
from genfast.models.sampling import inverse_cdf, sampling_uniforms
from genfast.models.vae import AE, VAE, ELBOTerms
from genfast.models.vqvae import VQVAE, VQVAE2
from genfast.models.wavenet import WaveNet, dilation_cycles, mu_law_decode, mu_law_encode

# CLI names of the autoregressive models.
MODELS = {"pixelcnn": PixelCNN, "gated-pixelcnn": GatedPixelCNN, "pixelcnnpp": PixelCNNpp}
# Every model genfast.train checkpoints, by the name its checkpoints record: the image
# models and the transformer prior over codes.
TRAINABLE = {**MODELS, "code-transformer": CodeTransformer}


def model_name(model) -> str:
    return next(name for name, cls in TRAINABLE.items() if isinstance(model, cls))


def build_model(name: str, config: dict) -> AutoregressiveImageModel:
    """MODELS[name](**config); a config of a checkpoint written before the arguments'
    rename (docs/vocabulary.md) is upgraded to today's names."""
    if name not in TRAINABLE:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(TRAINABLE)}")
    return TRAINABLE[name](**upgrade_config(TRAINABLE[name].__name__, config))


def load_model(path, map_location="cpu") -> AutoregressiveImageModel:
    """The model of a genfast.train checkpoint, with its trained weights, in eval mode.
    A missing file raises FileNotFoundError; an unusable one (corrupt, truncated, of
    another kind, weights that do not fit) a one-line
    genfast.training.checkpoint.CheckpointError (a ValueError) naming the file."""
    from genfast.training.checkpoint import load_checkpoint, restoring

    state = load_checkpoint(path, kind="image-model", map_location=map_location,
                            required=("model_name", "model_config", "model"))
    with restoring(path):
        model = build_model(state["model_name"], state["model_config"])
        model.load_state_dict(state["model"])
    return model.eval()


__all__ = ["AE", "AutoregressiveImageModel", "CodeTransformer", "TRAINABLE", "ELBOTerms", "GatedLayer", "GatedPixelCNN", "MODELS", "PatchDiscriminator", "PixelCNN", "PixelCNNpp", "VAE", "VQVAE",
           "VQVAE2", "WaveNet", "build_model", "dilation_cycles", "inverse_cdf", "load_model",
           "model_name", "mu_law_decode", "mu_law_encode", "nll", "sampling_uniforms"]
