"""``wrinklefree-rt verify``: this runtime's logits against HF transformers' ``BitNetForCausalLM``
on the same checkpoint, the answer to "my model outputs gibberish".

The reference is transformers (needs torch + transformers: ``pip install wrinklefree_rt[verify]``):
``from_pretrained`` of an HF directory (the model itself, or ``reference=`` another one, e.g. the
checkpoint a GGUF was made from), or, for a GGUF / ``.bin`` / ``.wfrt`` without a reference, the
file's own weights dequantized into an HF state dict (ternary codes as an offline
``AutoBitLinear`` with its scale, exactly the layer transformers loads from a packed checkpoint).

Both run a few prompts of fixed random token ids; the report gives the largest logit error as a
fraction of the logit scale (largest |reference logit|), the position from which a prompt parts,
and how often the top-1 token agrees. On a mismatch the model is cut after 1, 2, ... layers on
both sides (the rest through the final norm and the head) to name the first layer whose hidden
state diverges.

Parity: more than half of the prompts agree within the tolerance at every position. Not all of
them, because both sides round activations to int8 (``x * 127 / max|x|`` to the nearest integer)
and a value within float error of a half can round either way; in a small model one such flip
moves the logits of every later position by a few percent (the i2s-tiny fixture shows one in 72
positions, a q/k/v input 4e-6 of a step from the half). A real defect (a corrupted tensor, a
misread layout) parts every prompt, from its first positions.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from ._core import BitNetBatchEngine, OutMode
from .config import ModelConfig
from .formats import load_model_dir, single_file_format
from .formats.canonical import Tensor
from .formats.hf import hf_name
from .formats.ternary import TernaryWeight

__all__ = ["verify", "VerifyReport", "DEFAULT_TOLERANCE"]

# The project's parity bar (tests/test_reference_logits.py): max |diff| within 1e-3 of the logit scale.
DEFAULT_TOLERANCE = 1e-3


@dataclass
class PromptResult:
    tokens: int
    max_error: float
    logit_scale: float
    top1_agree: int
    first_divergent_position: int | None  # None: every position within the tolerance

    @property
    def relative_error(self) -> float:
        return self.max_error / self.logit_scale


@dataclass
class VerifyReport:
    model: str
    reference: str
    tolerance: float
    prompts: list[PromptResult] = field(default_factory=list)
    first_divergent_layer: int | None = None
    layer_errors: list[float] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        return max((p.relative_error for p in self.prompts), default=0.0)

    @property
    def prompts_agreeing(self) -> int:
        return sum(p.first_divergent_position is None for p in self.prompts)

    @property
    def top1(self) -> tuple[int, int]:
        return sum(p.top1_agree for p in self.prompts), sum(p.tokens for p in self.prompts)

    @property
    def ok(self) -> bool:
        return 2 * self.prompts_agreeing > len(self.prompts)

    def to_dict(self) -> dict[str, Any]:
        agree, total = self.top1
        return {**asdict(self), "relative_error": self.relative_error, "top1_agree": agree,
                "top1_total": total, "prompts_agreeing": self.prompts_agreeing, "parity": self.ok}


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise RuntimeError("verify needs torch and transformers (pip install 'wrinklefree_rt[verify]')") from None
    return torch


def _hf_config(cfg: ModelConfig, layers: int | None = None):
    from transformers import BitNetConfig
    d = cfg.to_hf_dict()
    d.pop("quantization_config", None)
    d["num_hidden_layers"] = layers if layers is not None else cfg.num_hidden_layers
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return BitNetConfig(**d)


def hf_model_from_tensors(cfg: ModelConfig, tensors: Mapping[str, Tensor], layers: int | None = None):
    """A float32 transformers ``BitNetForCausalLM`` holding ``tensors`` (the first ``layers``
    layers): ternary weights as offline ``AutoBitLinear`` (codes, ``weight_scale`` = s)."""
    torch = _torch()
    from transformers import BitNetForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    model = BitNetForCausalLM(_hf_config(cfg, layers)).float().eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            model.set_submodule(name, AutoBitLinear(module.in_features, module.out_features, bias=False,
                                                    online_quant=False).eval())
    state = {}
    for canon, t in tensors.items():
        if canon.startswith("layers.") and layers is not None and int(canon.split(".")[1]) >= layers:
            continue
        if canon not in _canonical_set(cfg):
            continue
        name = hf_name(canon)
        if isinstance(t, TernaryWeight):
            state[name] = torch.from_numpy(np.asarray(t.data, np.float32))
            state[name[:-len("weight")] + "weight_scale"] = torch.tensor([t.scale], dtype=torch.float32)
        else:
            state[name] = torch.from_numpy(np.array(t, np.float32))
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=False)
    model.set_attn_implementation("eager")
    return model


def _canonical_set(cfg: ModelConfig) -> set[str]:
    from .formats.canonical import canonical_names
    return set(canonical_names(cfg))


def hf_reference(path: str | os.PathLike):
    """transformers' own ``from_pretrained`` of an HF directory, float32, eager attention."""
    torch = _torch()
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.set_attn_implementation("eager")
    return model


def _hf_logits(model, prompt: np.ndarray, layers: int | None = None) -> np.ndarray:
    """Logits of every position; with ``layers`` the hidden state after that many layers goes
    through the final norm and the head instead."""
    torch = _torch()
    with torch.no_grad():
        ids = torch.from_numpy(prompt[None].astype(np.int64))
        if layers is None:
            return model(ids).logits[0].float().numpy()
        hidden = model(ids, output_hidden_states=True).hidden_states[layers]
        if layers == model.config.num_hidden_layers:
            return model(ids).logits[0].float().numpy()
        return model.lm_head(model.model.norm(hidden))[0].float().numpy()


