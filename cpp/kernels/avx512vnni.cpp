// AVX-512 VNNI kernels: one 512-bit vector holds a whole 16-row tile's int32 lanes, and vpdpbusd
// takes the broadcast activation bytes straight from memory. Quantization and the q4 GEMM (8-row
// tiles) are the AVX2 ones.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "base3.h"
#include "isa_tables.h"
#if WFRT_X86_KERNELS

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
// GCC 12's own reductions (_mm512_reduce_add_*) start from _mm256_undefined_*() and warn.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

namespace wfrt {
namespace {

#include "row_tiles.h"
#include "ternary_tiles.h"

#include "base3_tiles.h"

struct Zmm {
    using V = __m512i;
    static constexpr int kVecsPerTile = 1;
    static constexpr int kLanes = 16;
    static constexpr int kAccRegs = 24;
    static constexpr bool kWidens = false;
    static V load(const uint8_t* chunk, int) { return _mm512_loadu_si512(chunk); }
    static V codes(V raw, int s) { return _mm512_and_si512(_mm512_srli_epi16(raw, 2 * s), _mm512_set1_epi8(3)); }
    static V bcast(const int8_t* x) {
        int32_t v;
        std::memcpy(&v, x, 4);
        return _mm512_set1_epi32(v);
    }
    static V zero() { return _mm512_setzero_si512(); }
    // Base-3 plane (base3.h): u = (y > -43) + (y > 42) as signed bytes, then y *= 3 (mod 256).
    static V digit(V& y) {
        const V one = _mm512_set1_epi8(1);
        const V u = _mm512_maskz_mov_epi8(_mm512_cmpgt_epi8_mask(y, _mm512_set1_epi8(-43)), one);
        const V c = _mm512_mask_add_epi8(u, _mm512_cmpgt_epi8_mask(y, _mm512_set1_epi8(42)), u, one);
        y = _mm512_add_epi8(_mm512_add_epi8(y, y), y);
        return c;
    }
    static V dot(V acc, V w, V x) { return _mm512_dpbusd_epi32(acc, w, x); }
    static V widen(V acc) { return acc; }
    static V add32(V a, V b) { return _mm512_add_epi32(a, b); }
    static void store(int32_t* y, V v) { _mm512_storeu_si512(y, v); }
};

// 4 row tiles (64 rows = kTernaryNAlign, so aligned thread cuts leave no narrower tail) x 6
// activation rows: 24 accumulators. Measured against 3x8, 2x12 and 4x5 on Zen5, 320-row tasks.
void ternary_gemm_avx512vnni(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy,
                             int n0, int n1) {
    ternary_gemm_tiled<Zmm, 4, 6>(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}

// 4 activation rows x 5 tiles: 20 accumulators.
void base3_gemm_avx512vnni(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy,
                           int n0, int n1) {
    base3_gemm_tiled<Zmm, 4>(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}

// Signed x signed int8 with the unsigned operand w + 128 (w ^ 0x80): sum w * x is
// sum (w + 128) * x - 128 * sum x, both exact in int32 dpbusd. The correction depends only on
// the activation row, so it is computed once per call (xsum128) rather than per weight row, and
// the inner loop is one dpbusd per (weight row, activation row) pair. The K tail uses masked
// loads: a masked-off x is 0, so the biased w there adds nothing.
template <int RW, int MA>
inline void i8_micro(const int8_t* W, int K, const int8_t* X, int ldx, const int32_t* xsum128, int32_t out[][RW]) {
    __m512i acc[RW][MA];
    WFRT_UNROLL for (int r = 0; r < RW; ++r)
        WFRT_UNROLL for (int m = 0; m < MA; ++m) acc[r][m] = _mm512_setzero_si512();
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    for (int k = 0; k < K; k += 64) {
        const __mmask64 live = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        __m512i wu[RW];
        WFRT_UNROLL for (int r = 0; r < RW; ++r) {
            _mm_prefetch((const char*)(W + (size_t)r * K + k + kRowPrefetchBytes), _MM_HINT_T0);
            wu[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(live, W + (size_t)r * K + k), bias);
        }
        WFRT_UNROLL for (int m = 0; m < MA; ++m) {
            const __m512i x = _mm512_maskz_loadu_epi8(live, X + (size_t)m * ldx + k);
            WFRT_UNROLL for (int r = 0; r < RW; ++r) acc[r][m] = _mm512_dpbusd_epi32(acc[r][m], wu[r], x);
        }
    }
    WFRT_UNROLL for (int r = 0; r < RW; ++r)
        WFRT_UNROLL for (int m = 0; m < MA; ++m) out[m][r] = _mm512_reduce_add_epi32(acc[r][m]) - xsum128[m];
}

struct I8Micro {
    const int8_t* W; int K; const int8_t* X; int ldx; const int32_t* xsum128; int32_t* Y; int ldy;
    // `ma` (1..MA) activation rows: the tail of M runs a smaller instance.
    template <int RW, int MA>
    void run(int n, int m0, int ma) {
        if constexpr (MA > 1) {
            if (ma < MA) return run<RW, MA - 1>(n, m0, ma);
        }
        int32_t out[MA][RW];
        i8_micro<RW, MA>(W + (size_t)n * K, K, X + (size_t)m0 * ldx, ldx, xsum128 + m0, out);
        for (int m = 0; m < MA; ++m)
            for (int r = 0; r < RW; ++r) Y[(size_t)(m0 + m) * ldy + n + r] = out[m][r];
    }
};

// Activation rows in batches of kI8Rows, whose corrections live on the stack (no allocation).
constexpr int kI8Rows = 64;

void i8_gemm_avx512vnni(const int8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0,
                        int n1) {
    (void)N;
    for (int b0 = 0; b0 < M; b0 += kI8Rows) {
        const int mb = M - b0 < kI8Rows ? M - b0 : kI8Rows;
        int32_t xsum128[kI8Rows];
        for (int m = 0; m < mb; ++m) {
            const int8_t* x = X + (size_t)(b0 + m) * ldx;
            int32_t s = 0;
            for (int k = 0; k < K; ++k) s += x[k];
            xsum128[m] = 128 * s;
        }
        const I8Micro micro{W, K, X + (size_t)b0 * ldx, ldx, xsum128, Y + (size_t)b0 * ldy, ldy};
        // One activation row reads W row after row: one sequential stream is what DRAM serves
        // fastest (measured: ~95% of a plain streaming read, against ~80% for four rows at a time).
        if (mb == 1) rows_by_tiles<1, 1>(n0, n1, mb, (size_t)K, micro);
        else rows_by_tiles<4, 6>(n0, n1, mb, (size_t)K, micro);
    }
}

template <int RW, int MA>
inline void f32_micro(const float* W, int K, const float* X, int ldx, float out[][RW]) {
    __m512 acc[RW][MA];
    WFRT_UNROLL for (int r = 0; r < RW; ++r)
        WFRT_UNROLL for (int m = 0; m < MA; ++m) acc[r][m] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        const __mmask16 live = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
        __m512 x[MA];
        WFRT_UNROLL for (int m = 0; m < MA; ++m) x[m] = _mm512_maskz_loadu_ps(live, X + (size_t)m * ldx + k);
        WFRT_UNROLL for (int r = 0; r < RW; ++r) {
            _mm_prefetch((const char*)(W + (size_t)r * K + k + kRowPrefetchBytes / 4), _MM_HINT_T0);
            const __m512 w = _mm512_maskz_loadu_ps(live, W + (size_t)r * K + k);
            WFRT_UNROLL for (int m = 0; m < MA; ++m) acc[r][m] = _mm512_fmadd_ps(w, x[m], acc[r][m]);
        }
    }
    WFRT_UNROLL for (int r = 0; r < RW; ++r)
        WFRT_UNROLL for (int m = 0; m < MA; ++m) out[m][r] = _mm512_reduce_add_ps(acc[r][m]);
}

template <int RW, int MA>
struct F32Kernel {
    static void call(const float* W, int K, const float* X, int ldx, float out[][RW]) { f32_micro<RW, MA>(W, K, X, ldx, out); }
};

void f32_gemm_avx512vnni(const float* W, int N, int K, const float* X, int ldx, int M, float* Y, int ldy, int n0,
                         int n1) {
    (void)N;
    rows_by_tiles<4, 4>(n0, n1, M, (size_t)K * 4, RowMicro<float, float, F32Kernel>{W, K, X, ldx, Y, ldy});
}

#include "attn_tiles.h"
#include "exp_tiles.h"

struct Fzmm {
    using F = __m512;
    static constexpr int kLanes = 16;
    static __mmask16 first(int n) { return (__mmask16)((1u << n) - 1); }
    static F load(const float* p) { return _mm512_loadu_ps(p); }
    static F load_part(const float* p, int n) { return _mm512_maskz_loadu_ps(first(n), p); }
    static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
    static void store_part(float* p, F v, int n) { _mm512_mask_storeu_ps(p, first(n), v); }
    static F set1(float x) { return _mm512_set1_ps(x); }
    static F zero() { return _mm512_setzero_ps(); }
    static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
    static F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
    static F add(F a, F b) { return _mm512_add_ps(a, b); }
    static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
    static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
    static F max(F a, F b) { return _mm512_max_ps(a, b); }
    static F round(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT); }
    static F keep_first(F v, int n) { return _mm512_maskz_mov_ps(first(n), v); }
    static F exp_clamp(F t) { return t; }
    static F exp_scale(F p, F n, F) { return _mm512_scalef_ps(p, n); }
    static float hmax(F v) { return _mm512_reduce_max_ps(v); }
    using D = __m512d;
    static D dzero() { return _mm512_setzero_pd(); }
    static void add_widened(D& lo, D& hi, F v) {
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    }
    static double dsum(D lo, D hi) { return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)); }
    static float sum(F v) { return _mm512_reduce_add_ps(v); }
    static void sum4(F a, F b, F c, F d, float out[4]) {
        // 256-bit halves added: a's and b's eight partials side by side, then c's and d's.
        const F ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
        const F cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
        // 128-bit quarters added: one 4-float lane per input, in order a, b, c, d.
        F q = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
        q = _mm512_add_ps(q, _mm512_permute_ps(q, 0x4E));
        q = _mm512_add_ps(q, _mm512_permute_ps(q, 0xB1));
        _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, q)));
    }
};

