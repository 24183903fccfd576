// Table-lookup (LUT) ternary GEMM: the multi-row alternative to the maddubs/dpbusd tiles.
//
// Weights are stored as one base-3 byte per group of 4 codes (p = sum_i (q_i + 1) * 3^i, 81
// patterns, 2 bits per weight like layout v1). For a block of activation rows (tokens) and 32
// groups (one 128-wide K slab) the kernel first builds, for every group and all 81 patterns, the
// partial sums sum_i q_i * x[t][k_i] as int16 vectors whose lanes are the tokens; each weight
// byte then adds one table entry (a whole vector of tokens) to its row's accumulator. The cost per
// weight byte is one load-add per 16 (AVX2) or 32 (AVX-512) tokens, independent of the
// multiplier's speed, so a block of 32 rows costs little more than the weight stream of one;
// a single row (GEMV) is far slower than the tiles, which is why kernel_plan.h picks per row count.
//
// The result contract is ternary_gemm's: Y = sum_k u * X with u = q + 1 (exact, int32).
#pragma once
#include <cstddef>
#include <cstdint>

#include "ternary.h"

namespace wfrt {

// Groups of this many codes share one byte; a slab of kLutSlabGroups groups covers one
// kTernaryKBlock of K (int16 accumulators stay exact over a slab: 32 * 4 * 128 = 16384).
constexpr int kLutGroup = 4;
constexpr int kLutPatterns = 81;
constexpr int kLutSlabGroups = kTernaryKBlock / kLutGroup;

// Layout ("LUT v1"): K padded to ternary_padded_k(K) (padding codes are q = 0); slab-major, so a
// slab's bytes for rows [n0, n1) are one contiguous run: byte (n, j) is at
// (j / 32) * N * 32 + n * 32 + j % 32 for group j = k / 4.
size_t lut_packed_bytes(int N, int K);
// q: N x K row-major int8 in {-1, 0, 1} (throws std::invalid_argument on any other code, as
// ternary_pack does). out: lut_packed_bytes(N, K) bytes.
void lut_pack(const int8_t* q, int N, int K, uint8_t* out);
// The same bytes from layout v1 (ternary_pack's), for models loaded pre-packed.
void lut_pack_from_tiles(const uint8_t* tiles, int N, int K, uint8_t* out);
// Inverse of lut_pack.
void lut_unpack(const uint8_t* packed, int N, int K, int8_t* q);

// Y[m*ldy + n] = sum_k u[n][k] * X[m*ldx + k] for m in [0, M), n in [n0, n1), with W packed by
// lut_pack (X padded with zeros to ternary_padded_k(K), as for ternary_gemm).
using LutGemmFn = void (*)(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy,
                           int n0, int n1);

// One LUT kernel: `tokens` is its token block (the rows one table serves; 0 for the scalar one).
struct LutKernel {
    const char* name;
    int tokens;
    LutGemmFn gemm;
};

// The LUT kernels for a ternary kernel table's ISA, narrowest token block first; the generic table
// gets the scalar twin only.
struct LutKernelSet {
    const LutKernel* kernels;
    int count;
};
LutKernelSet lut_kernels(const KernelTable& table);
// By name: one of lut_kernels(table), or the scalar "lut-generic" (any table); nullptr if none.
const LutKernel* lut_kernel_by_name(const KernelTable& table, const char* name);

}  // namespace wfrt
