"""A GGUF's vocabulary (``tokenizer.ggml.*``) -> HF ``tokenizers`` files, so that one GGUF file is a
complete model: ``Engine.from_pretrained`` builds its tokenizer from them at load time and
``wrinklefree-rt convert`` writes them beside the converted weights."""
from __future__ import annotations

import os

from ..errors import ModelFormatError, UnsupportedVocabularyError
from .gguf_file import GGUFFile

__all__ = ["gguf_tokenizer_files", "UnsupportedVocabularyError"]


# The pre-tokenizer regexes of the BPE vocabularies we can rebuild exactly, by the name GGUF
# stores in tokenizer.ggml.pre (llama.cpp's names), and whether BPE merges are skipped for
# words already in the vocabulary (llama.cpp does so for Llama 3).
_PRE_TOKENIZERS = {
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+", True),
    "gpt-2": (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", False),
}
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4
# Tokens the file names by role are special whatever their type says (bitnet.cpp's converter types
# every token NORMAL; llama.cpp likewise re-types end-of-generation tokens as control tokens).
_ROLE_KEYS = ("bos", "eos", "eot", "eom", "padding", "unknown", "mask")


def gguf_tokenizer_files(path: str | os.PathLike) -> dict[str, dict]:
    """Rebuild ``tokenizer.json`` and ``tokenizer_config.json`` (HF ``tokenizers`` format) from
    a GGUF's byte-level BPE vocabulary (``tokenizer.ggml.model`` gpt2, pre-tokenizer llama-bpe or
    gpt-2). Control tokens become special added tokens, user-defined ones plain added tokens.
    The tokens named by ``tokenizer.ggml.*_token_id`` are special too. Raises
    ``UnsupportedVocabularyError`` (a ``ValueError``) naming the vocabulary or pre-tokenizer type
    it cannot rebuild exactly (SentencePiece ``llama``, others): better no tokenizer than a wrong
    one."""
    f = GGUFFile(path)
    path, fields = f.path, f.fields
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedVocabularyError(f"tokenizer.ggml.model {model!r} is not supported: only byte-level BPE "
                                         "('gpt2') vocabularies are rebuilt")
    pre = fields.get("tokenizer.ggml.pre", "gpt-2")
    pre = "gpt-2" if pre == "default" else pre
    if pre not in _PRE_TOKENIZERS:
        raise UnsupportedVocabularyError(f"tokenizer.ggml.pre {pre!r}: unknown pre-tokenizer "
                                         f"(known: {sorted(_PRE_TOKENIZERS)})")
    regex, ignore_merges = _PRE_TOKENIZERS[pre]
    tokens = fields.get("tokenizer.ggml.tokens") or []
    types = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = fields.get("tokenizer.ggml.merges") or []
    if len(types) != len(tokens):
        raise ModelFormatError(path, None, f"{len(tokens)} tokens but {len(types)} token types")

    by_role = {fields.get(f"tokenizer.ggml.{role}_token_id") for role in _ROLE_KEYS}
    # every token is in the model's vocabulary (an added token missing there gets a new id)
    vocab, added = {text: i for i, text in enumerate(tokens)}, []
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if i in by_role:
            kind = _TOKEN_CONTROL
        if kind in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED):
            added.append({"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": kind != _TOKEN_CONTROL, "special": kind == _TOKEN_CONTROL})
    bos, eos = fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id")
    add_bos = fields.get("tokenizer.ggml.add_bos_token", bos is not None)
    post = [{"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}]
    if add_bos and bos is not None:
        b = {"SpecialToken": {"id": tokens[bos], "type_id": 0}}
        post.append({"type": "TemplateProcessing",
                     "single": [b, {"Sequence": {"id": "A", "type_id": 0}}],
                     "pair": [b, {"Sequence": {"id": "A", "type_id": 0}},
                              {"SpecialToken": {"id": tokens[bos], "type_id": 1}},
                              {"Sequence": {"id": "B", "type_id": 1}}],
                     "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}}})
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": post},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, tid in (("bos_token", bos), ("eos_token", eos)):
        if tid is not None and 0 <= tid < len(tokens):
            config[key] = tokens[tid]
    template = fields.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}
