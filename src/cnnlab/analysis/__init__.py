"""Measuring and explaining networks: complexity, receptive fields, and (later) what they see."""

from cnnlab.analysis.comparison import Compared, Comparison, compare
from cnnlab.analysis.complexity import InputSizeError, LayerRow, Profile, profile

__all__ = ["Compared", "Comparison", "InputSizeError", "LayerRow", "Profile", "compare", "profile"]
