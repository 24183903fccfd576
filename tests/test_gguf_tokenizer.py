"""One GGUF file is a whole model: the tokenizer rebuilt from its metadata at load time tokenizes
exactly like the ``tokenizer.json`` the file was made from, and the engine chats with nothing
else in the folder. Evidence: ../shared/fixtures/i2s-tiny (bitnet.cpp's converter wrote the
GGUF's vocabulary from hf/tokenizer.json)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_formats_gguf import TEXTS
from wrinklefree_rt import Engine
from wrinklefree_rt.tokenizer import Tokenizer, load_tokenizer

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "i2s-tiny"
MORE = ["<|begin_of_text|>Hello<|end_of_text|>", "a<|end_of_text|>b <|begin_of_text|> c", "💡🙂‍↔️ 🇫🇷 👩🏽‍💻",
        "Ⅻ ½ ﬁ  \u00a0nbsp \u200bzero-width", "Licensor grants you a license to reproduce"]


@pytest.fixture(scope="module")
def lone_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lone") / "model.gguf"
    shutil.copy(FIXTURE / "ggml-model-i2s-bitnet.gguf", path)
    return path


def test_rebuilt_tokenizer_encodes_like_the_original(lone_gguf):
    want = Tokenizer.from_dir(FIXTURE / "hf")
    got = load_tokenizer(lone_gguf)
    assert got is not None
    for text in TEXTS + MORE:
        ids = want.encode(text, add_special_tokens=False)
        assert got.encode(text, add_special_tokens=False) == ids, text
        # the GGUF says add_bos_token (llama.cpp adds BOS); the tokenizer.json alone adds nothing
        assert got.encode(text) == [0] + ids == [0] + want.encode(text), text
        for skip in (True, False):
            assert got.decode([0] + ids, skip) == want.decode([0] + ids, skip), text
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert got.encode(expected["prompt"]) == expected["prompt_ids"]  # as llama-cli tokenized it
    assert got.eos_token_ids == want.eos_token_ids == (1,)


def test_gguf_alone_chats(lone_gguf):
    assert sorted(p.name for p in lone_gguf.parent.iterdir()) == ["model.gguf"]
    messages = [{"role": "user", "content": "The Licensor grants you"}]
    with Engine.from_pretrained(lone_gguf, num_threads=1) as engine:
        tok = engine.tokenizer
        # the file's own template (bitnet.cpp's converter writes Human: / BITNETAssistant:)
        text = tok.apply_chat_template(messages)
        assert text == "<|begin_of_text|>Human: The Licensor grants you\n\nBITNETAssistant: <|end_of_text|>"
        chat, by_ids = engine.generate_batch(
            [messages, tok.encode(text, add_special_tokens=False)], dict(max_tokens=8, ignore_eos=True))
    ref = Tokenizer.from_dir(FIXTURE / "hf")
    assert chat.token_ids == by_ids.token_ids and len(chat.token_ids) == 8
    assert chat.text == ref.decode(chat.token_ids)


def test_unsupported_vocabulary_is_named(tmp_path):
    """A SentencePiece (``llama``) vocabulary is not rebuilt: the model still loads for token ids,
    and the warning names the vocabulary type."""
    from test_formats_gguf import _llama3_gguf
    _llama3_gguf(tmp_path / "v.gguf", model="llama", n_vocab=300)
    with pytest.warns(UserWarning, match="tokenizer.ggml.model 'llama' is not supported: only byte-level BPE"):
        assert load_tokenizer(tmp_path / "v.gguf") is None
