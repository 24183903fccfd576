# Kernel bindings for tests and benchmarks (included at the end of _core.pyx).
# Each function takes a kernel table name ("generic", "avx2", ...; see kernel_names()) so the
# tests can hold every ISA variant to the generic one. Not part of the public API.

from libc.stdint cimport int8_t as _k_i8, uint8_t as _k_u8, int32_t as _k_i32
from libcpp.string cimport string as _k_string
from libcpp.vector cimport vector as _k_vector
import numpy as _k_np

cdef extern from "kernels/ternary.h" namespace "wfrt" nogil:
    ctypedef void (*_KQuantizeFn)(const float*, int, int, _k_i8*, float*, _k_i32*) noexcept nogil
    ctypedef void (*_KTernaryFn)(const _k_u8*, int, int, const _k_i8*, int, int, _k_i32*, int, int, int) noexcept nogil
    ctypedef void (*_KI8Fn)(const _k_i8*, int, int, const _k_i8*, int, int, _k_i32*, int, int, int) noexcept nogil
    ctypedef void (*_KQ4Fn)(const _k_u8*, const float*, int, int, const _k_i8*, int, int, float*, int, int, int) noexcept nogil
    ctypedef void (*_KF32Fn)(const float*, int, int, const float*, int, int, float*, int, int, int) noexcept nogil
    ctypedef void (*_KAttnScoresFn)(const float*, int, int, int, const float*, int, int, float, float*, int) noexcept nogil
    ctypedef void (*_KAttnAccFn)(const float*, int, int, int, const float*, int, int, float*, int) noexcept nogil
    ctypedef double (*_KExpSumFn)(const float*, int, float, float) noexcept nogil
    ctypedef void (*_KRelu2Fn)(float*, const float*, int) noexcept nogil
    ctypedef void (*_KSoftmaxFn)(float*, int) noexcept nogil
    ctypedef double (*_KSumSqFn)(const float*, int) noexcept nogil
    cdef struct _KTable "wfrt::KernelTable":
        const char* name
        _KQuantizeFn quantize_row_i8
        _KTernaryFn ternary_gemm
        _KTernaryFn base3_gemm
        _KI8Fn i8_gemm
        _KQ4Fn q4_gemm
        _KF32Fn f32_gemm
        _KAttnScoresFn attn_scores
        _KAttnAccFn attn_accumulate
        _KExpSumFn exp_sum
        _KRelu2Fn relu2_mul
        _KSoftmaxFn softmax
        _KSumSqFn sum_squares
    size_t _k_packed_bytes "wfrt::ternary_packed_bytes"(int N, int K)
    void _k_pack "wfrt::ternary_pack"(const _k_i8* q, int N, int K, _k_u8* out) except +
    void _k_unpack "wfrt::ternary_unpack"(const _k_u8* packed, int N, int K, _k_i8* q)
    int _k_padded_k "wfrt::ternary_padded_k"(int K)
    int _k_layout_version "wfrt::ternary_layout_version"()
    int _k_q4_groups "wfrt::q4_groups"(int K)
    size_t _k_q4_code_bytes "wfrt::q4_code_bytes"(int N, int K)
    size_t _k_q4_scale_count "wfrt::q4_scale_count"(int N, int K)
    void _k_q4_pack_rows "wfrt::q4_pack_rows"(const float* w, int N, int K, int n0, int n1, _k_u8* codes,
                                              float* scales) except +
    void _k_q4_unpack "wfrt::q4_unpack"(const _k_u8* codes, const float* scales, int N, int K, _k_i8* q, float* d)
    const _KTable& _k_kernels "wfrt::kernels"() except +
    _k_vector[const _KTable*] _k_supported "wfrt::supported_kernels"()
    const _KTable* _k_by_name "wfrt::kernels_by_name"(const _k_string& name)

