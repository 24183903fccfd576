# distutils: language = c++
# cython: language_level=3
"""BitNetBatchEngine: the C++ core (cpp/engine.h) as a Python class.

Arguments are converted to contiguous numpy arrays (no copy when they already are), the GIL is
released for every call into the engine, and C++ errors become the exceptions of
wrinklefree_rt.errors (ValueError for bad input). See docs/architecture.md for the contract.
"""
from cython.operator cimport dereference as deref
from libc.stdint cimport int8_t, int32_t, int64_t
from libcpp.string cimport string
from libcpp.vector cimport vector

import mmap
from enum import IntEnum

import numpy as np

from .config import ModelConfig
from .errors import KVCacheFullError, ModelFormatError, NoFreeSlotError, StepCancelledError

set_error_types(KVCacheFullError, NoFreeSlotError, StepCancelledError, ModelFormatError)


class OutMode(IntEnum):
    """What ``step`` computes for an output row (cpp/engine.h ``OutMode``)."""
    ARGMAX = <int>CppOutMode.Argmax
    SAMPLE = <int>CppOutMode.Sample
    LOGITS = <int>CppOutMode.Logits


class TensorDType(IntEnum):
    """How the core reads a tensor it is given (cpp/tensor.h ``TensorDType``)."""
    F32 = <int>CppTensorDType.F32
    TERNARY_CODES = <int>CppTensorDType.TernaryCodes
    TERNARY_PACKED = <int>CppTensorDType.TernaryPacked
    I8 = <int>CppTensorDType.I8

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


cdef ModelSpec _model_spec(config) except *:
    # ModelConfig.validate() is the one check of the fields and their relations; the core trusts it.
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a wrinklefree_rt.config.ModelConfig, got {type(config).__name__}")
    config.validate("<config given to BitNetBatchEngine>")
    cdef ModelSpec c
    try:
        c.vocab_size = config.vocab_size
        c.hidden_size = config.hidden_size
        c.intermediate_size = config.intermediate_size
        c.num_layers = config.num_hidden_layers
        c.num_heads = config.num_attention_heads
        c.num_kv_heads = config.num_key_value_heads
        c.head_dim = config.head_dim
        c.max_positions = config.max_position_embeddings
        c.rms_norm_eps = config.rms_norm_eps
        c.rope_theta = config.rope_theta
        c.tie_word_embeddings = config.tie_word_embeddings
    except OverflowError as e:  # validate() bounds every field, so this is a bug
        raise ValueError(f"config field out of range: {e}") from None
    return c


# Tensors the engine uses in place (cpp/tensor.h, TensorView); the rest it copies or packs.
_BORROWED_F32 = frozenset({"embed_tokens", "lm_head"})


