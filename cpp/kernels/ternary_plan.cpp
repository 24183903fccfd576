// Kernel choice per row count: calibration at load, cached per CPU model, ISA and K.
#include "ternary_plan.h"

#include "base3.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <sys/stat.h>
#include <vector>

namespace wfrt {

namespace {

// Rows of the synthetic matrix: one thread's share of a 2B-4T projection, big enough that the
// LUT kernels' per-call table building weighs as it does in the model.
constexpr int kCalibrationN = 1024;

std::string cpu_model() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown cpu";
}

std::string cache_path() {
    const char* xdg = std::getenv("XDG_CACHE_HOME");
    const char* home = std::getenv("HOME");
    if (xdg && *xdg) return std::string(xdg) + "/wrinklefree_rt/ternary_plan.txt";
    if (home && *home) return std::string(home) + "/.cache/wrinklefree_rt/ternary_plan.txt";
    return "";
}

// The cached plan for `key`, if a line holds one whose names all exist here.
bool read_cached(const KernelTable& table, const std::string& key, TernaryPlan& plan) {
    std::ifstream f(cache_path());
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind(key + "\t", 0) != 0) continue;
        std::istringstream names(line.substr(key.size() + 1));
        TernaryPlan p;
        p.base3 = plan.base3;
        std::string name;
        int b = 0;
        for (; b < kPlanBuckets && names >> name; ++b) {
            if (name == "tiles" || name == "base3") continue;
            if (!(p.lut[b] = lut_kernel_by_name(table, name.c_str()))) break;
        }
        if (b == kPlanBuckets) {
            plan = p;
            return true;
        }
    }
    return false;
}

void write_cached(const std::string& key, const TernaryPlan& plan) {
    const std::string path = cache_path();
    if (path.empty()) return;
    // mkdir -p of the two levels that may be missing; failures show up as an unopenable file.
    const std::string dir = path.substr(0, path.rfind('/'));
    ::mkdir(dir.substr(0, dir.rfind('/')).c_str(), 0755);
    ::mkdir(dir.c_str(), 0755);
    std::ofstream f(path, std::ios::app);
    f << key << '\t';
    for (int b = 0; b < kPlanBuckets; ++b) f << (b ? " " : "") << plan.kernel_name(b);
    f << '\n';
}

// Seconds of one call.
template <class Fn>
double seconds(Fn fn) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    fn();
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

TernaryPlan calibrate(const KernelTable& table, int K, bool base3) {
    const int N = kCalibrationN, Kp = ternary_padded_k(K), M = 1 << (kPlanBuckets - 1);
    std::mt19937 rng(1);
    std::vector<int8_t> q((size_t)N * K), X((size_t)M * Kp, 0);
    for (auto& v : q) v = (int8_t)((int)(rng() % 3) - 1);
    for (int m = 0; m < M; ++m)
        for (int k = 0; k < K; ++k) X[(size_t)m * Kp + k] = (int8_t)((int)(rng() % 255) - 127);
    std::vector<uint8_t> dense(base3 ? base3_packed_bytes(N, K) : ternary_packed_bytes(N, K));
    std::vector<uint8_t> lut(lut_packed_bytes(N, K));
    if (base3) base3_pack(q.data(), N, K, dense.data());
    else ternary_pack(q.data(), N, K, dense.data());
    lut_pack(q.data(), N, K, lut.data());
    const auto dense_gemm = base3 ? table.base3_gemm : table.ternary_gemm;
    std::vector<int32_t> Y((size_t)M * N);
    const LutKernelSet set = lut_kernels(table);
    // Variant 0 is the dense kernel, i > 0 the LUT kernel i - 1. Per row count each variant's fastest
    // of five calls, taken in turns (after one warm-up each), so a neighbour's burst on a shared
    // machine hits all variants alike instead of one.
    auto call = [&](int v, int rows) {
        if (v == 0) dense_gemm(dense.data(), N, K, X.data(), Kp, rows, Y.data(), N, 0, N);
        else set.kernels[v - 1].gemm(lut.data(), N, K, X.data(), Kp, rows, Y.data(), N, 0, N);
    };
    TernaryPlan plan;
    plan.base3 = base3;
    for (int b = 0; b < kPlanBuckets; ++b) {
        const int rows = 1 << b;
        std::vector<double> best(set.count + 1, 1e30);
        for (int v = 0; v <= set.count; ++v) call(v, rows);
        for (int rep = 0; rep < 5; ++rep)
            for (int v = 0; v <= set.count; ++v) best[v] = std::min(best[v], seconds([&] { call(v, rows); }));
        const int winner = (int)(std::min_element(best.begin(), best.end()) - best.begin());
        if (winner > 0) plan.lut[b] = &set.kernels[winner - 1];
    }
    return plan;
}

}  // namespace

bool TernaryPlan::uses_lut() const {
    return std::any_of(std::begin(lut), std::end(lut), [](const LutKernel* k) { return k != nullptr; });
}

bool TernaryPlan::uses_dense() const {
    return std::any_of(std::begin(lut), std::end(lut), [](const LutKernel* k) { return k == nullptr; });
}

std::string TernaryPlan::describe() const {
    std::string s;
    for (int b = 0; b < kPlanBuckets; ++b)
        s += (b ? " " : "") + std::to_string(1 << b) + ":" + kernel_name(b);
    return s;
}

TernaryPlan plan_ternary(const KernelTable& table, const std::string& choice_in, int K, bool base3) {
    std::string choice = choice_in;
    if (choice.empty()) {
        const char* env = std::getenv("WFRT_TERNARY");
        choice = env ? env : "";
    }
    TernaryPlan plan;
    plan.base3 = base3;
    if (choice == "tiles") return plan;
    if (choice.empty() || choice == "auto") {
        if (std::strcmp(table.name, "generic") == 0) return plan;
        const std::string key = std::string(base3 ? "base3" : "v1") + "\t" + cpu_model() + "\t" + table.name +
                                "\tK=" + std::to_string(K);
        if (!read_cached(table, key, plan)) {
            plan = calibrate(table, K, base3);
            write_cached(key, plan);
        }
        return plan;
    }
    const LutKernel* forced = lut_kernel_by_name(table, choice.c_str());
    if (!forced) {
        std::string names = "auto, tiles";
        const LutKernelSet set = lut_kernels(table);
        for (int i = 0; i < set.count; ++i) names += std::string(", ") + set.kernels[i].name;
        throw std::invalid_argument("ternary kernel '" + choice + "' is unknown for isa '" + table.name +
                                    "' (choose from: " + names + ")");
    }
    std::fill(std::begin(plan.lut), std::end(plan.lut), forced);
    return plan;
}

}  // namespace wfrt
