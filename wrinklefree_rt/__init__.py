"""wrinklefree_rt: a CPU inference runtime for BitNet b1.58 ternary LMs, block-diffusion LMs included.

The API: ``Engine`` (``from_pretrained``, ``generate_async``, ``generate``, ``generate_batch``),
the parameter types and ``RequestOutput``; see docs/api.md. Errors of the C++ core that never
reach ``Engine`` users (``KVCacheFullError``, ``NoFreeSlotError``, ``StepCancelledError``) are
in ``wrinklefree_rt.errors``.
"""
from .engine import Engine
from .errors import EngineClosedError, EngineNotRunningError, InvalidRequestError, ModelFormatError, WrinklefreeError
from .outputs import EngineStats, RequestMetrics, RequestOutput
from .params import DiffusionParams, EngineConfig, SamplingParams

__all__ = [
    "Engine", "EngineConfig", "SamplingParams", "DiffusionParams", "RequestOutput", "RequestMetrics",
    "EngineStats", "WrinklefreeError", "InvalidRequestError", "EngineClosedError", "EngineNotRunningError",
    "ModelFormatError",
]
