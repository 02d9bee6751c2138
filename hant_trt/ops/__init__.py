"""The op grammar: candidate strings, their families, presets and signatures."""

from . import families  # noqa: F401  (registers the built-in families)
from .candidate import Candidate, signature
from .grammar import (ACTIVATIONS, OpSpec, REGISTRY, build, build_with_info, canonical, decode, encode,
                      inherits, register_family)
from .presets import PRESETS, candidates, register_preset

__all__ = ["ACTIVATIONS", "Candidate", "OpSpec", "PRESETS", "REGISTRY", "build", "build_with_info",
           "candidates", "canonical", "decode", "encode", "inherits", "register_family", "register_preset",
           "signature"]
