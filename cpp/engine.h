// BitNetBatchEngine: one copy of the model, many sequences, one batched forward per step.
// This header is the contract between the C++ core and the Cython module (_core.pyx).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "errors.h"
#include "tensor.h"

namespace wfrt {

struct EngineOptions {
    int num_threads = 0;        // 0: physical cores
    int max_slots = 64;         // concurrent sequences
    int kv_pages = 0;           // 0: enough for max_slots full-length sequences, capped at 4 GiB of KV
                                //    (but at least one full-length sequence)
    int page_size = 32;         // positions per page
    LmHeadPrecision lm_head = LmHeadPrecision::I8;
    std::string isa;            // "": best this CPU runs; else a KernelTable name (tests force "generic")
    std::string ternary_kernel; // "": WFRT_TERNARY or "auto"; see plan_ternary (kernels/ternary_plan.h)
    std::string ternary_packing = "2bit";  // or "base3": 5 codes per byte (kernels/base3.h)
};

// What a step computes for an output row. wrinklefree_rt._core.OutMode mirrors these values.
enum class OutMode : int8_t {
    Argmax = 0,   // the most likely token
    Sample = 1,   // temperature / top-k / top-p with the caller's uniform draw
    Logits = 2,   // the full logits row (and the argmax)
};

// One step = rows from any sequences + which rows need an output.
struct StepInput {
    int n_rows = 0;
    const int32_t* slot = nullptr;      // [n_rows]
    const int32_t* position = nullptr;  // [n_rows]
    const int32_t* token = nullptr;     // [n_rows]
    int n_out = 0;
    const int32_t* out_row = nullptr;   // [n_out] index into rows
    const OutMode* out_mode = nullptr;  // [n_out]
    const int32_t* exclude = nullptr;   // [n_out] token id never chosen (mask), -1 none
    const float* temperature = nullptr; // [n_out] Sample rows
    const int32_t* top_k = nullptr;     // [n_out] Sample rows, 0 = off
    const float* top_p = nullptr;       // [n_out] Sample rows, 1 = off
    const float* uniform = nullptr;     // [n_out] Sample rows, caller's random draw in [0, 1)
};

struct StepOutput {
    int32_t* token = nullptr;   // [n_out] chosen token
    float* prob = nullptr;      // [n_out] its probability (softmax over non-excluded tokens)
    float* logits = nullptr;    // [count of Logits rows, vocab] in out order, may be null if none
};

class BitNetBatchEngine {
public:
    BitNetBatchEngine(const ModelSpec& cfg, const EngineOptions& opt, const std::vector<NamedTensor>& tensors);
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

    const ModelSpec& config() const;
    int pages_total() const;
    int pages_free() const;
    int page_size() const;
    int slots_free() const;
    int num_threads() const;
    const char* isa() const;
    // The ternary kernel per row count, e.g. "1:tiles ... 32:lut32-avx2 ...".
    std::string ternary_plan() const;
    // Bytes of the weights copied into the engine's own memory (the layouts the plan reads, the
    // int8 / q4 head); the f32 tensors it borrows are not counted.
    size_t weight_bytes() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Hands the heap's free pages back to the OS. A load frees gigabytes of staging arrays (int8
// codes before packing, source dtypes before conversion) in chunks glibc keeps for reuse, so
// without this a loaded 2B model looks twice its size. No-op where the C library cannot do it.
void release_free_heap();

}  // namespace wfrt