cdef extern from "kernels/lut.h" namespace "wfrt" nogil:
    cdef struct _KLut "wfrt::LutKernel":
        const char* name
        int tokens
        _KTernaryFn gemm
    cdef struct _KLutSet "wfrt::LutKernelSet":
        const _KLut* kernels
        int count
    size_t _k_lut_bytes "wfrt::lut_packed_bytes"(int N, int K)
    void _k_lut_pack "wfrt::lut_pack"(const _k_i8* q, int N, int K, _k_u8* out) except +
    void _k_lut_from_tiles "wfrt::lut_pack_from_tiles"(const _k_u8* tiles, int N, int K, _k_u8* out)
    void _k_lut_unpack "wfrt::lut_unpack"(const _k_u8* packed, int N, int K, _k_i8* q)
    _KLutSet _k_lut_kernels "wfrt::lut_kernels"(const _KTable& table)
    const _KLut* _k_lut_by_name "wfrt::lut_kernel_by_name"(const _KTable& table, const char* name)

cdef extern from "kernels/base3.h" namespace "wfrt" nogil:
    size_t _k_base3_bytes "wfrt::base3_packed_bytes"(int N, int K)
    void _k_base3_pack "wfrt::base3_pack"(const _k_i8* q, int N, int K, _k_u8* out) except +
    void _k_base3_from_tiles "wfrt::base3_pack_from_tiles"(const _k_u8* tiles, int N, int K, int G0, int G1,
                                                           _k_u8* out)
    void _k_base3_unpack "wfrt::base3_unpack"(const _k_u8* packed, int N, int K, _k_i8* q)
    int _k_base3_groups "wfrt::base3_groups"(int N)


def kernel_names():
    """Names of the kernel tables this CPU runs, generic first."""
    return [t.name.decode() for t in _k_supported()]


def default_kernel_name():
    """The table the engine uses by default (the best this CPU runs, or WFRT_ISA)."""
    return _k_kernels().name.decode()


def ternary_layout_version():
    return _k_layout_version()


def ternary_padded_k(int K):
    return _k_padded_k(K)


def ternary_packed_bytes(int N, int K):
    """Bytes ternary_pack writes for an (N, K) matrix (the packed file format checks sizes)."""
    _k_check_dims(N=N, K=K)
    return _k_packed_bytes(N, K)


cdef const _KTable* _k_table(name) except NULL:
    cdef const _KTable* t = _k_by_name(str(name).encode())
    if t == NULL:
        raise ValueError(f"kernel table {name!r} is unknown or not supported by this CPU "
                         f"(supported: {', '.join(kernel_names())})")
    return t


cdef tuple _k_range(int N, n0, n1):
    cdef int a = 0 if n0 is None else n0
    cdef int b = N if n1 is None else n1
    if not 0 <= a <= b <= N:
        raise ValueError(f"output row range [{a}, {b}) is not inside [0, {N})")
    return a, b


def _k_check_dims(**dims):
    for what, v in dims.items():
        if v < 1:
            raise ValueError(f"{what} must be positive, got {v}")


def ternary_pack(codes):
    """Packs an (N, K) int8 array of codes in {-1, 0, 1} into the kernels' layout (1-D uint8)."""
    cdef const _k_i8[:, ::1] q = _k_np.ascontiguousarray(codes, dtype=_k_np.int8)
    cdef int N = q.shape[0], K = q.shape[1]
    _k_check_dims(N=N, K=K)
    out = _k_np.empty(_k_packed_bytes(N, K), dtype=_k_np.uint8)
    cdef _k_u8[::1] o = out
    _k_pack(&q[0, 0], N, K, &o[0])
    return out


cdef const _k_u8[::1] _k_packed(packed, int N, int K) except *:
    _k_check_dims(N=N, K=K)
    cdef const _k_u8[::1] w = _k_np.ascontiguousarray(packed, dtype=_k_np.uint8).reshape(-1)
    if <size_t>w.shape[0] != _k_packed_bytes(N, K):
        raise ValueError(f"packed ternary weights hold {w.shape[0]} bytes, expected "
                         f"{_k_packed_bytes(N, K)} for N={N}, K={K}")
    return w


