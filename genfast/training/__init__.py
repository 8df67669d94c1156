"""genfast's trainers, one module each; they save, read and resume checkpoints through
genfast.training.checkpoint.

- autoregressive: PixelCNN, Gated PixelCNN and the VQ-VAE priors (also `genfast.train`)
- vqvae: VQ-VAE / VQ-VAE-2, and the Gated PixelCNN priors over their codes
- vqgan: the VQGAN tokenizer (L1 + LPIPS + VQ + adaptive-weight hinge GAN loss)
- wgan_gp: WGAN-GP on the 8-Gaussians ring or the 16x16 digits
- wavenet: WaveNet on the synthesised signal
- vae: VAE / AE and their perceptual and VAE-GAN variants
"""
