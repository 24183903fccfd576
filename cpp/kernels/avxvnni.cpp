// AVX-VNNI: the AVX2 ternary and q4 loops with vpdpbusd (u8 x s8 -> int32 in one instruction, no
// int16 stage); the other entries are the AVX2 kernels. Not runnable on AVX2-only CPUs.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "base3.h"
#include "isa_tables.h"
#if WFRT_X86_KERNELS

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
#include <immintrin.h>

namespace wfrt {
namespace {

#include "ternary_tiles.h"

#include "base3_tiles.h"
#include "ymm.h"

#include "q4_tiles.h"

struct AvxVnniDot : Ymm {
    static constexpr bool kWidens = false;
    static V dot(V acc, V w, V x) { return _mm256_dpbusd_avx_epi32(acc, w, x); }
    static V widen(V acc) { return acc; }
};

void ternary_gemm_avxvnni(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy,
                          int n0, int n1) {
    ternary_gemm_tiled<AvxVnniDot, 1, 5>(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}

// 2 activation rows x 5 tiles x one ymm per pass (one row: both ymm of a tile in one pass).
void base3_gemm_avxvnni(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0,
                     int n1) {
    base3_gemm_tiled<AvxVnniDot, 2>(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}

// vpdpbusd: u4 codes x s8 activations straight into int32 lanes.
void q4_gemm_avxvnni(const uint8_t* codes, const float* scales, int N, int K, const int8_t* X, int ldx, int M, float* Y,
                     int ldy, int n0, int n1) {
    q4_gemm_tiled<AvxVnniDot>(codes, scales, N, K, X, ldx, M, Y, ldy, n0, n1);
}

}  // namespace

const KernelTable kAvxVnniKernels = {
    "avxvnni", avx2::quantize_row_i8, ternary_gemm_avxvnni, base3_gemm_avxvnni, avx2::i8_gemm, q4_gemm_avxvnni, avx2::f32_gemm,
    avx2::attn_scores, avx2::attn_accumulate, avx2::exp_sum, avx2::relu2_mul,
    avx2::softmax, avx2::sum_squares,
};

}  // namespace wfrt
#pragma GCC pop_options
#endif  // WFRT_X86_KERNELS
