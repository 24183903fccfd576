// Which ternary GEMM runs for a given number of activation rows: the kernel table's tiles
// (layout v1, maddubs/dpbusd) or one of its ISA's LUT kernels (lut.h), chosen by measurement.
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
    // nullptr: the table's ternary_gemm on layout v1; else that LUT kernel on the LUT layout.
    const LutKernel* lut[kPlanBuckets] = {};
    const LutKernel* for_rows(int rows) const { return lut[plan_bucket(rows)]; }
    bool uses_lut() const;
    // "1:tiles 2:tiles ... 32:lut32-avx2 ..." (bucket's least row count: kernel).
    std::string describe() const;
};

// `choice`: "tiles" (never LUT); a LUT kernel name of `table`'s ISA (lut_kernels) for every row
// count; "auto" or "": per bucket the fastest of tiles and the LUT kernels, timed on a K-wide
// synthetic matrix at the first load on this CPU and then read from the cache file
// ($XDG_CACHE_HOME or ~/.cache)/wrinklefree_rt/ternary_plan.txt (unwritable: not cached).
// The generic table always gets tiles under "auto" (its LUT twin exists for tests only).
// An empty `choice` takes WFRT_TERNARY from the environment. Throws std::invalid_argument for
// an unknown name.
TernaryPlan plan_ternary(const KernelTable& table, const std::string& choice, int K);

}  // namespace wfrt
