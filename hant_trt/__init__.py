"""hant-trt: hardware-aware network transformation (HANT/LANA) for timm CNNs."""

__version__ = "0.1.0"
