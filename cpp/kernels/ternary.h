// Ternary and int8 kernels behind one dispatch table.
//
// Call sites never branch on ISA: they call through `kernels()`, which is chosen once at
// start-up from the CPU's features (override with WFRT_ISA=generic|avx2|... for tests).
// Every ISA variant lives in its own file (generic.cpp, avx2.cpp, ...) and must give results
// identical to the generic one (integer dot products are exact; float helpers within 1e-6 rel).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace wfrt {

// A ternary weight matrix of N output rows and K inputs, packed in the layout the kernels use.
// The layout belongs to this module (see ternary_pack); model code only stores the bytes.
// Codes are u = q + 1 in {0, 1, 2}; the kernels return sum_k u[k] * x[k] and the caller
// subtracts sum_k x[k] once per activation row.
size_t ternary_packed_bytes(int N, int K);
// q: N x K row-major int8 in {-1, 0, 1}.  out: ternary_packed_bytes(N, K) bytes.
// Throws std::invalid_argument naming the first code outside {-1, 0, 1}.
void ternary_pack(const int8_t* q, int N, int K, uint8_t* out);
// K must be padded to this multiple for activations handed to the kernels (zero padded).
constexpr int kTernaryKBlock = 128;
inline int ternary_padded_k(int K) { return (K + kTernaryKBlock - 1) / kTernaryKBlock * kTernaryKBlock; }
// Inverse of ternary_pack: writes the N x K codes q in {-1, 0, 1}.
void ternary_unpack(const uint8_t* packed, int N, int K, int8_t* q);

// The packed layout, version 1 ("vertical" tiles, so one SIMD lane = one output row):
// rows are grouped in tiles of kTernaryRowTile (N padded with u = 0 rows), K is padded to
// ternary_padded_k(K). Each tile is K_pad / 16 chunks of 64 bytes; in chunk g, byte r*4 + j,
// bits 2s..2s+1 hold u for row (tile*16 + r), k = 16g + 4s + j. Unpacking a chunk with
// three shifts and a mask gives four vectors whose int32 lane r dots 4 consecutive k of row r
// with 4 broadcast activation bytes (maddubs / dpbusd), so no horizontal sums are needed.
// Bump the version whenever this layout changes: the packed file format stores it.
constexpr int kTernaryRowTile = 16;
inline int ternary_layout_version() { return 1; }
// Callers splitting [0, N) across threads should cut at multiples of this many rows
// (the widest row tile any kernel uses); other cuts are correct, only slower.
constexpr int kTernaryNAlign = 64;

// A 4-bit matrix of N rows and K inputs (the q4 LM head): K in groups of kQ4Group, one float
// scale d per row and group, codes q in [-8, 7] stored as u = q + 8 (w ~ q * d). The layout
// ("vertical" like the ternary tiles, so one int32 lane = one row): rows in tiles of kQ4RowTile
// (N padded with q = 0, d = 0 rows), K padded with q = 0 to whole groups. Tile t, group g owns 128
// code bytes at ((t * groups + g) * 128): byte j*32 + r*4 + i holds, for row t*8 + r, u at
// k = 32g + 4j + i in its low nibble and at k = 32g + 16 + 4j + i in its high one; and 8 scales
// at floats ((t * groups + g) * 8 + r). Unpacking a 32-byte load by nibble gives two vectors whose
// int32 lane r dots 4 consecutive k of row r with 4 broadcast activation bytes.
constexpr int kQ4Group = 32;
constexpr int kQ4RowTile = 8;
inline int q4_groups(int K) { return (K + kQ4Group - 1) / kQ4Group; }
size_t q4_code_bytes(int N, int K);
size_t q4_scale_count(int N, int K);
// Quantizes rows [n0, n1) of the float (N, K) matrix w: per group d = max|w| / 7 (0 for an
// all-zero group), q = clamp(rint(w / d), -8, 7). Rows touch disjoint bytes, so threads may
// pack disjoint row ranges at once; padding rows must be zeroed by the caller first
// (value-initialized buffers are). Non-finite weights are refused (std::invalid_argument).
void q4_pack_rows(const float* w, int N, int K, int n0, int n1, uint8_t* codes, float* scales);
// Inverse of the code layout: the N x K codes q in [-8, 7] and the N x q4_groups(K) scales.
void q4_unpack(const uint8_t* codes, const float* scales, int N, int K, int8_t* q, float* d);

