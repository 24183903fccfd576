// Hardware ceilings for the benchmarks: DRAM streaming read bandwidth and the int8 multiply-
// accumulate peak of each instruction the kernels may use. Compiled by bench/hw.py at bench time
// (never shipped), so ISA-specific code is gated per function by target attributes and cpuid.
//
// usage: hw <buffer MiB> <bandwidth passes> <peak seconds> <thread counts...>
// prints one JSON object on stdout; peak seconds 0 skips the int8 peaks.
#include <immintrin.h>
#include <cpuid.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>

namespace {

using Clock = std::chrono::steady_clock;

struct CpuFeatures {
    bool avx2 = false, avx512bw = false, avx512vnni = false, avxvnni = false;
};

CpuFeatures detect() {
    CpuFeatures f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = (c >> 27) & 1;
    if (!osxsave) return f;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));  // _xgetbv needs -mxsave
    const unsigned long long xcr0 = (static_cast<unsigned long long>(xhi) << 32) | xlo;
    const bool ymm_os = (xcr0 & 0x6) == 0x6;
    const bool zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    f.avx2 = ymm_os && ((b >> 5) & 1);
    f.avx512bw = zmm_os && ((b >> 16) & 1) && ((b >> 30) & 1);
    f.avx512vnni = f.avx512bw && ((c >> 11) & 1);
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avxvnni = f.avx2 && ((a >> 4) & 1);
    return f;
}

// Runs fn(thread index) on n threads released together; returns the wall time of the slowest.
double run_threads(int n, const std::function<void(int)>& fn) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    for (int t = 0; t < n; ++t) {
        pool.emplace_back([&, t] {
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) {}
            fn(t);
        });
    }
    while (ready.load() < n) {}
    const auto t0 = Clock::now();
    go.store(true, std::memory_order_release);
    for (auto& th : pool) th.join();
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

volatile uint64_t g_sink;  // keeps the measured loops from being optimised away

__attribute__((target("avx2"))) uint64_t read_span(const uint8_t* p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i*)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i*)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i*)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i*)(p + i + 96)));
    }
    const __m256i x = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    return (uint64_t)_mm256_extract_epi64(x, 0) ^ (uint64_t)_mm256_extract_epi64(x, 3);
}

// One pass reads the whole buffer, split evenly across the threads; returns bytes/s per pass.
std::vector<double> bandwidth(uint8_t* buf, size_t bytes, int threads, int passes) {
    std::vector<double> out;
    const size_t chunk = bytes / threads / 128 * 128;
    for (int r = 0; r < passes; ++r) {
        std::vector<uint64_t> sinks(threads);
        const double s = run_threads(threads, [&](int t) { sinks[t] = read_span(buf + t * chunk, chunk); });
        uint64_t x = 0;
        for (uint64_t v : sinks) x ^= v;
        g_sink = x;
        out.push_back(double(chunk) * threads / s);
    }
    return out;
}

// The inner loops of an int8 GEMM: activations stay in registers, weights stream from an L1-sized
// block, 8 independent accumulators (unrolled, so they live in registers) hide latency. MACs per call = iters * 8 * lanes.
constexpr int kL1Bytes = 16 * 1024;
alignas(64) uint8_t g_w[kL1Bytes];

__attribute__((target("avx2"))) uint64_t loop_maddubs_ymm(long iters) {
    __m256i acc[8];
    for (auto& a : acc) a = _mm256_setzero_si256();
    const __m256i x = _mm256_set1_epi8(1);
    const int blocks = kL1Bytes / (8 * 32);
    for (long it = 0; it < iters; ++it) {
        const __m256i* w = (const __m256i*)(g_w + (it % blocks) * 8 * 32);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j)
            acc[j] = _mm256_add_epi16(acc[j], _mm256_maddubs_epi16(_mm256_load_si256(w + j), x));
    }
    __m256i s = acc[0];
    for (int j = 1; j < 8; ++j) s = _mm256_xor_si256(s, acc[j]);
    return (uint64_t)_mm256_extract_epi64(s, 0);
}

__attribute__((target("avx512bw"))) uint64_t loop_maddubs_zmm(long iters) {
    __m512i acc[8];
    for (auto& a : acc) a = _mm512_setzero_si512();
    const __m512i x = _mm512_set1_epi8(1);
    const int blocks = kL1Bytes / (8 * 64);
    for (long it = 0; it < iters; ++it) {
        const __m512i* w = (const __m512i*)(g_w + (it % blocks) * 8 * 64);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j)
            acc[j] = _mm512_add_epi16(acc[j], _mm512_maddubs_epi16(_mm512_load_si512(w + j), x));
    }
    __m512i s = acc[0];
    for (int j = 1; j < 8; ++j) s = _mm512_xor_si512(s, acc[j]);
    return (uint64_t)_mm_extract_epi64(_mm512_castsi512_si128(s), 0);
}

