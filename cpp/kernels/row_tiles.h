// Loop nest for row-major weights (int8 LM head, fp32): Kernel<RW, MA>::call computes RW weight
// rows against MA activation rows over all of K. Include inside an ISA file's anonymous namespace.

// Rows are read RW at a time, so each micro kernel walks one contiguous block of RW * K bytes;
// prefetching every row this far ahead keeps DRAM streaming (8 KiB, as for the ternary tiles).
constexpr size_t kRowPrefetchBytes = 8192;

// Rows of W in groups of RW for activation rows in groups of MA (tails use smaller instances),
// over bands of weight rows (~256 KiB) that stay in L2 while every activation row passes.
template <int RW, int MA, class Micro>
inline void rows_by_tiles(int N0, int N1, int M, size_t row_bytes, Micro micro) {
    const int fit = (int)((256 * 1024) / row_bytes) / RW * RW;
    const int band = M == 1 ? N1 - N0 : (fit > RW ? fit : RW);
    for (int b0 = N0; b0 < N1; b0 += band) {
        const int b1 = N1 - b0 < band ? N1 : b0 + band;
        for (int m0 = 0; m0 < M; m0 += MA) {
            const int ma = M - m0 < MA ? M - m0 : MA;
            int n = b0;
            for (; n + RW <= b1; n += RW) micro.template run<RW, MA>(n, m0, ma);
            for (; n < b1; ++n) micro.template run<1, MA>(n, m0, ma);
        }
    }
}

template <class Elem, class Acc, template <int, int> class Kernel>
struct RowMicro {
    const Elem* W; int K; const Elem* X; int ldx; Acc* Y; int ldy;
    // `ma` (1..MA) activation rows: the tail of M runs a smaller instance.
    template <int RW, int MA>
    void run(int n, int m0, int ma) {
        if constexpr (MA > 1) {
            if (ma < MA) return run<RW, MA - 1>(n, m0, ma);
        }
        Acc out[MA][RW];
        Kernel<RW, MA>::call(W + (size_t)n * K, K, X + (size_t)m0 * ldx, ldx, out);
        for (int m = 0; m < MA; ++m)
            for (int r = 0; r < RW; ++r) Y[(size_t)(m0 + m) * ldy + n + r] = out[m][r];
    }
};
