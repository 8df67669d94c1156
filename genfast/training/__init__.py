"""Training loops of genfast's models (one module per family)."""
