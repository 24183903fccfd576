// AVX-512 LUT kernels (see lut.h): tokens in int16 lanes of zmm vectors, 32 per vector. A block
// of 16 tokens runs the AVX2 kernel (one ymm per table entry).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lut_isa.h"
#if WFRT_X86_KERNELS

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
// GCC 12's 512-bit casts and extracts start from _mm256_undefined_*() and warn.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

namespace wfrt {
namespace {

#include "lut_tiles.h"

struct LutZmm {
    using V = __m512i;
    static constexpr int kLanes = 32;
    static V zero() { return _mm512_setzero_si512(); }
    static V load(const int16_t* p) { return _mm512_loadu_si512(p); }
    static void store(int16_t* p, V v) { _mm512_storeu_si512(p, v); }
    static V add(V a, V b) { return _mm512_add_epi16(a, b); }
    static V sub(V a, V b) { return _mm512_sub_epi16(a, b); }
    static void widen_add(int32_t* y, V acc) {
        _mm512_storeu_si512(y, _mm512_add_epi32(_mm512_loadu_si512(y), _mm512_cvtepi16_epi32(_mm512_castsi512_si256(acc))));
        _mm512_storeu_si512(y + 16, _mm512_add_epi32(_mm512_loadu_si512(y + 16),
                                                     _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc, 1))));
    }
};

void lut32(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1) {
    LutGemm<LutZmm, 1>::run(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}
void lut64(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1) {
    LutGemm<LutZmm, 2>::run(W, N, K, X, ldx, M, Y, ldy, n0, n1);
}

}  // namespace

const LutKernel kLutAvx512[3] = {
    kLutAvx2[0], {"lut32-avx512", 32, lut32}, {"lut64-avx512", 64, lut64}};

}  // namespace wfrt
#pragma GCC pop_options
#endif  // WFRT_X86_KERNELS
