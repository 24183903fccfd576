"""A checkpoint's own Jinja2 chat template, rendered the way transformers' ``apply_chat_template``
does (transformers 5.3, ``utils/chat_template_utils.py``): an ``ImmutableSandboxedEnvironment``
with ``trim_blocks`` / ``lstrip_blocks`` and the ``loopcontrols`` extension, ``raise_exception``
and ``strftime_now`` as globals, a ``tojson`` filter that does not escape HTML, and the
tokenizer's special tokens (``bos_token``, ``eos_token``, ...) as variables beside ``messages``,
``add_generation_prompt``, ``tools`` and ``documents``."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

from .errors import ChatTemplateError

__all__ = ["ChatTemplate", "ChatTemplateError"]


def _raise_exception(message: str):
    import jinja2
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class ChatTemplate:
    """One compiled template. ``special_tokens``: name -> text (``bos_token`` and friends)."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = source
        self.special_tokens = dict(special_tokens or {})
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template does not compile: {e}") from None

    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = True, **extra) -> str:
        import jinja2
        try:
            return self._template.render(messages=list(messages), tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt,
                                         **{**self.special_tokens, **extra})
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template failed to render: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ChatTemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None
