"""wrinklefree_rt: a CPU inference runtime for BitNet b1.58 ternary LMs, block-diffusion LMs included.

The API: ``Engine`` (``from_pretrained``, ``generate_async``, ``generate``, ``generate_batch``),
the parameter types and ``RequestOutput``; see docs/api.md.
"""
from .engine import Engine, EngineClosedError, EngineNotRunningError, EngineStats, InvalidRequestError
from .errors import KVCacheFullError, ModelFormatError, NoFreeSlotError, StepCancelledError, WrinklefreeError
from .params import DiffusionParams, EngineConfig, SamplingParams
from .sequence import RequestMetrics, RequestOutput

__all__ = [
    "Engine", "EngineConfig", "SamplingParams", "DiffusionParams", "RequestOutput", "RequestMetrics",
    "EngineStats", "WrinklefreeError", "InvalidRequestError", "EngineClosedError", "EngineNotRunningError",
    "ModelFormatError", "KVCacheFullError", "NoFreeSlotError", "StepCancelledError",
]
