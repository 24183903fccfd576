// AVX2 (+FMA) kernels. Standard headers come before the target pragma, and everything compiled
// for AVX2 is private to this file, so no shared inline function ends up AVX2-only.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "base3.h"
#include "isa_tables.h"
#if WFRT_X86_KERNELS

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace wfrt {
namespace {

#include "ternary_tiles.h"

#include "base3_tiles.h"

#include "row_tiles.h"
#include "ymm.h"

#include "q4_tiles.h"

// maddubs: u8 codes x s8 activations -> int16 pair sums, accumulated in int16 for one K block.
struct Avx2Dot : Ymm {
    static constexpr bool kWidens = true;
    static V dot(V acc, V w, V x) {
        V r = _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x));
        // Keeps GCC from reassociating the int16 sums into trees of live products, which
        // spilled the 16 ymm registers in the hot loop (measured 40% slower).
        __asm__("" : "+x"(r));
        return r;
    }
    static V widen(V acc) { return _mm256_madd_epi16(acc, _mm256_set1_epi16(1)); }
};

void ternary_gemm_avx2(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0,
                       int n1) {
    ternary_gemm_tiled<Avx2Dot, 1, 5>(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}

// 2 activation rows x 5 tiles x one ymm per pass (one row: both ymm of a tile in one pass).
void base3_gemm_avx2(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0,
                     int n1) {
    base3_gemm_tiled<Avx2Dot, 2>(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}

// Signed x signed int8: |w| (u8, exact even for -128) times x with w's sign (exact for x > -128);
// maddubs pair sums reach 2 * 128 * 127 and are widened at once.
template <int RW, int MA>
inline void i8_micro(const int8_t* W, int K, const int8_t* X, int ldx, int32_t out[MA][RW]) {
    __m256i acc[RW][MA];
    WFRT_UNROLL for (int r = 0; r < RW; ++r)
        WFRT_UNROLL for (int m = 0; m < MA; ++m) acc[r][m] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i x[MA];
        WFRT_UNROLL for (int m = 0; m < MA; ++m) x[m] = _mm256_loadu_si256((const __m256i*)(X + (size_t)m * ldx + k));
        WFRT_UNROLL for (int r = 0; r < RW; ++r) {
            _mm_prefetch((const char*)(W + (size_t)r * K + k + kRowPrefetchBytes), _MM_HINT_T0);
            const __m256i w = _mm256_loadu_si256((const __m256i*)(W + (size_t)r * K + k));
            const __m256i aw = _mm256_abs_epi8(w);
            WFRT_UNROLL for (int m = 0; m < MA; ++m)
                acc[r][m] = _mm256_add_epi32(
                    acc[r][m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x[m], w)), ones));
        }
    }
    WFRT_UNROLL for (int r = 0; r < RW; ++r)
        WFRT_UNROLL for (int m = 0; m < MA; ++m) {
            int32_t s = hsum_epi32(acc[r][m]);
            for (int kk = k; kk < K; ++kk) s += W[(size_t)r * K + kk] * X[(size_t)m * ldx + kk];
            out[m][r] = s;
        }
}

template <int RW, int MA>
struct I8Kernel {
    static void call(const int8_t* W, int K, const int8_t* X, int ldx, int32_t out[][RW]) {
        i8_micro<RW, MA>(W, K, X, ldx, (int32_t(*)[RW])out);
    }
};

void i8_gemm_avx2(const int8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1) {
    (void)N;
    // One activation row reads W row after row: one sequential stream is what DRAM serves fastest
    // (measured: ~95% of a plain streaming read, against ~80% for four rows at a time).
    const RowMicro<int8_t, int32_t, I8Kernel> micro{W, K, X, ldx, Y, ldy};
    if (M == 1) rows_by_tiles<1, 1>(n0, n1, M, (size_t)K, micro);
    else rows_by_tiles<4, 2>(n0, n1, M, (size_t)K, micro);
}

void q4_gemm_avx2(const uint8_t* codes, const float* scales, int N, int K, const int8_t* X, int ldx, int M, float* Y,
                  int ldy, int n0, int n1) {
    q4_gemm_tiled<Avx2Dot>(codes, scales, N, K, X, ldx, M, Y, ldy, n0, n1);
}

