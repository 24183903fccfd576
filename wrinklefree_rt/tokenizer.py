"""Tokenizer (HF ``tokenizers``), chat formats, incremental detokenization and stop strings."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Literal, Sequence

from tokenizers import Tokenizer as _HFTokenizer

from .chat_template import ChatTemplate
from .errors import ModelFormatError

__all__ = ["Tokenizer", "IncrementalDetokenizer", "TextStream", "ChatFormat", "load_tokenizer"]

ChatFormat = Literal["bitnet", "llama3"]

# Spellings of the DLM mask token in the checkpoints we know (WrinkleFree / Fast-dLLM v2 /
# LLaDA); used only when neither the request nor the model config names a mask id.
_MASK_TOKEN_NAMES = ("|<MASK>|", "<|mask|>", "<|MASK|>", "<mask>", "[MASK]")
_ROLES = ("system", "user", "assistant", "tool")
# tokenizer_config.json keys handed to a chat template as variables (transformers' special_tokens_map)
_TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Tokenizer:
    """``tokenizer.json`` plus what ``tokenizer_config.json`` says about special tokens.

    Prompts given as text get the tokenizer's own special tokens (BOS for Llama-3); chat
    messages are rendered to text that already starts with BOS and encoded without adding more.
    ``chat_format`` ``"auto"`` renders the checkpoint's own template (``chat_template`` in the
    config) when it has one, else a built-in format picked from the vocabulary; ``"bitnet"`` /
    ``"llama3"`` force a built-in format.
    """

    def __init__(self, tokenizer: _HFTokenizer, config: dict | None = None,
                 chat_format: ChatFormat | Literal["auto"] = "auto"):
        self._tok = tokenizer
        config = config or {}
        self.bos_token = _token_text(config.get("bos_token")) or "<|begin_of_text|>"
        # Both chat formats end a turn with <|eot_id|>: a reply ends there too.
        eos = (self.token_id(_token_text(config.get("eos_token"))), self.token_id("<|eot_id|>"))
        self.eos_token_ids = tuple(dict.fromkeys(t for t in eos if t is not None))
        self.mask_token_id = self.token_id(_token_text(config.get("mask_token")))
        if self.mask_token_id is None:
            self.mask_token_id = next((t for t in map(self.token_id, _MASK_TOKEN_NAMES) if t is not None),
                                      None)
        source = _template_source(config.get("chat_template"))
        self.chat_format: ChatFormat = (_detect_chat_format(source) if chat_format == "auto" else chat_format)
        specials = {k: t for k in _TEMPLATE_TOKENS if (t := _token_text(config.get(k))) is not None}
        self.chat_template = ChatTemplate(source, specials) if source and chat_format == "auto" else None

    @classmethod
    def from_dir(cls, path: str | Path, chat_format: ChatFormat | Literal["auto"] = "auto") -> "Tokenizer":
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        try:
            tok = _HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable files
            raise ModelFormatError(str(file), None, f"cannot load tokenizer: {e}") from None
        config_path = file.parent / "tokenizer_config.json"
        config = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ModelFormatError(str(config_path), None, f"cannot read tokenizer config: {e}") from None
            if not isinstance(config, dict):
                raise ModelFormatError(str(config_path), None,
                                       f"expected a JSON object, got {type(config).__name__}")
        jinja = file.parent / "chat_template.jinja"  # where transformers 5 saves the template
        if jinja.is_file() and not config.get("chat_template"):
            config["chat_template"] = jinja.read_text(encoding="utf-8")
        return cls(tok, config, chat_format)

    @classmethod
    def from_gguf(cls, path: str | Path, chat_format: ChatFormat | Literal["auto"] = "auto") -> "Tokenizer":
        """The tokenizer a GGUF's metadata describes (``formats.gguf_vocab``); raises
        ``UnsupportedVocabularyError`` naming a vocabulary type it cannot rebuild."""
        from .formats.gguf_vocab import gguf_tokenizer_files
        files = gguf_tokenizer_files(path)
        tok = _HFTokenizer.from_str(json.dumps(files["tokenizer.json"]))
        return cls(tok, files["tokenizer_config.json"], chat_format)

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self._tok.token_to_id(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """Render ``[{"role": ..., "content": ...}, ...]`` with the checkpoint's template, or in
        the built-in chat format when it has none:

        bitnet (BitNet b1.58 2B-4T): ``<BOS>User: hi<|eot_id|>Assistant: ``.
        llama3: ``<BOS><|start_header_id|>user<|end_header_id|>\\n\\nhi<|eot_id|>...``.

        Raises ``ValueError`` for malformed messages and ``ChatTemplateError`` (a ``ValueError``)
        when the template fails to render or calls ``raise_exception``.
        """
        _check_messages(messages)
        if self.chat_template is not None:
            return self.chat_template.render(messages, add_generation_prompt)
        parts = [self.bos_token]
        for message in messages:
            role, content = message["role"], message["content"]
            if self.chat_format == "llama3":
                parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>")
            else:
                parts.append(f"{role.capitalize()}: {content.strip()}<|eot_id|>")
        if add_generation_prompt:
            parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n"
                         if self.chat_format == "llama3" else "Assistant: ")
        return "".join(parts)


def _check_messages(messages: Sequence[dict]) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}]: expected a dict with 'role' and 'content', "
                             f"got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}].role: {role!r} is not one of {list(_ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content: expected str, got {type(content).__name__}")


def _token_text(value) -> str | None:
    # tokenizer_config.json spells special tokens as a string or as an AddedToken dict.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_source(value) -> str | None:
    # tokenizer_config.json holds one template, or a list of {"name", "template"} (the "default" one is used)
    if isinstance(value, list):
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) and value else None


def load_tokenizer(path: str | os.PathLike, chat_format: ChatFormat | Literal["auto"] = "auto") -> "Tokenizer | None":
    """The tokenizer that goes with a model path: ``tokenizer.json`` in its folder, else the
    vocabulary of a GGUF file (or of the one GGUF a directory holds), else None. A GGUF whose
    vocabulary cannot be rebuilt gives None and a warning naming the vocabulary type."""
    from .formats import single_file_format
    from .formats.gguf_vocab import UnsupportedVocabularyError

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_dir(folder, chat_format)
    ggufs = [p] if p.is_file() else sorted(p.glob("*.gguf"))
    if len(ggufs) == 1 and single_file_format(ggufs[0]) == "gguf":
        try:
            return Tokenizer.from_gguf(ggufs[0], chat_format)
        except UnsupportedVocabularyError as e:
            warnings.warn(f"{ggufs[0]}: no tokenizer: {e}; the model takes token ids only", stacklevel=2)
    return None


def _detect_chat_format(template) -> ChatFormat:
    if isinstance(template, str) and "<|start_header_id|>" in template:
        return "llama3"
    return "bitnet"


class IncrementalDetokenizer:
    """Text of a growing token list, released only in whole characters.

    Byte-level BPE can split one UTF-8 character over several tokens; decoding such a prefix
    yields U+FFFD. Text is released once the decoded tail no longer ends in U+FFFD, and is
    diffed against the decode of a few preceding tokens so that decoders which strip a leading
    space at the start of a slice (SentencePiece) still give the right text.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self.token_ids: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the slice whose decode is diffed
        self._read = 0    # tokens whose text has been released

    def add(self, token_id: int) -> str:
        """Append one token; returns the newly complete text (possibly empty)."""
        self.token_ids.append(token_id)
        return self._release(final=False)

    def flush(self) -> str:
        """Release whatever is left, incomplete characters included (the request ended)."""
        return self._release(final=True)

    def peek(self, more: Sequence[int]) -> str:
        """The text that would follow ``text`` if ``more`` tokens were added (whole characters
        only), without adding them."""
        ids = self.token_ids[self._prefix:] + list(more)
        released = self._tok.decode(self.token_ids[self._prefix:self._read])
        return self._tok.decode(ids)[len(released):].rstrip("\ufffd")

    def _release(self, final: bool) -> str:
        ids = self.token_ids
        prefix_text = self._tok.decode(ids[self._prefix:self._read])
        full = self._tok.decode(ids[self._prefix:])
        if len(full) <= len(prefix_text) or (full.endswith("\ufffd") and not final):
            return ""
        delta = full[len(prefix_text):]
        self._prefix, self._read = self._read, len(ids)
        self.text += delta
        return delta


