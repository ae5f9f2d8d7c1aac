"""The MoCaE model: experts, routers, calibration, injection into HF causal LMs, save/load."""

from alignx_demo.modeling.adapters import AdapterError, import_adapters
from alignx_demo.modeling.calibration import CalibrationStack, TemperatureScaling
from alignx_demo.modeling.checkpoint import CheckpointError, load_mocae, save_mocae
from alignx_demo.modeling.families import UnsupportedModelError
from alignx_demo.modeling.geometry import FractalGeometry, NaturalGeometry
from alignx_demo.modeling.mocae import MoCaEModel

__all__ = [
    "AdapterError",
    "CalibrationStack",
    "CheckpointError",
    "FractalGeometry",
    "MoCaEModel",
    "NaturalGeometry",
    "TemperatureScaling",
    "UnsupportedModelError",
    "import_adapters",
    "load_mocae",
    "save_mocae",
]