def ternary_unpack(packed, int N, int K):
    """Inverse of ternary_pack: the (N, K) int8 codes."""
    cdef const _k_u8[::1] w = _k_packed(packed, N, K)
    out = _k_np.empty((N, K), dtype=_k_np.int8)
    cdef _k_i8[:, ::1] o = out
    _k_unpack(&w[0], N, K, &o[0, 0])
    return out


def quantize_row_i8(name, x, K_padded=None):
    """Per-row absmax int8 quantization of a 1-D float32 row: (xq int8 (K_padded,), scale, sum)."""
    cdef const _KTable* t = _k_table(name)
    cdef const float[::1] xv = _k_np.ascontiguousarray(x, dtype=_k_np.float32).reshape(-1)
    cdef int K = xv.shape[0]
    _k_check_dims(K=K)
    cdef int Kp = _k_padded_k(K) if K_padded is None else K_padded
    if Kp < K:
        raise ValueError(f"K_padded={Kp} is smaller than the row length {K}")
    out = _k_np.empty(Kp, dtype=_k_np.int8)
    cdef _k_i8[::1] o = out
    cdef float scale = 0
    cdef _k_i32 s = 0
    with nogil:
        t.quantize_row_i8(&xv[0], K, Kp, &o[0], &scale, &s)
    return out, scale, s


# The kernels' function pointer type, declared outside the extern block (so not in namespace wfrt).
ctypedef void (*_KGemmFn)(const _k_u8*, int, int, const _k_i8*, int, int, _k_i32*, int, int, int) noexcept nogil


cdef tuple _k_ternary_io(int N, int K, X, out):
    """The checked (M, >= padded K) int8 activations and the (M, N) int32 output array."""
    x = _k_np.ascontiguousarray(X, dtype=_k_np.int8)
    if x.ndim != 2:
        raise ValueError(f"activations must be 2-D, got shape {x.shape}")
    _k_check_dims(M=x.shape[0])
    if x.shape[1] < _k_padded_k(K):
        raise ValueError(f"activations have {x.shape[1]} columns, the kernels need {_k_padded_k(K)} (K={K} zero padded)")
    y = _k_np.zeros((x.shape[0], N), dtype=_k_np.int32) if out is None else out
    if y.shape != (x.shape[0], N):
        raise ValueError(f"out has shape {tuple(y.shape)}, expected {(x.shape[0], N)}")
    return x, y


cdef object _k_ternary_call(_KGemmFn fn, const _k_u8[::1] w, int N, int K, X, out, n0, n1):
    x_arr, y = _k_ternary_io(N, K, X, out)
    cdef const _k_i8[:, ::1] x = x_arr
    cdef _k_i32[:, ::1] yv = y
    cdef int M = x.shape[0], ldx = x.shape[1], a, b
    a, b = _k_range(N, n0, n1)
    with nogil:
        fn(&w[0], N, K, &x[0, 0], ldx, M, &yv[0, 0], N, a, b)
    return y


def ternary_gemm(name, packed, int N, int K, X, out=None, n0=None, n1=None):
    """Y (M, N) int32 = sum_k u[n, k] * X[m, k] with u = code + 1, for rows n in [n0, n1)
    (others are left as they are in `out`, zero when it is not given). X: (M, >= padded K) int8."""
    cdef const _KTable* t = _k_table(name)
    return _k_ternary_call(t.ternary_gemm, _k_packed(packed, N, K), N, K, X, out, n0, n1)


def lut_kernel_names(name):
    """The LUT kernels of kernel table `name`'s ISA (cpp/kernels/lut.h), narrowest token block first."""
    cdef _KLutSet s = _k_lut_kernels(_k_table(name)[0])
    return [s.kernels[i].name.decode() for i in range(s.count)]


ctypedef size_t (*_KBytesFn)(int, int) noexcept nogil
ctypedef void (*_KPackFn)(const _k_i8*, int, int, _k_u8*) except + nogil