def _engine_logits(cfg: ModelConfig, tensors: Mapping[str, Tensor], prompt: np.ndarray,
                   layers: int | None = None) -> np.ndarray:
    if layers is not None:
        cfg = msgspec.structs.replace(cfg, num_hidden_layers=layers)
        keep = _canonical_set(cfg)
        tensors = {k: v for k, v in tensors.items() if k in keep}
    return prefill_logits(BitNetBatchEngine(cfg, dict(tensors), num_threads=0, max_slots=1, lm_head="fp32"), prompt)


def prefill_logits(core: BitNetBatchEngine, prompt: np.ndarray) -> np.ndarray:
    """The logits of every position of one causal prefill of ``prompt`` on a fresh sequence of
    ``core`` (freed again)."""
    n = len(prompt)
    slot = core.alloc_sequence(1)
    try:
        core.reserve(slot, n)
        rows = np.arange(n, dtype=np.int32)
        _, _, logits = core.step(np.full(n, slot, np.int32), rows, prompt.astype(np.int32), rows,
                                 out_mode=np.full(n, OutMode.LOGITS, np.int32))
    finally:
        core.free_sequence(slot)
    return np.asarray(logits)


def verify(model: str | os.PathLike, reference: str | os.PathLike | None = None, *, prompts: int = 3,
           prompt_len: int = 24, seed: int = 0, tolerance: float = DEFAULT_TOLERANCE, i2s_layout: str = "x86",
           progress: Callable[..., Any] | None = None) -> VerifyReport:
    """Compare this runtime with transformers on ``model``; ``progress`` wraps iterables (tqdm)."""
    wrap: Callable[..., Any] = progress or (lambda it, **kw: it)
    cfg, tensors = load_model_dir(model, i2s_layout)
    if reference is not None:
        ref_name = f"transformers from_pretrained({reference})"
        ref = hf_reference(reference)
    elif Path(model).is_dir() and single_file_format(model) is None and (Path(model) / "config.json").is_file() \
            and not (Path(model) / "model.wfrt").is_file():
        ref_name = f"transformers from_pretrained({model})"
        ref = hf_reference(model)
    else:
        ref_name = "transformers BitNetForCausalLM holding this file's own weights"
        ref = hf_model_from_tensors(cfg, tensors)
    if ref.config.vocab_size != cfg.vocab_size or ref.config.num_hidden_layers != cfg.num_hidden_layers:
        raise ValueError(f"the reference has vocab {ref.config.vocab_size} and {ref.config.num_hidden_layers} "
                         f"layers, the model {cfg.vocab_size} and {cfg.num_hidden_layers}: not the same model")
    report = VerifyReport(str(model), ref_name, tolerance)
    rng = np.random.default_rng(seed)
    length = max(1, min(prompt_len, cfg.max_position_embeddings))
    batch = [rng.integers(0, cfg.vocab_size, length) for _ in range(prompts)]
    for prompt in wrap(batch, desc="prompts", unit="prompt"):
        got, want = _engine_logits(cfg, tensors, prompt), _hf_logits(ref, prompt)
        scale = float(np.abs(want).max())
        parted = np.flatnonzero(np.abs(got - want).max(-1) > tolerance * scale)
        report.prompts.append(PromptResult(
            tokens=len(prompt), max_error=float(np.abs(got - want).max()), logit_scale=scale,
            top1_agree=int((got.argmax(-1) == want.argmax(-1)).sum()),
            first_divergent_position=int(parted[0]) if parted.size else None))
    if not report.ok:  # a layer diverges when most prompts part there (the parity rule, per layer)
        for layers in wrap(range(1, cfg.num_hidden_layers + 1), desc="layers", unit="layer"):
            errors = []
            for prompt in batch:
                got, want = _engine_logits(cfg, tensors, prompt, layers), _hf_logits(ref, prompt, layers)
                errors.append(float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)))
            report.layer_errors.append(float(np.median(errors)))
            if 2 * sum(e > tolerance for e in errors) > len(errors):
                report.first_divergent_layer = layers - 1
                break
    return report


def format_report(r: VerifyReport) -> str:
    lines = [f"model:     {r.model}", f"reference: {r.reference}"]
    for i, p in enumerate(r.prompts):
        where = "agrees" if p.first_divergent_position is None else \
            f"parts from position {p.first_divergent_position}"
        lines.append(f"prompt {i}: {p.tokens} tokens, {where}; max |logit error| {p.max_error:.3g} = "
                     f"{p.relative_error:.3g} of the logit scale {p.logit_scale:.3g}, "
                     f"top-1 agrees at {p.top1_agree}/{p.tokens}")
    agree, total = r.top1
    lines.append(f"max logit error / logit scale: {r.relative_error:.3g} (tolerance {r.tolerance:g}); "
                 f"prompts within it: {r.prompts_agreeing}/{len(r.prompts)}")
    lines.append(f"top-1 agreement: {agree}/{total} ({100 * agree / max(total, 1):.1f}%)")
    if r.ok and r.prompts_agreeing < len(r.prompts):
        lines.append("(a prompt that parts late from an otherwise exact run is an int8 rounding near-tie)")
    if r.ok:
        lines.append("PARITY: OK")
    else:
        if r.first_divergent_layer is not None:
            lines.append(f"first divergent layer: {r.first_divergent_layer} (median relative logit error "
                         f"{r.layer_errors[-1]:.3g} after it)")
        else:
            lines.append("first divergent layer: none (every layer agrees; the final norm or the head differs)")
        lines.append("PARITY: MISMATCH")
    return "\n".join(lines)