class TextStream:
    """A request's output text: incremental detokenization plus stop strings.

    ``text`` is everything decoded so far, cut before the first stop string once one appears
    (``stopped`` is then True). While the request runs, ``visible`` holds back the last
    ``len(longest stop) - 1`` characters, which could still turn out to start a stop string, so
    streamed text is never taken back.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self._detok = IncrementalDetokenizer(tokenizer)
        self._stop = tuple(stop)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""
        self.stopped: str | None = None

    def add(self, token_id: int) -> bool:
        """Append a token's text; True when a stop string has just appeared."""
        return self._extend(self._detok.add(token_id))

    def finish(self) -> bool:
        return self._extend(self._detok.flush())

    def _extend(self, delta: str) -> bool:
        if not delta or self.stopped is not None:
            return False
        start = max(0, len(self.text) - self._holdback)
        self.text += delta
        hits = [(i, s) for s in self._stop if (i := self.text.find(s, start)) >= 0]
        if not hits:
            return False
        cut, self.stopped = min(hits)
        self.text = self.text[:cut]
        return True

    def preview(self, more: Sequence[int]) -> str:
        """Text that ``more`` tokens (not yet added) would show after ``visible(False)``,
        held-back characters first. Not checked for stop strings."""
        if self.stopped is not None:
            return ""
        return self.text[len(self.visible(False)):] + self._detok.peek(more)

    def visible(self, final: bool) -> str:
        if final or self.stopped is not None or not self._holdback:
            return self.text
        return self.text[:max(0, len(self.text) - self._holdback)]