template <int RW, int MA>
inline void f32_micro(const float* W, int K, const float* X, int ldx, float out[MA][RW]) {
    __m256 acc[RW][MA];
    WFRT_UNROLL for (int r = 0; r < RW; ++r)
        WFRT_UNROLL for (int m = 0; m < MA; ++m) acc[r][m] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 x[MA];
        WFRT_UNROLL for (int m = 0; m < MA; ++m) x[m] = _mm256_loadu_ps(X + (size_t)m * ldx + k);
        WFRT_UNROLL for (int r = 0; r < RW; ++r) {
            _mm_prefetch((const char*)(W + (size_t)r * K + k + kRowPrefetchBytes / 4), _MM_HINT_T0);
            const __m256 w = _mm256_loadu_ps(W + (size_t)r * K + k);
            WFRT_UNROLL for (int m = 0; m < MA; ++m) acc[r][m] = _mm256_fmadd_ps(w, x[m], acc[r][m]);
        }
    }
    WFRT_UNROLL for (int r = 0; r < RW; ++r)
        WFRT_UNROLL for (int m = 0; m < MA; ++m) {
            float s = hsum_ps(acc[r][m]);
            for (int kk = k; kk < K; ++kk) s += W[(size_t)r * K + kk] * X[(size_t)m * ldx + kk];
            out[m][r] = s;
        }
}

template <int RW, int MA>
struct F32Kernel {
    static void call(const float* W, int K, const float* X, int ldx, float out[][RW]) {
        f32_micro<RW, MA>(W, K, X, ldx, (float(*)[RW])out);
    }
};

void f32_gemm_avx2(const float* W, int N, int K, const float* X, int ldx, int M, float* Y, int ldy, int n0, int n1) {
    (void)N;
    rows_by_tiles<4, 2>(n0, n1, M, (size_t)K * 4, RowMicro<float, float, F32Kernel>{W, K, X, ldx, Y, ldy});
}

// Same arithmetic as the generic one (x * a in fp32, round half to even, clamp), 8 at a time.
void quantize_row_i8_avx2(const float* x, int K, int K_padded, int8_t* xq, float* scale, int32_t* sum) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    for (int kk = k; kk < K; ++kk) amax = amax > std::fabs(x[kk]) ? amax : std::fabs(x[kk]);
    const float a = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
    const __m256 va = _mm256_set1_ps(a), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    __m256i vsum = _mm256_setzero_si256();
    k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i q[4];
        for (int j = 0; j < 4; ++j) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), va);
            q[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
            vsum = _mm256_add_epi32(vsum, q[j]);
        }
        // packs interleave 128-bit lanes; the permute restores k order.
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i*)(xq + k), p);
    }
    int32_t s = hsum_epi32(vsum);
    for (; k < K; ++k) {
        float v = std::rint(x[k] * a);
        v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
        xq[k] = (int8_t)v;
        s += (int8_t)v;
    }
    std::memset(xq + K, 0, (size_t)(K_padded - K));
    *scale = a;
    *sum = s;
}

#include "attn_tiles.h"
#include "exp_tiles.h"

