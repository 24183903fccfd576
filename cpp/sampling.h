// Choosing a token from one row of logits: argmax or temperature / top-k / top-p sampling.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/ternary.h"

namespace wfrt {

struct SampleSpec {
    bool sample = false;        // false: argmax
    int32_t exclude = -1;       // token never chosen (the DLM mask), -1 none
    float temperature = 1.0f;   // <= 0 means argmax
    int32_t top_k = 0;          // 0: off
    float top_p = 1.0f;         // 1: off
    float uniform = 0.0f;       // the caller's draw in [0, 1)
};

// Reusable buffers, one per thread, grown on first use.
struct SampleScratch {
    std::vector<float> p;
    std::vector<int32_t> order;
};

// Returns the chosen token and writes its probability: for argmax, the softmax probability over
// the non-excluded tokens; for sampling, its probability in the distribution sampled from (after
// temperature, top-k and top-p, renormalised). Sampling walks the kept tokens in id order with
// the caller's uniform draw (inverse CDF), so a fixed draw always gives the same token.
// `k` supplies the vectorised softmax denominator of the argmax probability.
int32_t choose_token(const KernelTable& k, const float* logits, int V, const SampleSpec& spec, SampleScratch& scratch,
                     float* prob);

}  // namespace wfrt
