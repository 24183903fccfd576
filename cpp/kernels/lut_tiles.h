// The LUT ternary GEMM loop nest (see lut.h), written once over a SIMD traits type.
//
// Include only from an ISA file, after its `#pragma GCC target`, inside an anonymous namespace.
// Traits T provide: V (vector of kLanes int16 lanes, one per token); zero(); load(const int16_t*);
// store(int16_t*, V); add(a, b); sub(a, b); widen_add(int32_t* y, V acc) (y[i] += acc[i]).

static_assert(kLutSlabGroups * kLutGroup * 128 <= 32767, "int16 slab accumulators would overflow");

// Per-thread scratch, grown on demand: a kernel call allocates only when larger than before.
struct LutScratch {
    std::vector<int16_t> xt, table, acc16;
    std::vector<int32_t> acc;
    // 64-byte aligned views (table entries are whole cache lines for 32+ tokens).
    template <class E>
    static E* aligned(std::vector<E>& v, size_t n) {
        if (v.size() < n + 64 / sizeof(E)) v.resize(n + 64 / sizeof(E));
        return reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t(63));
    }
};

inline LutScratch& lut_scratch() {
    static thread_local LutScratch s;
    return s;
}

// Rows sharing the table walk: R rows x NV vectors of accumulators, 8 in all (enough independent
// add chains to keep the load ports busy, and within the 16 ymm registers of AVX2).
template <int NV>
constexpr int lut_rows() {
    return NV >= 8 ? 1 : 8 / NV;
}

// Groups per table build: the most (a power of two) whose entries fit 42 KiB, so they stay in a
// 48 KiB L1 while every row passes over them (16 groups at 16 tokens, 8 at 32, 4 at 64).
// Measured on Sapphire Rapids: 83 KiB tables ran the 64-token kernel at a third of the speed.
constexpr int lut_table_groups(int tokens) {
    int g = kLutSlabGroups / 2;
    while (g > 1 && g * kLutPatterns * tokens * 2 > 42 * 1024) g /= 2;
    return g;
}

template <class T, int NV, int SG = lut_table_groups(NV * T::kLanes)>
struct LutGemm {
    using V = typename T::V;
    static constexpr int TB = NV * T::kLanes;  // tokens per block
    static_assert(kLutSlabGroups % SG == 0 && kLutSlabGroups / SG >= 2, "a slab takes a first and a last pass");

    // xt[k][t] (128 x TB int16) for tokens [m0, m0 + mb) of one slab; lanes past mb are zero.
    static void transpose(const int8_t* X, int ldx, int mb, int k0, int16_t* xt) {
        if (mb < TB) std::memset(xt, 0, sizeof(int16_t) * kTernaryKBlock * TB);
        for (int t = 0; t < mb; ++t) {
            const int8_t* x = X + (size_t)t * ldx + k0;
            for (int k = 0; k < kTernaryKBlock; ++k) xt[k * TB + t] = x[k];
        }
    }

    // table[j][p] = sum_i q_i(p) * x_i over the slab's 32 groups, p = a + 9 b with a the pattern of
    // codes 0-1 and b of codes 2-3: 9 pair sums each, then 81 adds.
    static void build(const int16_t* xt, int16_t* table) {
        for (int j = 0; j < SG; ++j)
            WFRT_UNROLL for (int v = 0; v < NV; ++v) {
                const int16_t* x = xt + (size_t)j * kLutGroup * TB + v * T::kLanes;
                V A[9], B[9];
                pairs(T::load(x), T::load(x + TB), A);
                pairs(T::load(x + 2 * TB), T::load(x + 3 * TB), B);
                int16_t* e = table + (size_t)j * kLutPatterns * TB + v * T::kLanes;
                WFRT_UNROLL for (int b = 0; b < 9; ++b)
                    WFRT_UNROLL for (int a = 0; a < 9; ++a) T::store(e + (size_t)(a + 9 * b) * TB, T::add(A[a], B[b]));
            }
    }

    // P[u0 + 3 u1] = (u0 - 1) x0 + (u1 - 1) x1.
    static void pairs(V x0, V x1, V P[9]) {
        const V z = T::zero();
        P[4] = z;
        P[5] = x0;
        P[3] = T::sub(z, x0);
        P[7] = x1;
        P[1] = T::sub(z, x1);
        P[8] = T::add(x0, x1);
        P[0] = T::sub(z, P[8]);
        P[6] = T::sub(x1, x0);
        P[2] = T::sub(x0, x1);
    }

