"""AlignX Demo: Mixture of Calibrated Experts (MoCaE) along the HHH axes."""

from alignx_demo.config import AXES

__all__ = ["AXES"]
__version__ = "0.1.0"
