// BitNetBatchEngine: one copy of the model, many sequences, one batched forward per step.
// This header is the contract between the C++ core and the Cython module (_core.pyx).
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace wfrt {

// Raised when the KV pool cannot hold what was asked; the caller waits and retries.
struct KVCacheFull : std::runtime_error { using std::runtime_error::runtime_error; };
// Raised when every sequence slot is in use.
struct NoFreeSlot : std::runtime_error { using std::runtime_error::runtime_error; };
// Raised when a step was cancelled between layers (cancel()).
struct StepCancelled : std::runtime_error { using std::runtime_error::runtime_error; };

struct ModelConfig {
    int vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
    int num_heads = 0, num_kv_heads = 0, head_dim = 0, max_positions = 0;
    float rms_norm_eps = 1e-5f, rope_theta = 500000.0f;
    bool tie_word_embeddings = false;  // the LM head is embed_tokens (an lm_head tensor is then ignored)
};

enum class LmHeadPrecision { F32 = 0, I8 = 1 };

struct EngineOptions {
    int num_threads = 0;        // 0: physical cores
    int max_slots = 64;         // concurrent sequences
    int kv_pages = 0;           // 0: enough for max_slots full-length sequences, capped at 4 GiB of KV
                                //    (but at least one full-length sequence)
    int page_size = 32;         // positions per page
    LmHeadPrecision lm_head = LmHeadPrecision::I8;
    std::string isa;            // "": best this CPU runs; else a KernelTable name (tests force "generic")
    std::string ternary_kernel; // "": WFRT_TERNARY or "auto"; see plan_ternary (kernels/ternary_plan.h)
};

// A borrowed tensor. Used in place (the caller keeps it alive as long as the engine: the Cython
// layer holds the numpy arrays): f32 embed_tokens and lm_head, pre-packed ternary (dtype 2),
// lm_head_i8 (dtype 3, (V,H)) with lm_head_i8.scales (f32 (V,)). Everything else is copied or packed.
struct TensorView {
    const void* data = nullptr;
    int dtype = 0;                  // 0 = f32, 1 = int8 ternary {-1,0,1}, 2 = uint8 pre-packed ternary, 3 = int8 (LM head rows)
    std::vector<int64_t> shape;
    float scale = 1.0f;             // ternary: the per-tensor weight scale s (y = dot * s / a)
};

// Canonical tensor names (what every checkpoint format yields):
//   embed_tokens (V,H) f32;  norm (H) f32;  lm_head (V,H) f32, absent when tied
//   layers.{i}.input_layernorm (H), layers.{i}.post_attention_layernorm (H),
//   layers.{i}.attn_sub_norm (H), layers.{i}.ffn_sub_norm (I)          all f32
//   layers.{i}.{q,k,v,o,gate,up,down}_proj  ternary (out,in) with scale
struct NamedTensor { std::string name; TensorView view; };

// One step = rows from any sequences + which rows need an output.
struct StepInput {
    int n_rows = 0;
    const int32_t* slot = nullptr;      // [n_rows]
    const int32_t* position = nullptr;  // [n_rows]
    const int32_t* token = nullptr;     // [n_rows]
    int n_out = 0;
    const int32_t* out_row = nullptr;   // [n_out] index into rows
    const int8_t* out_mode = nullptr;   // [n_out] 0 argmax, 1 sample, 2 full logits (+argmax)
    const int32_t* exclude = nullptr;   // [n_out] token id never chosen (mask), -1 none
    const float* temperature = nullptr; // [n_out] mode 1
    const int32_t* top_k = nullptr;     // [n_out] mode 1, 0 = off
    const float* top_p = nullptr;       // [n_out] mode 1, 1 = off
    const float* uniform = nullptr;     // [n_out] mode 1, caller's random draw in [0, 1)
};

struct StepOutput {
    int32_t* token = nullptr;   // [n_out] chosen token
    float* prob = nullptr;      // [n_out] its probability (softmax over non-excluded tokens)
    float* logits = nullptr;    // [count of mode-2 rows, vocab] in out order, may be null if none
};

class BitNetBatchEngine {
public:
    BitNetBatchEngine(const ModelConfig& cfg, const EngineOptions& opt, const std::vector<NamedTensor>& tensors);
    ~BitNetBatchEngine();
    BitNetBatchEngine(const BitNetBatchEngine&) = delete;
    BitNetBatchEngine& operator=(const BitNetBatchEngine&) = delete;

    // Sequences. attn_block: B of the visibility rule p_k / B <= p_q / B (1 = causal).
    int alloc_sequence(int attn_block);          // throws NoFreeSlot
    void reserve(int slot, int n_positions);     // pages for positions [0, n_positions); throws KVCacheFull
    void free_sequence(int slot);                // returns pages; the slot forgets everything
    bool can_reserve(int slot, int n_positions) const;

    void step(const StepInput& in, StepOutput& out);  // throws on bad input; KV state unchanged then
    void cancel();                                     // makes a running step throw StepCancelled

    const ModelConfig& config() const;
    int pages_total() const;
    int pages_free() const;
    int page_size() const;
    int slots_free() const;
    int num_threads() const;
    const char* isa() const;
    // The ternary kernel per row count, e.g. "1:tiles ... 32:lut32-avx2 ...".
    std::string ternary_plan() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Hands the heap's free pages back to the OS. A load frees gigabytes of staging arrays (int8
// codes before packing, source dtypes before conversion) in chunks glibc keeps for reuse, so
// without this a loaded 2B model looks twice its size. No-op where the C library cannot do it.
void release_free_heap();

}  // namespace wfrt
