"""`genfast.train` is genfast.training.autoregressive, the training loop of the
autoregressive image models (documented as `from genfast.train import train`): this
module replaces itself with that one, so both names are one module object."""
import sys

from genfast.training import autoregressive

sys.modules[__name__] = autoregressive
