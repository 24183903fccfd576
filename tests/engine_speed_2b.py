"""Load time and decode speed of BitNetBatchEngine on a random model with the real BitNet
b1.58 2B-4T shape (random ternary codes, random fp32 embeddings; nothing downloaded).

    python tests/engine_speed_2b.py [--threads 2] [--lm-head int8] [--tokens 32] [--rows 32,128,512]

Per-phase profile (perf records only the named phases: prefill, decode, block):

    mkfifo /tmp/ctl && perf record -D -1 --control fifo:/tmp/ctl -o /tmp/p.data python \
        tests/engine_speed_2b.py --perf-ctl /tmp/ctl --perf-phase block && perf report -i /tmp/p.data

Not a pytest test (it needs ~4 GB of memory and a minute); the numbers go in the reports.
"""
import argparse
import time
import numpy as np

from wrinklefree_rt import random_model
from wrinklefree_rt._core import BitNetBatchEngine, quantize_lm_head_i8, ternary_pack
from wrinklefree_rt.formats.ternary import TernaryWeight

SHAPE = random_model.SHAPES["2b"]


def random_tensors(seed=0, prepacked=False):
    """The 2B-shaped random model (wrinklefree_rt.random_model); with prepacked, handed over packed
    with its int8 head, as the runtime's own format does."""
    if not prepacked:
        return random_model.tensors(SHAPE, seed)
    t = {}
    for name, w in random_model.iter_tensors(SHAPE, seed):
        t[name] = TernaryWeight(ternary_pack(w.data), w.scale, w.shape) if isinstance(w, TernaryWeight) else w
    t["lm_head_i8"], t["lm_head_i8.scales"] = quantize_lm_head_i8(t["embed_tokens"])
    return t


class PerfControl:
    """Enables `perf record -D -1 --control fifo:CTL` only around the timed phases named by --perf-phase,
    so a profile shows one phase and not the model build."""

    def __init__(self, path, phases):
        self.fifo = open(path, "w") if path else None
        self.phases = set(phases.split(",")) if phases else set()

    def __call__(self, phase, on):
        if self.fifo and phase in self.phases:
            self.fifo.write("enable\n" if on else "disable\n")
            self.fifo.flush()


def timed(perf, phase, fn, repeat):
    """Median wall time of `repeat` calls of fn (after the caller's warm-up)."""
    times = []
    perf(phase, True)
    for _ in range(repeat):
        s = time.perf_counter()
        fn()
        times.append(time.perf_counter() - s)
    perf(phase, False)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lm-head", default="int8", choices=["int8", "fp32"])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--rows", default="128", help="comma-separated prefill sizes timed warm (median of 3)")
    ap.add_argument("--prepacked", action="store_true", help="hand over packed weights and the int8 head")
    ap.add_argument("--perf-ctl", help="a perf --control fifo: profile only the phases in --perf-phase")
    ap.add_argument("--perf-phase", default="", help="comma-separated: prefill, decode, block")
    args = ap.parse_args()
    perf = PerfControl(args.perf_ctl, args.perf_phase)
    rows = [int(r) for r in args.rows.split(",") if r]

    t0 = time.perf_counter()
    tensors = random_tensors(prepacked=args.prepacked)
    t1 = time.perf_counter()
    pages = (max(rows + [args.prompt + args.tokens + 1, 64]) + 31) // 32 + 2
    eng = BitNetBatchEngine(random_model.model_config(SHAPE), tensors, num_threads=args.threads, max_slots=4, kv_pages=pages,
                            lm_head=args.lm_head)
    t2 = time.perf_counter()
    print(f"isa={eng.isa} threads={eng.num_threads} lm_head={args.lm_head}")
    what = "prepacked, in place" if args.prepacked else "pack codes, quantize head"
    print(f"random tensors built in {t1 - t0:.1f} s; engine load ({what}) {t2 - t1:.2f} s")

    # Prefill of n rows into one slot, last row's argmax out; rewriting the same positions is a
    # valid step, so the first (cold) call warms up and the next ones are timed.
    for n in rows:
        slot = eng.alloc_sequence()
        eng.reserve(slot, n)
        args_n = (np.full(n, slot), np.arange(n), np.arange(1, n + 1) % SHAPE.vocab, [n - 1])
        eng.step(*args_n)
        t = timed(perf, "prefill", lambda: eng.step(*args_n), 3)
        print(f"prefill {n} rows: {t * 1e3:.0f} ms ({n / t:.1f} rows/s)")
        eng.free_sequence(slot)

    slot = eng.alloc_sequence()
    eng.reserve(slot, args.prompt + args.tokens + 1)
    prompt = np.arange(1, args.prompt + 1)
    tok, _, _ = eng.step(np.full(args.prompt, slot), np.arange(args.prompt), prompt, [args.prompt - 1])
    token = int(tok[0])
    times = []
    perf("decode", True)
    for pos in range(args.prompt, args.prompt + args.tokens):
        s = time.perf_counter()
        tok, _, _ = eng.step([slot], [pos], [token], [0])
        times.append(time.perf_counter() - s)
        token = int(tok[0])
    perf("decode", False)
    steady = np.median(times[2:])
    print(f"AR decode: {args.tokens} tokens, median {steady * 1e3:.1f} ms/token = {1 / steady:.2f} tok/s "
          f"(mean {len(times) / sum(times):.2f} tok/s)")
    eng.free_sequence(slot)

    # A DLM-style step: one 32-position block after a 32-position prompt block, every row asking
    # for argmax + probability.
    block = eng.alloc_sequence(32)
    eng.reserve(block, 64)
    eng.step(np.full(32, block), np.arange(32), np.arange(1, 33), [31])
    step = lambda: eng.step(np.full(32, block), np.arange(32, 64), np.full(32, 7), np.arange(32), exclude=0)
    step()
    t = timed(perf, "block", step, 3)
    print(f"block step (32 rows, 32 argmax outputs): median {t * 1e3:.0f} ms = {32 / t:.1f} rows/s")


if __name__ == "__main__":
    main()
