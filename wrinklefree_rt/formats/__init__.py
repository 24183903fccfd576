"""Checkpoint formats. Each loader yields ``(ModelConfig, tensors)`` with the canonical names of
docs/architecture.md."""
from .ternary import TernaryWeight, absmean_quantize
from .hf import tensors_from_state_dict

__all__ = ["TernaryWeight", "absmean_quantize", "tensors_from_state_dict"]
