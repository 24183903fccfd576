#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace wfrt {

namespace {

int32_t argmax(const float* logits, int V, int32_t exclude) {
    int32_t best = -1;
    float best_v = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < V; ++i) {
        if (i == exclude) continue;
        if (best < 0 || logits[i] > best_v) {
            best = i;
            best_v = logits[i];
        }
    }
    return best;
}

// Softmax probability of `token` at inverse temperature `inv_t` over the non-excluded tokens
// (the vocabulary on either side of the excluded id).
float softmax_prob(const KernelTable& k, const float* logits, int V, int32_t exclude, int32_t token, float inv_t) {
    const float top = logits[token] * inv_t;
    if (exclude < 0) return static_cast<float>(1.0 / k.exp_sum(logits, V, inv_t, top));
    const double total = k.exp_sum(logits, exclude, inv_t, top) + k.exp_sum(logits + exclude + 1, V - exclude - 1, inv_t, top);
    return static_cast<float>(1.0 / total);
}

}  // namespace

int32_t choose_token(const KernelTable& k, const float* logits, int V, const SampleSpec& spec, SampleScratch& s,
                     float* prob) {
    const int32_t best = argmax(logits, V, spec.exclude);
    if (!spec.sample || spec.temperature <= 0.0f) {
        *prob = softmax_prob(k, logits, V, spec.exclude, best, 1.0f);
        return best;
    }
    const float inv_t = 1.0f / spec.temperature;
    const float top = logits[best] * inv_t;
    if (s.p.size() < static_cast<size_t>(V)) s.p.resize(V);
    float* p = s.p.data();
    // Unnormalised weights; excluded and filtered tokens get 0.
    for (int i = 0; i < V; ++i) p[i] = i == spec.exclude ? 0.0f : std::exp(logits[i] * inv_t - top);

    const bool use_k = spec.top_k > 0 && spec.top_k < V;
    const bool use_p = spec.top_p < 1.0f;
    if (use_k || use_p) {
        // Candidates in descending weight (ties by id): top-k keeps the first k, top-p the
        // shortest prefix whose mass reaches top_p of what remains.
        if (s.order.size() < static_cast<size_t>(V)) s.order.resize(V);
        int32_t* order = s.order.data();
        int n = 0;
        for (int i = 0; i < V; ++i)
            if (p[i] > 0.0f) order[n++] = i;
        auto by_weight = [p](int32_t x, int32_t y) { return p[x] > p[y] || (p[x] == p[y] && x < y); };
        int keep = use_k ? std::min(n, static_cast<int>(spec.top_k)) : n;
        // Sort only as far as needed: the first `keep` (top-k) or a growing prefix (top-p).
        int sorted = std::min(keep, use_p ? std::min(keep, 1024) : keep);
        std::partial_sort(order, order + sorted, order + n, by_weight);
        if (use_p) {
            double total = 0.0;
            for (int j = 0; j < keep; ++j) total += p[order[j]];
            const double target = static_cast<double>(spec.top_p) * total;
            double cum = 0.0;
            int j = 0;
            for (;; ++j) {
                if (j == sorted) {
                    int more = std::min(keep, sorted * 4);
                    std::partial_sort(order + sorted, order + more, order + n, by_weight);
                    sorted = more;
                }
                cum += p[order[j]];
                if (cum >= target || j + 1 == keep) break;
            }
            keep = j + 1;
        }
        // Zero everything outside the kept set: the weights of order[keep..n) are all <= the
        // kept ones, so clear them directly.
        for (int j = keep; j < n; ++j) p[order[j]] = 0.0f;
    }

    double total = 0.0;
    for (int i = 0; i < V; ++i) total += p[i];
    const double target = static_cast<double>(spec.uniform) * total;
    double cum = 0.0;
    int32_t chosen = best;
    for (int i = 0; i < V; ++i) {
        if (p[i] <= 0.0f) continue;
        cum += p[i];
        chosen = i;
        if (cum > target) break;
    }
    *prob = static_cast<float>(p[chosen] / total);
    return chosen;
}

}  // namespace wfrt