cdef object _k_pack_as(codes, _KBytesFn nbytes, _KPackFn pack):
    """An (N, K) int8 array of codes in {-1, 0, 1} packed by `pack` (1-D uint8 of nbytes(N, K))."""
    cdef const _k_i8[:, ::1] q = _k_np.ascontiguousarray(codes, dtype=_k_np.int8)
    cdef int N = q.shape[0], K = q.shape[1]
    _k_check_dims(N=N, K=K)
    out = _k_np.empty(nbytes(N, K), dtype=_k_np.uint8)
    cdef _k_u8[::1] o = out
    pack(&q[0, 0], N, K, &o[0])
    return out


cdef const _k_u8[::1] _k_packed_as(packed, int N, int K, _KBytesFn nbytes, what) except *:
    _k_check_dims(N=N, K=K)
    cdef const _k_u8[::1] w = _k_np.ascontiguousarray(packed, dtype=_k_np.uint8).reshape(-1)
    if <size_t>w.shape[0] != nbytes(N, K):
        raise ValueError(f"{what} ternary weights hold {w.shape[0]} bytes, expected {nbytes(N, K)} for N={N}, K={K}")
    return w


def lut_pack(codes):
    """Packs an (N, K) int8 array of codes in {-1, 0, 1} into the LUT kernels' layout (1-D uint8)."""
    return _k_pack_as(codes, _k_lut_bytes, _k_lut_pack)


def lut_pack_from_tiles(packed, int N, int K):
    """The LUT layout of a matrix packed by ternary_pack (what the engine builds at load)."""
    cdef const _k_u8[::1] w = _k_packed(packed, N, K)
    out = _k_np.empty(_k_lut_bytes(N, K), dtype=_k_np.uint8)
    cdef _k_u8[::1] o = out
    _k_lut_from_tiles(&w[0], N, K, &o[0])
    return out


cdef const _k_u8[::1] _k_lut_packed(packed, int N, int K) except *:
    return _k_packed_as(packed, N, K, _k_lut_bytes, "LUT-packed")


def lut_unpack(packed, int N, int K):
    """Inverse of lut_pack: the (N, K) int8 codes."""
    cdef const _k_u8[::1] w = _k_lut_packed(packed, N, K)
    out = _k_np.empty((N, K), dtype=_k_np.int8)
    cdef _k_i8[:, ::1] o = out
    _k_lut_unpack(&w[0], N, K, &o[0, 0])
    return out


def lut_gemm(name, kernel, packed, int N, int K, X, out=None, n0=None, n1=None):
    """ternary_gemm's result from LUT kernel `kernel` (one of lut_kernel_names(name), or
    "lut-generic") on weights packed by lut_pack."""
    cdef const _KTable* t = _k_table(name)
    cdef const _KLut* k = _k_lut_by_name(t[0], str(kernel).encode())
    if k == NULL:
        raise ValueError(f"LUT kernel {kernel!r} is unknown for table {name!r} "
                         f"(known: {', '.join(lut_kernel_names(name) + ['lut-generic'])})")
    return _k_ternary_call(k.gemm, _k_lut_packed(packed, N, K), N, K, X, out, n0, n1)


def base3_packed_bytes(int N, int K):
    """Bytes base3_pack writes for an (N, K) matrix: 1.6 bits a code over whole 80-row groups."""
    _k_check_dims(N=N, K=K)
    return _k_base3_bytes(N, K)


def base3_pack(codes):
    """Packs an (N, K) int8 array of codes in {-1, 0, 1} into the base-3 layout (5 codes a byte)."""
    return _k_pack_as(codes, _k_base3_bytes, _k_base3_pack)


def base3_pack_from_tiles(packed, int N, int K):
    """The base-3 layout of a matrix packed by ternary_pack (what the engine builds at load)."""
    cdef const _k_u8[::1] w = _k_packed(packed, N, K)
    out = _k_np.empty(_k_base3_bytes(N, K), dtype=_k_np.uint8)
    cdef _k_u8[::1] o = out
    _k_base3_from_tiles(&w[0], N, K, 0, _k_base3_groups(N), &o[0])
    return out


