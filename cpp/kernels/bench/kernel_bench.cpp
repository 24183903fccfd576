// Kernel throughput, standalone (not part of the extension; setup.py only globs cpp/kernels/*.cpp).
//
//   g++ -O3 -std=c++17 -pthread -Icpp cpp/kernels/bench/kernel_bench.cpp cpp/kernels/*.cpp -o /tmp/kernel_bench
//   /tmp/kernel_bench [table ...]            (default: every SIMD table this CPU runs)
//
// Every figure is the fastest single call out of many (robust on shared, noisy machines), and
// weights rotate over >= 256 MiB of copies so each call reads them from DRAM like a model's
// layers do. "stream" is a plain AVX2 read of the same bytes with the same thread split, measured
// in the same rounds: the ceiling a memory-bound GEMV can reach. Each table's LUT kernels
// (lut.h) follow its tiles, on their own layout, in the same rounds.
// GCC 12's 512-bit casts start from _mm512_undefined_*() and warn.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../lut.h"
#include "../ternary.h"

using namespace wfrt;

namespace {

using Clock = std::chrono::steady_clock;

// Runs fn(n0, n1) over [0, N) split at a kTernaryNAlign boundary on `threads` threads (1 or 2).
void split_run(int N, int threads, const std::function<void(int, int)>& fn) {
    if (threads == 1) return fn(0, N);
    const int cut = (N / 2 + kTernaryNAlign / 2) / kTernaryNAlign * kTernaryNAlign;
    std::thread other([&] { fn(cut, N); });
    fn(0, cut);
    other.join();
}

// Best seconds per call of each variant, alternating variants for `rounds` x `per_round` calls.
std::vector<double> fastest(const std::vector<std::function<void()>>& variants, int rounds, double per_variant_s) {
    std::vector<double> best(variants.size(), 1e30);
    for (int r = 0; r < rounds; ++r)
        for (size_t v = 0; v < variants.size(); ++v) {
            const auto start = Clock::now();
            do {
                const auto a = Clock::now();
                variants[v]();
                best[v] = std::min(best[v], std::chrono::duration<double>(Clock::now() - a).count());
            } while (std::chrono::duration<double>(Clock::now() - start).count() < per_variant_s / rounds);
        }
    return best;
}

__attribute__((target("avx2"))) int64_t stream_read(const uint8_t* p, size_t n) {
    __m256i acc = _mm256_setzero_si256();
    for (size_t i = 0; i + 128 <= n; i += 128)
        for (int j = 0; j < 4; ++j)
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 32 * j)),
                                                        _mm256_setzero_si256()));
    return _mm256_extract_epi64(acc, 0);
}

volatile int64_t g_sink;

// Peak MAC rates of the dot instructions: 12 independent accumulator chains, operands in registers.
#define WFRT_CHAINS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
__attribute__((target("avx2"), noinline)) int maddubs_loop(long iters, char c) {
    __m256i w = _mm256_set1_epi8(c), x = _mm256_set1_epi8((char)(c + 1));
#define WFRT_INIT(i) __m256i a##i = _mm256_set1_epi16(i);
    WFRT_CHAINS(WFRT_INIT)
#define WFRT_STEP(i) a##i = _mm256_add_epi16(a##i, _mm256_maddubs_epi16(w, x));
    for (long n = 0; n < iters; ++n) {
        WFRT_CHAINS(WFRT_STEP)
        __asm__ volatile("" : "+x"(w));
    }
#define WFRT_SUM(i) a0 = _mm256_add_epi16(a0, a##i);
    WFRT_CHAINS(WFRT_SUM)
    return _mm256_extract_epi16(a0, 0);
}
#undef WFRT_INIT
#undef WFRT_STEP
#undef WFRT_SUM

__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) int dpbusd_loop(long iters, char c) {
    __m512i w = _mm512_set1_epi8(c), x = _mm512_set1_epi8((char)(c + 1));
#define WFRT_INIT(i) __m512i a##i = _mm512_set1_epi32(i);
    WFRT_CHAINS(WFRT_INIT)
#define WFRT_STEP(i) a##i = _mm512_dpbusd_epi32(a##i, w, x);
    for (long n = 0; n < iters; ++n) {
        WFRT_CHAINS(WFRT_STEP)
        __asm__ volatile("" : "+v"(w));
    }
#define WFRT_SUM(i) a0 = _mm512_add_epi32(a0, a##i);
    WFRT_CHAINS(WFRT_SUM)
    return _mm_cvtsi128_si32(_mm512_castsi512_si128(a0));
}

void print_peaks() {
    const long iters = 20000000;
    std::vector<std::function<void()>> loops = {[&] { g_sink = maddubs_loop(iters, 1); }};
    const bool vnni512 = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    if (vnni512) loops.push_back([&] { g_sink = dpbusd_loop(iters, 1); });
    const auto best = fastest(loops, 3, 1.0);
    std::printf("peak per thread: maddubs+add16 (ymm) %.1f GMAC/s", iters * 12 * 32 / best[0] / 1e9);
    if (vnni512) std::printf(", dpbusd (zmm) %.1f GMAC/s", iters * 12 * 64 / best[1] / 1e9);
    std::printf("\n");
}

