"""Load time and decode speed of BitNetBatchEngine on a random model with the real BitNet
b1.58 2B-4T shape (random ternary codes, random fp32 embeddings; nothing downloaded).

    python tests/engine_speed_2b.py [--threads 2] [--lm-head int8] [--tokens 32]

Not a pytest test (it needs ~4 GB of memory and a minute); the numbers go in the reports.
"""
import argparse
import time
from types import SimpleNamespace

import numpy as np

from wrinklefree_rt._core import BitNetBatchEngine, quantize_lm_head_i8, ternary_pack
from wrinklefree_rt.formats.ternary import TernaryWeight

SHAPE = SimpleNamespace(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                        num_attention_heads=20, num_key_value_heads=5, head_dim=128, rms_norm_eps=1e-5,
                        rope_theta=500000.0, max_position_embeddings=4096,
                        tie_word_embeddings=True)


def random_tensors(cfg, seed=0, prepacked=False):
    rng = np.random.default_rng(seed)
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    QD, KD = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    shapes = {"q_proj": (QD, H), "k_proj": (KD, H), "v_proj": (KD, H), "o_proj": (H, QD),
              "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    # One random code matrix per shape, shared by the layers; every layer still gets its own packed
    # copy (packed by the engine, or here with prepacked, as the runtime's own format hands them
    # over), so decode reads the real 2B byte count.
    codes = {}
    for name, shape in shapes.items():
        if shape not in codes:
            codes[shape] = rng.integers(-1, 2, size=shape, dtype=np.int8)
    t = {"embed_tokens": rng.standard_normal((V, H), dtype=np.float32),
         "norm": np.ones(H, np.float32)}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        for n, size in (("input_layernorm", H), ("post_attention_layernorm", H), ("attn_sub_norm", H),
                        ("ffn_sub_norm", I)):
            t[p + n] = np.ones(size, np.float32)
        for name, shape in shapes.items():
            data = ternary_pack(codes[shape]) if prepacked else codes[shape]
            t[p + name] = TernaryWeight(data, 0.01, shape)
    if prepacked:
        t["lm_head_i8"], t["lm_head_i8.scales"] = quantize_lm_head_i8(t["embed_tokens"])
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lm-head", default="int8", choices=["int8", "fp32"])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--prepacked", action="store_true", help="hand over packed weights and the int8 head")
    args = ap.parse_args()

    t0 = time.perf_counter()
    tensors = random_tensors(SHAPE, prepacked=args.prepacked)
    t1 = time.perf_counter()
    eng = BitNetBatchEngine(SHAPE, tensors, num_threads=args.threads, max_slots=4, kv_pages=64,
                            lm_head=args.lm_head)
    t2 = time.perf_counter()
    print(f"isa={eng.isa} threads={eng.num_threads} lm_head={args.lm_head}")
    what = "prepacked, in place" if args.prepacked else "pack codes, quantize head"
    print(f"random tensors built in {t1 - t0:.1f} s; engine load ({what}) {t2 - t1:.2f} s")

    slot = eng.alloc_sequence()
    eng.reserve(slot, args.prompt + args.tokens + 1)
    prompt = np.arange(1, args.prompt + 1)
    t0 = time.perf_counter()
    tok, _, _ = eng.step(np.full(args.prompt, slot), np.arange(args.prompt), prompt, [args.prompt - 1])
    t1 = time.perf_counter()
    print(f"prefill {args.prompt} rows: {t1 - t0:.2f} s ({args.prompt / (t1 - t0):.1f} rows/s)")
    token = int(tok[0])
    times = []
    for pos in range(args.prompt, args.prompt + args.tokens):
        s = time.perf_counter()
        tok, _, _ = eng.step([slot], [pos], [token], [0])
        times.append(time.perf_counter() - s)
        token = int(tok[0])
    steady = np.median(times[2:])
    print(f"AR decode: {args.tokens} tokens, median {steady * 1e3:.1f} ms/token = {1 / steady:.2f} tok/s "
          f"(mean {len(times) / sum(times):.2f} tok/s)")

    # A DLM-style step: one 32-position block, every row asking for argmax + probability.
    block = eng.alloc_sequence(32)
    eng.reserve(block, 64)
    eng.step(np.full(32, block), np.arange(32), prompt.repeat(2), [31])
    times = []
    for _ in range(3):
        s = time.perf_counter()
        eng.step(np.full(32, block), np.arange(32, 64), np.full(32, 7), np.arange(32), exclude=0)
        times.append(time.perf_counter() - s)
    print(f"block step (32 rows, 32 argmax outputs): median {np.median(times) * 1e3:.0f} ms "
          f"= {32 / np.median(times):.1f} rows/s")


if __name__ == "__main__":
    main()
