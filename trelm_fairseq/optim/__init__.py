"""Optimizers registered with fairseq: ``--optimizer trelm_adamw`` (torch's fused / foreach AdamW)."""
from . import trelm_adamw  # noqa: F401  (registration)
