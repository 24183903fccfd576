"""The one bounded binary reader every file parser here uses (GGUF, safetensors, SGLBITNT, .wfrt).

The file is memory-mapped once; every read, sequential (``take``, ``scalar``, ``string``) or at
an absolute offset (``view``), is checked against the bytes the file actually has before
anything is sliced or allocated, and a read that does not fit raises ``ModelFormatError``
naming the file, the field and (when given) the tensor. A length or count read from the file
therefore never makes a parser allocate more than the file backs (``need`` checks a count
against the bytes left before a loop over it).
"""
from __future__ import annotations

import os
import struct

import numpy as np

from ..errors import ModelFormatError

__all__ = ["BinaryReader"]


class BinaryReader:
    """Little-endian reads from ``path``. ``data`` is the whole file (read-only uint8 map),
    ``size`` its length, ``pos`` the cursor of the sequential reads."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self.size = os.path.getsize(self.path)
            self.data = np.memmap(self.path, dtype=np.uint8, mode="r") if self.size else np.zeros(0, np.uint8)
        except OSError as e:
            raise ModelFormatError(self.path, None, f"cannot open: {e.strerror or e}") from None
        self.pos = 0

    def error(self, problem: str, tensor: str | None = None) -> ModelFormatError:
        return ModelFormatError(self.path, tensor, problem)

    def need(self, n: int, what: str, tensor: str | None = None) -> None:
        """Refuse unless ``n`` more bytes follow the cursor."""
        if n < 0 or n > self.size - self.pos:
            raise self.error(f"truncated: {what} needs {n} bytes at offset {self.pos}, the file has "
                             f"{self.size}", tensor)

    def take(self, n: int, what: str, tensor: str | None = None) -> np.ndarray:
        """The next ``n`` bytes (a view), advancing the cursor."""
        self.need(n, what, tensor)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str, tensor: str | None = None):
        """One ``struct`` value (``"<I"``, ``"<Q"``, ``"<f"``, ...) at the cursor."""
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what, tensor).tobytes())[0]

    def string(self, length_fmt: str, what: str, tensor: str | None = None) -> str:
        """A UTF-8 string preceded by its byte length in ``length_fmt``."""
        n = self.scalar(length_fmt, what, tensor)
        try:
            return self.take(n, what, tensor).tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what}: not UTF-8", tensor) from None

    def peek(self, fmt: str, at: int):
        """A ``struct`` value at absolute offset ``at``, or None past the end (no error)."""
        size = struct.calcsize(fmt)
        if at < 0 or at + size > self.size:
            return None
        return struct.unpack(fmt, self.data[at:at + size].tobytes())[0]

    def view(self, offset: int, nbytes: int, what: str, tensor: str | None = None) -> np.ndarray:
        """``nbytes`` bytes at absolute ``offset`` (tensor data), zero-copy."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise self.error(f"{what} [{offset}, {offset + nbytes}) outside the {self.size}-byte file "
                             "(truncated?)", tensor)
        return self.data[offset:offset + nbytes]
