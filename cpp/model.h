// BitNet b1.58 weights (one shared copy) and the layer math that runs on them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config.h"
#include "errors.h"
#include "kernels/ternary.h"
#include "kernels/ternary_plan.h"
#include "tensor.h"
#include "thread_pool.h"
#include "huge_page_arena.h"

namespace wfrt {

// Ternary (N x K) weight in the kernels' packed layouts, each in its Model arena.
struct TernaryMatrix {
    int N = 0, K = 0;
    float scale = 1.0f;
    const uint8_t* tiles = nullptr;  // layout v1 (ternary.h); null with base-3 packing
    const uint8_t* lut = nullptr;    // the LUT kernels' layout (lut.h), only when the plan uses them
    const uint8_t* base3 = nullptr;  // 5 codes per byte (base3.h), only with base-3 packing
};

struct LayerWeights {
    std::vector<float> input_norm, post_attn_norm, attn_sub_norm, ffn_sub_norm;
    TernaryMatrix q, k, v, o, gate, up, down;
};

// The LM head, (V x H). F32: rows of floats. I8: int8 rows and one float scale per row
// (w ~ q * row_scale), quantized at load from the float head or copied from `lm_head_i8`.
// Q4: 4-bit codes with one float scale per 32 inputs (kernels' q4 layout, ternary.h), quantized
// at load from the float head.
struct LmHead {
    LmHeadPrecision precision = LmHeadPrecision::F32;
    const float* f32 = nullptr;
    const int8_t* i8 = nullptr;
    const float* row_scale = nullptr;
    std::vector<float> owned_scale;
    const uint8_t* q4_codes = nullptr;
    std::vector<float> q4_scales;
    HugePageArena arena;  // the int8 rows or the q4 codes (huge_page_arena.h)
};

struct Model {
    // Borrowed tensors (zero-copy, the caller keeps them alive): f32 embed_tokens and lm_head.
    // Everything else is copied: the bytes each step streams (ternary weights, int8 head) into
    // huge-page arenas, which decode read 10-18 % faster than the same bytes in a file mapping's
    // page cache (docs/benchmarks.md). Throws BadTensor for a missing, misshaped or mistyped
    // tensor. The config is trusted (config.h).
    // Packing and head quantization run on `pool`.
    Model(const ModelSpec& cfg, LmHeadPrecision head, const std::vector<NamedTensor>& tensors, ThreadPool& pool);

    ModelSpec cfg;
    // The ternary weights every step streams, in huge-page arenas (huge_page_arena.h): one per layout.
    HugePageArena tiles_arena, lut_arena, base3_arena;
    const float* embed = nullptr;   // (V, H)
    std::vector<float> final_norm;  // (H)
    std::vector<LayerWeights> layers;
    LmHead head;
    std::vector<float> inv_freq;    // RoPE, head_dim/2, computed in fp32 like transformers

    // Add the LUT or the base-3 layout beside every ternary matrix's tiles (on `pool`).
    void add_lut_layouts(ThreadPool& pool);
    void add_base3_layouts(ThreadPool& pool);
    // Frees the tiles (once the layouts the kernels read are built from them).
    void drop_tiles();
    // Bytes of the weights copied into the arenas (ternary layouts, int8 / q4 head).
    size_t arena_bytes() const;
};

// What the math helpers run on: the kernel table and the worker threads.
struct Compute {
    const KernelTable* k;
    ThreadPool* pool;
    const TernaryPlan* plan = nullptr;  // null: the table's tiles for every row count
};

// int8 rows with one scale per row, as the int8 LM head stores them: scale = max|w| / 127
// (1 for an all-zero row), q = clamp(rint(w / scale), -127, 127). Rows [n0, n1) of (N, K).
void quantize_rows_i8_per_row(const float* w, int K, int n0, int n1, int8_t* q, float* scale);

// Row-wise RMSNorm in fp32: out = x * rsqrt(mean(x^2) + eps) * w.  x, out: M rows of n (ld n).
// The sum of squares in double (kernel entry sum_squares).
void rms_norm_rows(const KernelTable& k, const float* x, const float* w, int M, int n, float eps, float* out);

// The input of a BitLinear, row by row (parallel over rows): RMSNorm with weight w into `normed`
// (M x K scratch), then per-row int8 activations xq (M x ternary_padded_k(K)), scale a, sum x_q.
// With `up`, the input is relu(x)^2 * up (the FFN's gate), written back into x first.
void norm_quantize_rows(const Compute& c, float* x, const float* up, const float* w, int M, int K, float eps,
                        float* normed, int8_t* xq, float* a, int32_t* xsum);

// y = (sum u*x_q - sum x_q) * s / a for each matrix in `mats` (at most kMaxBitlinearMats),
// sharing one quantized input. Y32 is scratch of M * (sum of the matrices' N) int32. outs[i] is M x mats[i]->N floats (ld N), overwritten, or
// added to when `accumulate` (the residual stream).
constexpr int kMaxBitlinearMats = 4;
void bitlinear(const Compute& c, const TernaryMatrix* const* mats, float* const* outs, int n_mats,
               const int8_t* xq, const float* a, const int32_t* xsum, int M, int32_t* y32, bool accumulate = false);

// RoPE angles of one position: cos_sin[i] = cos(inv_freq[i] * pos), cos_sin[half + i] = its sin.
// A step computes them once per row and every layer's Q and K rotation reuses them.
void rope_angles(const float* inv_freq, int half, int pos, float* cos_sin);
// NeoX (rotate-half) RoPE in place on `n_heads` heads of one row, by that row's rope_angles.
void rope_row(float* v, int n_heads, int head_dim, const float* cos_sin);

// Logits for M rows of final hidden states x (M x H): out (M x V). For the int8 and q4 heads,
// xq/a/y32 are scratch of M x ternary_padded_k(H) int8, M floats and M x V int32 (int8 only).
void lm_head_rows(const Compute& c, const Model& m, const float* x, int M, float* out,
                  int8_t* xq, float* a, int32_t* y32);

// Output rows [0, N) split into tasks for the pool, cut at multiples of `align` rows (the
// kernel's widest row block), about `per_thread` tasks per thread.
struct RowSplit {
    int N, chunk, tasks;
    RowSplit(int n, int threads, int per_thread = 4, int align = kTernaryNAlign);
    int begin(int t) const { return t * chunk; }
    int end(int t) const { return (t + 1) * chunk < N ? (t + 1) * chunk : N; }
};

}  // namespace wfrt