    // Adds, for R rows at a time, the table entries of groups [g0, g0 + SG) of a slab to the rows'
    // int16 slab sums acc16 (R x TB). Tables of SG groups stay in L1 while every row passes. The
    // slab's first pass starts from zero instead of acc16; its last adds the sums, widened, to
    // the int32 totals acc instead of storing them back.
    template <int R, bool First, bool Last>
    static void lookup(const uint8_t* Ws, const int16_t* table, int n, int g0, int16_t* acc16, int32_t* acc) {
        V s[R][NV];
        WFRT_UNROLL for (int r = 0; r < R; ++r)
            WFRT_UNROLL for (int v = 0; v < NV; ++v) s[r][v] = First ? T::zero() : T::load(acc16 + r * TB + v * T::kLanes);
        const uint8_t* w = Ws + (size_t)n * kLutSlabGroups + g0;
        WFRT_UNROLL for (int j = 0; j < SG; ++j)
            WFRT_UNROLL for (int r = 0; r < R; ++r) {
                const int16_t* e = table + ((size_t)j * kLutPatterns + w[r * kLutSlabGroups + j]) * TB;
                WFRT_UNROLL for (int v = 0; v < NV; ++v) {
                    s[r][v] = T::add(s[r][v], T::load(e + v * T::kLanes));
                    // Keeps GCC from reassociating the sums into trees whose addresses, all
                    // computed up front, spilled to the stack (as in ternary_tiles.h's dot).
                    __asm__("" : "+x"(s[r][v]));
                }
            }
        WFRT_UNROLL for (int r = 0; r < R; ++r)
            WFRT_UNROLL for (int v = 0; v < NV; ++v) {
                if constexpr (Last) T::widen_add(acc + r * TB + v * T::kLanes, s[r][v]);
                else T::store(acc16 + r * TB + v * T::kLanes, s[r][v]);
            }
    }

    // One pass of SG groups over rows [n0, n1).
    template <bool First, bool Last>
    static void pass(const uint8_t* Ws, const int16_t* table, int n0, int n1, int g0, int16_t* acc16, int32_t* acc) {
        constexpr int R = lut_rows<NV>();
        int n = n0;
        for (; n + R <= n1; n += R)
            lookup<R, First, Last>(Ws, table, n, g0, acc16 + (size_t)(n - n0) * TB, acc + (size_t)(n - n0) * TB);
        for (; n < n1; ++n)
            lookup<1, First, Last>(Ws, table, n, g0, acc16 + (size_t)(n - n0) * TB, acc + (size_t)(n - n0) * TB);
    }

    // Rows per chunk: the chunk's int32 totals and int16 slab sums (6 bytes per row and token)
    // stay within ~256 KiB of L2; each chunk builds its own tables (a tenth of its lookups or
    // less at 64 tokens, far less at 16).
    static constexpr int kChunkRows = (256 * 1024) / (6 * TB);

    static void run(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy, int n0,
                    int n1) {
        for (int c0 = n0; c0 < n1; c0 += kChunkRows)
            run_rows(W, N, K, X, ldx, M, Y, ldy, c0, n1 - c0 < kChunkRows ? n1 : c0 + kChunkRows);
    }

    static void run_rows(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy,
                         int n0, int n1) {
        if (n0 >= n1 || M <= 0) return;
        const int Kp = ternary_padded_k(K), slabs = Kp / kTernaryKBlock, rows = n1 - n0;
        LutScratch& sc = lut_scratch();
        int16_t* xt = LutScratch::aligned(sc.xt, (size_t)kTernaryKBlock * TB);
        int16_t* table = LutScratch::aligned(sc.table, (size_t)SG * kLutPatterns * TB);
        int32_t* acc = LutScratch::aligned(sc.acc, (size_t)rows * TB);
        int16_t* acc16 = LutScratch::aligned(sc.acc16, (size_t)rows * TB);
        for (int m0 = 0; m0 < M; m0 += TB) {
            const int mb = M - m0 < TB ? M - m0 : TB;
            const int8_t* Xm = X + (size_t)m0 * ldx;
            std::memset(acc, 0, sizeof(int32_t) * rows * TB);
            for (int s = 0; s < slabs; ++s) {
                transpose(Xm, ldx, mb, s * kTernaryKBlock, xt);
                const uint8_t* Ws = W + (size_t)s * N * kLutSlabGroups;
                for (int g0 = 0; g0 < kLutSlabGroups; g0 += SG) {
                    build(xt + (size_t)g0 * kLutGroup * TB, table);
                    if (g0 == 0) pass<true, false>(Ws, table, n0, n1, g0, acc16, acc);
                    else if (g0 + SG < kLutSlabGroups) pass<false, false>(Ws, table, n0, n1, g0, acc16, acc);
                    else pass<false, true>(Ws, table, n0, n1, g0, acc16, acc);
                }
            }
            // The tables hold sum q x; the contract is sum (q + 1) x.
            for (int t = 0; t < mb; ++t) {
                const int8_t* x = Xm + (size_t)t * ldx;
                int32_t xsum = 0;
                for (int k = 0; k < Kp; ++k) xsum += x[k];
                int32_t* y = Y + (size_t)(m0 + t) * ldy;
                for (int n = n0; n < n1; ++n) y[n] = acc[(size_t)(n - n0) * TB + t] + xsum;
            }
        }
    }
};
