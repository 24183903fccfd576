"""Seed files for the fuzz targets: real (tiny) checkpoints written by the same writers the
tests use (transformers + safetensors, the gguf package, the SGLBITNT writer, `convert`), and
the fixture's config and tokenizer config when ../shared/fixtures is present.

``write_seeds(dir)`` fills ``dir/<target>/`` and ``dir/companions/``; it needs torch and
transformers (the test extra), the fuzzing itself does not.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "i2s-tiny"
# One layer, hidden 256 (TQ1_0 and TQ2_0 pack rows in blocks of 256): every tensor kind is
# present and each file stays near 100 KB.
SHAPE = dict(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=16, max_position_embeddings=64)
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<mask>", "<|start_header_id|>",
           "<|end_header_id|>"]
TOKENIZER_CONFIGS = {
    "plain.json": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
    "added_tokens.json": {"bos_token": {"content": "<|begin_of_text|>", "lstrip": False},
                          "eos_token": {"content": "<|eot_id|>"}, "mask_token": "<mask>"},
    "llama3_template.json": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                             "chat_template": "{{ bos_token }}{% for m in messages %}<|start_header_id|>"
                                              "{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
                                              "{% endfor %}"},
}


def tiny_tokenizer_json() -> str:
    """A word-level tokenizer.json holding the special tokens the configs name (loads in
    microseconds, unlike a real 128k vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL + ["[UNK]", "hi", "be", "brief", "."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)
    return tok.to_str()


def write_seeds(out: Path) -> Path:
    out = Path(out)
    if (out / ".complete").is_file():
        return out
    import torch

    from tiny_models import make_hf_model, save_gguf, save_hf_model, save_sglbin
    from wrinklefree_rt.convert import convert

    torch.set_num_threads(1)
    for target in ("safetensors", "gguf", "sglbin", "wfrt", "config", "tokenizer_config", "companions"):
        (out / target).mkdir(parents=True, exist_ok=True)
    work = out / "work"
    model = make_hf_model(seed=7, **SHAPE)

    offline = save_hf_model(model, work / "offline", mode="offline", dtype="bfloat16")
    shutil.copy(offline / "config.json", out / "companions" / "config.json")
    shutil.copy(offline / "model.safetensors", out / "safetensors" / "offline-bf16.safetensors")
    f16 = save_hf_model(model, work / "offline-f16", mode="offline", dtype="float16")
    shutil.copy(f16 / "model.safetensors", out / "safetensors" / "offline-f16.safetensors")

    for ternary, embed in (("TQ2_0", "F16"), ("TQ1_0", "BF16")):  # norms are F32 in both
        save_gguf(model, out / "gguf" / f"{ternary}-{embed}.gguf", ternary_type=ternary, embed_type=embed)

    save_sglbin(model, out / "sglbin" / "f32.bin")
    save_sglbin(model, out / "sglbin" / "bf16-stored-scale.bin", float_dtype="bfloat16",
                unflagged_scale_stored=True)

    convert(offline, out / "wfrt" / "offline.wfrt")

    shutil.copy(offline / "config.json", out / "config" / "offline.json")
    online = save_hf_model(model, work / "online", config_overrides={"bd_size": 8, "mask_token_id": 15})
    shutil.copy(online / "config.json", out / "config" / "online-dlm.json")

    (out / "companions" / "tokenizer.json").write_text(tiny_tokenizer_json())
    for name, cfg in TOKENIZER_CONFIGS.items():
        (out / "tokenizer_config" / name).write_text(json.dumps(cfg))

    if FIXTURE.is_dir():  # a real converter's files, when this checkout sits beside them
        shutil.copy(FIXTURE / "hf" / "config.json", out / "config" / "i2s-tiny.json")
        shutil.copy(FIXTURE / "hf" / "tokenizer_config.json", out / "tokenizer_config" / "i2s-tiny.json")
    shutil.rmtree(work)
    (out / ".complete").touch()
    return out
