"""Tiny random HF BitNet models (the reference for every correctness test) and writers that
save them as real checkpoints: online (float master weights) or offline (transformers'
own ``pack_weights``), single file or sharded.

transformers only applies the BitNet quantizer inside ``from_pretrained`` (which also wants
accelerate); here the ``nn.Linear`` layers are swapped for transformers' own ``AutoBitLinear``
with ``online_quant=True`` directly, which is exactly what the quantizer installs.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear, pack_weights

__all__ = ["make_hf_model", "save_hf_model", "save_gguf", "save_sglbin", "pack_sgl_rows", "quantization_config",
           "TINY_DEFAULTS"]

TINY_DEFAULTS = dict(
    vocab_size=250,            # not a multiple of 32
    hidden_size=64,
    intermediate_size=160,     # not a multiple of 128
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=[2, 3],
    rope_theta=10000.0,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quantization_config(mode: str = "online", linear_class: str = "autobitlinear") -> dict:
    return {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode,
            "use_rms_norm": False, "rms_norm_eps": 1e-6, "modules_to_not_convert": ["lm_head"]}


def make_hf_model(seed: int = 0, storage_dtype: str = "float32", **overrides) -> BitNetForCausalLM:
    """A random fp32 ``BitNetForCausalLM`` with online AutoBitLinear layers and eager attention.

    ``overrides`` are BitNetConfig fields; ``head_dim`` sets ``hidden_size = heads * head_dim``.
    Norm weights are randomised too. With ``storage_dtype`` bf16/fp16 every parameter is rounded
    through that dtype, so that saving in it is lossless and the fp32 model stays the reference.
    """
    kw = dict(TINY_DEFAULTS)
    kw.update(overrides)
    theta = kw.pop("rope_theta")
    head_dim = kw.pop("head_dim", None)
    if head_dim is not None:
        kw["hidden_size"] = kw["num_attention_heads"] * head_dim
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    config = BitNetConfig(**kw)
    config.quantization_config = quantization_config("online")

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BitNetForCausalLM(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.startswith("lm_head"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            if storage_dtype != "float32":
                p.copy_(p.to(_DTYPES[storage_dtype]).float())
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            new = AutoBitLinear(module.in_features, module.out_features, bias=False, online_quant=True)
            with torch.no_grad():
                new.weight.copy_(module.weight)
            model.set_submodule(name, new.eval())
    model.set_attn_implementation("eager")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def _offline_linear(weight: torch.Tensor, linear_class: str) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' WeightQuant on fp32, then pack_weights; the scale in each convention."""
    w = weight.detach().float()
    inv = 1.0 / w.abs().mean().clamp(min=1e-5)
    q = (w * inv).round().clamp(-1, 1).to(torch.int8)
    packed = pack_weights(q.clone())
    # autobitlinear: output * weight_scale; legacy bitlinear: output / weight_scale.
    scale = (1.0 / inv) if linear_class == "autobitlinear" else inv
    return packed, scale.reshape(1)


