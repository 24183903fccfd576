// One anonymous mapping backed by transparent huge pages where the kernel allows (madvise),
// carved into 64-byte aligned pieces that start zero-filled. Holds the weights every step
// streams: decode on the benchmark VM read them 10-18 % faster from here than from the page
// cache of a mapped file, or from 4 KiB heap pages (docs/benchmarks.md). Also holds the KV pool
// (kv_cache.h), whose pages are zeroed as slots take them: one fault per 2 MiB, not per 4 KiB.
#pragma once
#include <cstddef>
#include <cstdint>

namespace wfrt {

class HugePageArena {
public:
    HugePageArena() = default;
    explicit HugePageArena(size_t bytes);
    ~HugePageArena();
    HugePageArena(const HugePageArena&) = delete;
    HugePageArena& operator=(const HugePageArena&) = delete;
    HugePageArena(HugePageArena&& o) noexcept;
    HugePageArena& operator=(HugePageArena&& o) noexcept;

    // The next `bytes` (64-byte aligned); throws std::bad_alloc past the size given.
    uint8_t* take(size_t bytes);
    // Bytes take() hands out for a piece of `bytes` (its alignment included).
    static size_t piece(size_t bytes) { return (bytes + 63) / 64 * 64; }
    // Bytes it was made for.
    size_t size() const { return size_; }

private:
    void* map_ = nullptr;
    size_t map_bytes_ = 0;
    uint8_t* base_ = nullptr;
    size_t size_ = 0, used_ = 0;
};

}  // namespace wfrt
