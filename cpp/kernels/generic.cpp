// Scalar reference kernels: the obviously-correct definition every SIMD variant is tested against.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "base3.h"
#include "isa_tables.h"

namespace wfrt {

static_assert(kTernaryKBlock % 16 == 0, "a K block holds whole 16-k chunks");
static_assert(kTernaryNAlign % kTernaryRowTile == 0, "thread cuts fall on tile boundaries");

size_t ternary_packed_bytes(int N, int K) {
    size_t tiles = (size_t)(N + kTernaryRowTile - 1) / kTernaryRowTile;
    return tiles * (size_t)ternary_padded_k(K) * 4;
}

namespace {

// Where code (n, k) lives: byte offset and bit shift (layout version 1, see ternary.h).
struct CodePos { size_t byte; int shift; };
inline CodePos code_pos(int n, int k, int Kp) {
    int kk = k % 16;
    size_t byte = ternary_chunk_offset(n / kTernaryRowTile, k / 16, Kp) + (n % kTernaryRowTile) * 4 + kk % 4;
    return {byte, 2 * (kk / 4)};
}

inline int code_at(const uint8_t* W, int n, int k, int Kp) {
    CodePos p = code_pos(n, k, Kp);
    return (W[p.byte] >> p.shift) & 3;
}

void quantize_row_i8_generic(const float* x, int K, int K_padded, int8_t* xq, float* scale, int32_t* sum) {
    float amax = 0.0f;
    for (int k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
    const float a = 127.0f / std::max(amax, 1e-5f);
    int32_t s = 0;
    for (int k = 0; k < K; ++k) {
        float v = std::min(std::max(std::rint(x[k] * a), -128.0f), 127.0f);
        xq[k] = (int8_t)v;
        s += (int8_t)v;
    }
    std::memset(xq + K, 0, (size_t)(K_padded - K));
    *scale = a;
    *sum = s;
}

// Y[m*ldy + n] = sum_k w(n, k) * X[m*ldx + k]: the integer GEMM definition, each layout giving w.
template <class Weight>
void gemm_by_weight(int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0, int n1, Weight w) {
    for (int m = 0; m < M; ++m)
        for (int n = n0; n < n1; ++n) {
            int32_t acc = 0;
            for (int k = 0; k < K; ++k) acc += w(n, k) * X[(size_t)m * ldx + k];
            Y[(size_t)m * ldy + n] = acc;
        }
}

void ternary_gemm_generic(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M,
                          int32_t* Y, int ldy, int n0, int n1) {
    (void)N;
    const int Kp = ternary_padded_k(K);
    gemm_by_weight(K, X, ldx, M, Y, ldy, n0, n1, [&](int n, int k) { return code_at(W, n, k, Kp); });
}

void base3_gemm_generic(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M,
                        int32_t* Y, int ldy, int n0, int n1) {
    (void)N;
    const int Kp = ternary_padded_k(K);
    gemm_by_weight(K, X, ldx, M, Y, ldy, n0, n1,
                   [&](int n, int k) { return base3_digit(W[base3_byte(n, k, Kp)], base3_tile(n)); });
}

void i8_gemm_generic(const int8_t* W, int N, int K, const int8_t* X, int ldx, int M,
                     int32_t* Y, int ldy, int n0, int n1) {
    (void)N;
    gemm_by_weight(K, X, ldx, M, Y, ldy, n0, n1, [&](int n, int k) { return (int)W[(size_t)n * K + k]; });
}

// Code byte of (row n, k) in the q4 layout (ternary.h); k >= 16 within its group is the high nibble.
inline size_t q4_code_byte(int n, int k, int groups) {
    const int kk = k % kQ4Group;
    return ((size_t)(n / kQ4RowTile) * groups + k / kQ4Group) * (kQ4RowTile * 16) + (kk % 16) / 4 * 32 +
           (n % kQ4RowTile) * 4 + kk % 4;
}
inline int q4_code_shift(int k) { return k % kQ4Group < 16 ? 0 : 4; }
inline size_t q4_scale_index(int n, int g, int groups) {
    return ((size_t)(n / kQ4RowTile) * groups + g) * kQ4RowTile + n % kQ4RowTile;
}

void q4_gemm_generic(const uint8_t* codes, const float* scales, int N, int K, const int8_t* X, int ldx, int M,
                     float* Y, int ldy, int n0, int n1) {
    (void)N;
    const int groups = q4_groups(K);
    for (int m = 0; m < M; ++m)
        for (int n = n0; n < n1; ++n) {
            float acc = 0.0f;
            for (int g = 0; g < groups; ++g) {
                int32_t s = 0;
                for (int k = g * kQ4Group; k < std::min(K, (g + 1) * kQ4Group); ++k)
                    s += (((codes[q4_code_byte(n, k, groups)] >> q4_code_shift(k)) & 15) - 8) * X[(size_t)m * ldx + k];
                acc = std::fma(scales[q4_scale_index(n, g, groups)], (float)s, acc);
            }
            Y[(size_t)m * ldy + n] = acc;
        }
}

void f32_gemm_generic(const float* W, int N, int K, const float* X, int ldx, int M,
                      float* Y, int ldy, int n0, int n1) {
    (void)N;
    for (int m = 0; m < M; ++m)
        for (int n = n0; n < n1; ++n) {
            // Double accumulation keeps the reference closer to exact than any SIMD order.
            double acc = 0.0;
            for (int k = 0; k < K; ++k) acc += (double)W[(size_t)n * K + k] * X[(size_t)m * ldx + k];
            Y[(size_t)m * ldy + n] = (float)acc;
        }
}

// Eight independent partial sums in a fixed order: results do not depend on the thread or the
// batch, and the compiler may vectorize them (a single running sum it may not reorder).
inline float dot8(const float* a, const float* b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int e = 0;
    for (; e + 8 <= n; e += 8)
        for (int j = 0; j < 8; ++j) acc[j] += a[e + j] * b[e + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; e < n; ++e) s += a[e] * b[e];
    return s;
}

void attn_scores_generic(const float* Q, int G, int ldq, int d, const float* Kc, int ld, int count, float scale,
                         float* S, int lds) {
    for (int g = 0; g < G; ++g)
        for (int j = 0; j < count; ++j) S[(size_t)g * lds + j] = dot8(Q + (size_t)g * ldq, Kc + (size_t)j * ld, d) * scale;
}

void attn_accumulate_generic(const float* P, int G, int ldp, int d, const float* Vc, int ld, int count, float* O,
                             int ldo) {
    for (int g = 0; g < G; ++g) {
        float* o = O + (size_t)g * ldo;
        for (int j = 0; j < count; ++j) {
            const float w = P[(size_t)g * ldp + j];
            const float* v = Vc + (size_t)j * ld;
            for (int e = 0; e < d; ++e) o[e] += w * v[e];
        }
    }
}

double exp_sum_generic(const float* x, int n, float mul, float sub) {
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += std::exp(static_cast<double>(x[i] * mul - sub));
    return total;
}

void relu2_mul_generic(float* x, const float* up, int n) {
    for (int i = 0; i < n; ++i) {
        const float r = x[i] > 0.0f ? x[i] : 0.0f;
        x[i] = r * r * up[i];
    }
}

void softmax_generic(float* x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; ++i) mx = std::max(mx, x[i]);
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) {
        x[i] = std::exp(x[i] - mx);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (int i = 0; i < n; ++i) x[i] *= inv;
}

// Eight partial sums: one running sum is a serial add chain the compiler may not reorder.
double sum_squares_generic(const float* x, int n) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(x[i + j]) * x[i + j];
    double s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
    return s;
}

}  // namespace