def base3_unpack(packed, int N, int K):
    """Inverse of base3_pack: the (N, K) int8 codes."""
    cdef const _k_u8[::1] w = _k_packed_as(packed, N, K, _k_base3_bytes, "base-3")
    out = _k_np.empty((N, K), dtype=_k_np.int8)
    cdef _k_i8[:, ::1] o = out
    _k_base3_unpack(&w[0], N, K, &o[0, 0])
    return out


def base3_gemm(name, packed, int N, int K, X, out=None, n0=None, n1=None):
    """ternary_gemm's result from table `name`'s base3_gemm on weights packed by base3_pack."""
    cdef const _KTable* t = _k_table(name)
    return _k_ternary_call(t.base3_gemm, _k_packed_as(packed, N, K, _k_base3_bytes, "base-3"), N, K, X, out, n0, n1)


def i8_gemm(name, W, X, out=None, n0=None, n1=None):
    """Y (M, N) int32 = X (M, K) int8 @ W (N, K) int8 transposed, for rows n in [n0, n1).
    X must lie in [-127, 127]."""
    cdef const _KTable* t = _k_table(name)
    cdef const _k_i8[:, ::1] w = _k_np.ascontiguousarray(W, dtype=_k_np.int8)
    cdef const _k_i8[:, ::1] x = _k_np.ascontiguousarray(X, dtype=_k_np.int8)
    cdef int N = w.shape[0], K = w.shape[1], M = x.shape[0], ldx = x.shape[1]
    _k_check_dims(N=N, K=K, M=M)
    if ldx < K:
        raise ValueError(f"activations have {ldx} columns, weights have K={K}")
    y = _k_np.zeros((M, N), dtype=_k_np.int32) if out is None else out
    cdef _k_i32[:, ::1] yv = y
    if yv.shape[0] != M or yv.shape[1] != N:
        raise ValueError(f"out has shape {tuple(y.shape)}, expected {(M, N)}")
    cdef int a, b
    a, b = _k_range(N, n0, n1)
    with nogil:
        t.i8_gemm(&w[0, 0], N, K, &x[0, 0], ldx, M, &yv[0, 0], N, a, b)
    return y


def q4_sizes(int N, int K):
    """(code bytes, scale count) of the q4 layout of an (N, K) matrix."""
    _k_check_dims(N=N, K=K)
    return _k_q4_code_bytes(N, K), _k_q4_scale_count(N, K)


def q4_pack(W):
    """The q4 layout of a float (N, K) matrix: (codes uint8 (q4_code_bytes,), scales float32)."""
    cdef const float[:, ::1] w = _k_np.ascontiguousarray(W, dtype=_k_np.float32)
    cdef int N = w.shape[0], K = w.shape[1]
    _k_check_dims(N=N, K=K)
    codes = _k_np.zeros(_k_q4_code_bytes(N, K), dtype=_k_np.uint8)
    scales = _k_np.zeros(_k_q4_scale_count(N, K), dtype=_k_np.float32)
    cdef _k_u8[::1] c = codes
    cdef float[::1] s = scales
    _k_q4_pack_rows(&w[0, 0], N, K, 0, N, &c[0], &s[0])
    return codes, scales


cdef tuple _k_q4_packed(codes, scales, int N, int K):
    _k_check_dims(N=N, K=K)
    c = _k_np.ascontiguousarray(codes, dtype=_k_np.uint8).reshape(-1)
    s = _k_np.ascontiguousarray(scales, dtype=_k_np.float32).reshape(-1)
    if <size_t>c.shape[0] != _k_q4_code_bytes(N, K) or <size_t>s.shape[0] != _k_q4_scale_count(N, K):
        raise ValueError(f"q4 weights hold {c.shape[0]} code bytes and {s.shape[0]} scales, expected "
                         f"{_k_q4_code_bytes(N, K)} and {_k_q4_scale_count(N, K)} for N={N}, K={K}")
    return c, s


