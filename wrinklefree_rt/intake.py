"""Request intake: from what a caller passes to ``generate*`` to a ``Sequence`` the scheduler
can admit (the role vLLM's input processor plays).

Every check happens here, before admission, and a refused request raises
``InvalidRequestError`` naming the field. ``check()`` runs in the caller's thread when the
request is made (parameters, the prompt's type, chat rendering, the DLM settings);
``make_sequence()`` runs once the prompt is tokenized (token ids against the vocabulary, the
mask token, the room the request needs).

Block-diffusion settings a request leaves unset (``None``) are resolved in this order: the
request's ``DiffusionParams``, the engine's ``EngineConfig.diffusion``, the model config
(``mask_token_id``, ``bd_size`` -> block size and block-causal attention, ``shift``), the
tokenizer (its mask token), then the defaults below.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union
from typing import Sequence as Seq

import anyio

from .config import ModelConfig
from .errors import InvalidRequestError
from .params import DiffusionParams, EngineConfig, SamplingParams, validate
from .sequence import DlmSpec, Sequence
from .sub_block import CommitRates
from .tokenizer import Tokenizer

__all__ = ["Prompt", "Request", "RequestIntake", "DEFAULT_BLOCK_SIZE", "DEFAULT_SUB_BLOCK_SIZE",
           "DEFAULT_THRESHOLD", "DEFAULT_SHIFT", "DEFAULT_ATTENTION", "LONG_PROMPT_CHARS"]

Prompt = Union[str, Seq[int], Seq[Mapping[str, Any]]]

# DLM defaults, used when the request, the engine, the model and the tokenizer leave a field unset.
DEFAULT_BLOCK_SIZE = 32
DEFAULT_SUB_BLOCK_SIZE = 8      # used only where it divides the block; else the whole block
DEFAULT_THRESHOLD = 0.9
DEFAULT_SHIFT = True            # row i predicts token i + 1, as an AR model does
DEFAULT_ATTENTION: Literal["causal", "block"] = "causal"  # "block" when the model config names bd_size

# Prompts longer than this (characters) are tokenized in a worker thread, off the event loop.
LONG_PROMPT_CHARS = 4096
# Distinct DLM settings whose pass rates (sub_block_size="auto") are kept.
MAX_RATE_POOLS = 64

_T = TypeVar("_T")


@dataclass(frozen=True)
class Request:
    """A checked request, not yet tokenized: ``text`` to encode, or ``prompt_ids`` given."""

    request_id: str
    text: str | None
    prompt_ids: list[int] | None
    add_special_tokens: bool  # False for rendered chat: the template holds BOS already
    params: SamplingParams
    dlm: DlmSpec | None


class RequestIntake:
    """Checks requests against one model, tokenizer and engine configuration.

    ``kv_room``: KV positions the engine's cache holds; a request that needs more can never
    be admitted, so it is refused instead of waiting forever.
    """

    def __init__(self, model_config: ModelConfig, tokenizer: Tokenizer | None, config: EngineConfig,
                 kv_room: int):
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.config = config
        self.kv_room = kv_room
        self.eos_ids = frozenset(model_config.eos_token_ids) | frozenset(
            tokenizer.eos_token_ids if tokenizer is not None else ())
        # The model's mask token is never an output, in AR requests too.
        self.exclude_id = self._mask_id(None)
        self._rates: dict[DlmSpec, CommitRates] = {}

    # ----- when the request is made -----------------------------------------------------------
    def check(self, prompt: Prompt, params: SamplingParams | dict | None,
              diffusion: DiffusionParams | dict | bool | None, request_id: str) -> Request:
        sp = validate(params, SamplingParams, "sampling params")
        vocab = self.model_config.vocab_size
        for i, t in enumerate(sp.stop_token_ids):
            if t >= vocab:
                raise InvalidRequestError(f"params.stop_token_ids[{i}]: {t} outside the vocabulary [0, {vocab})")
        dlm = None
        if diffusion is not None and diffusion is not False:
            dp = validate(None if diffusion is True else diffusion, DiffusionParams, "diffusion params")
            dlm = self.resolve_dlm(dp, sp)
        if isinstance(prompt, str):
            self._need_tokenizer("a text prompt")
            return Request(request_id, prompt, None, True, sp, dlm)
        items = _prompt_items(prompt)
        if items and all(isinstance(m, Mapping) for m in items):
            tok = self._need_tokenizer("chat messages")
            try:
                text = tok.apply_chat_template(items)
            except ValueError as e:
                raise InvalidRequestError(f"prompt: {e}") from None
            return Request(request_id, text, None, False, sp, dlm)
        if not all(type(t) is int for t in items):  # else numpy integers, or a wrong type named here
            for i, t in enumerate(items):
                if isinstance(t, bool) or not isinstance(t, int) and not hasattr(t, "__index__"):
                    raise InvalidRequestError(f"prompt[{i}]: expected a token id (int), got {type(t).__name__}")
            items = [int(t) for t in items]
        return Request(request_id, None, items, False, sp, dlm)

    def resolve_dlm(self, dp: DiffusionParams, sp: SamplingParams) -> DlmSpec:
        """The request's block-diffusion settings, unset fields resolved (module docstring)."""
        eng, mc = self.config.diffusion, self.model_config
        mask = self._mask_id(dp)
        if mask is None:
            raise InvalidRequestError(
                "diffusion.mask_token_id: no mask token id is known (not in the request, the engine "
                "config, the model config, nor the tokenizer); block diffusion needs one")
        if not 0 <= mask < mc.vocab_size:
            raise InvalidRequestError(f"diffusion.mask_token_id: {mask} outside the vocabulary "
                                      f"[0, {mc.vocab_size})")
        if sp.temperature > 0:
            raise InvalidRequestError("params.temperature: block diffusion decodes greedily "
                                      "(confidence-ordered argmax); use temperature 0")

        def pick(name: str, model_value: _T | None, default: _T) -> _T:
            for value in (getattr(dp, name), getattr(eng, name), model_value):
                if value is not None:
                    return value
            return default

        block = pick("block_size", mc.bd_size, DEFAULT_BLOCK_SIZE)
        if block > mc.max_position_embeddings:
            raise InvalidRequestError(f"diffusion.block_size: {block} is larger than the model's context "
                                      f"({mc.max_position_embeddings} positions)")
        sub = self._sub_block(dp, block)
        attention = pick("attention", "block" if mc.bd_size else None, DEFAULT_ATTENTION)
        return DlmSpec(block_size=block, sub_block_size=block if sub == "auto" else sub,
                       threshold=pick("threshold", None, DEFAULT_THRESHOLD),
                       mask_token_id=mask, shift=pick("shift", mc.shift, DEFAULT_SHIFT),
                       attn_block=block if attention == "block" else 1,
                       provisional=dp.provisional or eng.provisional,
                       fuse_commit=dp.fuse_commit or eng.fuse_commit,
                       sub_block_auto=sub == "auto")

    def _sub_block(self, dp: DiffusionParams, block: int) -> int | Literal["auto"]:
        """The request's width if set (it must divide the block), else the engine's where it
        divides the block, else the default where that does."""
        sub, eng = dp.sub_block_size, self.config.diffusion.sub_block_size
        if sub is None:
            sub = eng if eng == "auto" or eng and block % eng == 0 else None
        if sub is None:
            return DEFAULT_SUB_BLOCK_SIZE if block % DEFAULT_SUB_BLOCK_SIZE == 0 else block
        if sub != "auto" and block % sub:
            raise InvalidRequestError(f"diffusion.sub_block_size: {sub} does not divide block_size {block}")
        return sub

    # ----- once tokenized ---------------------------------------------------------------------
    async def prompt_ids(self, request: Request) -> list[int]:
        if request.prompt_ids is not None:
            return request.prompt_ids
        assert request.text is not None and self.tokenizer is not None  # check() saw to both
        if len(request.text) > LONG_PROMPT_CHARS:
            return await anyio.to_thread.run_sync(self.tokenizer.encode, request.text,
                                                  request.add_special_tokens)
        return self.tokenizer.encode(request.text, request.add_special_tokens)

    def make_sequence(self, request: Request, ids: list[int]) -> Sequence:
        if not ids:
            raise InvalidRequestError("prompt: empty (at least one token is needed)")
        vocab = self.model_config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:  # also catches a tokenizer larger than the model's vocabulary
            bad = next(i for i, t in enumerate(ids) if not 0 <= t < vocab)
            raise InvalidRequestError(f"prompt[{bad}]: token id {ids[bad]} outside the vocabulary [0, {vocab})")
        sp, dlm = request.params, request.dlm
        mask = dlm.mask_token_id if dlm else self.exclude_id
        if mask is not None and mask in ids:
            raise InvalidRequestError(f"prompt[{ids.index(mask)}]: the mask token {mask} may not appear "
                                      "in a prompt (positions to fill are chosen by the decoder)")
        stop_ids = frozenset(sp.stop_token_ids) | (frozenset() if sp.ignore_eos else self.eos_ids)
        seq = Sequence(request.request_id, request.text, ids, sp, dlm, stop_ids, self.tokenizer,
                       -1 if mask is None else mask, self._commit_rates(dlm))
        max_pos = self.model_config.max_position_embeddings
        if seq.kv_positions > max_pos:
            raise InvalidRequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({sp.max_tokens}) needs {seq.kv_positions} "
                f"positions; the model has {max_pos}")
        if seq.kv_positions > self.kv_room:
            raise InvalidRequestError(f"the request needs {seq.kv_positions} KV positions; the cache "
                                      f"holds {self.kv_room} (raise kv_cache_tokens)")
        return seq

    def _commit_rates(self, dlm: DlmSpec | None) -> CommitRates | None:
        """The pass rates shared by ``sub_block_auto`` requests with these settings (the most
        recently used ``MAX_RATE_POOLS`` settings are kept: a client may send any thresholds)."""
        if dlm is None or not dlm.sub_block_auto:
            return None
        rates = self._rates.pop(dlm, None) or CommitRates(dlm.block_size)
        self._rates[dlm] = rates  # now the most recently used
        if len(self._rates) > MAX_RATE_POOLS:
            del self._rates[next(iter(self._rates))]
        return rates

    # ----- helpers ----------------------------------------------------------------------------
    def _need_tokenizer(self, what: str) -> Tokenizer:
        if self.tokenizer is None:
            raise InvalidRequestError(f"prompt: {what} needs a tokenizer (tokenizer.json in the model "
                                      "directory); pass token ids instead")
        return self.tokenizer

    def _mask_id(self, dp: DiffusionParams | None) -> int | None:
        for value in (dp.mask_token_id if dp else None, self.config.diffusion.mask_token_id,
                      self.model_config.mask_token_id,
                      self.tokenizer.mask_token_id if self.tokenizer else None):
            if value is not None:
                return value
        return None


def _prompt_items(prompt: object) -> list:
    """The items of a token-id or chat-message prompt; anything else is refused by type."""
    if isinstance(prompt, (bytes, bytearray, Mapping)) or not hasattr(prompt, "__iter__"):
        raise InvalidRequestError(f"prompt: expected text (str), token ids (list of int) or chat messages "
                                  f"(list of {{'role', 'content'}} dicts), got {type(prompt).__name__}")
    return list(prompt)
