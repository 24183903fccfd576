#include "kv_cache.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "errors.h"

namespace wfrt {

KVCache::KVCache(int n_layers, int kv_dim, int page_size, int n_pages, int max_slots)
    : n_layers_(n_layers), kv_dim_(kv_dim), page_size_(page_size), n_pages_(n_pages), slots_(max_slots) {
    if (page_size < 1) throw std::invalid_argument("page_size must be >= 1, got " + std::to_string(page_size));
    if (n_pages < 1) throw std::invalid_argument("kv_pages must be >= 1, got " + std::to_string(n_pages));
    if (max_slots < 1) throw std::invalid_argument("max_slots must be >= 1, got " + std::to_string(max_slots));
    size_t bytes = static_cast<size_t>(n_layers) * n_pages * page_size * kv_dim * sizeof(float);
    pool_ = HugePageArena(2 * HugePageArena::piece(bytes));
    k_ = reinterpret_cast<float*>(pool_.take(bytes));
    v_ = reinterpret_cast<float*>(pool_.take(bytes));
    free_pages_.reserve(n_pages);
    // Hand out low page ids first (pop from the back).
    for (int p = n_pages - 1; p >= 0; --p) free_pages_.push_back(p);
}

int KVCache::slots_free() const {
    return static_cast<int>(std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.live; }));
}

int KVCache::alloc(int attn_block) {
    if (attn_block < 1) throw std::invalid_argument("attn_block must be >= 1, got " + std::to_string(attn_block));
    for (size_t i = 0; i < slots_.size(); ++i) {
        if (!slots_[i].live) {
            slots_[i] = Slot{true, attn_block, 0, {}};
            return static_cast<int>(i);
        }
    }
    throw NoFreeSlot("all " + std::to_string(slots_.size()) + " sequence slots are in use");
}

void KVCache::free(int slot) {
    if (!is_live(slot)) throw std::invalid_argument("free_sequence: slot " + std::to_string(slot) + " is not allocated");
    Slot& s = slots_[slot];
    for (auto it = s.pages.rbegin(); it != s.pages.rend(); ++it) free_pages_.push_back(*it);
    s = Slot{};
}

int KVCache::pages_needed(int slot, int n_positions) const {
    if (!is_live(slot)) throw std::invalid_argument("slot " + std::to_string(slot) + " is not allocated");
    if (n_positions < 0) throw std::invalid_argument("n_positions must be >= 0, got " + std::to_string(n_positions));
    int want = (n_positions + page_size_ - 1) / page_size_;
    return std::max(0, want - static_cast<int>(slots_[slot].pages.size()));
}

bool KVCache::can_reserve(int slot, int n_positions) const {
    return pages_needed(slot, n_positions) <= pages_free();
}

void KVCache::reserve(int slot, int n_positions) {
    int need = pages_needed(slot, n_positions);
    if (need > pages_free()) {
        throw KVCacheFull("KV cache full: slot " + std::to_string(slot) + " needs " + std::to_string(need) +
                          " more pages for " + std::to_string(n_positions) + " positions, " +
                          std::to_string(pages_free()) + " of " + std::to_string(n_pages_) + " free");
    }
    Slot& s = slots_[slot];
    for (int i = 0; i < need; ++i) {
        s.pages.push_back(free_pages_.back());
        free_pages_.pop_back();
    }
}

void KVCache::zero_positions(int slot, int from, int to) {
    for (int pos = from; pos < to;) {
        const int run = std::min(to - pos, page_size_ - pos % page_size_);  // positions left in this page
        for (int layer = 0; layer < n_layers_; ++layer) {
            std::memset(row(k_, layer, slot, pos), 0, sizeof(float) * run * kv_dim_);
            std::memset(row(v_, layer, slot, pos), 0, sizeof(float) * run * kv_dim_);
        }
        pos += run;
    }
}

}  // namespace wfrt
