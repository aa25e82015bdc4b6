"""Measuring and explaining networks: complexity, receptive fields, and (later) what they see."""

from cnnlab.analysis.complexity import InputSizeError, LayerRow, Profile, profile

__all__ = ["InputSizeError", "LayerRow", "Profile", "profile"]