__attribute__((target("avx2,avxvnni"))) uint64_t loop_dpbusd_ymm(long iters) {
    __m256i acc[8];
    for (auto& a : acc) a = _mm256_setzero_si256();
    const __m256i x = _mm256_set1_epi8(1);
    const int blocks = kL1Bytes / (8 * 32);
    for (long it = 0; it < iters; ++it) {
        const __m256i* w = (const __m256i*)(g_w + (it % blocks) * 8 * 32);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j)
            acc[j] = _mm256_dpbusd_avx_epi32(acc[j], _mm256_load_si256(w + j), x);
    }
    __m256i s = acc[0];
    for (int j = 1; j < 8; ++j) s = _mm256_xor_si256(s, acc[j]);
    return (uint64_t)_mm256_extract_epi64(s, 0);
}

__attribute__((target("avx512bw,avx512vnni"))) uint64_t loop_dpbusd_zmm(long iters) {
    __m512i acc[8];
    for (auto& a : acc) a = _mm512_setzero_si512();
    const __m512i x = _mm512_set1_epi8(1);
    const int blocks = kL1Bytes / (8 * 64);
    for (long it = 0; it < iters; ++it) {
        const __m512i* w = (const __m512i*)(g_w + (it % blocks) * 8 * 64);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j)
            acc[j] = _mm512_dpbusd_epi32(acc[j], _mm512_load_si512(w + j), x);
    }
    __m512i s = acc[0];
    for (int j = 1; j < 8; ++j) s = _mm512_xor_si512(s, acc[j]);
    return (uint64_t)_mm_extract_epi64(_mm512_castsi512_si128(s), 0);
}

struct PeakKernel {
    const char* name;
    bool supported;
    int macs_per_iter;
    uint64_t (*fn)(long);
};

// Calibrates the iteration count to about `seconds` on one thread, then times 1..n threads.
std::string peak_json(const PeakKernel& k, double seconds, const std::vector<int>& thread_counts) {
    long iters = 1 << 16;
    for (;;) {
        const auto t0 = Clock::now();
        g_sink = k.fn(iters);
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (s > seconds / 4) { iters = long(iters * seconds / s); break; }
        iters *= 4;
    }
    std::string out = std::string("\"") + k.name + "\": {";
    bool first = true;
    for (int n : thread_counts) {
        std::vector<uint64_t> sinks(n);
        std::string samples;
        for (int rep = 0; rep < 3; ++rep) {
            const double s = run_threads(n, [&](int t) { sinks[t] = k.fn(iters); });
            for (uint64_t v : sinks) g_sink = g_sink ^ v;
            const double macs = double(iters) * k.macs_per_iter * n;
            samples += (rep ? ", " : "") + std::to_string(macs / s);
        }
        out += (first ? "" : ", ") + std::string("\"") + std::to_string(n) + "\": [" + samples + "]";
        first = false;
    }
    return out + "}";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s <buffer MiB> <bandwidth passes> <peak seconds> <threads...>\n", argv[0]);
        return 2;
    }
    const size_t mib = std::strtoul(argv[1], nullptr, 10);
    const int passes = std::atoi(argv[2]);
    const double peak_s = std::atof(argv[3]);
    std::vector<int> thread_counts;
    for (int i = 4; i < argc; ++i) thread_counts.push_back(std::atoi(argv[i]));
    const CpuFeatures f = detect();
    if (!f.avx2) {
        std::fprintf(stderr, "hw: this CPU lacks AVX2; the bench ceilings need it\n");
        return 3;
    }
    for (int i = 0; i < kL1Bytes; ++i) g_w[i] = uint8_t(i * 37 + 11);

    const size_t bytes = mib << 20;
    // 2 MiB aligned and advised huge pages, as the runtime holds its weights (cpp/huge_page_arena.h):
    // with 4 KiB pages the read stream measured ~10 % below what the GEMVs reach on a VM.
    auto* buf = static_cast<uint8_t*>(std::aligned_alloc(size_t(2) << 20, bytes));
    if (!buf) {
        std::fprintf(stderr, "hw: cannot allocate %zu MiB\n", mib);
        return 4;
    }
    ::madvise(buf, bytes, MADV_HUGEPAGE);
    std::memset(buf, 1, bytes);  // fault every page in before timing

    std::printf("{\"buffer_bytes\": %zu, \"bandwidth_bytes_per_s\": {", bytes);
    for (size_t i = 0; i < thread_counts.size(); ++i) {
        const auto v = bandwidth(buf, bytes, thread_counts[i], passes);
        std::printf("%s\"%d\": [", i ? ", " : "", thread_counts[i]);
        for (size_t j = 0; j < v.size(); ++j) std::printf("%s%.6e", j ? ", " : "", v[j]);
        std::printf("]");
    }
    std::free(buf);
    std::printf("}, \"int8_macs_per_s\": {");
    const PeakKernel kernels[] = {
        {"avx2_maddubs_i16acc", f.avx2, 8 * 32, loop_maddubs_ymm},
        {"avx512bw_maddubs_i16acc", f.avx512bw, 8 * 64, loop_maddubs_zmm},
        {"avxvnni_dpbusd", f.avxvnni, 8 * 32, loop_dpbusd_ymm},
        {"avx512vnni_dpbusd", f.avx512vnni, 8 * 64, loop_dpbusd_zmm},
    };
    bool first = true;
    for (const auto& k : kernels) {
        if (!k.supported || peak_s <= 0) continue;
        std::printf("%s%s", first ? "" : ", ", peak_json(k, peak_s, thread_counts).c_str());
        first = false;
    }
    std::printf("}}\n");
    return 0;
}