void ternary_pack(const int8_t* q, int N, int K, uint8_t* out) {
    // One branch-free pass finds whether any code is bad (it vectorizes); only then look for it.
    const size_t count = (size_t)N * K;
    uint8_t bad = 0;
    for (size_t i = 0; i < count; ++i) bad |= (uint8_t)(q[i] + 1) > 2;
    if (bad) {
        size_t i = 0;
        while ((uint8_t)(q[i] + 1) <= 2) ++i;
        throw std::invalid_argument("ternary_pack: code " + std::to_string(q[i]) + " at row " + std::to_string(i / K) +
                                    ", column " + std::to_string(i % K) + " is not in {-1, 0, 1}");
    }
    const int Kp = ternary_padded_k(K);
    const int full_chunks = K / 16;
    std::memset(out, 0, ternary_packed_bytes(N, K));
    for (int n = 0; n < N; ++n) {
        const int8_t* row = q + (size_t)n * K;
        uint8_t* dst = out + ternary_chunk_offset(n / kTernaryRowTile, 0, Kp) + (n % kTernaryRowTile) * 4;
        for (int g = 0; g < full_chunks; ++g, row += 16, dst += 64)
            for (int j = 0; j < 4; ++j)
                dst[j] = (uint8_t)((row[j] + 1) | (row[4 + j] + 1) << 2 | (row[8 + j] + 1) << 4 | (row[12 + j] + 1) << 6);
        for (int k = full_chunks * 16; k < K; ++k) {
            CodePos p = code_pos(n, k, Kp);
            out[p.byte] |= (uint8_t)((q[(size_t)n * K + k] + 1) << p.shift);
        }
    }
}

