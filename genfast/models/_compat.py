"""Old names of the models' arguments (docs/vocabulary.md): the deprecated keyword
aliases kept where README.md documented a name, and the upgrade of configs saved in
checkpoints written before the rename."""
from __future__ import annotations

import warnings

# Keyword aliases the constructors still accept, with a DeprecationWarning: only names
# that README.md documented.
DEPRECATED_KEYWORDS = {
    "PixelCNN": {"hidden": "hidden_channels"},
    "GatedPixelCNN": {"hidden": "hidden_channels"},
    "VQVAE": {"in_channels": "image_channels"},
    "VQVAE2": {"in_channels": "image_channels"},
}

# Config keys of checkpoints written before the rename -> today's names.
LEGACY_CONFIG_KEYS = {
    "PixelCNN": {"channels": "image_channels", "hidden": "hidden_channels",
                 "input_kernel": "input_kernel_size"},
    "GatedPixelCNN": {"channels": "image_channels", "hidden": "hidden_channels"},
    "WaveNet": {"cond_channels": "class_embedding_dim"},
}


def renamed_keywords(model: str, deprecated: dict, values: dict, *, stacklevel: int = 3) -> dict:
    """`values` (the new names' arguments) updated from `deprecated` (the constructor's
    **kwargs): each old name warns and sets its new name; any other name is the
    TypeError Python raises for an unexpected keyword."""
    renames = DEPRECATED_KEYWORDS.get(model, {})
    for old, value in deprecated.items():
        if old not in renames:
            raise TypeError(f"{model}.__init__() got an unexpected keyword argument {old!r}")
        new = renames[old]
        warnings.warn(f"{model}: the argument {old!r} is deprecated; use {new!r} "
                      f"(docs/vocabulary.md)", DeprecationWarning, stacklevel=stacklevel)
        values[new] = value
    return values


def upgrade_config(model: str, config: dict) -> dict:
    """A config saved in a checkpoint, with pre-rename keys given today's names."""
    renames = LEGACY_CONFIG_KEYS.get(model, {})
    return {renames.get(key, key): value for key, value in config.items()}
