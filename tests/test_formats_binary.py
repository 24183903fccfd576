"""The bounded reader all four parsers share: every read is checked against what the file backs,
and a refusal names the file, the field and the tensor."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from wrinklefree_rt.errors import ModelFormatError
from wrinklefree_rt.formats.binary import BinaryReader
from wrinklefree_rt.formats.gguf_file import GGUFFile


def test_reads_and_bounds(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(struct.pack("<IQ", 7, 3) + b"abc" + bytes(range(10)))
    r = BinaryReader(path)
    assert r.scalar("<I", "a") == 7 and r.string("<Q", "name") == "abc" and r.pos == 15
    np.testing.assert_array_equal(r.view(15, 10, "data"), np.arange(10, dtype=np.uint8))
    assert r.peek("<I", 0) == 7 and r.peek("<I", 22) is None
    with pytest.raises(ModelFormatError, match=r"truncated: field needs 11 bytes at offset 15, the file has 25") as e:
        r.take(11, "field", "some.tensor")
    assert (e.value.file, e.value.tensor) == (str(path), "some.tensor")
    assert r.pos == 15  # a refused read does not move the cursor
    with pytest.raises(ModelFormatError, match=r"data \[20, 30\) outside the 25-byte file"):
        r.view(20, 10, "data")
    for n in (-1, 2**63):
        with pytest.raises(ModelFormatError, match="truncated"):
            r.need(n, "count")


def test_empty_missing_and_non_utf8(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    r = BinaryReader(tmp_path / "empty")
    assert r.size == 0 and len(r.data) == 0
    with pytest.raises(ModelFormatError, match="truncated"):
        r.scalar("<I", "x")
    with pytest.raises(ModelFormatError, match="cannot open"):
        BinaryReader(tmp_path / "missing")
    (tmp_path / "s").write_bytes(struct.pack("<Q", 2) + b"\xff\xfe")
    with pytest.raises(ModelFormatError, match="name: not UTF-8"):
        BinaryReader(tmp_path / "s").string("<Q", "name")


def test_gguf_huge_array_count_refused_before_allocating(tmp_path):
    """A metadata array claiming 2**61 elements fails at the bound, allocating nothing."""
    key = b"tokenizer.ggml.scores"
    raw = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
           + struct.pack("<IIQ", 9, 6, 2**61) + b"\0" * 64)
    (tmp_path / "a.gguf").write_bytes(raw)
    with pytest.raises(ModelFormatError, match="truncated: tokenizer.ggml.scores needs 9223372036854775808 bytes"):
        GGUFFile(tmp_path / "a.gguf")
    strings = raw.replace(struct.pack("<IIQ", 9, 6, 2**61), struct.pack("<IIQ", 9, 8, 2**61))
    (tmp_path / "b.gguf").write_bytes(strings)
    with pytest.raises(ModelFormatError, match="2305843009213693952 strings"):
        GGUFFile(tmp_path / "b.gguf")