def q4_unpack(codes, scales, int N, int K):
    """Inverse of q4_pack's layout: codes (N, K) int8 in [-8, 7] and scales (N, groups) float32."""
    c_arr, s_arr = _k_q4_packed(codes, scales, N, K)
    cdef const _k_u8[::1] c = c_arr
    cdef const float[::1] s = s_arr
    q = _k_np.empty((N, K), dtype=_k_np.int8)
    d = _k_np.empty((N, _k_q4_groups(K)), dtype=_k_np.float32)
    cdef _k_i8[:, ::1] qv = q
    cdef float[:, ::1] dv = d
    _k_q4_unpack(&c[0], &s[0], N, K, &qv[0, 0], &dv[0, 0])
    return q, d


def q4_gemm(name, codes, scales, int N, int K, X, out=None, n0=None, n1=None):
    """Y (M, N) float32 = sum over groups of scale * (exact int group dot of codes and X), for rows
    n in [n0, n1) (KernelTable::q4_gemm). X: (M, >= q4_groups(K) * 32) int8."""
    cdef const _KTable* t = _k_table(name)
    c_arr, s_arr = _k_q4_packed(codes, scales, N, K)
    cdef const _k_u8[::1] c = c_arr
    cdef const float[::1] s = s_arr
    cdef const _k_i8[:, ::1] x = _k_np.ascontiguousarray(X, dtype=_k_np.int8)
    cdef int M = x.shape[0], ldx = x.shape[1]
    _k_check_dims(M=M)
    if ldx < _k_q4_groups(K) * 32:
        raise ValueError(f"activations have {ldx} columns, the kernels need {_k_q4_groups(K) * 32} (K={K} padded)")
    y = _k_np.zeros((M, N), dtype=_k_np.float32) if out is None else out
    cdef float[:, ::1] yv = y
    if yv.shape[0] != M or yv.shape[1] != N:
        raise ValueError(f"out has shape {tuple(y.shape)}, expected {(M, N)}")
    cdef int a, b
    a, b = _k_range(N, n0, n1)
    with nogil:
        t.q4_gemm(&c[0], &s[0], N, K, &x[0, 0], ldx, M, &yv[0, 0], N, a, b)
    return y


def f32_gemm(name, W, X, out=None, n0=None, n1=None):
    """Y (M, N) float32 = X (M, K) @ W (N, K) transposed, for rows n in [n0, n1)."""
    cdef const _KTable* t = _k_table(name)
    cdef const float[:, ::1] w = _k_np.ascontiguousarray(W, dtype=_k_np.float32)
    cdef const float[:, ::1] x = _k_np.ascontiguousarray(X, dtype=_k_np.float32)
    cdef int N = w.shape[0], K = w.shape[1], M = x.shape[0], ldx = x.shape[1]
    _k_check_dims(N=N, K=K, M=M)
    if ldx < K:
        raise ValueError(f"activations have {ldx} columns, weights have K={K}")
    y = _k_np.zeros((M, N), dtype=_k_np.float32) if out is None else out
    cdef float[:, ::1] yv = y
    if yv.shape[0] != M or yv.shape[1] != N:
        raise ValueError(f"out has shape {tuple(y.shape)}, expected {(M, N)}")
    cdef int a, b
    a, b = _k_range(N, n0, n1)
    with nogil:
        t.f32_gemm(&w[0, 0], N, K, &x[0, 0], ldx, M, &yv[0, 0], N, a, b)
    return y


def _k_attn_width(d, Q, C):
    cdef int w = Q.shape[1] if d is None else d
    if w < 1 or w > Q.shape[1] or w > C.shape[1]:
        raise ValueError(f"head width d={w} must be in [1, min(query columns {Q.shape[1]}, cache row length {C.shape[1]})]")
    return w