void attn_scores_avx512(const float* Q, int G, int ldq, int d, const float* Kc, int ld, int count, float scale, float* S,
                        int lds) {
    attn_scores_simd<Fzmm>(Q, G, ldq, d, Kc, ld, count, scale, S, lds);
}

void attn_accumulate_avx512(const float* P, int G, int ldp, int d, const float* Vc, int ld, int count, float* O,
                            int ldo) {
    attn_accumulate_simd<Fzmm>(P, G, ldp, d, Vc, ld, count, O, ldo);
}

double exp_sum_avx512(const float* x, int n, float mul, float sub) { return exp_sum_simd<Fzmm>(x, n, mul, sub); }

// max_ps returns its second operand when either is NaN: NaN -> 0, as the reference.
void relu2_mul_avx512(float* x, const float* up, int n) {
    for (int i = 0; i < n; i += 16) {
        const __mmask16 live = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 r = _mm512_max_ps(_mm512_maskz_loadu_ps(live, x + i), _mm512_setzero_ps());
        _mm512_mask_storeu_ps(x + i, live, _mm512_mul_ps(_mm512_mul_ps(r, r), _mm512_maskz_loadu_ps(live, up + i)));
    }
}

void softmax_avx512(float* x, int n) { softmax_simd<Fzmm>(x, n); }

double sum_squares_avx512(const float* x, int n) {
    __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        WFRT_UNROLL for (int j = 0; j < 4; ++j) {
            const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8 * j));
            acc[j] = _mm512_fmadd_pd(v, v, acc[j]);
        }
    for (; i < n; i += 8) {
        const __m512d v = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(n - i >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (n - i)) - 1), x + i));
        acc[0] = _mm512_fmadd_pd(v, v, acc[0]);
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3])));
}

}  // namespace

const KernelTable kAvx512VnniKernels = {
    "avx512vnni", avx2::quantize_row_i8, ternary_gemm_avx512vnni, base3_gemm_avx512vnni, i8_gemm_avx512vnni, avx2::q4_gemm,
    f32_gemm_avx512vnni,
    attn_scores_avx512, attn_accumulate_avx512, exp_sum_avx512, relu2_mul_avx512,
    softmax_avx512, sum_squares_avx512,
};

}  // namespace wfrt
#pragma GCC pop_options
#endif  // WFRT_X86_KERNELS
