"""genfast's models."""
from genfast.models.wavenet import WaveNet, dilation_cycles, mu_law_decode, mu_law_encode
