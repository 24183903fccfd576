// The per-ISA kernel tables dispatch.cpp chooses from (internal to cpp/kernels/).
#pragma once
#include "ternary.h"

// The x86 SIMD files need GCC/Clang target pragmas and __builtin_cpu_supports; elsewhere only
// the generic table is built.
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define WFRT_X86_KERNELS 1
#else
#define WFRT_X86_KERNELS 0
#endif

// Loops over register-tile dimensions must unroll completely, or GCC keeps the accumulator arrays
// in memory instead of registers.
#define WFRT_UNROLL _Pragma("GCC unroll 32")

namespace wfrt {

extern const KernelTable kGenericKernels;
// Compiled under per-file target pragmas; only valid where dispatch.cpp says the CPU runs them.
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvxVnniKernels;
extern const KernelTable kAvx512VnniKernels;

// AVX2 entries other ISA tables reuse where they have nothing better.
namespace avx2 {
void quantize_row_i8(const float* x, int K, int K_padded, int8_t* xq, float* scale, int32_t* sum);
void i8_gemm(const int8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1);
void q4_gemm(const uint8_t* codes, const float* scales, int N, int K, const int8_t* X, int ldx, int M, float* Y,
             int ldy, int n0, int n1);
void f32_gemm(const float* W, int N, int K, const float* X, int ldx, int M, float* Y, int ldy, int n0, int n1);
void attn_scores(const float* Q, int G, int ldq, int d, const float* Kc, int ld, int count, float scale, float* S,
                 int lds);
void attn_accumulate(const float* P, int G, int ldp, int d, const float* Vc, int ld, int count, float* O, int ldo);
double exp_sum(const float* x, int n, float mul, float sub);
void relu2_mul(float* x, const float* up, int n);
void softmax(float* x, int n);
double sum_squares(const float* x, int n);
}  // namespace avx2

// Byte offset of the chunk holding (tile, k-group g) for a matrix of padded width Kp.
inline size_t ternary_chunk_offset(int tile, int g, int Kp) { return (size_t)tile * Kp * 4 + (size_t)g * 64; }

}  // namespace wfrt