void ternary_unpack(const uint8_t* packed, int N, int K, int8_t* q) {
    const int Kp = ternary_padded_k(K);
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k) q[(size_t)n * K + k] = (int8_t)(code_at(packed, n, k, Kp) - 1);
}

size_t q4_code_bytes(int N, int K) {
    return (size_t)(N + kQ4RowTile - 1) / kQ4RowTile * kQ4RowTile * q4_groups(K) * (kQ4Group / 2);
}

size_t q4_scale_count(int N, int K) { return (size_t)(N + kQ4RowTile - 1) / kQ4RowTile * kQ4RowTile * q4_groups(K); }

void q4_pack_rows(const float* w, int N, int K, int n0, int n1, uint8_t* codes, float* scales) {
    (void)N;
    const int groups = q4_groups(K);
    for (int n = n0; n < n1; ++n) {
        const float* row = w + (size_t)n * K;
        for (int g = 0; g < groups; ++g) {
            const int k0 = g * kQ4Group, k1 = std::min(K, k0 + kQ4Group);
            float amax = 0.0f;
            for (int k = k0; k < k1; ++k) {
                if (!std::isfinite(row[k]))
                    throw std::invalid_argument("q4_pack_rows: weight at row " + std::to_string(n) + ", column " +
                                                std::to_string(k) + " is not finite");
                amax = std::max(amax, std::fabs(row[k]));
            }
            const float d = amax / 7.0f;
            scales[q4_scale_index(n, g, groups)] = d;
            for (int k = k0; k < k0 + kQ4Group; ++k) {
                const float q = k < k1 && d > 0.0f ? std::min(7.0f, std::max(-8.0f, std::rint(row[k] / d))) : 0.0f;
                const size_t byte = q4_code_byte(n, k, groups);
                const int shift = q4_code_shift(k);
                codes[byte] = (uint8_t)((codes[byte] & ~(15 << shift)) | ((int)q + 8) << shift);
            }
        }
    }
}

void q4_unpack(const uint8_t* codes, const float* scales, int N, int K, int8_t* q, float* d) {
    const int groups = q4_groups(K);
    for (int n = 0; n < N; ++n) {
        for (int k = 0; k < K; ++k)
            q[(size_t)n * K + k] = (int8_t)(((codes[q4_code_byte(n, k, groups)] >> q4_code_shift(k)) & 15) - 8);
        for (int g = 0; g < groups; ++g) d[(size_t)n * groups + g] = scales[q4_scale_index(n, g, groups)];
    }
}

const KernelTable kGenericKernels = {
    "generic", quantize_row_i8_generic, ternary_gemm_generic, base3_gemm_generic, i8_gemm_generic, q4_gemm_generic, f32_gemm_generic,
    attn_scores_generic, attn_accumulate_generic, exp_sum_generic, relu2_mul_generic,
    softmax_generic, sum_squares_generic,
};

}  // namespace wfrt
