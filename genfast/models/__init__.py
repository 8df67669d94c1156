"""Generative models built on genfast's ops and layers."""
from genfast.models.vqvae import VQVAE, VQVAE2

__all__ = ["VQVAE", "VQVAE2"]
