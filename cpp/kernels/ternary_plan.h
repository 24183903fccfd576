// Which ternary GEMM runs for a given number of activation rows: the kernel table's dense kernel
// (ternary_gemm on layout v1, or base3_gemm on the base-3 layout when the weights are packed 5 per
// byte) or one of its ISA's LUT kernels (lut.h), chosen by measurement.
#pragma once
#include <string>

#include "lut.h"
#include "ternary.h"

namespace wfrt {

// Row counts are bucketed by powers of two: 1, 2-3, 4-7, ..., 64-127, 128 and more.
constexpr int kPlanBuckets = 8;
inline int plan_bucket(int rows) {
    int b = 0;
    while (b + 1 < kPlanBuckets && (2 << b) <= rows) ++b;
    return b;
}

struct TernaryPlan {
    // The dense kernel: base3_gemm on the base-3 layout (base3.h) instead of ternary_gemm on v1.
    bool base3 = false;
    // nullptr: the dense kernel; else that LUT kernel on the LUT layout.
    const LutKernel* lut[kPlanBuckets] = {};
    const LutKernel* for_rows(int rows) const { return lut[plan_bucket(rows)]; }
    bool uses_lut() const;
    bool uses_dense() const;  // some row count runs the dense kernel
    const char* kernel_name(int bucket) const { return lut[bucket] ? lut[bucket]->name : base3 ? "base3" : "tiles"; }
    // "1:tiles 2:tiles ... 32:lut32-avx2 ..." (bucket's least row count: kernel; "base3" for the
    // dense kernel on base-3 weights).
    std::string describe() const;
};

// `choice`: "tiles" (never LUT: the dense kernel); a LUT kernel name of `table`'s ISA (lut_kernels)
// for every row count; "auto" or "": per bucket the fastest of the dense and LUT kernels, timed on a K-wide
// synthetic matrix at the first load on this CPU and then read from the cache file
// ($XDG_CACHE_HOME or ~/.cache)/wrinklefree_rt/ternary_plan.txt (unwritable: not cached).
// The generic table always gets tiles under "auto" (its LUT twin exists for tests only).
// An empty `choice` takes WFRT_TERNARY from the environment. Throws std::invalid_argument for
// an unknown name.
// `base3`: the dense kernel is base3_gemm (the weights are packed 5 codes per byte).
TernaryPlan plan_ternary(const KernelTable& table, const std::string& choice, int K, bool base3 = false);

}  // namespace wfrt
