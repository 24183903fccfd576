"""Typed errors of wrinklefree_rt (see docs/architecture.md).

What an ``Engine`` user can meet is exported from the package (``InvalidRequestError``,
``EngineClosedError``, ...). ``KVCacheFullError``, ``NoFreeSlotError`` and
``StepCancelledError`` are raised by the C++ core (``wrinklefree_rt._core``) to its direct
callers only: the engine waits for room instead and ends requests with ``EngineClosedError``.
"""
from __future__ import annotations

__all__ = ["WrinklefreeError", "InvalidRequestError", "EngineClosedError", "EngineNotRunningError",
           "ModelFormatError", "ChatTemplateError", "UnsupportedVocabularyError", "KVCacheFullError",
           "NoFreeSlotError", "StepCancelledError"]


class WrinklefreeError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidRequestError(WrinklefreeError, ValueError):
    """A request (or engine setting) the engine cannot serve; the message names the field
    (``$.max_tokens``, ``prompt[3]``, ``diffusion.mask_token_id``) and the problem."""


class EngineClosedError(WrinklefreeError, RuntimeError):
    """The engine was closed (``aclose()``) while the request was queued or running."""


class EngineNotRunningError(WrinklefreeError, RuntimeError):
    """An async call on an engine that is not running in this event loop."""


class ModelFormatError(WrinklefreeError, ValueError):
    """A checkpoint does not match what it claims. Names the file, the tensor (or None) and
    the problem."""

    def __init__(self, file: str, tensor: str | None, problem: str):
        self.file = str(file)
        self.tensor = tensor
        self.problem = problem
        where = self.file if tensor is None else f"{self.file}: tensor {tensor!r}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        return (type(self), (self.file, self.tensor, self.problem))


class KVCacheFullError(WrinklefreeError):
    """Core only: the KV page pool cannot hold the positions asked for; wait for pages to be freed."""


class NoFreeSlotError(WrinklefreeError):
    """Core only: every KV slot (sequence slot of the core) is in use."""


class StepCancelledError(WrinklefreeError):
    """Core only: a step was cancelled between layers."""


class ChatTemplateError(WrinklefreeError, ValueError):
    """A checkpoint's chat template does not compile, or it fails (or raises) while rendering."""


class UnsupportedVocabularyError(WrinklefreeError, ValueError):
    """A GGUF's vocabulary is of a kind this package does not rebuild exactly (the message names it)."""
