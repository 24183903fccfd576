"""Request and engine parameters: msgspec Structs, validated once at the API boundary.

Constructing a Struct does not check anything (msgspec only checks while decoding), so every
public entry point passes its parameters through ``validate()``, which re-decodes them and
reports the exact field path of a bad value (``Expected `int` >= 1 - at `$.max_tokens```).
Unknown fields are refused (``forbid_unknown_fields``: a misspelt ``max_tokenz`` is an error,
not a silently ignored default), and so is any float that is NaN or infinite.
Field names follow vLLM's where one exists.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from .errors import InvalidRequestError

__all__ = ["SamplingParams", "DiffusionParams", "EngineConfig", "validate",
           "MAX_STOP_STRINGS", "MAX_STOP_STRING_CHARS", "MAX_STOP_TOKEN_IDS"]

# Bounds on stop conditions: each stop string is searched for after every released token.
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024

_NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
_PosInt = Annotated[int, msgspec.Meta(ge=1)]
_TokenId = Annotated[int, msgspec.Meta(ge=0)]
_StopString = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STOP_STRING_CHARS)]


class SamplingParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How tokens are chosen and when a request stops.

    ``temperature`` 0 is greedy (argmax). ``seed`` makes a sampled request reproducible
    whatever else shares the batch. ``stop`` strings end the request and are not included in
    the text; a token in ``stop_token_ids`` (or EOS unless ``ignore_eos``) ends it and is kept
    in ``token_ids`` but not in ``text``. ``max_tokens`` is exact. At most
    ``MAX_STOP_STRINGS`` stop strings of at most ``MAX_STOP_STRING_CHARS`` characters, and
    ``MAX_STOP_TOKEN_IDS`` stop token ids.
    """

    max_tokens: _PosInt = 256
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] = 0.0
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1.0
    top_k: _NonNegInt = 0
    seed: _NonNegInt | None = None
    stop: Annotated[list[_StopString], msgspec.Meta(max_length=MAX_STOP_STRINGS)] = []
    stop_token_ids: Annotated[list[_TokenId], msgspec.Meta(max_length=MAX_STOP_TOKEN_IDS)] = []
    ignore_eos: bool = False


class DiffusionParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Block-diffusion (DLM) decoding, Fast-dLLM v2 style (docs/api.md).

    ``None`` fields are resolved from the engine's defaults, then the model config, then the
    tokenizer (the mask token), then the defaults of ``wrinklefree_rt.intake`` (where that
    order is implemented and documented). ``attention``: ``"causal"`` (WrinkleFree DLMs) or ``"block"``
    (block-causal, Fast-dLLM v2); by default block-causal when the model config names a
    ``bd_size``. ``threshold`` above 1 unmasks exactly one token per step.
    ``provisional``: also stream, after every step, the open block's decoded positions up to
    its first mask (``RequestOutput.provisional_*``); committed output still comes in whole
    blocks.
    ``fuse_commit`` (an approximation, shift only; dInfer's cross-block update): a block after
    the first starts all masked instead of taking its first token from the previous block's
    commit, so the commit needs no forward of its own: it shares the new block's first step,
    where that first token competes under the threshold rule like the others.
    ``sub_block_size="auto"`` (changes decisions, so not the default): before every step the
    request picks the width (a divisor of the block size) with the most expected committed
    tokens per second, from how often its candidates passed the threshold so far and what a
    step of that many rows costs on this machine (``wrinklefree_rt.sub_block``).
    """

    block_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    sub_block_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] | Literal["auto"] | None = None
    threshold: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    mask_token_id: _TokenId | None = None
    shift: bool | None = None
    attention: Literal["causal", "block"] | None = None
    provisional: bool = False
    fuse_commit: bool = False

    def __post_init__(self) -> None:
        if self.block_size is not None and isinstance(self.sub_block_size, int) \
                and self.block_size % self.sub_block_size:
            raise ValueError(f"sub_block_size {self.sub_block_size} must divide "
                             f"block_size {self.block_size}")


class EngineConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Engine-wide settings (``Engine.from_pretrained(path, **fields)``).

    ``max_num_seqs``: concurrent sequences (KV slots); more requests wait. ``kv_cache_tokens``:
    KV pool size in positions, 0 for enough for every slot at full model length.
    ``max_num_batched_tokens``: rows per forward; decode and denoising rows are packed first,
    prefill chunks fill the rest. ``lm_head``: ``"int8"`` (fast), ``"q4"`` (4-bit groups: fewer
    bytes per token, less exact) or ``"fp32"`` (exact reference). ``chat_template``: ``"auto"``
    renders the checkpoint's own template (else a built-in format), ``"bitnet"`` / ``"llama3"``
    force a built-in one. ``i2s_layout``: the block
    layout of a bitnet.cpp I2_S GGUF, ``"x86"`` or ``"arm"`` (the file does not record it).
    ``diffusion``: defaults for DLM requests that leave a field unset. ``isa``: force a kernel
    table (``"avx2"``, ``"generic"``...; empty: the best this CPU runs). ``ternary_kernel``:
    force the ternary GEMM (``"tiles"`` or a LUT kernel's name; empty or ``"auto"``: chosen per
    row count by a calibration at load, cached per CPU). ``ternary_packing``: ``"2bit"`` (4 codes
    per byte) or ``"base3"`` (5 per byte, 1.6 bits a weight: a fifth fewer bytes per token, the
    same logits, more decoding work; for CPUs whose decode is bound by memory bandwidth).
    ``stats()`` reports these choices.
    ``step_costs``: seconds per step by rows per step ({1: 0.03, 32: 0.16}), the prices that
    ``sub_block_size="auto"`` decides with; unset, they are measured from the engine's own steps
    (``stats().step_costs``). A fixed table makes the choices repeatable, or plans for a machine
    measured elsewhere.
    """

    max_num_seqs: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 16
    max_num_batched_tokens: Annotated[int, msgspec.Meta(ge=1)] = 256
    kv_cache_tokens: _NonNegInt = 0
    page_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 32
    num_threads: _NonNegInt = 0
    lm_head: Literal["int8", "q4", "fp32"] = "int8"
    isa: str = ""
    ternary_kernel: str = ""
    ternary_packing: Literal["2bit", "base3"] = "2bit"
    chat_template: Literal["auto", "bitnet", "llama3"] = "auto"
    i2s_layout: Literal["x86", "arm"] = "x86"
    diffusion: DiffusionParams = msgspec.field(default_factory=DiffusionParams)
    step_costs: dict[Annotated[int, msgspec.Meta(ge=1)], Annotated[float, msgspec.Meta(gt=0.0)]] | None = None


_T = TypeVar("_T", SamplingParams, DiffusionParams, EngineConfig)


def validate(value: Any, kind: type[_T], what: str) -> _T:
    """``value`` (an instance, a dict or None for the defaults) as a checked ``kind``.

    Raises ``InvalidRequestError`` (a ``ValueError``) naming ``what`` and the field path."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        value = msgspec.to_builtins(value)
    try:
        checked = msgspec.convert(value, type=kind)
    except msgspec.ValidationError as e:
        raise InvalidRequestError(f"invalid {what}: {e}") from None
    bad = _non_finite_field(checked, "$")
    if bad is not None:
        raise InvalidRequestError(f"invalid {what}: Expected a finite `float` - at `{bad}`")
    return checked


def _non_finite_field(params: msgspec.Struct, path: str) -> str | None:
    """The path of the first NaN / infinite float field of ``params`` (nested Structs too)."""
    for name in params.__struct_fields__:
        value = getattr(params, name)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{path}.{name}"
        if isinstance(value, dict):
            key = next((k for k, v in value.items() if isinstance(v, float) and not math.isfinite(v)), None)
            if key is not None:
                return f"{path}.{name}[{key}]"
        if isinstance(value, msgspec.Struct):
            inner = _non_finite_field(value, f"{path}.{name}")
            if inner is not None:
                return inner
    return None
