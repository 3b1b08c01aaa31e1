from .tri_layer import NULL_ALIGNMENT, TRILayer, gather_to_target_order  # noqa: F401
from .language_discriminator import GradientReversal, LanguageDiscriminator, grad_reverse, pool_states  # noqa: F401
from .chunked_lm_loss import lm_head_loss  # noqa: F401