struct Fymm {
    using F = __m256;
    static constexpr int kLanes = 8;
    static __m256i first(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
    static F load(const float* p) { return _mm256_loadu_ps(p); }
    static F load_part(const float* p, int n) { return _mm256_maskload_ps(p, first(n)); }
    static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
    static void store_part(float* p, F v, int n) { _mm256_maskstore_ps(p, first(n), v); }
    static F set1(float x) { return _mm256_set1_ps(x); }
    static F zero() { return _mm256_setzero_ps(); }
    static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
    static F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
    static F add(F a, F b) { return _mm256_add_ps(a, b); }
    static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
    static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
    static F max(F a, F b) { return _mm256_max_ps(a, b); }
    static F round(F v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static F keep_first(F v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(first(n))); }
    static F exp_clamp(F t) { return _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f)); }
    static F exp_scale(F p, F n, F t) {
        const __m256 normal = _mm256_cmp_ps(t, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
        const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(pow2n)), normal);
    }
    static float hmax(F v) {
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, v);
        float m = lanes[0];
        for (float x : lanes) m = x > m ? x : m;
        return m;
    }
    using D = __m256d;
    static D dzero() { return _mm256_setzero_pd(); }
    static void add_widened(D& lo, D& hi, F v) {
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    static double dsum(D lo, D hi) {
        const __m256d s = _mm256_add_pd(lo, hi);
        const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
        return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    }
    static float sum(F v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    }
    static void sum4(F a, F b, F c, F d, float out[4]) {
        // Pairwise adds within 128-bit halves leave a, b, c, d in order in each half.
        const F h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
};

void attn_scores_avx2(const float* Q, int G, int ldq, int d, const float* Kc, int ld, int count, float scale, float* S,
                      int lds) {
    attn_scores_simd<Fymm>(Q, G, ldq, d, Kc, ld, count, scale, S, lds);
}

void attn_accumulate_avx2_impl(const float* P, int G, int ldp, int d, const float* Vc, int ld, int count, float* O,
                               int ldo) {
    attn_accumulate_simd<Fymm>(P, G, ldp, d, Vc, ld, count, O, ldo);
}

double exp_sum_avx2(const float* x, int n, float mul, float sub) { return exp_sum_simd<Fymm>(x, n, mul, sub); }

// max_ps returns its second operand when either is NaN: NaN -> 0, as the reference.
void relu2_mul_avx2(float* x, const float* up, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 r = _mm256_max_ps(_mm256_loadu_ps(x + i), _mm256_setzero_ps());
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(r, r), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; ++i) {
        const float r = x[i] > 0.0f ? x[i] : 0.0f;
        x[i] = r * r * up[i];
    }
}

void softmax_avx2(float* x, int n) { softmax_simd<Fymm>(x, n); }

double sum_squares_avx2(const float* x, int n) {
    __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        WFRT_UNROLL for (int j = 0; j < 4; ++j) {
            const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * j));
            acc[j] = _mm256_fmadd_pd(v, v, acc[j]);
        }
    const __m256d s4 = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    double s = _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
    for (; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
    return s;
}

}  // namespace

namespace avx2 {
void attn_scores(const float* Q, int G, int ldq, int d, const float* Kc, int ld, int count, float scale, float* S,
                 int lds) {
    attn_scores_avx2(Q, G, ldq, d, Kc, ld, count, scale, S, lds);
}
void attn_accumulate(const float* P, int G, int ldp, int d, const float* Vc, int ld, int count, float* O, int ldo) {
    attn_accumulate_avx2_impl(P, G, ldp, d, Vc, ld, count, O, ldo);
}
double exp_sum(const float* x, int n, float mul, float sub) { return exp_sum_avx2(x, n, mul, sub); }
void relu2_mul(float* x, const float* up, int n) { relu2_mul_avx2(x, up, n); }
void softmax(float* x, int n) { softmax_avx2(x, n); }
double sum_squares(const float* x, int n) { return sum_squares_avx2(x, n); }
void quantize_row_i8(const float* x, int K, int K_padded, int8_t* xq, float* scale, int32_t* sum) {
    quantize_row_i8_avx2(x, K, K_padded, xq, scale, sum);
}
void i8_gemm(const int8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1) {
    i8_gemm_avx2(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}
void q4_gemm(const uint8_t* codes, const float* scales, int N, int K, const int8_t* X, int ldx, int M, float* Y,
             int ldy, int n0, int n1) {
    q4_gemm_avx2(codes, scales, N, K, X, ldx, M, Y, ldy, n0, n1);
}
void f32_gemm(const float* W, int N, int K, const float* X, int ldx, int M, float* Y, int ldy, int n0, int n1) {
    f32_gemm_avx2(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}
}  // namespace avx2

const KernelTable kAvx2Kernels = {
    "avx2", quantize_row_i8_avx2, ternary_gemm_avx2, base3_gemm_avx2, i8_gemm_avx2, q4_gemm_avx2, f32_gemm_avx2,
    attn_scores_avx2, attn_accumulate_avx2_impl, exp_sum_avx2, relu2_mul_avx2,
    softmax_avx2, sum_squares_avx2,
};

}  // namespace wfrt
#pragma GCC pop_options
#endif  // WFRT_X86_KERNELS
