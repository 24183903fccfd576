"""Model checkpoints shipped inside the package.

``TINY_WEB_BIBLE``: a tiny BitNet b1.58 model (2.36 M parameters) trained by
``tools/train_tiny.py`` on the World English Bible (public domain), both as an autoregressive
LM and as a block-diffusion LM (causal attention, ``shift``). It continues text in that style;
it is not an assistant. An HF directory: config.json, offline-packed ternary safetensors,
tokenizer.json + tokenizer_config.json.
"""
from pathlib import Path

__all__ = ["TINY_WEB_BIBLE"]

TINY_WEB_BIBLE = Path(__file__).resolve().parent / "tiny-web-bible"
