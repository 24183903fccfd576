// Paged KV cache: one pool of fixed-size pages shared by every sequence slot.
//
// A page holds `page_size` consecutive positions of K and V for every layer. Each slot owns a page
// table (logical page -> pool page) and a high-water mark: one past the highest position written.
// Attention reads a slot's positions below its mark only, each written by a step or zeroed when a
// step skipped it (zero_positions), and the mark is reset when the slot is freed, so a slot never
// sees data a previous owner wrote, and pages need no clearing when a slot takes them.
#pragma once
#include <cstdint>
#include <vector>

#include "huge_page_arena.h"

namespace wfrt {

class KVCache {
public:
    KVCache(int n_layers, int kv_dim, int page_size, int n_pages, int max_slots);

    int page_size() const { return page_size_; }
    int pages_total() const { return n_pages_; }
    int pages_free() const { return static_cast<int>(free_pages_.size()); }
    int slots_free() const;
    int max_slots() const { return static_cast<int>(slots_.size()); }

    // Slot lifecycle. alloc throws NoFreeSlot; the others throw std::invalid_argument for a slot
    // that is not allocated.
    int alloc(int attn_block);
    void free(int slot);
    void reserve(int slot, int n_positions);          // throws KVCacheFull, pool unchanged then
    bool can_reserve(int slot, int n_positions) const;

    bool is_live(int slot) const { return slot >= 0 && slot < max_slots() && slots_[slot].live; }
    int attn_block(int slot) const { return slots_[slot].attn_block; }
    int reserved(int slot) const { return static_cast<int>(slots_[slot].pages.size()) * page_size_; }
    int high_water(int slot) const { return slots_[slot].high_water; }
    void raise_high_water(int slot, int end) {
        if (end > slots_[slot].high_water) slots_[slot].high_water = end;
    }
    // Zero positions [from, to) of `slot` in every layer (reserved positions).
    void zero_positions(int slot, int from, int to);

    // K or V row (kv_dim floats) of `layer` at `pos` of `slot`; pos must be reserved.
    float* k_row(int layer, int slot, int pos) { return row(k_, layer, slot, pos); }
    float* v_row(int layer, int slot, int pos) { return row(v_, layer, slot, pos); }
    const float* k_row(int layer, int slot, int pos) const { return row(k_, layer, slot, pos); }
    const float* v_row(int layer, int slot, int pos) const { return row(v_, layer, slot, pos); }

private:
    struct Slot {
        bool live = false;
        int attn_block = 1;
        int high_water = 0;
        std::vector<int> pages;
    };
    float* row(float* buf, int layer, int slot, int pos) const {
        int page = slots_[slot].pages[pos / page_size_];
        size_t index = (static_cast<size_t>(page) * n_layers_ + layer) * page_size_ + pos % page_size_;
        return buf + index * kv_dim_;
    }
    int pages_needed(int slot, int n_positions) const;

    int n_layers_, kv_dim_, page_size_, n_pages_;
    // K then V in one huge-page mapping, each laid out [page][layer][position][kv_dim]: writing
    // the pages in use faults once per 2 MiB instead of once per 4 KiB, and since a page's layers
    // lie together, memory is committed (2 MiB at a time where the kernel gives huge pages) in
    // step with the pages in use. A large pool costs address space until it is used.
    HugePageArena pool_;
    float* k_ = nullptr;
    float* v_ = nullptr;
    std::vector<int> free_pages_;
    std::vector<Slot> slots_;
};

}  // namespace wfrt