struct KernelTable {
    const char* name;
    // Per-row absmax int8 quantization: x_q = clamp(rint(x * 127/max|x|), -128, 127).
    // Writes K_padded int8 values (zeros past K); returns scale a = 127/max(|x|, 1e-5) and sum of x_q.
    void (*quantize_row_i8)(const float* x, int K, int K_padded, int8_t* xq, float* scale, int32_t* sum);
    // Y[m*ldy + n] = sum_k u[n][k] * X[m*ldx + k] for m in [0, M), n in [n0, n1).
    // W packed by ternary_pack for (N, K); X has ldx >= ternary_padded_k(K) int8 values per row.
    void (*ternary_gemm)(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M,
                         int32_t* Y, int ldy, int n0, int n1);
    // The same on the base-3 layout (base3.h, 1.6 bits per weight), W packed by base3_pack.
    void (*base3_gemm)(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M,
                       int32_t* Y, int ldy, int n0, int n1);
    // int8 rows (LM head): Y[m*ldy + n] = sum_k W[n*K + k] * X[m*ldx + k] (both signed int8).
    // X must lie in [-127, 127] (quantize_row_i8 guarantees it): SIMD variants move W's sign onto X.
    void (*i8_gemm)(const int8_t* W, int N, int K, const int8_t* X, int ldx, int M,
                    int32_t* Y, int ldy, int n0, int n1);
    // 4-bit rows (q4 LM head, layout q4_pack_rows): Y[m*ldy + n] = sum over groups g, in order,
    // of d[n][g] * S(g), each step one fused multiply-add (fmaf) from 0, where S(g) = sum_{k in g}
    // q[n][k] * X[m*ldx + k] is an exact integer. Every variant is bit-identical to generic.
    // X: ldx >= q4_groups(K) * kQ4Group int8 values per row (any values past K).
    void (*q4_gemm)(const uint8_t* codes, const float* scales, int N, int K, const int8_t* X, int ldx, int M,
                    float* Y, int ldy, int n0, int n1);
    // fp32 rows (reference LM head): Y[m*ldy + n] = sum_k W[n*K + k] * X[m*ldx + k].
    void (*f32_gemm)(const float* W, int N, int K, const float* X, int ldx, int M,
                     float* Y, int ldy, int n0, int n1);
    // Attention of G query heads that share one KV head (GQA), over `count` cached positions
    // whose K (or V) rows of d floats lie `ld` floats apart (one run of a KV page).
    // Scores: S[g*lds + j] = scale * sum_e Q[g*ldq + e] * Kc[j*ld + e].
    void (*attn_scores)(const float* Q, int G, int ldq, int d, const float* Kc, int ld, int count, float scale,
                        float* S, int lds);
    // Weighted values, added: O[g*ldo + e] += sum_j P[g*ldp + j] * Vc[j*ld + e], j in order.
    void (*attn_accumulate)(const float* P, int G, int ldp, int d, const float* Vc, int ld, int count,
                            float* O, int ldo);
    // Softmax denominator over a vocabulary row: sum_i exp(x[i] * mul - sub), the argument
    // rounded to float as written (a product, then a difference), the sum in double. SIMD
    // variants take exp in float (within 1e-6 rel per term; terms below e^-87 may count as 0).
    double (*exp_sum)(const float* x, int n, float mul, float sub);
    // The FFN gate in place: x[i] = r * r * up[i] with r = max(x[i], 0) (NaN -> 0). Exact.
    void (*relu2_mul)(float* x, const float* up, int n);
    // Softmax in place over n >= 1 attention scores: x[i] = exp(x[i] - max) / sum (SIMD variants
    // within 1e-6 rel).
    void (*softmax)(float* x, int n);
    // RMSNorm's sum of squares, in double (float squares are exact in double, so any order
    // agrees to double rounding).
    double (*sum_squares)(const float* x, int n);
};

// The table for the best ISA this CPU supports (or the one WFRT_ISA names).
const KernelTable& kernels();
// Every table this CPU can run, generic first (tests compare each against generic).
std::vector<const KernelTable*> supported_kernels();
// Look up by name; nullptr if unknown or unsupported on this CPU.
const KernelTable* kernels_by_name(const std::string& name);

}  // namespace wfrt