def save_hf_model(model: BitNetForCausalLM, path: str | Path, *, mode: str = "online",
                  linear_class: str = "autobitlinear", dtype: str = "float32",
                  shards: int = 1, config_overrides: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (or ``shards`` files with the standard
    ``model.safetensors.index.json``). Offline: linear weights packed uint8 + weight_scale."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tdtype = _DTYPES[dtype]
    tensors: dict[str, torch.Tensor] = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if mode == "offline" and isinstance(module, AutoBitLinear) and name.endswith(".weight"):
            packed, scale = _offline_linear(p, linear_class)
            tensors[name] = packed.contiguous()
            tensors[name[:-len("weight")] + "weight_scale"] = scale.to(tdtype).contiguous()
        else:
            tensors[name] = p.detach().to(tdtype).contiguous().clone()

    cfg = model.config.to_dict()
    cfg["quantization_config"] = quantization_config(mode, linear_class)
    cfg["torch_dtype"] = dtype
    cfg.update(config_overrides or {})
    (path / "config.json").write_text(json.dumps(cfg, indent=2))

    names = list(tensors)
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    per = (len(names) + shards - 1) // shards
    weight_map = {}
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k * per:(k + 1) * per]}
        save_file(part, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path


def save_gguf(model: BitNetForCausalLM, path: str | Path, ternary_type: str = "F32",
              embed_type: str = "F32", metadata: dict | None = None, skip: tuple[str, ...] = (),
              override: dict | None = None, arch: str = "bitnet") -> Path:
    """Write the model as a llama.cpp ``bitnet`` GGUF with the ``gguf`` package: linears as
    ``q * s`` (transformers' online quantization) in ``ternary_type`` (F32, F16, TQ1_0, TQ2_0),
    embeddings in ``embed_type``, norms F32. ``metadata`` overrides/adds keys (None deletes);
    tensors named in ``skip`` are left out; ``override`` maps GGUF tensor names to float32 arrays
    stored as they are (replacing or adding tensors: hostile-file tests)."""
    import gguf

    cfg = model.config
    meta = {
        f"{arch}.context_length": cfg.max_position_embeddings, f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.block_count": cfg.num_hidden_layers, f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.attention.head_count": cfg.num_attention_heads,
        f"{arch}.attention.head_count_kv": cfg.num_key_value_heads,
        f"{arch}.rope.dimension_count": cfg.hidden_size // cfg.num_attention_heads,
        f"{arch}.rope.freq_base": float(cfg.rope_parameters["rope_theta"]),
        f"{arch}.attention.layer_norm_rms_epsilon": float(cfg.rms_norm_eps),
        f"{arch}.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.bos_token_id": cfg.bos_token_id,
        "tokenizer.ggml.eos_token_id": cfg.eos_token_id[0],
        "tokenizer.ggml.eot_token_id": cfg.eos_token_id[-1],
    }
    meta.update(metadata or {})
    w = gguf.GGUFWriter(str(path), arch=arch)
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, int(value))

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            gname = f"blk.{layer}.{parts[rest.rsplit('.', 1)[0]]}.weight"
        else:
            gname = names[name]
        if gname in skip or gname in (override or {}):
            continue
        x = p.detach().float()
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, AutoBitLinear):
            inv = 1.0 / x.abs().mean().clamp(min=1e-5)
            x = (x * inv).round().clamp(-1, 1) * (1.0 / inv)
            qtype = ternary_type
        else:
            qtype = "F32" if x.dim() == 1 else embed_type
        arr = x.numpy().astype(np.float32)
        gt = gguf.GGMLQuantizationType[qtype]
        if gt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, arr)
        elif gt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gname, arr.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(arr, gt), raw_dtype=gt)
    for gname, arr in (override or {}).items():
        if gname not in skip:
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def pack_sgl_rows(codes) -> np.ndarray:
    """int8 codes (out, in) -> WrinkleFree's sgl-kernel layout (out, in/4): in blocks of 128
    inputs, byte j holds inputs j, j+32, j+64, j+96 in bits 6-7, 4-5, 2-3, 0-1 as q + 1."""
    u = (np.asarray(codes, np.int16) + 1).astype(np.uint8)
    rows, k = u.shape
    blocks = u.reshape(rows, k // 128, 4, 32)
    packed = (blocks[:, :, 0] << 6) | (blocks[:, :, 1] << 4) | (blocks[:, :, 2] << 2) | blocks[:, :, 3]
    return packed.reshape(rows, k // 4).astype(np.uint8)


def save_sglbin(model: BitNetForCausalLM, path: str | Path, *, unflagged_scale_stored: bool = False,
                float_dtype: str = "float32", mutate=None) -> Path:
    """Write the model as a WrinkleFree ``SGLBITNT`` v1 ``.bin``: linears packed by
    ``pack_sgl_rows`` with the absmean scale (flag 1), everything else ``float_dtype`` (flag 0).
    ``unflagged_scale_stored`` picks the writer that stores an f32 scale even when the flag is 0.
    ``mutate(records)`` may edit the list of ``[name, dtype, dims, flag, scale, size, data]``."""
    from wrinklefree_rt.formats.ternary import absmean_quantize

    codes_of = {"float32": 1, "float16": 2, "bfloat16": 3}
    records = []
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if isinstance(model.get_submodule(name.rsplit(".", 1)[0]), AutoBitLinear):
            codes, s = absmean_quantize(p.detach().float().numpy())
            data = pack_sgl_rows(codes)
            records.append([name, 0, list(data.shape), 1, s, data.nbytes, data.tobytes()])
        else:
            t = p.detach().to(_DTYPES[float_dtype]).contiguous()
            raw = t.view(torch.int16).numpy().tobytes() if float_dtype == "bfloat16" else t.numpy().tobytes()
            records.append([name, codes_of[float_dtype], list(t.shape), 0, 0.0, len(raw), raw])
    if mutate:
        mutate(records)
    cfg = json.dumps(model.config.to_dict()).encode()
    out = bytearray(b"SGLBITNT" + struct.pack("<II", 1, len(cfg)) + cfg + struct.pack("<I", len(records)))
    for name, dtype, dims, flag, scale, size, data in records:
        nb = name.encode()
        out += struct.pack("<I", len(nb)) + nb + struct.pack("<II", dtype, len(dims))
        out += struct.pack(f"<{len(dims)}I", *dims) + struct.pack("<I", flag)
        if flag or unflagged_scale_stored:
            out += struct.pack("<f", scale)
        out += struct.pack("<Q", size) + data
    Path(path).write_bytes(bytes(out))
    return Path(path)
