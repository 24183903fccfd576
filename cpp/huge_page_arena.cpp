#include "huge_page_arena.h"

#include <new>
#include <sys/mman.h>
#include <utility>

namespace wfrt {

namespace {
constexpr size_t kHugePage = size_t(2) << 20;
}

HugePageArena::HugePageArena(size_t bytes) : size_(bytes) {
    if (bytes == 0) return;
    map_bytes_ = (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
    map_ = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map_ == MAP_FAILED) {
        map_ = nullptr;
        throw std::bad_alloc();
    }
    base_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(map_) + kHugePage - 1) & ~(kHugePage - 1));
#ifdef MADV_HUGEPAGE
    ::madvise(base_, (bytes + kHugePage - 1) / kHugePage * kHugePage, MADV_HUGEPAGE);  // advice: failure is harmless
#endif
}

HugePageArena::~HugePageArena() {
    if (map_) ::munmap(map_, map_bytes_);
}

HugePageArena::HugePageArena(HugePageArena&& o) noexcept { *this = std::move(o); }

HugePageArena& HugePageArena::operator=(HugePageArena&& o) noexcept {
    std::swap(map_, o.map_);
    std::swap(map_bytes_, o.map_bytes_);
    std::swap(base_, o.base_);
    std::swap(size_, o.size_);
    std::swap(used_, o.used_);
    return *this;
}

uint8_t* HugePageArena::take(size_t bytes) {
    const size_t n = piece(bytes);
    if (n > size_ - used_) throw std::bad_alloc();
    uint8_t* p = base_ + used_;
    used_ += n;
    return p;
}

}  // namespace wfrt
