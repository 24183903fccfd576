"""The peer: llama.cpp through ``llama-cpp-python`` (an optional bench extra), on the GGUF that
bench/gguf_writer.py writes from the same synthetic weights.

Both sides do the same work per figure: ``tg`` decodes one token per forward and picks the
argmax of its logits (here in numpy, ~30 us against a ~40 ms step); ``pp`` evaluates the whole
prompt in one batch and needs only the last row's logits.
"""
from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np

from wrinklefree_rt.measure import prompt_ids

try:
    import llama_cpp
except ImportError:  # reported by available()
    llama_cpp = None

__all__ = ["available", "versions", "LlamaPeer"]


def available() -> bool:
    return llama_cpp is not None


def versions() -> dict:
    """What the package reports. The PyPI sdist builds llama.cpp without git metadata, so its
    build number is not compiled in; ggml's commit id is, and identifies the source."""
    if llama_cpp is None:
        return {"llama_cpp_python": None}
    lib = Path(llama_cpp.__file__).parent / "lib"
    out = {"llama_cpp_python": llama_cpp.__version__,
           "llama_version": llama_cpp.llama_version().decode(),
           "system_info": llama_cpp.llama_print_system_info().decode().strip()}
    try:
        ggml = ctypes.CDLL(str(lib / "libggml-base.so"))
        for name in ("ggml_version", "ggml_commit"):
            fn = getattr(ggml, name)
            fn.restype = ctypes.c_char_p
            out[name] = fn().decode()
    except (OSError, AttributeError) as e:
        out["ggml_version_error"] = str(e)
    return out


def prompt(n: int) -> list[int]:
    return prompt_ids(n)


class LlamaPeer:
    def __init__(self, path: Path, threads: int, n_ctx: int = 1024, n_batch: int = 512):
        if llama_cpp is None:
            raise RuntimeError("llama-cpp-python is not installed (pip install llama-cpp-python)")
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch,
                                   n_ubatch=n_batch, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)
        self.load_s = time.perf_counter() - t0
        self.n_vocab = self.llm.n_vocab()

    def _argmax_last(self) -> int:
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def tg(self, prompt_len: int, gen: int) -> float:
        """Seconds for ``gen`` single-token decode steps after a ``prompt_len`` prompt."""
        self.llm.reset()
        self.llm.eval(prompt(prompt_len))
        tok = self._argmax_last()
        t0 = time.perf_counter()
        for _ in range(gen):
            self.llm.eval([tok])
            tok = self._argmax_last()
        return time.perf_counter() - t0

    def pp(self, n: int) -> float:
        """Seconds to evaluate an ``n``-token prompt (one batch up to n_batch) from empty."""
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt(n))
        self._argmax_last()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.llm.close()