def _release_file_pages(arr):
    """Drops from this process the pages of a read-only file mapping that lie wholly under `arr`
    (a numpy.memmap view the engine has copied): the page cache keeps them, so a later read of
    `arr` faults them back unchanged, but they no longer count in this process's memory twice."""
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    mm = root.base
    if not isinstance(mm, mmap.mmap) or root.flags.writeable:
        return
    start = arr.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (start + arr.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        mm.madvise(mmap.MADV_DONTNEED, first, last - first)


cdef _tensor_view(name, value, TensorView* view, list hold, list keep):
    """Fill `view` from a numpy array or a TernaryWeight. The array it points at goes into `hold`
    (alive while the engine loads) and, when the engine keeps using it, into `keep`."""
    if hasattr(value, "scale") and hasattr(value, "data") and not isinstance(value, np.ndarray):
        arr = np.asarray(value.data)
        view.scale = value.scale
        if arr.dtype == np.uint8:
            dtype = TensorDType.TERNARY_PACKED
        elif arr.dtype == np.int8:
            dtype = TensorDType.TERNARY_CODES
        else:
            raise ModelFormatError("<tensors given to BitNetBatchEngine>", name,
                                   f"ternary data of dtype {arr.dtype} (expected int8 codes or uint8 packed)")
    elif isinstance(value, np.ndarray):
        arr = value
        if arr.dtype == np.int8:
            dtype = TensorDType.I8
        elif arr.dtype.kind == "f":
            dtype = TensorDType.F32
            arr = arr.astype(np.float32, copy=False)
        else:
            raise ModelFormatError("<tensors given to BitNetBatchEngine>", name,
                                   f"dtype {arr.dtype} (expected float32, or int8 for lm_head_i8)")
    else:
        raise ModelFormatError("<tensors given to BitNetBatchEngine>", name,
                               f"{type(value).__name__} is neither a numpy array nor a TernaryWeight")
    # C-contiguous and aligned for its dtype: a memory-mapped file may hold a float tensor at an
    # offset that is not a multiple of 4 (SGLBITNT .bin does), and C++ reads it as float*.
    arr = np.require(arr, requirements=["C", "A"])
    hold.append(arr)
    view.dtype = <CppTensorDType><int>dtype
    if dtype == TensorDType.F32 and name in _BORROWED_F32:
        keep.append(arr)
    view.data = <const void*><size_t>arr.ctypes.data
    view.shape.clear()
    for d in arr.shape:
        view.shape.push_back(d)


def _int32_array(what, values, n):
    a = np.asarray(values)
    if a.ndim == 0 and n is not None:
        a = np.broadcast_to(a, (n,))
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise ValueError(f"{what} must be integers, got dtype {a.dtype}")
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        length = "" if n is None else f" of length {n}"
        raise ValueError(f"{what} must be a 1-D array{length}, got shape {a.shape}")
    if a.size and not np.can_cast(a.dtype, np.int32) and (int(a.min()) < _INT32_MIN or int(a.max()) > _INT32_MAX):
        raise ValueError(f"{what} holds values outside int32")
    return np.ascontiguousarray(a, dtype=np.int32)


def _float32_array(what, values, n):
    a = np.asarray(values, dtype=np.float32)
    if a.ndim == 0:
        a = np.broadcast_to(a, (n,))
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{what} must be a 1-D array of length {n}, got shape {a.shape}")
    return np.ascontiguousarray(a)


def quantize_lm_head_i8(w):
    """The int8 LM head the engine builds from a float (V, H) head: (q int8 (V, H), scales
    float32 (V,)) with w ~ q * scale per row. Converters store these as `lm_head_i8` and
    `lm_head_i8.scales`, which the engine then uses in place."""
    cdef const float[:, ::1] wv = np.ascontiguousarray(w, dtype=np.float32)
    cdef int V = wv.shape[0], H = wv.shape[1]
    if V < 1 or H < 1:
        raise ValueError(f"LM head must be a non-empty 2-D array, got shape {np.shape(w)}")
    q = np.empty((V, H), dtype=np.int8)
    scales = np.empty(V, dtype=np.float32)
    cdef int8_t[:, ::1] qv = q
    cdef float[::1] sv = scales
    with nogil:
        quantize_rows_i8_per_row(&wv[0, 0], H, 0, V, &qv[0, 0], &sv[0])
    return q, scales


def release_free_heap():
    """Return the heap's free pages to the OS; call it once the tensors a load staged are dropped."""
    release_free_heap_cpp()


cdef class BitNetBatchEngine:
    """One copy of a BitNet b1.58 model serving many sequences, one batched forward per step.

    config: a wrinklefree_rt.config.ModelConfig (validated here); tensors: canonical name ->
    numpy array or TernaryWeight (docs/architecture.md). float32 embed_tokens / lm_head and
    pre-packed ternary weights are used in place, not copied.
    """
    cdef CppEngine* _eng
    cdef list _keep
    cdef readonly object config
    cdef readonly int vocab_size

    def __cinit__(self):
        self._eng = NULL

    def __init__(self, config, tensors, int num_threads=0, int max_slots=64, int kv_pages=0,
                 int page_size=32, lm_head="int8", isa="", ternary_kernel="", ternary_packing="2bit"):
        if self._eng != NULL:
            raise RuntimeError("BitNetBatchEngine is already initialised")
        cdef ModelSpec cfg = _model_spec(config)
        cdef EngineOptions opt
        opt.num_threads = num_threads
        opt.max_slots = max_slots
        opt.kv_pages = kv_pages
        opt.page_size = page_size
        if lm_head == "int8":
            opt.lm_head = LmHeadPrecision.I8
        elif lm_head == "fp32":
            opt.lm_head = LmHeadPrecision.F32
        elif lm_head == "q4":
            opt.lm_head = LmHeadPrecision.Q4
        else:
            raise ValueError(f"lm_head must be 'int8', 'q4' or 'fp32', got {lm_head!r}")
        opt.isa = str(isa).encode()
        opt.ternary_kernel = str(ternary_kernel).encode()
        opt.ternary_packing = str(ternary_packing).encode()
        cdef vector[NamedTensor] named
        cdef NamedTensor nt
        hold, keep = [], []
        for name, value in tensors.items():
            nt.name = str(name).encode()
            _tensor_view(name, value, &nt.view, hold, keep)
            named.push_back(nt)
        with nogil:
            self._eng = new CppEngine(cfg, opt, named)
        kept = {id(arr) for arr in keep}
        for arr in hold:
            if id(arr) not in kept:
                _release_file_pages(arr)
        del hold
        self._keep = keep
        self.config = config
        self.vocab_size = cfg.vocab_size

    def __dealloc__(self):
        del self._eng

    cdef CppEngine* _live(self) except NULL:
        if self._eng == NULL:
            raise RuntimeError("BitNetBatchEngine is not initialised")
        return self._eng

    def alloc_sequence(self, int attn_block=1):
        """A free slot for a new sequence with attention block B (1 = causal). NoFreeSlotError when full."""
        cdef CppEngine* e = self._live()
        cdef int slot
        with nogil:
            slot = e.alloc_sequence(attn_block)
        return slot

    def reserve(self, int slot, int n_positions):
        """Pages for positions [0, n_positions) of `slot`. KVCacheFullError when the pool is short."""
        cdef CppEngine* e = self._live()
        with nogil:
            e.reserve(slot, n_positions)

    def can_reserve(self, int slot, int n_positions):
        cdef CppEngine* e = self._live()
        cdef bint ok
        with nogil:
            ok = e.can_reserve(slot, n_positions)
        return ok

    def free_sequence(self, int slot):
        """Returns the slot's pages; the slot forgets everything it held."""
        cdef CppEngine* e = self._live()
        with nogil:
            e.free_sequence(slot)

    def step(self, slots, positions, token_ids, out_rows, out_mode=None, exclude=None,
             temperature=None, top_k=None, top_p=None, uniform=None):
        """Run one batched forward over rows (slot, position, token).

        Returns (tokens int32 (n_out,), probs float32 (n_out,), logits float32 (n_logits, V) or
        None), one entry per output row; see docs/architecture.md for the modes.
        """
        cdef CppEngine* e = self._live()
        s = _int32_array("slots", slots, None)
        cdef int n = s.shape[0]
        p = _int32_array("positions", positions, n)
        t = _int32_array("token_ids", token_ids, n)
        r = _int32_array("out_rows", out_rows, None)
        cdef int n_out = r.shape[0]
        if out_mode is None:
            m = np.zeros(n_out, dtype=np.int8)
        else:
            m32 = _int32_array("out_mode", out_mode, n_out)
            if n_out and (m32.min() < OutMode.ARGMAX or m32.max() > OutMode.LOGITS):
                raise ValueError("out_mode values must be OutMode: 0 (argmax), 1 (sample) or 2 (logits)")
            m = m32.astype(np.int8)
        x = _int32_array("exclude", -1 if exclude is None else exclude, n_out)
        temp = _float32_array("temperature", 1.0 if temperature is None else temperature, n_out)
        k = _int32_array("top_k", 0 if top_k is None else top_k, n_out)
        tp = _float32_array("top_p", 1.0 if top_p is None else top_p, n_out)
        u = _float32_array("uniform", 0.0 if uniform is None else uniform, n_out)
        n_logits = int(np.count_nonzero(m == OutMode.LOGITS))
        tokens = np.empty(n_out, dtype=np.int32)
        probs = np.empty(n_out, dtype=np.float32)
        logits = np.empty((n_logits, self.vocab_size), dtype=np.float32) if n_logits else None

        cdef const int32_t[::1] sv = s, pv = p, tv = t, rv = r, xv = x, kv = k
        cdef const int8_t[::1] mv = m
        cdef const float[::1] tempv = temp, tpv = tp, uv = u
        cdef int32_t[::1] tokv = tokens
        cdef float[::1] probv = probs
        cdef float[:, ::1] logv
        cdef StepInput inp
        cdef StepOutput out
        inp.n_rows = n
        inp.n_out = n_out
        if n:
            inp.slot = &sv[0]
            inp.position = &pv[0]
            inp.token = &tv[0]
        if n_out:
            inp.out_row = &rv[0]
            inp.out_mode = <const CppOutMode*>&mv[0]
            inp.exclude = &xv[0]
            inp.temperature = &tempv[0]
            inp.top_k = &kv[0]
            inp.top_p = &tpv[0]
            inp.uniform = &uv[0]
            out.token = &tokv[0]
            out.prob = &probv[0]
        if n_logits:
            logv = logits
            out.logits = &logv[0, 0]
        with nogil:
            e.step(inp, out)
        return tokens, probs, logits

    def cancel(self):
        """Makes the running step raise StepCancelledError at its next layer boundary."""
        self._live().cancel()

    @property
    def pages_total(self):
        return self._live().pages_total()

    @property
    def pages_free(self):
        return self._live().pages_free()

    @property
    def page_size(self):
        return self._live().page_size()

    @property
    def slots_free(self):
        return self._live().slots_free()

    @property
    def num_threads(self):
        return self._live().num_threads()

    @property
    def isa(self):
        return self._live().isa().decode()

    @property
    def ternary_plan(self):
        """The ternary GEMM per row count ("1:tiles ... 32:lut32-avx2 ..."; "base3" for the dense
        kernel on base-3 weights; ternary_kernel and ternary_packing options)."""
        return self._live().ternary_plan().decode()

    @property
    def weight_bytes(self):
        """Bytes of the weights the engine copied into its own memory: the ternary layouts its
        kernels read (ternary_plan) and the int8 / q4 LM head; borrowed f32 tensors not counted."""
        return self._live().weight_bytes()


include "_kernels.pxi"
