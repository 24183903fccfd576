"""The fuzz targets: one per file parser, each taking the bytes of one file.

A target writes the bytes where its loader looks and loads them; the only acceptable outcomes
are a successful load or ``ModelFormatError`` (or another ``WrinklefreeError``). ``check``
turns anything else into an ``UnexpectedError``. Used by ``run.py`` (atheris) and by the
regression test replaying ``regressions/<target>/*``.
"""
from __future__ import annotations

import struct
import tempfile
import zlib
from pathlib import Path

from wrinklefree_rt.config import parse_config
from wrinklefree_rt.errors import WrinklefreeError
from wrinklefree_rt.formats import load_model_dir
from wrinklefree_rt.tokenizer import Tokenizer

TARGETS = ("safetensors", "gguf", "sglbin", "wfrt", "config", "tokenizer_config")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


class UnexpectedError(AssertionError):
    """A parser failed with something other than this package's typed errors."""


class Workspace:
    """A private folder holding the fixed companions of the fuzzed file (a config.json next to
    the safetensors, a tokenizer.json next to the tokenizer config)."""

    def __init__(self, companions: dict[str, bytes]):
        self._tmp = tempfile.TemporaryDirectory(prefix="wfrt-fuzz-", dir=_fast_tmp())
        self.dir = Path(self._tmp.name)
        for name, data in companions.items():
            (self.dir / name).write_bytes(data)

    def put(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def with_wfrt_checksum(data: bytes) -> bytes:
    """A mutated .wfrt with its header CRC recomputed, so that mutations reach the parser
    behind the checksum (a file with a wrong CRC is refused before anything else)."""
    prefix = struct.Struct("<8sIIQ")
    if len(data) < prefix.size:
        return data
    hlen = prefix.unpack_from(data)[3]
    end = prefix.size + hlen
    if end + 4 > len(data):
        return data
    return data[:end] + struct.pack("<I", zlib.crc32(data[:end])) + data[end + 4:]


def run_target(target: str, data: bytes, ws: Workspace) -> None:
    if target == "config":
        parse_config(data)
    elif target == "safetensors":
        ws.put("model.safetensors", data)
        load_model_dir(ws.dir)
    elif target == "gguf":
        load_model_dir(ws.put("model.gguf", data))
    elif target == "sglbin":
        load_model_dir(ws.put("model.bin", data))
    elif target == "wfrt":
        load_model_dir(ws.put("model.wfrt", with_wfrt_checksum(data)))
    elif target == "tokenizer_config":
        ws.put("tokenizer_config.json", data)
        tok = Tokenizer.from_dir(ws.dir)
        tok.apply_chat_template(MESSAGES)
    else:
        raise ValueError(f"unknown fuzz target {target!r}; one of {TARGETS}")


def check(target: str, data: bytes, ws: Workspace) -> None:
    try:
        run_target(target, data, ws)
    except WrinklefreeError:
        pass
    except Exception as e:  # noqa: BLE001 - the point: anything else is a finding
        raise UnexpectedError(f"{target}: {type(e).__name__}: {e}") from e


def companions(target: str, seeds: Path) -> dict[str, bytes]:
    """The fixed files a target's loader reads besides the fuzzed one."""
    if target == "safetensors":
        return {"config.json": (seeds / "companions" / "config.json").read_bytes()}
    if target == "tokenizer_config":
        return {"tokenizer.json": (seeds / "companions" / "tokenizer.json").read_bytes()}
    return {}

