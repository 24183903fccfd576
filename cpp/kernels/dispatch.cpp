// Chooses the kernel table once, from the CPU's features (or WFRT_ISA).
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "isa_tables.h"

namespace wfrt {

namespace {

struct Candidate {
    const KernelTable* table;
    bool (*runs_here)();
};

#if WFRT_X86_KERNELS
bool has_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#endif

// Generic first, best last. __builtin_cpu_supports also checks that the OS saves the wider registers.
const Candidate kCandidates[] = {
    {&kGenericKernels, [] { return true; }},
#if WFRT_X86_KERNELS
    {&kAvx2Kernels, has_avx2},
    {&kAvxVnniKernels, [] { return has_avx2() && __builtin_cpu_supports("avxvnni"); }},
    {&kAvx512VnniKernels,
     [] {
         return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
     }},
#endif
};

const KernelTable& choose() {
    const char* forced = std::getenv("WFRT_ISA");
    if (forced && *forced) {
        if (const KernelTable* t = kernels_by_name(forced)) return *t;
        std::string names;
        for (const KernelTable* t : supported_kernels()) names += std::string(names.empty() ? "" : ", ") + t->name;
        throw std::runtime_error("WFRT_ISA=" + std::string(forced) + " is unknown or not supported by this CPU (supported: " +
                                 names + ")");
    }
    const KernelTable* best = &kGenericKernels;
    for (const Candidate& c : kCandidates)
        if (c.runs_here()) best = c.table;
    return *best;
}

}  // namespace

std::vector<const KernelTable*> supported_kernels() {
    std::vector<const KernelTable*> out;
    for (const Candidate& c : kCandidates)
        if (c.runs_here()) out.push_back(c.table);
    return out;
}

const KernelTable* kernels_by_name(const std::string& name) {
    for (const Candidate& c : kCandidates)
        if (name == c.table->name && c.runs_here()) return c.table;
    return nullptr;
}

const KernelTable& kernels() {
    static const KernelTable& chosen = choose();
    return chosen;
}

}  // namespace wfrt
