"""VTFusion: vision-text fusion for few-shot industrial anomaly detection.

The package backs the VTFusion book. Import submodules explicitly
(``from vtfusion.data import MVTecDataset``); importing :mod:`vtfusion` itself is
cheap and does not import torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
