"""Load time and resident memory of one model file, measured in a fresh process.

    python -m bench.probe ours|gguf PATH THREADS     -> one JSON line on stdout

``ours`` opens anything ``wrinklefree_rt.formats.load_model_dir`` reads (a converted ``.wfrt``
directory, a HF checkpoint); ``gguf`` opens a GGUF with llama.cpp.

Times the load (file open to a ready engine, imports excluded), then one decode step (which
touches every weight page of a memory-mapped file), reading VmRSS/VmHWM after each. The page
cache is whatever the machine holds (warm after the first run); it is not dropped.
"""
from __future__ import annotations

import json
import sys
import time


def _mem_mib() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


def probe_ours(path: str, threads: int) -> dict:
    from wrinklefree_rt._core import BitNetBatchEngine, release_free_heap
    from wrinklefree_rt.formats import load_model_dir

    base = _mem_mib()
    t0 = time.perf_counter()
    cfg, tensors = load_model_dir(path)
    eng = BitNetBatchEngine(cfg, tensors, num_threads=threads, max_slots=1, kv_pages=1)
    del tensors  # as Engine.from_pretrained does: whatever the engine still needs, it holds,
    release_free_heap()  # and the load's staging memory goes back to the OS
    load_s = time.perf_counter() - t0
    loaded = _mem_mib()
    slot = eng.alloc_sequence(1)
    eng.reserve(slot, 1)
    t1 = time.perf_counter()
    eng.step([slot], [0], [1000], [0])
    return {"load_s": load_s, "first_token_s": time.perf_counter() - t1, "before": base,
            "after_load": loaded, "after_first_token": _mem_mib()}


def probe_gguf(path: str, threads: int) -> dict:
    from .peer import LlamaPeer

    base = _mem_mib()
    p = LlamaPeer(path, threads, n_ctx=32)
    loaded = _mem_mib()
    t1 = time.perf_counter()
    p.llm.eval([1000])
    p._argmax_last()
    return {"load_s": p.load_s, "first_token_s": time.perf_counter() - t1, "before": base,
            "after_load": loaded, "after_first_token": _mem_mib()}


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in ("ours", "gguf"):
        raise SystemExit(__doc__)
    kind, path, threads = argv[0], argv[1], int(argv[2])
    result = (probe_ours if kind == "ours" else probe_gguf)(path, threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
