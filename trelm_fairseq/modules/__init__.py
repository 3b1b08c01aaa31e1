from .tri_layer import NULL_ALIGNMENT, TRILayer, gather_to_target_order  # noqa: F401
