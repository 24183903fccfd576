// LUT layout packing and the scalar reference of the LUT kernels (see lut.h).
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "lut_isa.h"

namespace wfrt {

namespace {

inline size_t lut_byte(int N, int n, int j) {
    return (size_t)(j / kLutSlabGroups) * N * kLutSlabGroups + (size_t)n * kLutSlabGroups + j % kLutSlabGroups;
}

// Code q + 1 of weight i (0..3) in a pattern byte.
inline int lut_code(int p, int i) {
    static constexpr int kPow3[kLutGroup] = {1, 3, 9, 27};
    return p / kPow3[i] % 3;
}

// Fills the pattern bytes of rows [n0, n1) from code(n, k) in {0, 1, 2} (u = q + 1; padding
// k >= K gets 1).
template <class Code>
void lut_fill(int N, int K, int n0, int n1, uint8_t* out, Code code) {
    const int groups = ternary_padded_k(K) / kLutGroup;
    for (int n = n0; n < n1; ++n)
        for (int j = 0; j < groups; ++j) {
            int p = 0;
            for (int i = kLutGroup - 1; i >= 0; --i) {
                const int k = j * kLutGroup + i;
                p = 3 * p + (k < K ? code(n, k) : 1);
            }
            out[lut_byte(N, n, j)] = (uint8_t)p;
        }
}

// The definition, one weight at a time: decode each pattern byte and multiply.
void lut_gemm_generic(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0,
                      int n1) {
    const int groups = ternary_padded_k(K) / kLutGroup;
    for (int m = 0; m < M; ++m)
        for (int n = n0; n < n1; ++n) {
            const int8_t* x = X + (size_t)m * ldx;
            int32_t acc = 0;
            for (int j = 0; j < groups; ++j) {
                const int p = W[lut_byte(N, n, j)];
                for (int i = 0; i < kLutGroup; ++i) acc += lut_code(p, i) * x[j * kLutGroup + i];
            }
            Y[(size_t)m * ldy + n] = acc;
        }
}

}  // namespace

const LutKernel kLutGeneric[1] = {{"lut-generic", 0, lut_gemm_generic}};

size_t lut_packed_bytes(int N, int K) { return (size_t)N * (ternary_padded_k(K) / kLutGroup); }

void lut_pack(const int8_t* q, int N, int K, uint8_t* out) {
    for (size_t i = 0; i < (size_t)N * K; ++i)
        if ((uint8_t)(q[i] + 1) > 2)
            throw std::invalid_argument("lut_pack: code " + std::to_string(q[i]) + " at row " + std::to_string(i / K) +
                                        ", column " + std::to_string(i % K) + " is not in {-1, 0, 1}");
    lut_fill(N, K, 0, N, out, [&](int n, int k) { return q[(size_t)n * K + k] + 1; });
}

void lut_pack_from_tiles(const uint8_t* tiles, int N, int K, uint8_t* out) {
    // Codes one 16-row tile at a time via ternary_unpack of that tile's bytes (a tile is a packed
    // matrix of its own: tiles are contiguous in layout v1).
    const int Kp = ternary_padded_k(K);
    const size_t tile_bytes = (size_t)Kp * 4;
    std::vector<int8_t> q((size_t)kTernaryRowTile * K);
    for (int n0 = 0; n0 < N; n0 += kTernaryRowTile) {
        const int rows = N - n0 < kTernaryRowTile ? N - n0 : kTernaryRowTile;
        ternary_unpack(tiles + (size_t)(n0 / kTernaryRowTile) * tile_bytes, rows, K, q.data());
        lut_fill(N, K, n0, n0 + rows, out, [&](int n, int k) { return q[(size_t)(n - n0) * K + k] + 1; });
    }
}

void lut_unpack(const uint8_t* packed, int N, int K, int8_t* q) {
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k)
            q[(size_t)n * K + k] = (int8_t)(lut_code(packed[lut_byte(N, n, k / kLutGroup)], k % kLutGroup) - 1);
}

LutKernelSet lut_kernels(const KernelTable& table) {
#if WFRT_X86_KERNELS
    if (&table == &kAvx512VnniKernels) return {kLutAvx512, 3};
    if (&table == &kAvx2Kernels || &table == &kAvxVnniKernels) return {kLutAvx2, 3};
#endif
    (void)table;
    return {kLutGeneric, 1};
}

const LutKernel* lut_kernel_by_name(const KernelTable& table, const char* name) {
    const LutKernelSet set = lut_kernels(table);
    for (int i = 0; i < set.count; ++i)
        if (std::strcmp(set.kernels[i].name, name) == 0) return &set.kernels[i];
    return std::strcmp(name, kLutGeneric[0].name) == 0 ? &kLutGeneric[0] : nullptr;
}

}  // namespace wfrt
