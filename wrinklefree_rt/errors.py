"""Typed errors of wrinklefree_rt (see docs/architecture.md)."""
from __future__ import annotations

__all__ = ["WrinklefreeError", "ModelFormatError", "KVCacheFullError", "NoFreeSlotError",
           "StepCancelledError"]


class WrinklefreeError(Exception):
    """Base of every error this package raises on purpose."""


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
    """The KV page pool cannot hold the positions asked for; wait for pages to be freed."""


class NoFreeSlotError(WrinklefreeError):
    """Every sequence slot is in use."""


class StepCancelledError(WrinklefreeError):
    """A step was cancelled between layers."""