def attn_scores(name, Q, Kc, float scale, d=None):
    """S (G, count) float32: S[g, j] = scale * Q[g, :d] . Kc[j, :d] (cache rows Kc.shape[1] floats apart)."""
    cdef const _KTable* t = _k_table(name)
    cdef const float[:, ::1] q = _k_np.ascontiguousarray(Q, dtype=_k_np.float32)
    cdef const float[:, ::1] k = _k_np.ascontiguousarray(Kc, dtype=_k_np.float32)
    cdef int G = q.shape[0], count = k.shape[0], w = _k_attn_width(d, q, k)
    _k_check_dims(G=G, count=count)
    s = _k_np.zeros((G, count), dtype=_k_np.float32)
    cdef float[:, ::1] sv = s
    with nogil:
        t.attn_scores(&q[0, 0], G, q.shape[1], w, &k[0, 0], k.shape[1], count, scale, &sv[0, 0], count)
    return s


def attn_accumulate(name, P, Vc, O, d=None):
    """O (G, >= d) float32, in place: O[g, :d] += sum_j P[g, j] * Vc[j, :d]. Returns O."""
    cdef const _KTable* t = _k_table(name)
    cdef const float[:, ::1] p = _k_np.ascontiguousarray(P, dtype=_k_np.float32)
    cdef const float[:, ::1] v = _k_np.ascontiguousarray(Vc, dtype=_k_np.float32)
    cdef float[:, ::1] o = O
    cdef int G = p.shape[0], count = p.shape[1], w = _k_attn_width(d, o, v)
    _k_check_dims(G=G, count=count)
    if v.shape[0] != count or o.shape[0] != G:
        raise ValueError(f"P is {(G, count)}: Vc needs {count} rows (has {v.shape[0]}), O {G} rows (has {o.shape[0]})")
    with nogil:
        t.attn_accumulate(&p[0, 0], G, count, w, &v[0, 0], v.shape[1], count, &o[0, 0], o.shape[1])
    return O


def exp_sum(name, x, float mul, float sub):
    """sum_i exp(x[i] * mul - sub) (float argument, double sum), as a float."""
    cdef const _KTable* t = _k_table(name)
    cdef const float[::1] xv = _k_np.ascontiguousarray(x, dtype=_k_np.float32).reshape(-1)
    cdef int n = xv.shape[0]
    cdef double r
    with nogil:
        r = t.exp_sum(&xv[0] if n > 0 else NULL, n, mul, sub)
    return r


def relu2_mul(name, x, up):
    """max(x, 0)^2 * up (float32, elementwise; NaN in x gives 0) as a new array."""
    cdef const _KTable* t = _k_table(name)
    out = _k_np.array(x, dtype=_k_np.float32).reshape(-1)
    cdef float[::1] o = out
    cdef const float[::1] u = _k_np.ascontiguousarray(up, dtype=_k_np.float32).reshape(-1)
    if u.shape[0] != o.shape[0]:
        raise ValueError(f"up has {u.shape[0]} values, x has {o.shape[0]}")
    cdef int n = o.shape[0]
    if n > 0:
        with nogil:
            t.relu2_mul(&o[0], &u[0], n)
    return out


def softmax(name, x):
    """Softmax of a non-empty float32 vector, as a new array."""
    cdef const _KTable* t = _k_table(name)
    out = _k_np.array(x, dtype=_k_np.float32).reshape(-1)
    cdef float[::1] o = out
    cdef int n = o.shape[0]
    if n < 1:
        raise ValueError("softmax needs at least one value")
    with nogil:
        t.softmax(&o[0], n)
    return out


def sum_squares(name, x):
    """sum of x**2 (float32 values, double sum)."""
    cdef const _KTable* t = _k_table(name)
    cdef const float[::1] xv = _k_np.ascontiguousarray(x, dtype=_k_np.float32).reshape(-1)
    cdef int n = xv.shape[0]
    cdef double r
    with nogil:
        r = t.sum_squares(&xv[0] if n > 0 else NULL, n)
    return r
