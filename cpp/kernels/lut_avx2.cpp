// AVX2 LUT kernels (see lut.h): tokens in int16 lanes of ymm vectors, 16 per vector.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lut_isa.h"
#if WFRT_X86_KERNELS

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace wfrt {
namespace {

#include "lut_tiles.h"

struct LutYmm {
    using V = __m256i;
    static constexpr int kLanes = 16;
    static V zero() { return _mm256_setzero_si256(); }
    static V load(const int16_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
    static void store(int16_t* p, V v) { _mm256_storeu_si256((__m256i*)p, v); }
    static V add(V a, V b) { return _mm256_add_epi16(a, b); }
    static V sub(V a, V b) { return _mm256_sub_epi16(a, b); }
    static void widen_add(int32_t* y, V acc) {
        __m256i* lo = (__m256i*)y;
        __m256i* hi = (__m256i*)(y + 8);
        _mm256_storeu_si256(lo, _mm256_add_epi32(_mm256_loadu_si256(lo), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc))));
        _mm256_storeu_si256(hi, _mm256_add_epi32(_mm256_loadu_si256(hi), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1))));
    }
};

void lut16(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1) {
    LutGemm<LutYmm, 1>::run(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}
void lut32(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1) {
    LutGemm<LutYmm, 2>::run(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}
void lut64(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1) {
    LutGemm<LutYmm, 4>::run(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}

}  // namespace

const LutKernel kLutAvx2[3] = {{"lut16-avx2", 16, lut16}, {"lut32-avx2", 32, lut32}, {"lut64-avx2", 64, lut64}};

}  // namespace wfrt
#pragma GCC pop_options
#endif  // WFRT_X86_KERNELS
