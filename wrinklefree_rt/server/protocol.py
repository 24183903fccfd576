"""OpenAI request bodies as msgspec Structs, and their translation into engine requests.

A body is decoded in two steps: JSON to a dict, where fields OpenAI defines but this server
does not build are refused by name unless they hold their no-op value; then the dict to a
Struct that forbids unknown fields, so every other mistake is reported with its field path.
Value ranges are left to the library (SamplingParams / DiffusionParams), so the HTTP errors
carry the same messages as a direct ``Engine`` call.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec

from ..params import DiffusionParams
from .errors import ApiError

__all__ = ["ChatRequest", "CompletionRequest", "EngineJob", "decode_request", "engine_jobs", "error_param"]

# Fields OpenAI / vLLM define that would change the result; the value each may hold because
# it asks for nothing (what clients such as LangChain send by default).
_UNSUPPORTED_UNLESS = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0), "min_p": (None, 0, 0.0), "min_tokens": (None, 0),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None, False, True), "response_format": (None, {"type": "text"}),
    "prediction": (None,), "audio": (None,), "modalities": (None, ["text"]), "reasoning_effort": (None,),
}


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


class _Common(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # recorded by OpenAI for abuse tracking; changes nothing
    diffusion: bool | dict[str, Any] | None = None  # this server's extension: DiffusionParams


class CompletionRequest(_Common):
    prompt: str | list[Any]


class TextPart(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["text"]
    text: str


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    content: str | list[TextPart] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage]


_R = TypeVar("_R", CompletionRequest, ChatRequest)


def decode_request(body: bytes, kind: type[_R]) -> _R:
    try:
        fields = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(fields, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(fields).__name__}")
    for name, neutral in _UNSUPPORTED_UNLESS.items():
        if name in fields:
            value = fields.pop(name)
            if not any(value == v and type(value) is type(v) for v in neutral):
                raise ApiError(400, f"{name}: not supported by this server", param=name)
    try:
        return msgspec.convert(fields, type=kind)
    except msgspec.ValidationError as e:
        raise ApiError(400, f"invalid request: {e}", param=error_param(str(e))) from None


_PATH = re.compile(r"at `\$\.?([^`]*)`")
_FIELD = re.compile(r"(?:unknown|required) field `([^`]*)`")
_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")


def error_param(message: str, prefix: str = "") -> str | None:
    """The field a validation message names: msgspec's ``at `$.a.b``` path (plus the name of
    an unknown or missing field), or the library's ``field: problem`` form, innermost field
    first (``params.`` is the library's name for the sampling fields)."""
    path, unknown = _PATH.search(message), _FIELD.search(message)
    if path or unknown:
        parts = [prefix.rstrip("."), path.group(1) if path else "", unknown.group(1) if unknown else ""]
        return ".".join(p for p in parts if p) or None
    field = None
    while found := _PREFIX.match(message):  # "prompt: messages[0]: ..." names messages[0]
        field, message = found.group(1), message[found.end():]
    return field.removeprefix("params.") if field else None


@dataclass
class EngineJob:
    """One engine request of an HTTP request: choice ``index`` of prompt ``prompt_index``."""

    index: int
    prompt: Any
    params: dict
    diffusion: dict | None


def _prompts(req: CompletionRequest) -> list:
    """``prompt``: a string, token ids, or a list of either (one choice group per prompt)."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise ApiError(400, "prompt: empty", param="prompt")
    if isinstance(p[0], int):  # token ids; the engine names a bad one
        return [p]
    for i, x in enumerate(p):
        if not (isinstance(x, str) or isinstance(x, list) and all(isinstance(t, int) for t in x)):
            raise ApiError(400, f"prompt[{i}]: expected a string or a list of token ids (in a list of prompts)",
                           param=f"prompt[{i}]")
    return list(p)


def _messages(req: ChatRequest) -> list[list[dict]]:
    if not req.messages:
        raise ApiError(400, "messages: at least one message is needed", param="messages")
    out = []
    for m in req.messages:
        content = m.content if isinstance(m.content, str) or m.content is None else \
            "".join(part.text for part in m.content)
        out.append({"role": m.role, "content": content or ""})
    return [out]


def engine_jobs(req: CompletionRequest | ChatRequest, default_diffusion: dict | None, limit: int) -> list[EngineJob]:
    """The engine requests behind one HTTP request, in OpenAI's choice order (prompt-major);
    more than ``limit`` of them could never be admitted."""
    if isinstance(req.n, bool) or req.n < 1:
        raise ApiError(400, f"n: must be >= 1, got {req.n}", param="n")
    prompts = _prompts(req) if isinstance(req, CompletionRequest) else _messages(req)
    if len(prompts) * req.n > limit:
        raise ApiError(400, f"n: {len(prompts)} prompt(s) x n = {req.n} needs {len(prompts) * req.n} sequences; "
                       f"this server holds at most {limit}", param="n")
    diffusion = _diffusion(req.diffusion, default_diffusion)
    params: dict[str, Any] = {}
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    for name, value in (("max_tokens", max_tokens), ("top_p", req.top_p), ("top_k", req.top_k),
                        ("stop_token_ids", req.stop_token_ids), ("ignore_eos", req.ignore_eos)):
        if value is not None:
            params[name] = value
    if req.stop is not None:
        params["stop"] = [req.stop] if isinstance(req.stop, str) else req.stop
    # OpenAI samples at temperature 1 unless told; block diffusion only decodes greedily.
    params["temperature"] = req.temperature if req.temperature is not None else (0.0 if diffusion is not None else 1.0)
    jobs = []
    for p, prompt in enumerate(prompts):
        for c in range(req.n):
            seed = None if req.seed is None else req.seed + c  # distinct samples for n > 1
            jobs.append(EngineJob(index=p * req.n + c, prompt=prompt, params=dict(params, seed=seed),
                                  diffusion=diffusion))
    return jobs


def _diffusion(value: bool | dict | None, default: dict | None) -> dict | None:
    """The request's ``diffusion`` over the server default: an object (merged over the
    default), ``true`` (the default, or the library's), ``false`` (autoregressive)."""
    if value is False:
        return None
    if value is None:
        return default
    if value is True:
        return dict(default or {})
    unknown = next((k for k in value if k not in DiffusionParams.__struct_fields__), None)
    if unknown is not None:  # DiffusionParams itself would ignore it
        raise ApiError(400, f"diffusion: unknown field `{unknown}`", param=f"diffusion.{unknown}")
    return dict(default or {}, **value)