void bench_ternary(const KernelTable& t, int N, int K, int threads) {
    std::mt19937 rng(1);
    std::vector<int8_t> q((size_t)N * K);
    for (auto& v : q) v = (int8_t)((int)(rng() % 3) - 1);
    const size_t bytes = ternary_packed_bytes(N, K);
    const int copies = (int)((256u << 20) / bytes) + 1;
    std::vector<uint8_t> W(bytes * copies);
    ternary_pack(q.data(), N, K, W.data());
    for (int c = 1; c < copies; ++c) std::memcpy(W.data() + c * bytes, W.data(), bytes);
    const int Kp = ternary_padded_k(K);
    const int Ms[] = {1, 8, 32, 128, 512};
    std::vector<int8_t> X((size_t)512 * Kp);
    for (auto& v : X) v = (int8_t)((int)(rng() % 255) - 127);
    std::vector<int32_t> Y((size_t)512 * N);
    int c = 0;
    std::vector<std::function<void()>> variants;
    variants.push_back([&] {
        c = (c + 1) % copies;
        const uint8_t* w = W.data() + (size_t)c * bytes;
        split_run(N, threads, [&](int n0, int n1) {
            const size_t tb = (size_t)Kp * 4;
            g_sink = stream_read(w + n0 / kTernaryRowTile * tb, (size_t)((n1 + 15) / 16 - n0 / 16) * tb);
        });
    });
    for (int M : Ms)
        variants.push_back([&, M] {
            c = (c + 1) % copies;
            const uint8_t* w = W.data() + (size_t)c * bytes;
            split_run(N, threads, [&](int n0, int n1) { t.ternary_gemm(w, N, K, X.data(), Kp, M, Y.data(), N, n0, n1); });
        });
    // Each LUT kernel on its own layout (same bytes per weight), rotated like the tiles.
    const size_t lut_bytes = lut_packed_bytes(N, K);
    std::vector<uint8_t> L(lut_bytes * copies);
    lut_pack(q.data(), N, K, L.data());
    for (int c = 1; c < copies; ++c) std::memcpy(L.data() + c * lut_bytes, L.data(), lut_bytes);
    const LutKernelSet luts = lut_kernels(t);
    for (int i = 0; i < luts.count; ++i)
        for (int M : Ms)
            variants.push_back([&, M, i] {
                c = (c + 1) % copies;
                const uint8_t* w = L.data() + (size_t)c * lut_bytes;
                split_run(N, threads, [&](int n0, int n1) { luts.kernels[i].gemm(w, N, K, X.data(), Kp, M, Y.data(), N, n0, n1); });
            });
    const auto best = fastest(variants, 4, 0.3);
    const double stream_gbs = bytes / best[0] / 1e9;
    std::printf("%-10s %4dx%-4d %d thr | stream %5.1f GB/s | M=1 %6.1f GMAC/s %5.1f GB/s (%3.0f%%)", t.name, N, K, threads,
                stream_gbs, (double)N * K / best[1] / 1e9, bytes / best[1] / 1e9, 100.0 * best[0] / best[1]);
    for (size_t i = 1; i < std::size(Ms); ++i) std::printf(" | M=%d %6.1f", Ms[i], (double)N * K * Ms[i] / best[i + 1] / 1e9);
    std::printf("\n");
    for (int l = 0; l < luts.count; ++l) {
        std::printf("  %-14s GMAC/s:", luts.kernels[l].name);
        for (size_t i = 0; i < std::size(Ms); ++i)
            std::printf(" M=%d %6.1f", Ms[i], (double)N * K * Ms[i] / best[1 + std::size(Ms) * (l + 1) + i] / 1e9);
        std::printf("\n");
    }
}

void bench_i8_head(const KernelTable& t, int threads) {
    const int N = 128256, K = 2560;
    std::vector<int8_t> W((size_t)N * K);
    std::mt19937 rng(2);
    for (size_t i = 0; i < W.size(); i += 4096) W[i] = (int8_t)rng();  // touch every page
    const int Ms[] = {1, 8, 32};
    std::vector<int8_t> X((size_t)32 * K, 1);
    std::vector<int32_t> Y((size_t)32 * N);
    std::vector<std::function<void()>> variants;
    variants.push_back([&] {
        split_run(N, threads, [&](int n0, int n1) {
            g_sink = stream_read((const uint8_t*)W.data() + (size_t)n0 * K, (size_t)(n1 - n0) * K);
        });
    });
    for (int M : Ms)
        variants.push_back([&, M] {
            split_run(N, threads, [&](int n0, int n1) { t.i8_gemm(W.data(), N, K, X.data(), K, M, Y.data(), N, n0, n1); });
        });
    const auto best = fastest(variants, 4, 1.2);
    std::printf("%-10s int8 head %dx%d %d thr | stream %5.1f GB/s | M=1 %5.1f GB/s (%3.0f%%)", t.name, N, K, threads,
                (double)N * K / best[0] / 1e9, (double)N * K / best[1] / 1e9, 100.0 * best[0] / best[1]);
    for (size_t i = 1; i < std::size(Ms); ++i) std::printf(" | M=%d %6.1f GMAC/s", Ms[i], (double)N * K * Ms[i] / best[i + 1] / 1e9);
    std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<const KernelTable*> tables;
    for (const KernelTable* t : supported_kernels()) {
        bool wanted = argc < 2 ? std::string(t->name) != "generic" : false;
        for (int i = 1; i < argc; ++i) wanted |= std::string(argv[i]) == t->name;
        if (wanted) tables.push_back(t);
    }
    print_peaks();
    const int shapes[][2] = {{2560, 2560}, {6912, 2560}, {2560, 6912}};
    for (const KernelTable* t : tables) {
        for (const auto& s : shapes)
            for (int threads : {1, 2}) bench_ternary(*t, s[0], s[1], threads);
        for (int threads : {1, 2}) bench_i8_head(*t, threads);
    }
}
