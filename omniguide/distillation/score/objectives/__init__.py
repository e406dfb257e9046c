"""The built-in objectives, one per file; importing this package registers them."""

from . import csd, ism, nfsd, rfds, sds, sds_bridge, vsd  # noqa: F401  (each registers itself)
from .base import Context, DivergenceError, Draws, Objective, Output

__all__ = ["Context", "DivergenceError", "Draws", "Objective", "Output"]
